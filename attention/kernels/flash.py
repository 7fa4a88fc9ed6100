"""Flash attention in Pallas: block-sparse over the mask's tiles, score mods inside the kernel.

The online-softmax algorithm of FlashAttention (Dao et al. 2022, arXiv:2205.14135) with the
FlashAttention-2 work split (Dao 2023, arXiv:2307.08691): the grid runs over (batch, head,
query block); each program walks its query block's list of key blocks, keeping the running
maximum m, the running sum l and the unnormalised output in registers, and writes the output
and the log-sum-exp once. Nothing of size T × S is stored.

What the kernel takes from the rest of the library:

- **Masks** (attention/masks.py). `mask.block_summary` classifies every (query block, key
  block) tile as EMPTY, PARTIAL or FULL. Each query block gets the list of its non-empty key
  blocks (`block_lists`), so empty tiles are never visited, and full tiles skip the mask
  altogether (no index arithmetic, no mask array loaded). Partial tiles evaluate the mask in the
  kernel (attention/kernels/tile_mask.py): index masks from positions, padding and segment ids
  from per-example rows, array masks tile by tile.
- **Score mods** (attention/biases.py). Mods that are functions of i − j (ALiBi, learnable
  ALiBi, distance decay, Gaussian window and sums of them) are computed per tile from a few
  per-head numbers, and the backward pass returns those numbers' gradient. Any other additive
  mod (array priors, learnable tables) is read as a bias array `[B | 1, N | 1, T, S]`, one tile
  at a time, and its gradient is the score gradient dS (a learnable table's gradient, written
  tile by tile). Multiplicative mods are refused.

Conventions, the same as the XLA cores: logits s = q·kᵀ/√H + bias, then the mask; scores, the
softmax and both products accumulate in float32 (float64 for float64 inputs, interpreter
only); the probabilities are cast to v's dtype before P·V, as the XLA path casts its weights.
A query that sees no key outputs zeros, has log-sum-exp −∞, and gets finite (zero) gradients.
Any sequence length works: q and k/v are padded to block multiples and the padding is masked.

The backward pass recomputes the probabilities from the saved log-sum-exp in two kernels (as
FlashAttention-2): one per query block for dQ (and dS for a bias array, and the score mod's
parameter gradient), one per key block for dK and dV, which walks the transposed block lists.

Backends (attention/kernels/backend.py): Triton on GPU, Mosaic on TPU, the interpreter on CPU
(tests). Arrays are laid out [B, N, T, H] inside, so every block's last two dimensions are
either whole or block-sized, as Mosaic requires.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from attention import masks as masks_lib
from attention.biases import ScoreMod
from attention.kernels import tile_mask
from attention.kernels.backend import Backend, resolve
from attention.registry import accumulation_dtype

DEFAULT_BLOCK = {'triton': 64, 'tpu': 128, 'interpret': 64}


def block_sizes(backend: Backend, q_len: int, kv_len: int, block_q: int | None,
                block_k: int | None) -> tuple[int, int]:
  """The tile sizes a call uses: the given ones, else the backend's default (64; 128 on
  TPU), capped off TPU at the next power of two ≥ 16 of the sequence length."""
  default = DEFAULT_BLOCK[backend.name]

  def pick(given, length):
    if given:
      return given
    return default if backend.name == 'tpu' else min(default, max(16, _next_power_of_two(length)))

  return pick(block_q, q_len), pick(block_k, kv_len)


def _next_power_of_two(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


# ------------------------------------------------------------------------------------------
# Block lists.

@dataclasses.dataclass(frozen=True, eq=False)
class BlockLists:
  """Which tiles a kernel visits, from a mask's block summary.

  `blocks[r, t]` is the t-th visited block of row r (−1 pads the row to a power-of-two number
  of slots, as Triton needs), and `full[r, t]` is 1 where that tile is FULL (no mask needed).
  Forward and dQ rows are query blocks listing key blocks; the dK/dV rows are key blocks
  listing query blocks (the transpose).
  """
  blocks: np.ndarray
  full: np.ndarray

  @classmethod
  def from_summary(cls, summary: np.ndarray) -> 'BlockLists':
    rows = [np.flatnonzero(row != masks_lib.EMPTY) for row in summary]
    slots = _next_power_of_two(max([1] + [len(r) for r in rows]))
    blocks = np.full((len(rows), slots), -1, np.int32)
    full = np.zeros((len(rows), slots), np.int32)
    for i, r in enumerate(rows):
      blocks[i, :len(r)] = r
      full[i, :len(r)] = summary[i, r] == masks_lib.FULL
    return cls(blocks, full)

  @property
  def visited(self) -> int:
    return int((self.blocks >= 0).sum())


def block_summary(mask: masks_lib.Mask | None, q_len: int, kv_len: int, block_q: int,
                  block_k: int) -> np.ndarray:
  """The mask's EMPTY/PARTIAL/FULL tiles; no mask is FULL everywhere except ragged tiles."""
  if mask is not None:
    return mask.block_summary(q_len, kv_len, block_q, block_k)
  grid = masks_lib._BlockGrid(q_len, kv_len, block_q, block_k)
  return grid.cap_ragged(np.full(grid.shape, masks_lib.FULL, np.int8))


