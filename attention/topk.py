"""Top-k attention (Gupta, Dar, Goodman, Ciprut, Berant 2021, "Memory-efficient Transformers via
Top-k Attention", arXiv:2106.06899; code ag1988/top_k_attention).

`attention.kind=topk`. Each query keeps only its k largest scores and normalises over them:

    s_i = q_i·Kᵀ/√H (+ score mod, then the mask: masked keys are −∞)
    I_i = top-k indices of s_i,   p_i = softmax(s_i[I_i]),   out_i = Σ_{j∈I_i} p_ij·v_j

Queries are processed in chunks of C = `query_chunk_size` (a `lax.scan`), so the forward holds one
C×S block of scores at a time. The backward is hand-written (`jax.custom_vjp`, the paper's
"no-cache" function, `_AttentionNoCache` in the reference code): it saves only q, k, v, the
top-k indices and the top-k softmax values p ([B, N, T, k]) and recomputes, chunk by chunk,

    A = scatter(p, I)   dV += Aᵀ·dout      dA = dout·Vᵀ gathered at I
    dS = scatter(p ⊙ (dA − Σ p·dA), I)      dQ = dS·K/√H      dK += dSᵀ·Q/√H

so memory is O(C·S + T·k + (T + S)·H), linear in T for a fixed chunk. Compute is still
O(T·S·H): the full score row is needed to find its top k. T need not be a multiple of C: the last
chunk is shifted back to end at T (it overlaps the previous one; the overlap is dropped from its
output and from its backward), so positions past the sequence are never scored, which matters for
score mods that read a position table.

Masks and score mods. A custom_vjp cannot close over traced arrays, so the mask is split into
its static part (anything built from `attention.mask` and `causal()`: a Mask holding no JAX
arrays, evaluated on each chunk's index grid with `mask_fn`) and padding terms AND-ed at the top
level, whose `valid_q`/`valid_k` arrays are passed explicitly; other dynamic masks (e.g.
`segments` with per-example arrays, or an OR of padding masks) are materialised as a
`[B, 1|N, T, S]` bool array and passed explicitly too. A score mod (additive or
multiplicative, fixed or learnable) is evaluated per chunk as
`score_mod(scores, q_offset=chunk_start)`; its state is passed explicitly (`nnx.split`) and
its gradient is the vector-Jacobian product of the mod with dS, accumulated over chunks.
Masked keys are never attended: if fewer than k keys are allowed, the
remaining slots get zero weight, and a query that sees no key outputs zeros (finite gradients).

Implementations (`attention.impl`): `xla` (the chunked scan above) and `pallas`: the same
selection, as a per-query score floor and the list of tiles holding kept keys
(`topk_selection`), then the block-sparse flash kernel (attention/kernels/flash.py
`selected_attention`) over those tiles only, forward and backward; any mask and additive score
mod; ties at the k-th score keep every tied key. `auto`: pallas on GPU/TPU, xla on CPU.

Options (`attention.topk`): `k` (default 64, as the repository's 12-layer benchmarks) and
`query_chunk_size` (default 1024, the reference's `Q_chunk_size`). `attention.dropout > 0` is
refused: the reference applies dropout to the kept weights but advises against it.

Uncertain: ties at the k-th score are broken by `lax.top_k` (lower key index first), the
reference by `torch.topk` (unspecified); with continuous scores ties have probability zero.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from attention import masks as masks_lib
from attention.biases import ScoreMod
from attention.kernels import backend as kernel_backend
from attention.kernels import flash
from attention.masks import Mask
from attention.registry import accumulation_dtype, check_implementation, register

IMPLEMENTATIONS = ('xla', 'pallas', 'auto')


def split_mask(mask: Mask | None) -> tuple[Mask | None, Any, Any, Mask | None]:
  """`mask` as (static mask or None, valid_q [B, T] or None, valid_k [B, S] or None, the
  other per-example terms or None).

  The top-level AND terms that are static (hold no JAX arrays) are AND-ed back together,
  padding terms become `valid_q`/`valid_k`, and the remaining terms (segments, an OR of
  padding masks, …) are AND-ed into the last part.
  """
  terms = masks_lib.and_terms(mask)
  static, valid_q, valid_k, other = None, None, None, None
  for m in terms:
    if m.is_static:
      static = m if static is None else static & m
    elif isinstance(m, masks_lib._Padding):  # pylint: disable=protected-access
      valid_k = m.valid_k if valid_k is None else valid_k & m.valid_k
      if m.valid_q is not None:
        valid_q = m.valid_q if valid_q is None else valid_q & m.valid_q
    else:
      other = m if other is None else other & m
  return static, valid_q, valid_k, other


def topk_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask | None = None,
                   score_mod: ScoreMod | None = None, *, top_k: int,
                   query_chunk_size: int) -> jax.Array:
  """Top-k attention `[B, T, N, H]` for `q: [B, T, N, H]`, `k, v: [B, S, N, H]`.

  Memory linear in T, backward included (see the module docstring). `top_k ≥ S` is softmax
  attention. Scores, softmax, sums and the backward are in `accumulation_dtype(q, k, v)`
  (float32 for bfloat16/float16/float32 inputs, float64 for float64), and so is the output.
  """
  fn, args = _prepare(q, k, v, mask, score_mod, top_k=top_k, query_chunk_size=query_chunk_size)
  return fn(*args)


def topk_attention_weights(q: jax.Array, k: jax.Array, mask: Mask | None = None,
                           score_mod: ScoreMod | None = None, *, top_k: int,
                           query_chunk_size: int) -> jax.Array:
  """The sparse weights of `topk_attention` as a dense `[B, N, T, S]` array (analysis only)."""
  v = jnp.zeros(k.shape[:3] + (1,), jnp.result_type(q, k))
  run, args = _prepare(q, k, v, mask, score_mod, top_k=top_k, query_chunk_size=query_chunk_size,
                       weights_only=True)
  return run(*jax.lax.stop_gradient(args))


def topk_selection(q: jax.Array, k: jax.Array, mask: Mask | None, score_mod: ScoreMod | None,
                   *, top_k: int, query_chunk_size: int):
  """The selection of top-k attention for the block-sparse kernel (`impl=pallas`).

  Returns `selection(block_q, block_k) -> (floor [B, N, T], visit [B, N, nq, nk])` for
  `attention.kernels.flash.selected_attention`: each query's floor is the midpoint between its
  k-th and (k+1)-th largest allowed score (−∞ when it has at most k allowed keys), so the
  kernel keeps exactly the top k (ties at the k-th score, of probability zero with continuous
  scores, keep every tied key, where `lax.top_k` keeps the lower indices); `visit` marks the
  tiles holding at least one kept key. Scores are formed a chunk of queries at a time (a
  `lax.scan`), so memory is O(chunk·S + T·nk); any mask works (it is evaluated on each chunk's
  index grid).
  """
  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  dtype = accumulation_dtype(q, k)
  kept = min(top_k, kv_len)

  def selection(block_q: int, block_k: int):
    chunk = block_q * -(-min(query_chunk_size, q_len) // block_q)
    chunks = -(-q_len // chunk)
    q_p = jnp.pad(q, ((0, 0), (0, chunks * chunk - q_len), (0, 0), (0, 0)))
    n_kb = -(-kv_len // block_k)

    def step(_, start):
      q_c = jax.lax.dynamic_slice_in_dim(q_p, start, chunk, axis=1)
      s = jnp.einsum('bcnh,bsnh->bncs', q_c, k, preferred_element_type=dtype) * (
          q.shape[-1] ** -0.5)
      if score_mod is not None:
        s = score_mod(s, q_offset=start)
      if mask is not None:
        q_idx = start + jnp.arange(chunk, dtype=jnp.int32)[:, None]
        kv_idx = jnp.arange(kv_len, dtype=jnp.int32)[None, :]
        m = jnp.asarray(mask.mask_fn(q_idx, kv_idx), bool)
        s = jnp.where(m.reshape((1,) * (4 - m.ndim) + m.shape), s, -jnp.inf)
      top, idx = jax.lax.top_k(s, min(kept + 1, kv_len))
      if kept < kv_len:
        floor = jnp.where(top[..., kept] > -jnp.inf, 0.5 * (top[..., kept - 1] + top[..., kept]),
                          -jnp.inf)
      else:
        floor = jnp.full(top.shape[:-1], -jnp.inf, dtype)
      hit = (top[..., :kept] > -jnp.inf)[..., None] & (
          idx[..., :kept, None] // block_k == jnp.arange(n_kb))            # [B, N, C, k, nk]
      visit = hit.any(axis=-2).reshape(batch, heads, chunk // block_q, block_q, n_kb).any(3)
      return None, (floor, visit)

    starts = jnp.arange(chunks, dtype=jnp.int32) * chunk
    _, (floor, visit) = jax.lax.scan(step, None, starts)
    floor = jnp.moveaxis(floor, 0, 2).reshape(batch, heads, chunks * chunk)[:, :, :q_len]
    visit = jnp.moveaxis(visit, 0, 2).reshape(batch, heads, -1, n_kb)
    return floor, visit[:, :, :-(-q_len // block_q)]

  return selection


def _prepare(q, k, v, mask, score_mod, *, top_k, query_chunk_size, weights_only=False):
  """Builds the custom_vjp function for these static settings and its explicit arguments."""
  static_mask, valid_q, valid_k, other = split_mask(mask)
  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  # Other per-example terms are materialised, [B, 1 | N, T, S] bool, and passed explicitly.
  dense = None if other is None else other.dense(q_len, kv_len)
  if dense is not None:
    dense = jnp.broadcast_to(dense, (batch, dense.shape[1], q_len, kv_len))
  valid_q = (jnp.ones((batch, q_len), bool) if valid_q is None
             else jnp.broadcast_to(jnp.asarray(valid_q, bool), (batch, q_len)))
  valid_k = (jnp.ones((batch, kv_len), bool) if valid_k is None
             else jnp.broadcast_to(jnp.asarray(valid_k, bool), (batch, kv_len)))
  chunk = min(query_chunk_size, q_len)
  # Chunk starts; the last one is moved back so that no chunk reaches past T.
  starts = np.minimum(np.arange(-(-q_len // chunk)) * chunk, q_len - chunk).astype(np.int32)
  dtype = accumulation_dtype(q, k, v)
  if score_mod is None:
    mod_def, mod_state = None, {}
  else:
    mod_def, mod_state = nnx.split(score_mod)
    # Evaluate the mod once at the last chunk's (static) offset, so a position table that is
    # too small fails here with its own message instead of being clamped inside the scan.
    jax.eval_shape(lambda st: nnx.merge(mod_def, st)(
        jnp.zeros((batch, heads, chunk, kv_len), dtype), q_offset=int(starts[-1])),
        mod_state)
  plan = _Plan(top_k=min(top_k, kv_len), chunk=chunk, starts=starts, q_len=q_len,
               static_mask=static_mask, mod_def=mod_def, scale=q.shape[-1] ** -0.5, dtype=dtype)
  if weights_only:
    return plan.dense_weights, (q, k, valid_q, valid_k, dense, mod_state)
  return plan.attention(), (q, k, v, valid_q, valid_k, dense, mod_state)


class _Plan:
  """The chunked forward, the recomputing backward and their custom_vjp, for fixed settings."""

  def __init__(self, *, top_k, chunk, starts, q_len, static_mask, mod_def, scale, dtype):
    self.top_k, self.chunk, self.starts, self.q_len = top_k, chunk, starts, q_len
    self.static_mask, self.mod_def, self.scale = static_mask, mod_def, scale
    self.dtype = dtype  # accumulation_dtype(q, k, v): scores, sums and gradients
    # Rows of a chunk at or past `owned_from` are its own; earlier ones (only in the shifted
    # last chunk) belong to the previous chunk.
    self.owned_from = (np.arange(len(starts)) * chunk).astype(np.int32)

  # -- pieces shared by forward and backward ------------------------------------------------

  def _rows(self, x, start):
    return jax.lax.dynamic_slice_in_dim(x, start, self.chunk, axis=1)

  def _scores(self, q_c, k, start, mod_state):
    """Scaled scores after the score mod: [B, N, C, S] in the accumulation dtype."""
    s = jnp.einsum('bcnh,bsnh->bncs', q_c, k, preferred_element_type=self.dtype) * self.scale
    if self.mod_def is not None:
      s = nnx.merge(self.mod_def, mod_state)(s, q_offset=start)
    return s

  def _allowed(self, start, valid_q_c, valid_k, dense):
    """Bool [B, 1|N, C, S]: the mask on this chunk's rows."""
    q_idx = start + jnp.arange(self.chunk, dtype=jnp.int32)[:, None]
    kv_idx = jnp.arange(valid_k.shape[1], dtype=jnp.int32)[None, :]
    allowed = valid_q_c[:, None, :, None] & valid_k[:, None, None, :]
    if self.static_mask is not None:
      m = jnp.asarray(self.static_mask.mask_fn(q_idx, kv_idx), bool)
      allowed = allowed & m.reshape((1,) * (4 - m.ndim) + m.shape)
    if dense is not None:
      allowed = allowed & jax.lax.dynamic_slice_in_dim(dense, start, self.chunk, axis=2)
    return allowed

  def _assemble(self, chunks, axis):
    """Per-chunk results [n, ..., C (at `axis`), ...] → the T rows, overlap of the last dropped."""
    n = chunks.shape[0]
    last_skip = int(self.owned_from[-1] - self.starts[-1])
    tail = jax.lax.slice_in_dim(chunks[-1], last_skip, self.chunk, axis=axis - 1)
    if n == 1:
      return tail
    body = jnp.moveaxis(chunks[:-1], 0, axis - 1)                    # [..., n−1, C, ...]
    body = body.reshape(body.shape[:axis - 1] + (-1,) + body.shape[axis + 1:])
    return jnp.concatenate([body, tail], axis=axis - 1)

  @staticmethod
  def _scatter(values, idx, kv_len):
    """[B, N, C, k] values at key indices idx → dense [B, N, C, S]."""
    dense = jnp.zeros(idx.shape[:-1] + (kv_len,), values.dtype)
    return jnp.put_along_axis(dense, idx, values, axis=-1, inplace=False)

  def _select(self, q_c, k, start, valid_q_c, valid_k, dense, mod_state):
    """Top-k of one chunk: softmax values p [B, N, C, k] (0 at masked slots) and indices."""
    s = self._scores(q_c, k, start, mod_state)
    s = jnp.where(self._allowed(start, valid_q_c, valid_k, dense), s, -jnp.inf)
    top, idx = jax.lax.top_k(s, self.top_k)                          # sorted, descending
    kept = top > -jnp.inf
    row_max = jnp.where(kept[..., :1], top[..., :1], 0.0)
    e = jnp.where(kept, jnp.exp(top - row_max), 0.0)
    z = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(z > 0, z, 1.0), idx

  # -- forward --------------------------------------------------------------------------------

  def _forward(self, q, k, v, valid_q, valid_k, dense, mod_state):
    kv_len = k.shape[1]

    def step(_, start):
      p, idx = self._select(self._rows(q, start), k, start, self._rows(valid_q, start), valid_k,
                            dense, mod_state)
      a = self._scatter(p, idx, kv_len)
      out = jnp.einsum('bncs,bsnh->bcnh', a.astype(v.dtype), v,
                       preferred_element_type=self.dtype)
      return None, (out, p, idx)

    _, (out, p, idx) = jax.lax.scan(step, None, jnp.asarray(self.starts))
    return self._assemble(out, axis=2), (p, idx)

  def dense_weights(self, q, k, valid_q, valid_k, dense, mod_state):
    kv_len = k.shape[1]

    def step(_, start):
      p, idx = self._select(self._rows(q, start), k, start, self._rows(valid_q, start), valid_k,
                            dense, mod_state)
      return None, self._scatter(p, idx, kv_len)

    _, a = jax.lax.scan(step, None, jnp.asarray(self.starts))       # [n, B, N, C, S]
    return self._assemble(a, axis=3)

  # -- backward -------------------------------------------------------------------------------

  def _backward(self, residuals, d_out):
    q, k, v, valid_q, valid_k, dense, mod_state, p, idx = residuals
    del valid_q, valid_k, dense  # the selection (p, idx) already applied the mask
    kv_len = k.shape[1]
    d_out = d_out.astype(self.dtype)
    additive = self.mod_def is None or nnx.merge(self.mod_def, mod_state).additive

    def step(carry, x):
      dk, dv, d_state = carry
      start, owned_from, p_c, idx_c = x
      q_c = self._rows(q, start)
      own = (start + jnp.arange(self.chunk)) >= owned_from
      do_c = jnp.where(own[None, :, None, None], self._rows(d_out, start), 0.0)   # [B, C, N, H]
      a = self._scatter(p_c, idx_c, kv_len)
      dv = dv + jnp.einsum('bncs,bcnh->bsnh', a, do_c)
      d_a = jnp.einsum('bcnh,bsnh->bncs', do_c, v, preferred_element_type=self.dtype)
      d_a = jnp.take_along_axis(d_a, idx_c, axis=-1)                 # [B, N, C, k]
      d_logits = p_c * (d_a - jnp.sum(p_c * d_a, axis=-1, keepdims=True))
      d_s = self._scatter(d_logits, idx_c, kv_len)                   # dL/d(modded scores)
      if self.mod_def is not None:
        # Only a multiplicative mod needs the raw scores for its vjp.
        s_raw = (jnp.zeros_like(d_s) if additive else
                 jnp.einsum('bcnh,bsnh->bncs', q_c, k, preferred_element_type=self.dtype)
                 * self.scale)
        _, vjp = jax.vjp(lambda s, st: nnx.merge(self.mod_def, st)(s, q_offset=start),
                         s_raw, mod_state)
        d_s, d_st = vjp(d_s)
        d_state = jax.tree.map(jnp.add, d_state, d_st)
      d_s = d_s * self.scale
      dq_c = jnp.einsum('bncs,bsnh->bcnh', d_s, k, preferred_element_type=self.dtype)
      dk = dk + jnp.einsum('bncs,bcnh->bsnh', d_s, q_c, preferred_element_type=self.dtype)
      return (dk, dv, d_state), dq_c

    init = (jnp.zeros(k.shape, self.dtype), jnp.zeros(v.shape, self.dtype),
            jax.tree.map(jnp.zeros_like, mod_state))
    xs = (jnp.asarray(self.starts), jnp.asarray(self.owned_from), p, idx)
    (dk, dv, d_state), dq = jax.lax.scan(step, init, xs)
    dq = self._assemble(dq, axis=2)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None,
            d_state)

  def attention(self):
    """f(q, k, v, valid_q, valid_k, dense, mod_state) → out [B, T, N, H] (accumulation
    dtype), with the custom vjp."""

    @jax.custom_vjp
    def f(q, k, v, valid_q, valid_k, dense, mod_state):
      return self._forward(q, k, v, valid_q, valid_k, dense, mod_state)[0]

    def f_fwd(q, k, v, valid_q, valid_k, dense, mod_state):
      out, (p, idx) = self._forward(q, k, v, valid_q, valid_k, dense, mod_state)
      return out, (q, k, v, valid_q, valid_k, dense, mod_state, p, idx)

    f.defvjp(f_fwd, self._backward)
    return f


