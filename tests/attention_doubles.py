"""Test doubles shared by the core tests: arbitrary dense masks and biases, random q/k/v."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from attention import biases
from attention import masks


def random_qkv(seed, batch, q_len, kv_len, dtype=jnp.float32, *, heads, head_dim):
  """Standard-normal q `[B, T, N, H]` and k, v `[B, S, N, H]`."""
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), dtype)
               for length in (q_len, kv_len, kv_len))


class DenseMask(masks.Mask):
  """An arbitrary per-example, per-head mask `[B, N, T, S]`, as a test double."""

  def __init__(self, array):
    self.array = array

  def mask_fn(self, q_idx, kv_idx):
    return jnp.asarray(self.array)[:, :, q_idx, kv_idx]


class DenseBias(biases.ScoreMod):
  """An arbitrary additive bias `[N, T, S]` held as a traceable array, as a test double."""

  def __init__(self, array):
    self.array = array

  def bias(self, q_len, kv_len, q_offset=0, kv_offset=0):
    return self.array[None]