# ------------------------------------------------------------------------------------------
# What a kernel is specialised on (static, hashed by identity).

@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
  backend: Backend
  block_q: int
  block_k: int
  q_len: int
  kv_len: int
  q_pad: int
  kv_pad: int
  scale: float
  program: Any                 # tile_mask program or None
  operand_kinds: tuple         # 'row_q' | 'row_k' | 'array', per operand
  operand_heads: tuple         # for 'array': 1 or N
  bias_dims: tuple | None      # (batch > 1, heads > 1) of the bias array, or None
  position_mod: ScoreMod | None
  params_heads: int            # rows of the position params (1 or N)
  summary_has_full: bool

  @property
  def ragged_k(self) -> bool:
    return self.kv_len % self.block_k != 0


def _blockspec(shape, index_map):
  return pl.BlockSpec(shape, index_map)


def _operand_specs(plan: _Plan, side: str):
  """Block specs of the mask operands for a kernel whose grid row is a query ('q') or key
  ('k') block; the other side is loaded whole and sliced in the loop."""
  bq, bk = plan.block_q, plan.block_k
  specs = []
  for kind, heads in zip(plan.operand_kinds, plan.operand_heads):
    h = (lambda n: n) if heads > 1 else (lambda n: 0)
    if kind == 'row_q':
      specs.append(_blockspec((None, None, bq), lambda b, n, i, *_: (b, 0, i)) if side == 'q' else
                   _blockspec((None, None, plan.q_pad), lambda b, n, j, *_: (b, 0, 0)))
    elif kind == 'row_k':
      specs.append(_blockspec((None, None, plan.kv_pad), lambda b, n, i, *_: (b, 0, 0))
                   if side == 'q' else _blockspec((None, None, bk), lambda b, n, j, *_: (b, 0, j)))
    else:
      specs.append(_blockspec((None, bq, plan.kv_pad), lambda b, n, i, *_, h=h: (h(n), i, 0))
                   if side == 'q' else
                   _blockspec((None, plan.q_pad, bk), lambda b, n, j, *_, h=h: (h(n), 0, j)))
  return specs


def _bias_spec(plan: _Plan, side: str):
  batched, headed = plan.bias_dims
  bi = (lambda b: b) if batched else (lambda b: 0)
  hi = (lambda n: n) if headed else (lambda n: 0)
  if side == 'q':
    return _blockspec((None, None, plan.block_q, plan.kv_pad),
                      lambda b, n, i, *_: (bi(b), hi(n), i, 0))
  return _blockspec((None, None, plan.q_pad, plan.block_k), lambda b, n, j, *_: (bi(b), hi(n), 0, j))