@register('topk')
class TopKAttention(nnx.Module):
  """Top-k attention core: `core(q, k, v, mask, *, score_mod)`, q [B, T, N, H] → [B, T, N, H].

  The output is in `v`'s dtype, computed in `accumulation_dtype(q, k, v)` (attention/registry.py).
  """

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.k = 64                   # scores kept per query (k ≥ S is softmax attention)
    c.query_chunk_size = 1024  # queries per step; memory O(chunk·S), any T works
    return c

  # Attention over a key-padding mask equals the causal attention at that position, so a
  # decoder may cache keys/values and feed one query per step (models/seq2seq.py).
  supports_decode_cache = True

  def __init__(self, *, num_heads: int, head_dim: int, config, rngs: nnx.Rngs,
               layer_index: int = 0, max_len: int = 0):
    del rngs, layer_index, max_len  # unused
    self.impl = check_implementation(config, 'topk', IMPLEMENTATIONS)
    self.kernel_options = flash.kernel_options(config, head_dim, self.impl)
    if config.dropout > 0:
      raise ValueError(f'attention.dropout={config.dropout} is not supported with '
                       'attention.kind=topk (the reference advises against dropout on the kept '
                       'weights); set attention.dropout=0')
    opts = config.topk
    for name, value in (('k', opts.k), ('query_chunk_size', opts.query_chunk_size)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'attention.topk.{name}={value!r} is not valid; expected an int ≥ 1')
    self.num_heads, self.head_dim = num_heads, head_dim
    self.k, self.query_chunk_size = opts.k, opts.query_chunk_size

  def __call__(self, q, k, v, mask: Mask | None = None, *, score_mod: ScoreMod | None = None,
               deterministic: bool = True, sow_weights: bool = False):
    del deterministic  # no dropout
    options = dict(top_k=self.k, query_chunk_size=self.query_chunk_size)
    impl = self.impl if self.impl != 'auto' else kernel_backend.auto_implementation(
        'topk', q.dtype, dropout=0.0, additive=score_mod is None or score_mod.additive)
    if impl == 'pallas':
      out, _ = flash.selected_attention(q, k, v, mask, score_mod,
                                        topk_selection(q, k, mask, score_mod, **options),
                                        **dict(self.kernel_options))
    else:
      out = topk_attention(q, k, v, mask, score_mod, **options)
    if sow_weights:
      self.sow(nnx.Intermediate, 'attention_weights',
               topk_attention_weights(q, k, mask, score_mod, **options))
    return out.astype(v.dtype)
