"""Binary attention masks (True = attend), composable with `&`, `|` and `~`.

INTERFACE STUB: the full library (window, dilated, global, chunked, array/.npy, block summary,
the config expression parser) is being written; the API below is the contract.
"""

from __future__ import annotations

import jax.numpy as jnp


class Mask:
  """A mask evaluated lazily on query/key index grids.

  `mask_fn(q_idx, kv_idx)` gets `q_idx: [T, 1]` and `kv_idx: [1, S]` integer arrays and returns a
  boolean array broadcastable to `[B, N, T, S]` (a static mask returns `[T, S]`).
  """

  def mask_fn(self, q_idx, kv_idx):
    raise NotImplementedError

  def dense(self, q_len: int, kv_len: int) -> jnp.ndarray:
    """The mask as a bool array of rank 4, broadcastable to `[B, N, T, S]`."""
    q_idx = jnp.arange(q_len)[:, None]
    kv_idx = jnp.arange(kv_len)[None, :]
    m = jnp.asarray(self.mask_fn(q_idx, kv_idx), bool)
    m = jnp.broadcast_to(m, m.shape[:-2] + (q_len, kv_len))
    return m.reshape((1,) * (4 - m.ndim) + m.shape)

  def __and__(self, other: 'Mask | None') -> 'Mask':
    return self if other is None else _And(self, other)

  __rand__ = __and__


class _And(Mask):

  def __init__(self, a: Mask, b: Mask):
    self.a, self.b = a, b

  def mask_fn(self, q_idx, kv_idx):
    return self.a.mask_fn(q_idx, kv_idx) & self.b.mask_fn(q_idx, kv_idx)


class _Causal(Mask):

  def __init__(self, offset: int = 0):
    self.offset = offset

  def mask_fn(self, q_idx, kv_idx):
    return q_idx + self.offset >= kv_idx


class _Padding(Mask):

  def __init__(self, valid_q, valid_k):
    self.valid_q, self.valid_k = valid_q, valid_k

  def mask_fn(self, q_idx, kv_idx):
    m = self.valid_k[:, None, None, :]
    if self.valid_q is not None:
      m = m & self.valid_q[:, None, :, None]
    return m


def causal(offset: int = 0) -> Mask:
  """j ≤ i + offset (offset = S − T aligns the last query with the last key)."""
  return _Causal(offset)


def padding(valid_q, valid_k) -> Mask:
  """Per-example validity: `valid_q: [B, T] | None`, `valid_k: [B, S]` bool."""
  return _Padding(valid_q, valid_k)