def _params_spec(plan: _Plan, width: int):
  if plan.params_heads > 1:
    return _blockspec((None, None, width), lambda b, n, i, *_: (n, 0, 0))
  return _blockspec((None, None, width), lambda b, n, i, *_: (0, 0, 0))


# ------------------------------------------------------------------------------------------
# The tile computation shared by the three kernels.

class _Tile:
  """Scores of one (query block, key block) tile, with the bias and the mask applied."""

  def __init__(self, plan: _Plan, acc, *, bias_tile, params, operand_read):
    self.plan, self.acc = plan, acc
    self.bias_tile, self.params, self.operand_read = bias_tile, params, operand_read

  def scores(self, q, k, qs, ks, full):
    """Masked logits `[bq, bk]` and the keep mask (None when nothing is masked)."""
    plan = self.plan
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                            preferred_element_type=self.acc) * plan.scale
    qpos = qs + jnp.arange(plan.block_q, dtype=jnp.int32)[:, None]
    kpos = ks + jnp.arange(plan.block_k, dtype=jnp.int32)[None, :]
    if self.bias_tile is not None:
      s = s + self.bias_tile(qs, ks).astype(self.acc)
    if plan.position_mod is not None:
      s = s + self.position(qpos, kpos, self.params).astype(self.acc)
    keep = self.keep(qpos, kpos, qs, ks, full)
    if keep is not None:
      s = jnp.where(keep, s, -jnp.inf)
    return s, keep

  def position(self, qpos, kpos, params):
    d = (qpos - kpos).astype(self.acc)
    return self.plan.position_mod.position_bias(d, params)

  def keep(self, qpos, kpos, qs, ks, full):
    plan = self.plan
    if plan.program is None and not plan.ragged_k:
      return None

    def partial():
      keep = jnp.ones((plan.block_q, plan.block_k), bool)
      if plan.program is not None:
        read = functools.partial(self.operand_read, qs=qs, ks=ks)
        keep = keep & tile_mask.program_tile(plan.program, qpos, kpos, read)
      if plan.ragged_k:
        keep = keep & (kpos < plan.kv_len)
      return keep

    if not plan.summary_has_full:
      return partial()
    return jax.lax.cond(full != 0, lambda: jnp.ones((plan.block_q, plan.block_k), bool),
                        partial)


def _split_refs(refs, plan: _Plan, n_out: int):
  """(bias_ref, params_ref, operand_refs, rest) from a kernel's trailing refs."""
  refs = list(refs)
  bias_ref = refs.pop(0) if plan.bias_dims is not None else None
  params_ref = refs.pop(0) if plan.position_mod is not None else None
  operand_refs = [refs.pop(0) for _ in plan.operand_kinds]
  assert len(refs) == n_out, (len(refs), n_out)
  return bias_ref, params_ref, operand_refs, refs


def _row_side_reader(plan: _Plan, operand_refs):
  """Operand reader for kernels whose program is a query block (forward, dQ)."""
  bk = plan.block_k

  def read(index, side, *, qs, ks):
    del qs
    ref, kind = operand_refs[index], plan.operand_kinds[index]
    if kind == 'row_q':
      return ref[...]
    if kind == 'row_k':
      return ref[pl.ds(ks, bk)]
    return ref[:, pl.ds(ks, bk)]

  return read


def _col_side_reader(plan: _Plan, operand_refs):
  """Operand reader for the dK/dV kernel, whose program is a key block."""
  bq = plan.block_q

  def read(index, side, *, qs, ks):
    del ks
    ref, kind = operand_refs[index], plan.operand_kinds[index]
    if kind == 'row_q':
      return ref[pl.ds(qs, bq)]
    if kind == 'row_k':
      return ref[...]
    return ref[pl.ds(qs, bq), :]

  return read


