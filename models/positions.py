"""Absolute position encodings added to the token embeddings.

* `sinusoidal`: the fixed encoding of Vaswani et al. 2017 ("Attention Is All You Need", §3.5) in
  the concatenated form of tensor2tensor's `get_timing_signal_1d` and fairseq's
  `SinusoidalPositionalEmbedding`: the first half of the channels holds `sin(p · ω_i)`, the second
  half `cos(p · ω_i)`, with `ω_i = 10000^(−i / (D/2 − 1))` for `i = 0 … D/2 − 1` (an odd `D` gets
  one trailing zero channel). Vaswani et al. interleave sin/cos instead; the two differ only by a
  fixed permutation of channels, which the next linear layer absorbs.
* `learned`: a trainable table `[max_len, D]` (Gehring et al. 2017, "Convolutional Sequence to
  Sequence Learning"), initialised N(0, D^-1/2) as fairseq's `LearnedPositionalEmbedding`.
* `none`: no absolute positions (e.g. when a relative bias such as ALiBi carries them).

Positions start at 0 (tensor2tensor's convention). fairseq starts its positions at
`padding_idx + 1 = 2`; for the sinusoidal encoding that is a constant shift of every position,
which changes no relative offset, so the two conventions give equally good models but not
bitwise-equal embeddings.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

KINDS = ('sinusoidal', 'learned', 'none')


def sinusoidal(positions: jax.Array, d_model: int, dtype=jnp.float32) -> jax.Array:
  """Sinusoidal encoding of integer `positions: [...]` → `[..., d_model]` (sin half, cos half)."""
  half = d_model // 2
  # fairseq / tensor2tensor spacing: log-timescales evenly spaced over [0, ln 10000].
  log_increment = math.log(10000.0) / max(half - 1, 1)
  inv_freq = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -log_increment)   # [D/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq               # [..., D/2]
  enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)         # [..., 2·(D/2)]
  if d_model % 2:
    enc = jnp.pad(enc, [(0, 0)] * (enc.ndim - 1) + [(0, 1)])
  return enc.astype(dtype)


class SinusoidalPositions(nnx.Module):
  """Fixed sinusoidal positions; no parameters and no length limit."""

  def __init__(self, d_model: int, *, dtype=jnp.float32):
    self.d_model = d_model
    self.dtype = dtype

  def __call__(self, positions: jax.Array) -> jax.Array:
    # positions: [B, T] int → [B, T, D]
    return sinusoidal(positions, self.d_model, self.dtype)


class LearnedPositions(nnx.Module):
  """A learned table `[max_len, D]`; positions must lie in `[0, max_len)`."""

  def __init__(self, max_len: int, d_model: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.max_len = max_len
    self.embed = nnx.Embed(
        max_len, d_model, dtype=dtype, param_dtype=jnp.float32,
        embedding_init=nnx.initializers.normal(stddev=d_model**-0.5), rngs=rngs)

  def __call__(self, positions: jax.Array) -> jax.Array:
    # positions: [B, T] int → [B, T, D]. Out-of-range positions cannot be checked under jit;
    # the sequence-length check lives in the caller (TransformerLM).
    return self.embed(positions)


def create(kind: str, *, d_model: int, max_len: int, dtype=jnp.float32,
           rngs: nnx.Rngs) -> nnx.Module | None:
  """The position module for `model.positions` (`None` for `none`)."""
  if kind == 'sinusoidal':
    return SinusoidalPositions(d_model, dtype=dtype)
  if kind == 'learned':
    return LearnedPositions(max_len, d_model, dtype=dtype, rngs=rngs)
  if kind == 'none':
    return None
  raise ValueError(f'model.positions={kind!r} is not supported; choose one of {", ".join(KINDS)}')
