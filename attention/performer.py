"""Performer attention with FAVOR+ random features (Choromanski et al. 2021, "Rethinking Attention
with Performers", arXiv:2009.14794).

`attention.kind=performer`. Softmax attention Att = D⁻¹AV, A = exp(QKᵀ/√d), D = diag(A·1), is
replaced by a low-rank estimate through a random feature map φ with E[φ(x)ᵀφ(y)] = exp(xᵀy):

    q̃ = q·d^(−1/4),  k̃ = k·d^(−1/4)                         (so exp(q̃ᵀk̃) = exp(qᵀk/√d))
    φ(x) = m^(−1/2)·exp(−‖x‖²/2)·[exp(ω₁ᵀx), …, exp(ω_mᵀx)]   (positive random features, SM⁺)
    Att ≈ D̂⁻¹·(Q′·(K′ᵀV)),  D̂ = diag(Q′·(K′ᵀ1)),  Q′ = φ(q̃), K′ = φ(k̃)       (bidirectional)
    out_i = Q′_i·(Σ_{j≤i} K′_j V_jᵀ) / Q′_i·(Σ_{j≤i} K′_j)                          (causal)

These are the paper's softmax-kernel (SM⁺) equations; the reference implementations are
google-research `performer/fast_attention/jax/fast_attention.py` and lucidrains'
performer-pytorch. The ω's are orthogonal random features (ORF): d×d blocks of exactly
orthogonal rows (the Q of a QR decomposition of a Gaussian matrix), stacked for m > d, rows
rescaled to χ_d-distributed norms (unbiased) or to √d. Time O(T·m·d), memory
O(T·m + T·d + m·d) per head. The generalized kernel (`kernel='relu'`, lucidrains'
`generalized_kernel`) uses φ(x) = relu(ωᵀx̃) + ε.

Causal attention is computed in chunks of C positions (as fla's chunked linear attention): each
chunk adds a masked C×C term Q′K′ᵀ to the contribution of an m×H state Σ K′_j V_jᵀ carried over
earlier chunks by `lax.scan`. The chunk body is rematerialised (`jax.checkpoint`), so the backward
pass stores one m×H state per chunk, (T/C)·m·H floats (≤ T·m for C ≥ H), never the [T, m, H]
prefix-sum tensor of a naive cumsum.

Numerical stabilisation (why the result is finite, and why it cannot leak the future):
- Each token's features are shifted by the max of its own exponent e = ωᵀx̃ − ‖x̃‖²/2 (stop
  gradient), so its largest feature is exactly 1, and ε = 1e-4 is added *relative to that*:
  φ(x) ∝ exp(e) + ε·exp(max e). For queries the per-token factor cancels in D̂⁻¹.
- Keys keep their per-token shift s_j as a log-scale. Bidirectionally they are put on a common
  scale by the max of s over the valid keys of each (batch, head) (the reference's global shift).
  Causally, query i uses the running max c_i = max_{j≤i} s_j (carried through the chunk scan,
  the state rescaled by exp(c_old − c_new) as in an online softmax), so every factor is ≤ 1 and
  nothing about later keys enters the result. (The JAX/lucidrains code shifts keys by one max
  over the whole sequence; with ε added after the shift, a later key then changes earlier outputs.)
- Denominator guard: D̂_i is floored at `DENOMINATOR_FLOOR` = 1e-12 before dividing. With the
  shifts above a query that sees a valid key has D̂_i ≥ ε/m (≥ 1e-8 for m ≤ 10⁴), so the floor
  only acts on underflow. A query that sees no valid key outputs exact zeros.
- The feature projection ωᵀx̃ is computed at `precision='highest'`: it sits in an exponent, where
  TF32's 10-bit mantissa would already cost about 1% per feature.
- Dtypes: features, shifts and sums are computed in `accumulation_dtype` of the inputs (float32
  for bfloat16/float16/float32, float64 for float64; attention/registry.py); ω is a float32 draw
  promoted to it, so float64 runs are float64 arithmetic on a float32 sample of ω.

Options (`attention.performer`):
- `num_features`: m; 0 = int(d·ln d) (lucidrains' default; 266 for d = 64).
- `kernel`: 'softmax' (FAVOR+ positive random features) | 'relu' (generalized attention with
  random ReLU features, the variant SEA's causal estimator and the OPT Performer baseline use).
- `orthogonal`: orthogonal random features (True) or i.i.d. Gaussian rows (False).
- `scaling`: ORF row norms 'chi' (χ_d, keeps the estimator unbiased) | 'sqrt_d' (all √d).
- `redraw`: 'never' draws ω once at initialisation from the `params` stream and stores it as a
  `RandomFeatures` variable (state, not a parameter: the optimiser never sees it, and a model
  rebuilt from the same seed draws the same ω) | 'every_step' draws a fresh ω from the `dropout`
  stream at each training call (the trainer reseeds that stream every step; the key is folded
  with the layer index so layers differ) and uses the stored ω at evaluation.
- `chunk_size`: C of the causal scan; any T works (the sequence is padded internally).

Masks: causal and padding only (`masks.causal_padding_parts`); score mods (`attention.bias`) are
refused, as is `attention.dropout > 0` (there is no weight matrix to drop from).

Uncertain: the paper recommends periodic redrawing but the interval (lucidrains: every 1000
steps; JAX reference: every call) is not fixed; here 'every_step' or 'never'. The placement of ε
(relative to each token's largest feature here, absolute after a global shift in the reference
code) changes the estimate only at the ε level. ω is shared by the heads of a layer, as in both
reference implementations.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from attention import masks as masks_lib
from attention.biases import ScoreMod
from attention.masks import Mask
from attention.registry import (accumulation_dtype, check_choice, check_implementation,
                                register)

KERNELS = ('softmax', 'relu')
SCALINGS = ('chi', 'sqrt_d')
REDRAWS = ('never', 'every_step')
IMPLEMENTATIONS = ('xla',)

# Smallest denominator D̂_i divided by (see the module docstring for why it is never reached by
# a query that sees a valid key).
DENOMINATOR_FLOOR = 1e-12
# Log-scale of padded keys: finite, so that differences of two of them are 0, not NaN.
_NEG = -1e30


def default_num_features(head_dim: int) -> int:
  """lucidrains' rule m = int(d·ln d), at least 1 (266 for d = 64)."""
  return max(1, int(head_dim * math.log(head_dim)))