class _Slots:
  """One grid row's list of tiles. Triton and the interpreter get the row as a block; on TPU
  the lists are scalar-prefetched into SMEM (as in splash attention) and indexed by row."""

  def __init__(self, plan: _Plan, refs):
    self.tpu = plan.backend.name == 'tpu'
    self.refs = refs
    self.row = pl.program_id(2)

  @staticmethod
  def num_refs(plan: _Plan) -> int:
    return 3 if plan.backend.name == 'tpu' else 2

  def block(self, slot):
    return self.refs[0][self.row, slot] if self.tpu else self.refs[0][slot]

  def full(self, slot):
    return self.refs[1][self.row, slot] if self.tpu else self.refs[1][slot]

  def count(self):
    if self.tpu:
      return self.refs[2][self.row]
    return jnp.sum((self.refs[0][...] >= 0).astype(jnp.int32))


def _call(plan: _Plan, kernel, *, grid, lists: BlockLists, in_specs, out_specs, out_shape,
          args, name: str):
  """`pl.pallas_call` with the block lists passed the backend's way (see `_Slots`)."""
  blocks, full = jnp.asarray(lists.blocks), jnp.asarray(lists.full)
  common = dict(out_shape=out_shape, interpret=plan.backend.interpret, name=name,
                compiler_params=plan.backend.compiler_params(len(grid), args[0].shape[-1]))
  if plan.backend.name == 'tpu':
    from jax.experimental.pallas import tpu as pltpu
    counts = jnp.asarray((lists.blocks >= 0).sum(axis=1), jnp.int32)
    grid_spec = pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=3, grid=grid,
                                             in_specs=in_specs, out_specs=out_specs)
    return pl.pallas_call(kernel, grid_spec=grid_spec, **common)(blocks, full, counts, *args)
  slots = lists.blocks.shape[1]
  row = _blockspec((None, slots), lambda b, n, i: (i, 0))
  return pl.pallas_call(kernel, grid=grid, in_specs=[row, row] + list(in_specs),
                        out_specs=out_specs, **common)(blocks, full, *args)


# ------------------------------------------------------------------------------------------
# Forward.

def _forward_kernel(*refs, plan: _Plan, acc):
  slots = _Slots(plan, refs[:_Slots.num_refs(plan)])
  q_ref, k_ref, v_ref, *refs = refs[_Slots.num_refs(plan):]
  bias_ref, params_ref, operand_refs, (o_ref, lse_ref) = _split_refs(refs, plan, 2)
  bq, bk = plan.block_q, plan.block_k
  qs = pl.program_id(2) * bq
  bias_tile = None if bias_ref is None else (lambda qs_, ks: bias_ref[:, pl.ds(ks, bk)])
  params = None if params_ref is None else params_ref[...].astype(acc)
  tile = _Tile(plan, acc, bias_tile=bias_tile, params=params,
               operand_read=_row_side_reader(plan, operand_refs))
  q = q_ref[...]

  def body(slot, carry):
    m, l, o = carry
    ks = pl.multiple_of(slots.block(slot) * bk, bk)
    k = k_ref[pl.ds(ks, bk), :]
    v = v_ref[pl.ds(ks, bk), :]
    s, _ = tile.scores(q, k, qs, ks, slots.full(slot))
    m_new = jnp.maximum(m, s.max(axis=-1))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new).astype(acc)  # rows with nothing yet
    p = jnp.exp(s - m_safe[:, None])
    alpha = jnp.exp(m - m_safe)
    l = alpha * l + p.sum(axis=-1)
    o = alpha[:, None] * o + jax.lax.dot_general(
        p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=acc)
    return m_new, l, o

  m0 = jnp.full((bq,), -jnp.inf, acc)
  l0 = jnp.zeros((bq,), acc)
  o0 = jnp.zeros((bq, q_ref.shape[-1]), acc)
  m, l, o = jax.lax.fori_loop(0, slots.count(), body, (m0, l0, o0))
  empty = l == 0
  o_ref[...] = (o / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l))
                           ).astype(lse_ref.dtype)


