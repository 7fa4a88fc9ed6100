"""Transformer building blocks shared by the LM and the encoder–decoder model.

* `MultiHeadAttention`: the projections around an attention *core* from the `attention/`
  registry (Vaswani et al. 2017, "Attention Is All You Need", §3.2.2). The layer owns the
  Q/K/V/output projections and the prior-knowledge mask and bias of `config.attention`; the core
  owns the algorithm. Self-attention (`x_kv=None`) and cross-attention (`x_kv` = encoder output)
  share the code path.
* `FeedForward`: position-wise d_model → d_ff → d_model with ReLU or GELU (§3.3).
* `DecoderBlock`: one residual block, pre-LN (Xiong et al. 2020, "On Layer Normalization in the
  Transformer Architecture"; Baevski & Auli 2019) or post-LN (Vaswani et al. 2017), with the
  semantics of fairseq's `TransformerDecoderLayer` (`normalize_before`): dropout on each
  sublayer's output before the residual add, activation dropout inside the FFN, attention dropout
  inside the core. With `cross_attention=True` it is the seq2seq decoder layer (self-attention,
  encoder–decoder attention, FFN); with a non-causal padding mask and no cross-attention it is an
  encoder layer.

Initialisation follows fairseq: Xavier-uniform weights (gain 1/√2 on the Q/K/V projections, as in
`fairseq.modules.MultiheadAttention.reset_parameters`), zero biases, LayerNorm ε = 1e-5.
Parameters are float32; `dtype` is the compute dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import attention
from attention import biases as biases_lib
from attention import cpu_paths
from attention import masks as masks_lib
from models import positions as positions_lib

LAYER_NORM_EPS = 1e-5
ACTIVATIONS = ('relu', 'gelu')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def validate_block_options(config: ml_collections.ConfigDict) -> None:
  """Checks the `model.*` options every transformer here shares (widths, heads, dtype,
  positions, activation, dropouts); raises ValueError naming the offending option."""
  if config.d_model <= 0 or config.num_heads <= 0 or config.d_ff <= 0:
    raise ValueError('model.d_model, model.num_heads and model.d_ff must be positive; got '
                     f'{config.d_model}, {config.num_heads}, {config.d_ff}')
  if config.d_model % config.num_heads:
    raise ValueError(f'model.d_model={config.d_model} is not divisible by '
                     f'model.num_heads={config.num_heads}')
  if config.dtype not in DTYPES:
    raise ValueError(f'model.dtype={config.dtype!r} is not supported; choose one of '
                     f'{", ".join(DTYPES)}')
  if config.positions not in positions_lib.KINDS:
    raise ValueError(f'model.positions={config.positions!r} is not supported; choose one of '
                     f'{", ".join(positions_lib.KINDS)}')
  if config.activation not in ACTIVATIONS:
    raise ValueError(f'model.activation={config.activation!r} is not supported; choose one of '
                     f'{", ".join(ACTIVATIONS)}')
  for key in ('dropout', 'activation_dropout'):
    if not 0.0 <= config[key] < 1.0:
      raise ValueError(f'model.{key}={config[key]} must lie in [0, 1)')


def flat_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                     out_sharding=None):
  """`lax.dot_general` for `nnx.Linear` that on CPU multiplies `[..., I]` as one `[M, I]` matrix.

  Why: the weight gradient of `x [B, T, I] @ W` contracts x and the output gradient over both B
  and T. XLA:CPU then transposes the output gradient and runs the product with both operands
  transposed in Eigen, at about half the speed of a plain matrix product; with the leading
  dimensions merged first it is one `xᵀ·g` of 2-D matrices (the LM training step on 2 cores:
  about 9% faster). The products are the same; accelerators get `lax.dot_general` unchanged
  (attention/cpu_paths.py).
  """
  (lhs_contract, rhs_contract), batch = dimension_numbers
  if (not cpu_paths.enabled() or out_sharding is not None or lhs.ndim < 3
      or lhs_contract != (lhs.ndim - 1,) or rhs_contract != (0,) or rhs.ndim != 2
      or batch != ((), ())):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type,
                               out_sharding=out_sharding)
  y = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())),
                          precision=precision, preferred_element_type=preferred_element_type)
  return y.reshape(lhs.shape[:-1] + rhs.shape[1:])


_xavier_uniform = nnx.initializers.xavier_uniform()
# Xavier uniform with gain g scales the bound by g, i.e. the variance by g² (= 1/2 here).
_xavier_uniform_qkv = nnx.initializers.variance_scaling(0.5, 'fan_avg', 'uniform')


def _and_masks(a: masks_lib.Mask | None, b: masks_lib.Mask | None) -> masks_lib.Mask | None:
  if a is None:
    return b
  if b is None:
    return a
  return a & b


class MultiHeadAttention(nnx.Module):
  """Multi-head attention around a registry core: `out_proj(core(q_proj x, k_proj m, v_proj m))`.

  A core class may ask for a different projection shape with an optional classmethod

      projection_shape(num_heads, head_dim) -> (q_heads, kv_heads, head_dim_qk, head_dim_v)

  (default `(num_heads, num_heads, head_dim, head_dim)`). The layer then projects
  `q: [B, T, q_heads, head_dim_qk]`, `k: [B, S, kv_heads, head_dim_qk]`,
  `v: [B, S, kv_heads, head_dim_v]`; the core must return `[B, T, q_heads, head_dim_v]`, which the
  output projection maps back to `d_model`. (A core that pairs heads, as the Differential
  Transformer does, can ask for `num_heads // 2` heads of twice the width and split them inside.)
  """

  def __init__(self, d_model: int, num_heads: int, attention_config: ml_collections.ConfigDict,
               *, max_len: int, dtype: Any = jnp.float32, use_priors: bool = True,
               layer_index: int = 0, rngs: nnx.Rngs):
    """Builds the projections, the core and the priors.

    Args:
      d_model: model width D.
      num_heads: number of heads N; D must be divisible by N.
      attention_config: the `config.attention` ConfigDict (kind, impl, dropout, mask, bias, …).
      max_len: longest sequence the (learnable) bias has to cover.
      dtype: compute dtype; parameters stay float32.
      use_priors: apply `attention_config.mask` / `.bias`. A seq2seq model turns this off for
        encoder–decoder attention, where query and key positions are not on the same axis.
      layer_index: 0-based depth of the layer, passed to the core (DIFF's λ_init depends on it).
      rngs: `params` for the projections, `dropout` for attention dropout.
    """
    if d_model % num_heads:
      raise ValueError(f'model.d_model={d_model} is not divisible by model.num_heads={num_heads}')
    head_dim = d_model // num_heads
    core_cls = attention.core_class(attention_config.kind)
    if hasattr(core_cls, 'projection_shape'):
      shape = core_cls.projection_shape(num_heads, head_dim)
    else:
      shape = (num_heads, num_heads, head_dim, head_dim)
    self.q_heads, self.kv_heads, self.head_dim_qk, self.head_dim_v = (int(s) for s in shape)
    self.dtype = dtype

    def linear(n_in, n_out, init):
      return nnx.Linear(n_in, n_out, dtype=dtype, param_dtype=jnp.float32, kernel_init=init,
                        bias_init=nnx.initializers.zeros_init(), dot_general=flat_dot_general,
                        rngs=rngs)

    self.q_proj = linear(d_model, self.q_heads * self.head_dim_qk, _xavier_uniform_qkv)
    self.k_proj = linear(d_model, self.kv_heads * self.head_dim_qk, _xavier_uniform_qkv)
    self.v_proj = linear(d_model, self.kv_heads * self.head_dim_v, _xavier_uniform_qkv)
    self.core = attention.create_core(attention_config, num_heads=num_heads, head_dim=head_dim,
                                      layer_index=layer_index, max_len=max_len, rngs=rngs)
    self.out_proj = linear(self.q_heads * self.head_dim_v, d_model, _xavier_uniform)
    # Priors are parsed once: a static Mask (plain Python object, part of the graph definition)
    # and a score modifier (an nnx.Module when it has parameters, e.g. a learnable bias).
    if use_priors:
      self.prior_mask = masks_lib.parse(attention_config.mask)
      self.score_mod = biases_lib.parse(attention_config.bias, num_heads=num_heads,
                                        max_len=max_len, rngs=rngs)
    else:
      self.prior_mask = None
      self.score_mod = None

  def __call__(self, x_q: jax.Array, x_kv: jax.Array | None = None,
               mask: masks_lib.Mask | None = None, *, deterministic: bool,
               sow_weights: bool = False) -> jax.Array:
    """Attends from `x_q: [B, T, D]` to `x_kv: [B, S, D]` (`x_q` itself when None).

    Args:
      x_q: queries' input `[B, T, D]`.
      x_kv: keys'/values' input `[B, S, D]`; None for self-attention.
      mask: the call's mask (causal, padding, …), True = attend; AND-ed with the prior mask.
      deterministic: disables attention dropout.
      sow_weights: the core sows its weights `[B, N, T, S]` as `nnx.Intermediate`, and this
        layer sows the projected `values: [B, S, Nkv, Hv]` (v_proj with its bias, what the
        norm-based analysis transforms) and the core's output `context: [B, T, Nq, Hv]`
        (before the output projection; what attention distillation matches).

    Returns:
      `[B, T, D]` in the compute dtype.
    """
    k, v = self.project_kv(x_q if x_kv is None else x_kv)
    return self.attend(x_q, k, v, mask, deterministic=deterministic, sow_weights=sow_weights)

  def project_kv(self, x_kv: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`x_kv: [B, S, D]` → keys `[B, S, Nkv, Hqk]` and values `[B, S, Nkv, Hv]`.

    Split from `attend` so that a decoder can project the encoder output once per sentence
    (cross-attention) or one new token per step (the key/value cache of `decode_step`)."""
    b, s, _ = x_kv.shape
    k = self.k_proj(x_kv).reshape(b, s, self.kv_heads, self.head_dim_qk)
    v = self.v_proj(x_kv).reshape(b, s, self.kv_heads, self.head_dim_v)
    return k, v

  def project_memory(self, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`project_kv` of a decoder's cross-attention memory, heads-major like `init_cache`:
    keys `[B, Nkv, S, Hqk]` and values `[B, Nkv, S, Hv]`, for `DecoderBlock.decode_step`."""
    k, v = self.project_kv(memory)
    return heads_major(k), heads_major(v)

  def attend(self, x_q: jax.Array, k: jax.Array, v: jax.Array,
             mask: masks_lib.Mask | None = None, *, deterministic: bool,
             sow_weights: bool = False) -> jax.Array:
    """Queries from `x_q: [B, T, D]` attend to projected keys/values (`project_kv`)."""
    b, t, _ = x_q.shape
    q = self.q_proj(x_q).reshape(b, t, self.q_heads, self.head_dim_qk)      # [B, T, Nq, Hqk]
    out = self.core(q, k, v, _and_masks(mask, self.prior_mask), score_mod=self.score_mod,
                    deterministic=deterministic, sow_weights=sow_weights)   # [B, T, Nq, Hv]
    if sow_weights:
      self.sow(nnx.Intermediate, 'values', v)
      self.sow(nnx.Intermediate, 'context', out)
    return self.out_proj(out.astype(self.dtype).reshape(b, t, self.q_heads * self.head_dim_v))

  @property
  def supports_decode_cache(self) -> bool:
    """Whether `decode_step` gives what the full causal call gives at that position.

    It needs a core that attends over an arbitrary key-padding mask exactly as over the causal
    mask (the cores that declare `supports_decode_cache = True`, on the class or, where an
    option decides it as NON's `output_scale` does, on the instance) and no prior mask or bias,
    whose query positions would be shifted in a one-query call."""
    return (getattr(self.core, 'supports_decode_cache', False)
            and self.prior_mask is None and self.score_mod is None)

  def init_cache(self, batch: int, max_len: int) -> dict[str, jax.Array]:
    """An empty key/value cache `{'k': [N, Nkv, L, Hqk], 'v': [N, Nkv, L, Hv]}`, N rows
    (batch × beam) of `max_len` positions.

    Heads-major: a step's query contracts over a contiguous `[L, H]` block per (row, head).
    With the `[N, L, Nkv, H]` layout of `project_kv`, XLA:CPU copied the whole cache into that
    order at every step, the largest part of a translation decode step.
    """
    shape = (batch, self.kv_heads, max_len)
    return {'k': jnp.zeros(shape + (self.head_dim_qk,), self.dtype),
            'v': jnp.zeros(shape + (self.head_dim_v,), self.dtype)}

  def decode_step(self, x_t: jax.Array, cache: dict[str, jax.Array], t: jax.Array
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Causal self-attention of the token at position `t` (`x_t: [N, 1, D]`) over the cache.

    Writes the token's key and value at position `t` of the cache (`init_cache`) and attends to
    positions ≤ t (a key-padding mask), so L steps reproduce the causal call over L tokens.
    Only valid when `supports_decode_cache`; the caller falls back to recomputing the prefix
    otherwise. Beam search reorders the cache's rows with the hypotheses.
    """
    k_t, v_t = self.project_kv(x_t)                                        # [N, 1, Nkv, H]
    write = lambda buffer, new: jax.lax.dynamic_update_slice_in_dim(
        buffer, heads_major(new).astype(buffer.dtype), t, axis=2)
    k, v = write(cache['k'], k_t), write(cache['v'], v_t)
    n, _, max_len, _ = k.shape
    seen = jnp.broadcast_to(jnp.arange(max_len) <= t, (n, max_len))           # [N, L]
    out = self.attend(x_t, sequence_major(k), sequence_major(v), masks_lib.padding(None, seen),
                      deterministic=True)
    return out, {'k': k, 'v': v}


def heads_major(x: jax.Array) -> jax.Array:
  """`[B, S, N, H]` → `[B, N, S, H]`, the layout of the decode caches (see `init_cache`)."""
  return jnp.swapaxes(x, 1, 2)


def sequence_major(x: jax.Array) -> jax.Array:
  """`[B, N, S, H]` → `[B, S, N, H]`, the layout the attention cores take. Passed straight to a
  core, XLA folds this transpose into the core's contractions instead of copying."""
  return jnp.swapaxes(x, 1, 2)


class FeedForward(nnx.Module):
  """Position-wise FFN `fc2(dropout(act(fc1 x)))`, d_model → d_ff → d_model (Vaswani §3.3)."""

  def __init__(self, d_model: int, d_ff: int, *, activation: str = 'relu',
               activation_dropout: float = 0.0, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if activation not in ACTIVATIONS:
      raise ValueError(f'model.activation={activation!r} is not supported; choose one of '
                       f'{", ".join(ACTIVATIONS)}')
    self.activation = activation

    def linear(n_in, n_out):
      return nnx.Linear(n_in, n_out, dtype=dtype, param_dtype=jnp.float32,
                        kernel_init=_xavier_uniform, bias_init=nnx.initializers.zeros_init(),
                        dot_general=flat_dot_general, rngs=rngs)

    self.fc1 = linear(d_model, d_ff)
    self.fc2 = linear(d_ff, d_model)
    self.activation_dropout = nnx.Dropout(activation_dropout, rngs=rngs)

  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    h = self.fc1(x)                                                          # [B, T, F]
    h = jax.nn.relu(h) if self.activation == 'relu' else gelu(h)
    h = self.activation_dropout(h, deterministic=deterministic)
    return self.fc2(h)                                                       # [B, T, D]


def gelu(x: jax.Array) -> jax.Array:
  """GELU in its exact form x·Φ(x) (Hendrycks & Gimpel 2016, arXiv:1606.08415), as fairseq's
  FFN uses it, not the tanh approximation.

  On CPU it is written x·(1 + erf(x/√2))/2, PyTorch's formula. `jax.nn.gelu` writes the same
  function with erfc, which keeps its relative precision in the negative tail, and XLA:CPU
  expands erfc into much slower code than erf (the byte-level LM's CPU step: +0.04 in its
  ratio to PyTorch, docs/benchmarks.md). The erf form loses relative precision only where
  |GELU(x)| < 1e-3 (x < -3); its error stays within two float32 rounding steps of max(1, |x|)
  everywhere, as does `jax.nn.gelu`'s (tests/test_models.py compares both with a float64
  reference).
  Accelerators keep `jax.nn.gelu` (attention/cpu_paths.py).
  """
  if not cpu_paths.enabled():
    return jax.nn.gelu(x, approximate=False)
  half = jnp.asarray(0.5, x.dtype)
  return x * (half + half * jax.lax.erf(x * jnp.asarray(2 ** -0.5, x.dtype)))


class DecoderBlock(nnx.Module):
  """One transformer layer: self-attention, optional cross-attention, FFN; pre- or post-LN.

  pre-LN:  x ← x + dropout(sublayer(LN(x)))
  post-LN: x ← LN(x + dropout(sublayer(x)))
  """

  def __init__(self, d_model: int, num_heads: int, d_ff: int,
               attention_config: ml_collections.ConfigDict, *, max_len: int,
               activation: str = 'relu', dropout: float = 0.0, activation_dropout: float = 0.0,
               pre_norm: bool = True, cross_attention: bool = False,
               cross_attention_config: ml_collections.ConfigDict | None = None,
               dtype: Any = jnp.float32, layer_index: int = 0, rngs: nnx.Rngs):
    """Builds the sublayers; `cross_attention_config` (default `attention_config`) lets the
    encoder–decoder attention use another kind than the self-attention."""
    self.pre_norm = pre_norm

    def layer_norm():
      return nnx.LayerNorm(d_model, epsilon=LAYER_NORM_EPS, dtype=dtype,
                           param_dtype=jnp.float32, rngs=rngs)

    self.self_attention = MultiHeadAttention(d_model, num_heads, attention_config,
                                             max_len=max_len, dtype=dtype,
                                             layer_index=layer_index, rngs=rngs)
    self.self_attention_norm = layer_norm()
    if cross_attention:
      self.cross_attention = MultiHeadAttention(d_model, num_heads,
                                                cross_attention_config or attention_config,
                                                max_len=max_len, dtype=dtype, use_priors=False,
                                                layer_index=layer_index, rngs=rngs)
      self.cross_attention_norm = layer_norm()
    else:
      self.cross_attention = None
      self.cross_attention_norm = None
    self.ffn = FeedForward(d_model, d_ff, activation=activation,
                           activation_dropout=activation_dropout, dtype=dtype, rngs=rngs)
    self.ffn_norm = layer_norm()
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def _residual(self, x, norm, sublayer, deterministic, sow_as=None):
    if sow_as is not None:
      # The residual stream entering an attention sublayer: with the layer's own sows it is
      # all the mixing-ratio analysis needs (x + Attn(·), then the LayerNorm of the block).
      self.sow(nnx.Intermediate, sow_as, x)
    h = norm(x) if self.pre_norm else x
    x = x + self.dropout(sublayer(h), deterministic=deterministic)
    return x if self.pre_norm else norm(x)

  def __call__(self, x: jax.Array, mask: masks_lib.Mask | None = None, *,
               memory: jax.Array | None = None, memory_mask: masks_lib.Mask | None = None,
               deterministic: bool, sow_weights: bool = False) -> jax.Array:
    """`x: [B, T, D]` → `[B, T, D]`.

    Args:
      x: the block's input.
      mask: self-attention mask (causal & padding for an LM).
      memory: encoder output `[B, S, D]`, required iff the block has cross-attention.
      memory_mask: cross-attention mask (typically padding(None, source_valid)).
      deterministic: disables every dropout.
      sow_weights: sow attention weights (self- and cross-attention) as `nnx.Intermediate`,
        and the residual stream entering each attention sublayer as 'self_attention_input' /
        'cross_attention_input' `[B, T, D]`.
    """
    x = self._residual(
        x, self.self_attention_norm,
        lambda h: self.self_attention(h, None, mask, deterministic=deterministic,
                                      sow_weights=sow_weights),
        deterministic, sow_as='self_attention_input' if sow_weights else None)
    if self.cross_attention is not None:
      if memory is None:
        raise ValueError('this DecoderBlock has cross-attention and needs `memory`')
      x = self._residual(
          x, self.cross_attention_norm,
          lambda h: self.cross_attention(h, memory, memory_mask, deterministic=deterministic,
                                         sow_weights=sow_weights),
          deterministic, sow_as='cross_attention_input' if sow_weights else None)
    elif memory is not None:
      raise ValueError('`memory` given to a DecoderBlock built without cross_attention')
    return self._residual(x, self.ffn_norm,
                          lambda h: self.ffn(h, deterministic=deterministic), deterministic)

  def decode_step(self, x_t: jax.Array, cache: dict[str, jax.Array], t: jax.Array, *,
                  memory_kv: tuple[jax.Array, jax.Array] | None = None,
                  memory_mask: masks_lib.Mask | None = None
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One decoding position `x_t: [B·K, 1, D]` (K hypotheses per sentence, rows b·K … b·K +
    K − 1 those of sentence b) with a self-attention key/value cache
    (`MultiHeadAttention.init_cache` and `.decode_step`).

    `memory_kv` are the cross-attention keys and values of the B sentences' encoder output,
    projected once per sentence, not per hypothesis, and stored heads-major (`[B, Nkv, S, H]`,
    as the self-attention cache) by `self.cross_attention.project_memory(memory)`; a
    sentence's K queries attend to them together. `memory_mask` is the sources' padding
    `[B, S]`. Equals position `t` of the full causal call (`__call__` with `mask=causal()`),
    dropout off.
    """
    n = x_t.shape[0]
    h = self.self_attention_norm(x_t) if self.pre_norm else x_t
    out, new_cache = self.self_attention.decode_step(h, cache, t)
    x = x_t + out  # the residual of `_residual`, dropout off
    x = x if self.pre_norm else self.self_attention_norm(x)
    if self.cross_attention is not None:
      k, v = (sequence_major(a) for a in memory_kv)
      b = k.shape[0]

      def cross(h):   # a sentence's K queries at once: [B·K, 1, D] → [B, K, D] and back
        out = self.cross_attention.attend(h.reshape(b, n // b, -1), k, v, memory_mask,
                                          deterministic=True)
        return out.reshape(h.shape)

      x = self._residual(x, self.cross_attention_norm, cross, True)
    x = self._residual(x, self.ffn_norm, lambda h: self.ffn(h, deterministic=True), True)
    return x, new_cache


def label_smoothed_nll(logits: jax.Array, targets: jax.Array,
                       label_smoothing: float = 0.0) -> jax.Array:
  """Per-token loss `[...]` float32 from `logits: [..., V]` and `targets: [...]` int ids.

  With `label_smoothing = ε > 0` this is fairseq's `label_smoothed_nll_loss` (Szegedy et al.
  2016): `(1 − ε − ε/(V−1))·nll + ε/(V−1)·Σ_v −log p(v)`, i.e. the target gets 1 − ε and every
  other word ε/(V−1). With ε = 0 it is the plain NLL. Padding is not masked here: the caller
  weights the tokens.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing={label_smoothing} must lie in [0, 1)')
  logits = logits.astype(jnp.float32)
  vocab_size = logits.shape[-1]
  lse = jax.nn.logsumexp(logits, axis=-1)
  nll = lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  if not label_smoothing:
    return nll
  smooth = vocab_size * lse - jnp.sum(logits, axis=-1)                     # Σ_v −log p(v)
  eps_i = label_smoothing / max(vocab_size - 1, 1)
  return (1.0 - label_smoothing - eps_i) * nll + eps_i * smooth