# ------------------------------------------------------------------------------------------
# Random projections.

def gaussian_orthogonal_projection(key: jax.Array, num_features: int, dim: int, *,
                                   scaling: str = 'chi') -> jax.Array:
  """ORF projection ω: [num_features, dim] float32 with exactly orthogonal rows per d×d block.

  Each block is the transposed Q of QR(G), G a d×d standard Gaussian, with the signs of R's
  diagonal folded into Q so the block is Haar-distributed on O(d). `num_features > dim` stacks
  independent blocks and keeps the first rows of the last one. The rows are then rescaled to
  lengths drawn as norms of d-dimensional Gaussian vectors ('chi': each row is marginally
  N(0, I_d), so the softmax-kernel estimate stays unbiased) or to √d ('sqrt_d').
  """
  if scaling not in SCALINGS:
    raise ValueError(f'scaling={scaling!r}; expected one of: {", ".join(SCALINGS)}')
  num_blocks = -(-num_features // dim)
  block_key, norm_key = jax.random.split(key)
  # Drawn flat and reshaped: XLA compiles a flat threefry draw much faster than a 3-D one.
  g = _normal(block_key, (num_blocks, dim, dim))
  q, r = jnp.linalg.qr(g)
  signs = jnp.where(jnp.diagonal(r, axis1=-2, axis2=-1) >= 0, 1.0, -1.0)
  q = q * signs[:, None, :]                                         # columns orthonormal
  rows = jnp.swapaxes(q, -1, -2).reshape(num_blocks * dim, dim)[:num_features]
  if scaling == 'chi':
    norms = jnp.linalg.norm(_normal(norm_key, (num_features, dim)), axis=-1)
  else:
    norms = jnp.full((num_features,), math.sqrt(dim), jnp.float32)
  return rows * norms[:, None]


def draw_projection(key: jax.Array, num_features: int, dim: int, *, orthogonal: bool = True,
                    scaling: str = 'chi') -> jax.Array:
  """ω: [num_features, dim] float32, orthogonal blocks or i.i.d. N(0, 1) entries."""
  if orthogonal:
    return gaussian_orthogonal_projection(key, num_features, dim, scaling=scaling)
  return _normal(key, (num_features, dim))


def _normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.normal(key, (math.prod(shape),), jnp.float32).reshape(shape)


# ------------------------------------------------------------------------------------------
# Feature maps: x [B, T, N, d] → [B, T, N, m] in accumulation_dtype(x) (float32 for
# bfloat16/float16/float32 inputs, float64 for float64; ω is promoted to it).

def softmax_feature_parts(x: jax.Array, projection: jax.Array, *,
                          eps: float = 1e-4) -> tuple[jax.Array, jax.Array]:
  """Positive softmax-kernel features in two parts: φ(x) = exp(log_scale)·features.

  Returns `features: [B, T, N, m]`, each token's largest feature equal to m^(−1/2)·(1+ε),
  and `log_scale: [B, T, N]` = max over features of the exponent e = ωᵀx̃ − ‖x̃‖²/2 (stop
  gradient), with x̃ = x·d^(−1/4). Pass both to `linear_attention(..., k_log_scale=)` for keys.
  """
  d = x.shape[-1]
  dtype = accumulation_dtype(x)
  w = jnp.asarray(projection).astype(dtype)                         # [m, d]
  x = x.astype(dtype) * d ** -0.25
  exponent = (jnp.einsum('btnd,md->btnm', x, w, precision='highest')
              - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True))
  log_scale = jax.lax.stop_gradient(jnp.max(exponent, axis=-1))     # [B, T, N]
  features = w.shape[0] ** -0.5 * (jnp.exp(exponent - log_scale[..., None]) + eps)
  return features, log_scale