def _common_inputs(plan: _Plan, bias, params, operands, side):
  specs, args = [], []
  if plan.bias_dims is not None:
    specs.append(_bias_spec(plan, side))
    args.append(bias)
  if plan.position_mod is not None:
    specs.append(_params_spec(plan, params.shape[-1]))
    args.append(params)
  specs += _operand_specs(plan, side)
  args += list(operands)
  return specs, args


def _forward(plan: _Plan, q, k, v, bias, params, lists, operands):
  """Pallas forward: (out [B, N, Tp, H], lse [B, N, 1, Tp] float32)."""
  B, N, Tp, H = q.shape
  bq, bk = plan.block_q, plan.block_k
  acc = accumulation_dtype(q, k, v)
  fwd_lists, _ = lists
  specs, args = _common_inputs(plan, bias, params, operands, 'q')
  in_specs = [
      _blockspec((None, None, bq, H), lambda b, n, i, *_: (b, n, i, 0)),
      _blockspec((None, None, plan.kv_pad, H), lambda b, n, i, *_: (b, n, 0, 0)),
      _blockspec((None, None, plan.kv_pad, H), lambda b, n, i, *_: (b, n, 0, 0)),
  ] + specs
  out_specs = [_blockspec((None, None, bq, H), lambda b, n, i, *_: (b, n, i, 0)),
               _blockspec((None, None, None, bq), lambda b, n, i, *_: (b, n, 0, i))]
  lse_dtype = jnp.promote_types(acc, jnp.float32)
  return _call(plan, functools.partial(_forward_kernel, plan=plan, acc=acc),
               grid=(B, N, Tp // bq), lists=fwd_lists, in_specs=in_specs, out_specs=out_specs,
               out_shape=[jax.ShapeDtypeStruct(q.shape, v.dtype),
                          jax.ShapeDtypeStruct((B, N, 1, Tp), lse_dtype)],
               args=[q, k, v, *args], name='flash_attention_forward')


# ------------------------------------------------------------------------------------------
# Backward.

def _backward_lse(lse):
  """Rows that saw nothing have lse −∞; +∞ makes their recomputed probabilities exactly 0."""
  return jnp.where(lse == -jnp.inf, jnp.inf, lse)


def _dq_kernel(*refs, plan: _Plan, acc):
  slots = _Slots(plan, refs[:_Slots.num_refs(plan)])
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs = refs[_Slots.num_refs(plan):]
  n_out = 1 + (plan.bias_dims is not None) + (plan.position_mod is not None)
  bias_ref, params_ref, operand_refs, outs = _split_refs(refs, plan, n_out)
  dq_ref = outs[0]
  dbias_ref = outs[1] if plan.bias_dims is not None else None
  dparams_ref = outs[-1] if plan.position_mod is not None else None
  bq, bk = plan.block_q, plan.block_k
  qs = pl.program_id(2) * bq
  bias_tile = None if bias_ref is None else (lambda qs_, ks: bias_ref[:, pl.ds(ks, bk)])
  params = None if params_ref is None else params_ref[...].astype(acc)
  tile = _Tile(plan, acc, bias_tile=bias_tile, params=params,
               operand_read=_row_side_reader(plan, operand_refs))
  q, do = q_ref[...], do_ref[...]
  lse = _backward_lse(lse_ref[...].astype(acc))
  delta = delta_ref[...].astype(acc)
  if dbias_ref is not None:
    dbias_ref[...] = jnp.zeros(dbias_ref.shape, dbias_ref.dtype)

  def body(slot, carry):
    dq, dparams = carry
    ks = pl.multiple_of(slots.block(slot) * bk, bk)
    k = k_ref[pl.ds(ks, bk), :]
    v = v_ref[pl.ds(ks, bk), :]
    s, _ = tile.scores(q, k, qs, ks, slots.full(slot))
    p = jnp.exp(s - lse[:, None])
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=acc)
    ds = p * (dp - delta[:, None])
    dq = dq + jax.lax.dot_general(ds.astype(k.dtype), k, (((1,), (0,)), ((), ())),
                                  preferred_element_type=acc)
    if dbias_ref is not None:
      dbias_ref[:, pl.ds(ks, bk)] = ds.astype(dbias_ref.dtype)
    if dparams is not None:
      qpos = qs + jnp.arange(bq, dtype=jnp.int32)[:, None]
      kpos = ks + jnp.arange(bk, dtype=jnp.int32)[None, :]
      _, vjp = jax.vjp(lambda prm: tile.position(qpos, kpos, prm), params)
      dparams = dparams + vjp(ds)[0]
    return dq, dparams

  dq0 = jnp.zeros((bq, q_ref.shape[-1]), acc)
  dp0 = None if params is None else jnp.zeros(params.shape, acc)
  dq, dparams = jax.lax.fori_loop(0, slots.count(), body, (dq0, dp0))
  dq_ref[...] = (dq * plan.scale).astype(dq_ref.dtype)
  if dparams_ref is not None:
    dparams_ref[...] = dparams.astype(dparams_ref.dtype)


