"""Transformer building blocks shared by the LM and (later) the encoder–decoder model.

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
from attention import masks as masks_lib

LAYER_NORM_EPS = 1e-5
ACTIVATIONS = ('relu', 'gelu')

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
                        bias_init=nnx.initializers.zeros_init(), rngs=rngs)

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
        layer sows the core's output `context: [B, T, Nq, Hv]` (before the output projection;
        what attention distillation matches).

    Returns:
      `[B, T, D]` in the compute dtype.
    """
    x_kv = x_q if x_kv is None else x_kv
    b, t, _ = x_q.shape
    s = x_kv.shape[1]
    q = self.q_proj(x_q).reshape(b, t, self.q_heads, self.head_dim_qk)      # [B, T, Nq, Hqk]
    k = self.k_proj(x_kv).reshape(b, s, self.kv_heads, self.head_dim_qk)    # [B, S, Nkv, Hqk]
    v = self.v_proj(x_kv).reshape(b, s, self.kv_heads, self.head_dim_v)     # [B, S, Nkv, Hv]
    out = self.core(q, k, v, _and_masks(mask, self.prior_mask), score_mod=self.score_mod,
                    deterministic=deterministic, sow_weights=sow_weights)   # [B, T, Nq, Hv]
    if sow_weights:
      self.sow(nnx.Intermediate, 'context', out)
    return self.out_proj(out.astype(self.dtype).reshape(b, t, self.q_heads * self.head_dim_v))


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
                        rngs=rngs)

    self.fc1 = linear(d_model, d_ff)
    self.fc2 = linear(d_ff, d_model)
    self.activation_dropout = nnx.Dropout(activation_dropout, rngs=rngs)

  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    h = self.fc1(x)                                                          # [B, T, F]
    # fairseq's GELU is the exact (erf) form, not the tanh approximation.
    h = jax.nn.relu(h) if self.activation == 'relu' else jax.nn.gelu(h, approximate=False)
    h = self.activation_dropout(h, deterministic=deterministic)
    return self.fc2(h)                                                       # [B, T, D]


class DecoderBlock(nnx.Module):
  """One transformer layer: self-attention, optional cross-attention, FFN; pre- or post-LN.

  pre-LN:  x ← x + dropout(sublayer(LN(x)))
  post-LN: x ← LN(x + dropout(sublayer(x)))
  """

  def __init__(self, d_model: int, num_heads: int, d_ff: int,
               attention_config: ml_collections.ConfigDict, *, max_len: int,
               activation: str = 'relu', dropout: float = 0.0, activation_dropout: float = 0.0,
               pre_norm: bool = True, cross_attention: bool = False, dtype: Any = jnp.float32,
               layer_index: int = 0, rngs: nnx.Rngs):
    self.pre_norm = pre_norm

    def layer_norm():
      return nnx.LayerNorm(d_model, epsilon=LAYER_NORM_EPS, dtype=dtype,
                           param_dtype=jnp.float32, rngs=rngs)

    self.self_attention = MultiHeadAttention(d_model, num_heads, attention_config,
                                             max_len=max_len, dtype=dtype,
                                             layer_index=layer_index, rngs=rngs)
    self.self_attention_norm = layer_norm()
    if cross_attention:
      self.cross_attention = MultiHeadAttention(d_model, num_heads, attention_config,
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

  def _residual(self, x, norm, sublayer, deterministic):
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
      sow_weights: sow attention weights (self- and cross-attention) as `nnx.Intermediate`.
    """
    x = self._residual(
        x, self.self_attention_norm,
        lambda h: self.self_attention(h, None, mask, deterministic=deterministic,
                                      sow_weights=sow_weights),
        deterministic)
    if self.cross_attention is not None:
      if memory is None:
        raise ValueError('this DecoderBlock has cross-attention and needs `memory`')
      x = self._residual(
          x, self.cross_attention_norm,
          lambda h: self.cross_attention(h, memory, memory_mask, deterministic=deterministic,
                                         sow_weights=sow_weights),
          deterministic)
    elif memory is not None:
      raise ValueError('`memory` given to a DecoderBlock built without cross_attention')
    return self._residual(x, self.ffn_norm,
                          lambda h: self.ffn(h, deterministic=deterministic), deterministic)