def _common_key_scale(log_scale: jax.Array, valid: jax.Array | None) -> jax.Array:
  """exp(s_j − max_valid s) per key, 0 at padded keys: [B, S, N]."""
  if valid is not None:
    log_scale = jnp.where(valid[:, :, None], log_scale, _NEG)
  c = jnp.max(log_scale, axis=1, keepdims=True)                      # [B, 1, N]
  scale = jnp.exp(log_scale - c)
  return scale if valid is None else jnp.where(valid[:, :, None], scale, 0.0)


def softmax_features(x: jax.Array, projection: jax.Array, *, is_query: bool,
                     valid: jax.Array | None = None, eps: float = 1e-4) -> jax.Array:
  """Positive random features of the softmax kernel exp(q·k/√d): [B, T, N, d] → [B, T, N, m].

  Applies the d^(−1/4) data normaliser. Queries are shifted per token (the shift cancels in
  D̂⁻¹); keys are put on one scale per (batch, head), the max over features and over the
  positions where `valid: [B, T]` is True (padded keys get zero features). Shifts are
  stop-gradient. For causal attention prefer `softmax_feature_parts` for the keys and pass
  `k_log_scale` to `linear_attention`: one max over the whole sequence makes the ε term of an
  early key depend on later keys.
  """
  features, log_scale = softmax_feature_parts(x, projection, eps=eps)
  if is_query:
    return features
  return features * _common_key_scale(log_scale, valid)[..., None]


def relu_features(x: jax.Array, projection: jax.Array | None, *, normalize: bool = True,
                  eps: float = 1e-3) -> jax.Array:
  """Generalized-attention features relu(ωᵀx̃) + ε: [B, T, N, d] → [B, T, N, m].

  `projection=None` gives the deterministic features relu(x̃) + ε (m = d). `normalize` applies
  x̃ = x·d^(−1/4) (lucidrains' default, used by SEA; the JAX reference does not normalise).
  """
  dtype = accumulation_dtype(x)
  x = x.astype(dtype)
  if normalize:
    x = x * x.shape[-1] ** -0.25
  if projection is not None:
    x = jnp.einsum('btnd,md->btnm', x, jnp.asarray(projection).astype(dtype),
                   precision='highest')
  return jax.nn.relu(x) + eps


# ------------------------------------------------------------------------------------------
# Linear attention given features.