def _dkdv_kernel(*refs, plan: _Plan, acc):
  slots = _Slots(plan, refs[:_Slots.num_refs(plan)])
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs = refs[_Slots.num_refs(plan):]
  bias_ref, params_ref, operand_refs, (dk_ref, dv_ref) = _split_refs(refs, plan, 2)
  bq, bk = plan.block_q, plan.block_k
  ks = pl.program_id(2) * bk
  bias_tile = None if bias_ref is None else (lambda qs, ks_: bias_ref[pl.ds(qs, bq), :])
  params = None if params_ref is None else params_ref[...].astype(acc)
  tile = _Tile(plan, acc, bias_tile=bias_tile, params=params,
               operand_read=_col_side_reader(plan, operand_refs))
  k, v = k_ref[...], v_ref[...]

  def body(slot, carry):
    dk, dv = carry
    qs = pl.multiple_of(slots.block(slot) * bq, bq)
    q = q_ref[pl.ds(qs, bq), :]
    do = do_ref[pl.ds(qs, bq), :]
    lse = _backward_lse(lse_ref[pl.ds(qs, bq)].astype(acc))
    delta = delta_ref[pl.ds(qs, bq)].astype(acc)
    s, _ = tile.scores(q, k, qs, ks, slots.full(slot))
    p = jnp.exp(s - lse[:, None])
    dv = dv + jax.lax.dot_general(p.astype(do.dtype), do, (((0,), (0,)), ((), ())),
                                  preferred_element_type=acc)
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=acc)
    ds = p * (dp - delta[:, None])
    dk = dk + jax.lax.dot_general(ds.astype(q.dtype), q, (((0,), (0,)), ((), ())),
                                  preferred_element_type=acc)
    return dk, dv

  H = k_ref.shape[-1]
  zeros = jnp.zeros((bk, H), acc)
  dk, dv = jax.lax.fori_loop(0, slots.count(), body, (zeros, zeros))
  dk_ref[...] = (dk * plan.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(plan: _Plan, q, k, v, bias, params, lists, operands, out, lse, do):
  B, N, Tp, H = q.shape
  Sp = k.shape[2]
  bq, bk = plan.block_q, plan.block_k
  acc = accumulation_dtype(q, k, v)
  fwd_lists, bwd_lists = lists
  delta = jnp.sum(out.astype(acc) * do.astype(acc), axis=-1)[:, :, None, :]  # [B, N, 1, Tp]

  # dQ (and dS, d params): one program per query block.
  specs, args = _common_inputs(plan, bias, params, operands, 'q')
  in_specs = [
      _blockspec((None, None, bq, H), lambda b, n, i, *_: (b, n, i, 0)),
      _blockspec((None, None, Sp, H), lambda b, n, i, *_: (b, n, 0, 0)),
      _blockspec((None, None, Sp, H), lambda b, n, i, *_: (b, n, 0, 0)),
      _blockspec((None, None, bq, H), lambda b, n, i, *_: (b, n, i, 0)),
      _blockspec((None, None, None, bq), lambda b, n, i, *_: (b, n, 0, i)),
      _blockspec((None, None, None, bq), lambda b, n, i, *_: (b, n, 0, i)),
  ] + specs
  out_specs = [_blockspec((None, None, bq, H), lambda b, n, i, *_: (b, n, i, 0))]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  if plan.bias_dims is not None:
    out_specs.append(_blockspec((None, None, bq, Sp), lambda b, n, i, *_: (b, n, i, 0)))
    out_shape.append(jax.ShapeDtypeStruct((B, N, Tp, Sp), acc))
  if plan.position_mod is not None:
    width = params.shape[-1]
    out_specs.append(_blockspec((None, None, None, None, width),
                                lambda b, n, i, *_: (b, n, i, 0, 0)))
    out_shape.append(jax.ShapeDtypeStruct((B, N, Tp // bq, 1, width), acc))
  dq_out = _call(plan, functools.partial(_dq_kernel, plan=plan, acc=acc),
                 grid=(B, N, Tp // bq), lists=fwd_lists, in_specs=in_specs,
                 out_specs=out_specs, out_shape=out_shape,
                 args=[q, k, v, do, lse, delta, *args], name='flash_attention_dq')
  dq = dq_out[0]

  # dK, dV: one program per key block, over the transposed lists.
  specs, args = _common_inputs(plan, bias, params, operands, 'k')
  in_specs = [
      _blockspec((None, None, Tp, H), lambda b, n, j, *_: (b, n, 0, 0)),
      _blockspec((None, None, bk, H), lambda b, n, j, *_: (b, n, j, 0)),
      _blockspec((None, None, bk, H), lambda b, n, j, *_: (b, n, j, 0)),
      _blockspec((None, None, Tp, H), lambda b, n, j, *_: (b, n, 0, 0)),
      _blockspec((None, None, None, Tp), lambda b, n, j, *_: (b, n, 0, 0)),
      _blockspec((None, None, None, Tp), lambda b, n, j, *_: (b, n, 0, 0)),
  ] + specs
  dk, dv = _call(plan, functools.partial(_dkdv_kernel, plan=plan, acc=acc),
                 grid=(B, N, Sp // bk), lists=bwd_lists, in_specs=in_specs,
                 out_specs=[_blockspec((None, None, bk, H), lambda b, n, j, *_: (b, n, j, 0))] * 2,
                 out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                            jax.ShapeDtypeStruct(v.shape, v.dtype)],
                 args=[q, k, v, do, lse, delta, *args], name='flash_attention_dkdv')

  dbias = dparams = None
  if plan.bias_dims is not None:
    dbias = dq_out[1]
    batched, headed = plan.bias_dims
    dbias = dbias.sum(axis=tuple(a for a, keep in ((0, batched), (1, headed)) if not keep),
                      keepdims=True).astype(bias.dtype)
  if plan.position_mod is not None:
    dparams = dq_out[-1].sum(axis=(2, 3))  # [B, N, P]
    dparams = dparams.sum(axis=0)
    if plan.params_heads == 1:
      dparams = dparams.sum(axis=0, keepdims=True)
    dparams = dparams[:, None, :].astype(params.dtype)
  return dq, dk, dv, dbias, dparams


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6))
def _attention(plan, q, k, v, bias, params, lists, operands):
  return _forward(plan, q, k, v, bias, params, lists, operands)


def _attention_fwd(plan, q, k, v, bias, params, lists, operands):
  out, lse = _forward(plan, q, k, v, bias, params, lists, operands)
  return (out, lse), (q, k, v, bias, params, operands, out, lse)


def _attention_bwd(plan, lists, residuals, cotangents):
  q, k, v, bias, params, operands, out, lse = residuals
  do, _ = cotangents  # the log-sum-exp is an output for analysis and tests, not trained through
  dq, dk, dv, dbias, dparams = _backward(plan, q, k, v, bias, params, lists, operands, out,
                                         lse, do)
  return dq, dk, dv, dbias, dparams, [None] * len(operands)


_attention.defvjp(_attention_fwd, _attention_bwd)


# ------------------------------------------------------------------------------------------
# Public entry point.

def _pad_axis(x, axis: int, length: int):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad)


def flash_attention(q, k, v, mask: masks_lib.Mask | None = None,
                    score_mod: ScoreMod | None = None, *, block_q: int | None = None,
                    block_k: int | None = None, platform: str | None = None):
  """Softmax attention by the Pallas flash kernel: `(out [B, T, N, H], lse [B, N, T])`.

  `q: [B, T, N, H]`, `k, v: [B, S, N, H]` (BTNH); `mask` and `score_mod` as for the XLA core
  (attention/softmax.py). `lse` is the float32 log-sum-exp of each query's logits over the keys
  it sees (−∞ where it sees none); it carries no gradient. `platform` picks the backend
  (default: JAX's default backend; 'cpu' runs the interpreter). Block sizes default to 64 (128
  on TPU), capped at the padded sequence lengths.
  """
  backend = resolve(platform)
  B, T, N, H = q.shape
  S = k.shape[1]
  block_q, block_k = block_sizes(backend, T, S, block_q, block_k)
  backend.check(head_dim=H, dtype=q.dtype, block_q=block_q, block_k=block_k)
  if k.shape != (B, S, N, H) or v.shape != (B, S, N, H):
    raise ValueError(f'flash_attention: q {q.shape}, k {k.shape} and v {v.shape} must be '
                     '[B, T, N, H], [B, S, N, H], [B, S, N, H]')
  q_pad = -(-T // block_q) * block_q
  kv_pad = -(-S // block_k) * block_k

  bias = params = position_mod = None
  bias_dims = None
  if score_mod is not None:
    if not score_mod.additive:
      raise ValueError('attention.impl=pallas supports additive score mods only (ALiBi, '
                       'distance decay, Gaussian window, arrays, learnable tables); '
                       'multiplicative ones need attention.impl=xla')
    score_mod._check_heads(N)
    position = score_mod.position_params()
    if position is not None:
      position_mod = score_mod
      params = jnp.asarray(position, jnp.float32)[:, None, :]       # [N | 1, 1, P]
    else:
      bias = score_mod.bias(T, S)
      bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
      bias_dims = (bias.shape[0] > 1, bias.shape[1] > 1)
      bias = _pad_axis(_pad_axis(bias, 2, q_pad), 3, kv_pad)

  summary = block_summary(mask, T, S, block_q, block_k)
  lists = (BlockLists.from_summary(summary), BlockLists.from_summary(summary.T))
  program, operands = tile_mask.compile_mask(mask, q_pad, kv_pad)
  plan = _Plan(backend=backend, block_q=block_q, block_k=block_k, q_len=T, kv_len=S,
               q_pad=q_pad, kv_pad=kv_pad, scale=float(H) ** -0.5, program=program,
               operand_kinds=tuple(o.kind for o in operands),
               operand_heads=tuple(o.value.shape[0] if o.kind == 'array' else 1
                                   for o in operands),
               bias_dims=bias_dims, position_mod=position_mod,
               params_heads=1 if params is None else params.shape[0],
               summary_has_full=bool((summary == masks_lib.FULL).any()))
  to_bnth = lambda x, length: _pad_axis(jnp.transpose(x, (0, 2, 1, 3)), 2, length)
  out, lse = _attention(plan, to_bnth(q, q_pad), to_bnth(k, kv_pad), to_bnth(v, kv_pad),
                        bias, params, lists, [o.value for o in operands])
  out = jnp.transpose(out[:, :, :T], (0, 2, 1, 3))
  return out, jax.lax.stop_gradient(lse[:, :, 0, :T])
