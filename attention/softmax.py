"""Softmax attention (Vaswani et al. 2017): softmax(q kᵀ/√H + bias, masked) v.

INTERFACE STUB: being completed (cudnn impl, score mods, weights for analysis).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from attention.registry import register


@register('softmax')
class SoftmaxAttention(nnx.Module):

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()

  def __init__(self, *, num_heads: int, head_dim: int, config, rngs: nnx.Rngs):
    self.impl = config.impl
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

  def __call__(self, q, k, v, mask=None, *, score_mod=None, deterministic: bool = True,
               sow_weights: bool = False):
    scale = q.shape[-1] ** -0.5
    s = jnp.einsum('btnh,bsnh->bnts', q, k, preferred_element_type=jnp.float32) * scale
    if score_mod is not None:
      s = score_mod(s)
    m = None if mask is None else mask.dense(q.shape[1], k.shape[1])
    w = jax.nn.softmax(s, axis=-1, where=m)
    if m is not None:
      w = jnp.where(m, w, 0.0)
    if sow_weights:
      self.sow(nnx.Intermediate, 'attention_weights', w)
    w = self.dropout(w, deterministic=deterministic)
    return jnp.einsum('bnts,bsnh->btnh', w.astype(v.dtype), v)