def linear_attention(q_feat: jax.Array, k_feat: jax.Array, v: jax.Array, *, causal: bool,
                     valid_k: jax.Array | None = None, chunk_size: int = 64,
                     k_log_scale: jax.Array | None = None) -> jax.Array:
  """D̂⁻¹·Q′(K′ᵀV): q_feat [B, T, N, m], k_feat [B, S, N, m] (≥ 0), v [B, S, N, H] → [B, T, N, H].

  Output in `accumulation_dtype(q_feat, k_feat, v)`. The weight of key j for query i is
  exp(l_j)·Q′_i·K′_j, with `k_log_scale` l: [B, S, N] (stop gradient; None = 0), over the keys
  where `valid_k: [B, S]` is True and, with `causal`, j ≤ i. Padded keys contribute nothing; a
  query that sees no valid key outputs zeros. The causal path runs a chunked scan (`chunk_size`
  positions per step) whose memory, backward included, is linear in T.
  """
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f'linear_attention: chunk_size must be an int ≥ 1, got {chunk_size!r}')
  dtype = accumulation_dtype(q_feat, k_feat, v)
  q, k, v = q_feat.astype(dtype), k_feat.astype(dtype), v.astype(dtype)
  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  log_scale = (jnp.zeros((batch, kv_len, heads), dtype) if k_log_scale is None
               else jax.lax.stop_gradient(k_log_scale.astype(dtype)))
  if valid_k is not None:
    valid_k = jnp.broadcast_to(jnp.asarray(valid_k, bool), (batch, kv_len))
    vk = valid_k[:, :, None, None]
    # Zero padded keys *and* values: 0·inf in a padded value would otherwise be NaN.
    k, v = jnp.where(vk, k, 0.0), jnp.where(vk, v, 0.0)
    log_scale = jnp.where(valid_k[:, :, None], log_scale, _NEG)

  if causal:
    num, den = _causal_sums(q, k, v, log_scale, chunk_size)
    if valid_k is None:
      sees_key = jnp.ones((batch, q_len), bool)
    else:
      seen = jnp.cumsum(valid_k, axis=1) > 0                         # [B, S]
      sees_key = seen[:, jnp.minimum(jnp.arange(q_len), kv_len - 1)]
  else:
    c = jnp.max(log_scale, axis=1, keepdims=True)                    # [B, 1, N]
    kw = k * jnp.exp(log_scale - c)[..., None]                       # factors ≤ 1
    kv = jnp.einsum('bsnm,bsnh->bnmh', kw, v)
    num = jnp.einsum('btnm,bnmh->btnh', q, kv)
    den = jnp.einsum('btnm,bnm->btn', q, jnp.sum(kw, axis=1))
    sees_key = (jnp.ones((batch, q_len), bool) if valid_k is None
                else jnp.broadcast_to(jnp.any(valid_k, axis=1)[:, None], (batch, q_len)))
  return _normalise(num, den, sees_key[:, :, None])


def _normalise(num, den, sees_key):
  """num / den with the floor, and exact zeros (finite gradient) where no key is seen."""
  den = jnp.where(sees_key, jnp.maximum(den, DENOMINATOR_FLOOR), 1.0)
  return jnp.where(sees_key[..., None], num / den[..., None], 0.0)


def _causal_sums(q, k, v, log_scale, chunk_size):
  """Numerator [B, T, N, H] and denominator [B, T, N] of causal linear attention, chunked.

  Query i uses the running max c_i = max_{j≤i} l_j as its common key scale: the carried state
  holds Σ exp(l_j − c)·K′_j V_jᵀ at the scale of the chunk start and is rescaled as c grows, so
  every exponential is ≤ 1.
  """
  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  chunk = min(chunk_size, max(q_len, kv_len))
  length = -(-max(q_len, kv_len) // chunk) * chunk

  def pad(x, fill=0.0):
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, length - x.shape[1])
    return jnp.pad(x, widths, constant_values=fill)

  def to_chunks(x):                                                  # [B, L, ...] → [n, B, C, ...]
    return jnp.moveaxis(x.reshape((batch, length // chunk, chunk) + x.shape[2:]), 1, 0)

  xs = tuple(to_chunks(x) for x in (pad(q), pad(k), pad(v), pad(log_scale, _NEG)))
  lower = jnp.tril(jnp.ones((chunk, chunk), bool))                   # j ≤ i inside a chunk

  @jax.checkpoint
  def step(carry, x):
    state, norm, c_prev = carry          # [B, N, m, H], [B, N, m], [B, N]
    qc, kc, vc, lc = x                   # [B, C, N, m], [B, C, N, m], [B, C, N, H], [B, C, N]
    lc = jnp.swapaxes(lc, 1, 2)                                      # [B, N, C]
    c = jnp.maximum(c_prev[..., None], jax.lax.cummax(lc, axis=2))   # scale of each query
    # Masked before the exp: for j > i, l_j − c_i may be large and positive.
    rel = jnp.where(lower, lc[:, :, None, :] - c[:, :, :, None], -jnp.inf)
    scores = jnp.einsum('binm,bjnm->bnij', qc, kc) * jnp.exp(rel)    # [B, N, C, C]
    carried = jnp.exp(c_prev[..., None] - c)                         # [B, N, C]
    num = (jnp.einsum('bnij,bjnh->binh', scores, vc)
           + jnp.einsum('binm,bnmh->binh', qc, state) * jnp.swapaxes(carried, 1, 2)[..., None])
    den = jnp.sum(scores, axis=-1) + jnp.einsum('binm,bnm->bni', qc, norm) * carried
    c_new = c[..., -1]
    decay = jnp.exp(c_prev - c_new)                                  # [B, N]
    kw = kc * jnp.swapaxes(jnp.exp(lc - c_new[..., None]), 1, 2)[..., None]
    state = state * decay[..., None, None] + jnp.einsum('bjnm,bjnh->bnmh', kw, vc)
    norm = norm * decay[..., None] + jnp.sum(kw, axis=1)
    return (state, norm, c_new), (num, jnp.swapaxes(den, 1, 2))

  m, h = q.shape[-1], v.shape[-1]
  init = (jnp.zeros((batch, heads, m, h), q.dtype), jnp.zeros((batch, heads, m), q.dtype),
          jnp.full((batch, heads), _NEG, q.dtype))
  _, (num, den) = jax.lax.scan(step, init, xs)
  num = jnp.moveaxis(num, 0, 1).reshape((batch, length) + num.shape[3:])[:, :q_len]
  den = jnp.moveaxis(den, 0, 1).reshape((batch, length, heads))[:, :q_len]
  return num, den


def implied_attention_weights(q_feat: jax.Array, k_feat: jax.Array, *, causal: bool,
                              valid_k: jax.Array | None = None,
                              k_log_scale: jax.Array | None = None) -> jax.Array:
  """The matrix D̂⁻¹Q′K′ᵀ that `linear_attention` applies, dense `[B, N, T, S]` (analysis only)."""
  dtype = accumulation_dtype(q_feat, k_feat)
  q, k = q_feat.astype(dtype), k_feat.astype(dtype)
  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  allowed = jnp.ones((batch, 1, q_len, kv_len), bool)
  if valid_k is not None:
    allowed = allowed & jnp.asarray(valid_k, bool)[:, None, None, :]
  if causal:
    allowed = allowed & (jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :])
  log_scale = (jnp.zeros((batch, kv_len, heads), dtype) if k_log_scale is None
               else jax.lax.stop_gradient(k_log_scale.astype(dtype)))
  rel = jnp.where(allowed, jnp.transpose(log_scale, (0, 2, 1))[:, :, None, :], -jnp.inf)
  c = jnp.max(rel, axis=-1, keepdims=True)
  rel = rel - jnp.where(jnp.isfinite(c), c, 0.0)
  w = jnp.einsum('btnm,bsnm->bnts', q, k) * jnp.exp(rel)
  sees_key = jnp.any(allowed, axis=-1)                              # [B, 1|N, T]
  den = jnp.where(sees_key, jnp.maximum(jnp.sum(w, axis=-1), DENOMINATOR_FLOOR), 1.0)
  return jnp.where(sees_key[..., None], w / den[..., None], 0.0)


# ------------------------------------------------------------------------------------------
# The core.

class RandomFeatures(nnx.Variable):
  """The projection ω [m, d] of a Performer layer: model state, not a trained parameter."""


@register('performer')
class PerformerAttention(nnx.Module):
  """Performer core: `core(q, k, v, mask, *, deterministic)`, q [B, T, N, H] → [B, T, N, H]."""

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_features = 0      # m random features; 0 = int(d·ln d) (lucidrains; 266 for d = 64)
    c.kernel = 'softmax'    # softmax (FAVOR+ positive features) | relu (generalized attention)
    c.orthogonal = True     # orthogonal random features (True) | i.i.d. Gaussian rows (False)
    c.scaling = 'chi'       # ORF row norms: chi (χ_d, unbiased) | sqrt_d (all √d)
    c.redraw = 'never'      # never (ω drawn at init) | every_step (fresh ω per training call)
    c.chunk_size = 64       # positions per step of the causal scan (C×C block + m×H state)
    return c

  # Attention over a key-padding mask equals the causal attention at that position, so a
  # decoder may cache keys/values and feed one query per step (models/seq2seq.py).
  supports_decode_cache = True

  def __init__(self, *, num_heads: int, head_dim: int, config, rngs: nnx.Rngs,
               layer_index: int = 0, max_len: int = 0):
    del max_len  # unused
    opts = config.performer
    check_implementation(config, 'performer', IMPLEMENTATIONS)
    if config.dropout > 0:
      raise ValueError(f'attention.dropout={config.dropout} is not supported with '
                       'attention.kind=performer (it never forms attention weights to drop); '
                       'set attention.dropout=0')
    m = opts.num_features
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
      raise ValueError(f'attention.performer.num_features={m!r} is not valid; expected an int '
                       '≥ 1, or 0 for int(d·ln d)')
    for name, value, allowed in (('kernel', opts.kernel, KERNELS),
                                 ('scaling', opts.scaling, SCALINGS),
                                 ('redraw', opts.redraw, REDRAWS)):
      check_choice('performer', name, value, allowed)
    if not isinstance(opts.orthogonal, bool):
      raise ValueError(f'attention.performer.orthogonal={opts.orthogonal!r} is not valid; '
                       'expected True or False')
    chunk = opts.chunk_size
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
      raise ValueError(f'attention.performer.chunk_size={chunk!r} is not valid; expected an '
                       'int ≥ 1')
    self.num_heads, self.head_dim = num_heads, head_dim
    self.num_features = m or default_num_features(head_dim)
    self.kernel, self.orthogonal, self.scaling = opts.kernel, opts.orthogonal, opts.scaling
    self.redraw, self.chunk_size, self.layer_index = opts.redraw, chunk, layer_index
    self.projection = RandomFeatures(self._draw(rngs.params()))
    # Only 'every_step' draws at call time; it follows the dropout stream the trainer reseeds.
    self.rngs = rngs['dropout'].fork() if opts.redraw == 'every_step' else nnx.data(None)

  def _draw(self, key: jax.Array) -> jax.Array:
    return draw_projection(key, self.num_features, self.head_dim, orthogonal=self.orthogonal,
                           scaling=self.scaling)

  def current_projection(self, deterministic: bool) -> jax.Array:
    """ω used by this call: fresh in training with redraw='every_step', else the stored one."""
    if self.redraw == 'every_step' and not deterministic:
      # After a reseed every layer's stream holds the same key: fold in the layer index.
      return self._draw(jax.random.fold_in(self.rngs(), self.layer_index))
    return self.projection[...]

  def __call__(self, q, k, v, mask: Mask | None = None, *, score_mod: ScoreMod | None = None,
               deterministic: bool = True, sow_weights: bool = False):
    if score_mod is not None:
      raise ValueError('attention.kind=performer cannot apply a score mod (attention.bias): it '
                       'never forms the score matrix; set attention.bias="" or use '
                       'attention.kind=softmax')
    parts = masks_lib.causal_padding_parts(mask, kind='performer')
    w = self.current_projection(deterministic)
    if self.kernel == 'softmax':
      q_feat = softmax_features(q, w, is_query=True)
      k_feat, k_log_scale = softmax_feature_parts(k, w)
    else:
      q_feat, k_feat, k_log_scale = relu_features(q, w), relu_features(k, w), None
    out = linear_attention(q_feat, k_feat, v, causal=parts.causal, valid_k=parts.valid_k,
                           chunk_size=self.chunk_size, k_log_scale=k_log_scale)
    if sow_weights:
      weights = implied_attention_weights(q_feat, k_feat, causal=parts.causal,
                                          valid_k=parts.valid_k, k_log_scale=k_log_scale)
      if parts.valid_q is not None:
        weights = jnp.where(parts.valid_q[:, None, :, None], weights, 0.0)
      self.sow(nnx.Intermediate, 'attention_weights', weights)
    if parts.valid_q is not None:
      out = jnp.where(parts.valid_q[:, :, None, None], out, 0.0)
    return out.astype(v.dtype)
