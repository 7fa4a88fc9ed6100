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
  tile by tile into a `[B, N, T, S]` float32 array and summed over the batch outside: the one
  place the kernels hold T × S numbers, and only for such a bias). Multiplicative mods are
  refused.

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
from typing import Any, NamedTuple

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


def kernel_options(config, head_dim: int, impl: str) -> dict:
  """The keyword options a core passes to the kernels (`block_q`, `block_k`), after refusing
  what they cannot do: attention dropout, and tile sizes or head dims this backend cannot
  take. Checked when the core is built, so a bad config fails before any training starts.
  Returned as a tuple of (name, value) pairs, hashable as nnx module attributes must be:
  call with `**dict(options)`."""
  if impl not in ('pallas', 'auto'):
    return ()
  if impl == 'pallas' and config.dropout > 0:
    raise ValueError(f'attention.dropout={config.dropout} is not supported with '
                     'attention.impl=pallas (the kernels have no attention dropout); set '
                     'attention.dropout=0 or use attention.impl=xla')
  options = {'block_q': config.get('block_q', 0) or None,
             'block_k': config.get('block_k', 0) or None}
  if impl == 'pallas':
    backend = resolve()
    backend.check(head_dim=head_dim,
                  block_q=options['block_q'] or DEFAULT_BLOCK[backend.name],
                  block_k=options['block_k'] or DEFAULT_BLOCK[backend.name])
  return tuple(options.items())


def _next_power_of_two(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


# ------------------------------------------------------------------------------------------
# Block lists.

class BlockLists(NamedTuple):
  """Which tiles a kernel visits: `[Bl, Nl, rows, slots]` int32 arrays (Bl ∈ {1, B}, Nl ∈
  {1, N}: lists shared by the batch and heads, or their own).

  `blocks[.., r, t]` is the t-th visited block of row r (−1 pads a row to a power-of-two
  number of slots, as Triton needs), and `full[.., r, t]` is 1 where that tile is FULL (no mask
  needed). Forward and dQ rows are query blocks listing key blocks; the dK/dV rows are key
  blocks listing query blocks (the transpose). Static masks give NumPy lists (`from_summary`);
  data-dependent selections (top-k, SEA) give JAX lists (`from_tiles`).
  """
  blocks: Any
  full: Any

  @classmethod
  def from_summary(cls, summary: np.ndarray) -> 'BlockLists':
    rows = [np.flatnonzero(row != masks_lib.EMPTY) for row in summary]
    slots = _next_power_of_two(max([1] + [len(r) for r in rows]))
    blocks = np.full((len(rows), slots), -1, np.int32)
    full = np.zeros((len(rows), slots), np.int32)
    for i, r in enumerate(rows):
      blocks[i, :len(r)] = r
      full[i, :len(r)] = summary[i, r] == masks_lib.FULL
    return cls(blocks[None, None], full[None, None])

  @classmethod
  def from_tiles(cls, visit) -> 'BlockLists':
    """Lists from a boolean `[B, N, rows, cols]` array of the tiles to visit (none is FULL)."""
    cols = visit.shape[-1]
    slots = _next_power_of_two(cols)
    order = jnp.argsort(~visit, axis=-1, stable=True).astype(jnp.int32)   # visited first
    blocks = jnp.where(jnp.take_along_axis(visit, order, axis=-1), order, -1)
    blocks = jnp.pad(blocks, [(0, 0)] * 3 + [(0, slots - cols)], constant_values=-1)
    return cls(blocks, jnp.zeros_like(blocks))

  @property
  def visited(self) -> int:
    return int((np.asarray(self.blocks) >= 0).sum())


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
  num_maps: int                # M softmax maps combined as Σ_m c_m·softmax(q_m k_mᵀ)·V
  shared_k: bool               # one K for every map (daGPAM), or one per map (DIFF)
  program: Any                 # tile_mask program or None
  operand_kinds: tuple         # 'row_q' | 'row_k' | 'array', per operand
  operand_heads: tuple         # for 'array': 1 or N
  operand_widths: tuple        # for 'table': K
  bias_dims: tuple | None      # (batch > 1, heads > 1) of the bias array, or None
  position_mod: ScoreMod | None
  params_heads: int            # rows of the position params (1 or the grid's heads)
  params_per_map: bool         # each map has its own slice of the params row (DIFF's half-heads)
  params_width: int            # parameters of one map (the row is padded to a power of two)
  coef_heads: int              # rows of the map coefficients (0 when M = 1)
  summary_has_full: bool
  lists_batched: bool = False  # the block lists differ per example / per head (top-k, SEA)
  lists_headed: bool = False
  has_floor: bool = False      # a per-query score floor: keys scoring below it are dropped

  @property
  def ragged_k(self) -> bool:
    return self.kv_len % self.block_k != 0

  @property
  def num_k(self) -> int:
    return 1 if self.shared_k else self.num_maps


def _blockspec(shape, index_map):
  return pl.BlockSpec(shape, index_map)


def _head_index(rows: int):
  return (lambda n: n) if rows > 1 else (lambda n: 0)


def _operand_specs(plan: _Plan, side: str):
  """Block specs of the mask operands for a kernel whose grid row is a query ('q') or key
  ('k') block; the other side is loaded whole and sliced in the loop."""
  bq, bk = plan.block_q, plan.block_k
  specs = []
  for kind, heads in zip(plan.operand_kinds, plan.operand_heads):
    h = _head_index(heads)
    if kind == 'row_q':
      specs.append(_blockspec((None, None, bq), lambda b, n, i, *_: (b, 0, i)) if side == 'q'
                   else _blockspec((None, None, plan.q_pad), lambda b, n, j, *_: (b, 0, 0)))
    elif kind == 'row_k':
      specs.append(_blockspec((None, None, plan.kv_pad), lambda b, n, i, *_: (b, 0, 0))
                   if side == 'q' else
                   _blockspec((None, None, bk), lambda b, n, j, *_: (b, 0, j)))
    elif kind == 'table':
      width = plan.operand_widths[len(specs)]
      specs.append(_blockspec((None, None, bq, width), lambda b, n, i, *_: (b, n, i, 0))
                   if side == 'q' else
                   _blockspec((None, None, plan.q_pad, width), lambda b, n, j, *_: (b, n, 0, 0)))
    else:
      specs.append(_blockspec((None, bq, plan.kv_pad), lambda b, n, i, *_, h=h: (h(n), i, 0))
                   if side == 'q' else
                   _blockspec((None, plan.q_pad, bk), lambda b, n, j, *_, h=h: (h(n), 0, j)))
  return specs


def _bias_spec(plan: _Plan, side: str):
  batched, headed = plan.bias_dims
  bi = (lambda b: b) if batched else (lambda b: 0)
  hi = _head_index(2 if headed else 1)
  if side == 'q':
    return _blockspec((None, None, plan.block_q, plan.kv_pad),
                      lambda b, n, i, *_: (bi(b), hi(n), i, 0))
  return _blockspec((None, None, plan.q_pad, plan.block_k),
                    lambda b, n, j, *_: (bi(b), hi(n), 0, j))


def _row_spec(rows: int, width: int):
  """A `[rows, 1, width]` array of per-head numbers: the program's head's row."""
  h = _head_index(rows)
  return _blockspec((None, None, width), lambda b, n, i, *_: (h(n), 0, 0))


# ------------------------------------------------------------------------------------------
# The tile computation shared by the kernels.

def _pick(row, index: int):
  """`row[index]` as a scalar by a masked sum: Triton cannot slice a vector in registers."""
  return jnp.sum(jnp.where(jnp.arange(row.shape[0]) == index, row, jnp.zeros((), row.dtype)))


def _place(values: tuple, offset: int, width: int, dtype):
  """A `[width]` row holding `values` at `offset`, zeros elsewhere (the inverse of `_pick`)."""
  iota = jnp.arange(width)
  row = jnp.zeros((width,), dtype)
  for i, value in enumerate(values):
    row = row + jnp.where(iota == offset + i, value, jnp.zeros((), dtype))
  return row


class _Tile:
  """Scores of one (query block, key block) tile, with the bias and the mask applied."""

  def __init__(self, plan: _Plan, acc, *, bias_tile, params, operand_read, floor_rows=None):
    self.plan, self.acc = plan, acc
    self.bias_tile, self.params, self.operand_read = bias_tile, params, operand_read
    self.floor_rows = floor_rows

  def positions(self, qs, ks):
    qpos = qs + jnp.arange(self.plan.block_q, dtype=jnp.int32)[:, None]
    kpos = ks + jnp.arange(self.plan.block_k, dtype=jnp.int32)[None, :]
    return qpos, kpos

  def scores(self, q, k, qs, ks, keep, m: int):
    """Map m's logits `[bq, bk]` with its bias, masked where `keep` (None: nothing) is False."""
    plan = self.plan
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                            preferred_element_type=self.acc) * plan.scale
    if self.bias_tile is not None:
      s = s + self.bias_tile(qs, ks).astype(self.acc)
    if plan.position_mod is not None:
      s = s + self.position(*self.positions(qs, ks), self.map_params(self.params, m)
                            ).astype(self.acc)
    if self.floor_rows is not None:
      keep_top = s >= self.floor_rows(qs).astype(self.acc)[:, None]
      keep = keep_top if keep is None else keep & keep_top
    if keep is not None:
      s = jnp.where(keep, s, -jnp.inf)
    return s

  def map_params(self, params, m: int) -> tuple:
    """Map m's position parameters as scalars, picked from the (padded) params row."""
    plan = self.plan
    offset = m * plan.params_width if plan.params_per_map else 0
    return tuple(_pick(params, offset + i) for i in range(plan.params_width))

  def position(self, qpos, kpos, scalars: tuple):
    """The position score mod on a tile, from one map's parameters."""
    d = (qpos - kpos).astype(self.acc)
    return self.plan.position_mod.position_bias(d, scalars)

  def keep(self, qs, ks, full):
    """The mask on a tile (the same for every map), or None when nothing is ever masked."""
    plan = self.plan
    if plan.program is None and not plan.ragged_k:
      return None
    qpos, kpos = self.positions(qs, ks)

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


class _Refs:
  """A kernel's refs by name: the slot lists, then `inputs` in order, the optional priors,
  the mask operands, then `outputs` (names ending in '?' are present only when given)."""

  def __init__(self, plan: _Plan, refs, inputs, outputs):
    refs = list(refs)
    self.slots = _Slots(plan, refs[:_Slots.num_refs(plan)])
    refs = refs[_Slots.num_refs(plan):]
    for name in inputs:
      setattr(self, name, refs.pop(0))
    self.coef = refs.pop(0) if plan.coef_heads else None
    self.bias = refs.pop(0) if plan.bias_dims is not None else None
    self.params = refs.pop(0) if plan.position_mod is not None else None
    self.floor = refs.pop(0) if plan.has_floor else None
    self.operands = [refs.pop(0) for _ in plan.operand_kinds]
    for name in outputs:
      setattr(self, name, refs.pop(0))
    assert not refs, len(refs)


def _row_side_reader(plan: _Plan, operand_refs):
  """Operand reader for kernels whose program is a query block (forward, dQ)."""
  bk = plan.block_k

  def read(index, side, *, qs, ks):
    del qs, side
    ref, kind = operand_refs[index], plan.operand_kinds[index]
    if kind in ('row_q', 'table'):
      return ref[...]
    if kind == 'row_k':
      return ref[pl.ds(ks, bk)]
    return ref[:, pl.ds(ks, bk)]

  return read


def _col_side_reader(plan: _Plan, operand_refs):
  """Operand reader for the dK/dV kernel, whose program is a key block."""
  bq = plan.block_q

  def read(index, side, *, qs, ks):
    del ks, side
    ref, kind = operand_refs[index], plan.operand_kinds[index]
    if kind == 'row_q':
      return ref[pl.ds(qs, bq)]
    if kind == 'row_k':
      return ref[...]
    return ref[pl.ds(qs, bq), :]      # 'array' and 'table'

  return read


class _Slots:
  """One grid row's list of tiles. Triton and the interpreter get the row as a block; on TPU
  the lists are scalar-prefetched into SMEM (as in splash attention) and indexed."""

  def __init__(self, plan: _Plan, refs):
    self.tpu = plan.backend.name == 'tpu'
    self.refs = refs
    b, n = pl.program_id(0), pl.program_id(1)
    self.index = ((b if plan.lists_batched else 0), (n if plan.lists_headed else 0),
                  pl.program_id(2))

  @staticmethod
  def num_refs(plan: _Plan) -> int:
    return 3 if plan.backend.name == 'tpu' else 2

  def block(self, slot):
    return self.refs[0][(*self.index, slot)] if self.tpu else self.refs[0][slot]

  def full(self, slot):
    return self.refs[1][(*self.index, slot)] if self.tpu else self.refs[1][slot]

  def count(self):
    if self.tpu:
      return self.refs[2][self.index]
    return jnp.sum((self.refs[0][...] >= 0).astype(jnp.int32))


def _call(plan: _Plan, kernel, *, grid, lists: BlockLists, in_specs, out_specs, out_shape,
          args, name: str):
  """`pl.pallas_call` with the block lists passed the backend's way (see `_Slots`)."""
  blocks, full = jnp.asarray(lists.blocks), jnp.asarray(lists.full)
  common = dict(out_shape=out_shape, interpret=plan.backend.interpret, name=name,
                compiler_params=plan.backend.compiler_params(len(grid), args[0].shape[-1]))
  if plan.backend.name == 'tpu':
    from jax.experimental.pallas import tpu as pltpu
    counts = jnp.sum(blocks >= 0, axis=-1).astype(jnp.int32)
    grid_spec = pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=3, grid=grid,
                                             in_specs=in_specs, out_specs=out_specs)
    return pl.pallas_call(kernel, grid_spec=grid_spec, **common)(blocks, full, counts, *args)
  slots = blocks.shape[-1]
  bi = (lambda b: b) if blocks.shape[0] > 1 else (lambda b: 0)
  ni = (lambda n: n) if blocks.shape[1] > 1 else (lambda n: 0)
  row = _blockspec((None, None, None, slots), lambda b, n, i: (bi(b), ni(n), i, 0))
  return pl.pallas_call(kernel, grid=grid, in_specs=[row, row] + list(in_specs),
                        out_specs=out_specs, **common)(blocks, full, *args)


def _prior_inputs(plan: _Plan, coef, bias, params, floor, operands, side):
  """Specs and arrays of the optional inputs, in `_Refs` order."""
  specs, args = [], []
  if plan.coef_heads:
    specs.append(_row_spec(plan.coef_heads, plan.num_maps))
    args.append(coef)
  if plan.bias_dims is not None:
    specs.append(_bias_spec(plan, side))
    args.append(bias)
  if plan.position_mod is not None:
    specs.append(_row_spec(plan.params_heads, params.shape[-1]))
    args.append(params)
  if plan.has_floor:
    specs.append(_blockspec((None, None, None, plan.block_q), lambda b, n, i, *_: (b, n, 0, i))
                 if side == 'q' else
                 _blockspec((None, None, None, plan.q_pad), lambda b, n, j, *_: (b, n, 0, 0)))
    args.append(floor)
  specs += _operand_specs(plan, side)
  args += list(operands)
  return specs, args


def _coefficients(plan: _Plan, refs: _Refs, acc):
  """The maps' coefficients c_m for this program's head (1 for a single map)."""
  if not plan.coef_heads:
    return [jnp.ones((), acc)]
  row = refs.coef[...].astype(acc)
  return [_pick(row, m) for m in range(plan.num_maps)]


def _qkv_specs(plan: _Plan, H: int, Hv: int, side: str, with_grad_inputs: bool):
  """Specs of q_1..q_M, k_1..k_K, v (and dout, lse_m, delta_m for the backward kernels)."""
  bq, bk, Tp, Sp = plan.block_q, plan.block_k, plan.q_pad, plan.kv_pad
  if side == 'q':
    q = _blockspec((None, None, bq, H), lambda b, n, i, *_: (b, n, i, 0))
    k = _blockspec((None, None, Sp, H), lambda b, n, i, *_: (b, n, 0, 0))
    v = _blockspec((None, None, Sp, Hv), lambda b, n, i, *_: (b, n, 0, 0))
    do = _blockspec((None, None, bq, Hv), lambda b, n, i, *_: (b, n, i, 0))
    row = _blockspec((None, None, None, bq), lambda b, n, i, *_: (b, n, 0, i))
  else:
    q = _blockspec((None, None, Tp, H), lambda b, n, j, *_: (b, n, 0, 0))
    k = _blockspec((None, None, bk, H), lambda b, n, j, *_: (b, n, j, 0))
    v = _blockspec((None, None, bk, Hv), lambda b, n, j, *_: (b, n, j, 0))
    do = _blockspec((None, None, Tp, Hv), lambda b, n, j, *_: (b, n, 0, 0))
    row = _blockspec((None, None, None, Tp), lambda b, n, j, *_: (b, n, 0, 0))
  M = plan.num_maps
  specs = [q] * M + [k] * plan.num_k + [v]
  if with_grad_inputs:
    specs += [do] + [row] * (2 * M)
  return specs


def _input_names(plan: _Plan, with_grad_inputs: bool):
  M = plan.num_maps
  names = [f'q{m}' for m in range(M)] + [f'k{m}' for m in range(plan.num_k)] + ['v']
  if with_grad_inputs:
    names += ['do'] + [f'lse{m}' for m in range(M)] + [f'delta{m}' for m in range(M)]
  return names


def _k_ref(plan: _Plan, refs: _Refs, m: int):
  return getattr(refs, 'k0' if plan.shared_k else f'k{m}')


# ------------------------------------------------------------------------------------------
# Forward.

def _query_block_tile(plan: _Plan, r: '_Refs', acc):
  """(params, tile) of a kernel whose program is a query block (forward, dQ)."""
  bk = plan.block_k
  bias_tile = None if r.bias is None else (lambda qs_, ks: r.bias[:, pl.ds(ks, bk)])
  params = None if r.params is None else r.params[...].astype(acc)
  return params, _Tile(plan, acc, bias_tile=bias_tile, params=params,
                       operand_read=_row_side_reader(plan, r.operands),
                       floor_rows=None if r.floor is None else (lambda qs_: r.floor[...]))


def _forward_kernel(*refs, plan: _Plan, acc, residuals: bool):
  M = plan.num_maps
  outputs = ['out'] + [f'lse{m}' for m in range(M)]
  if residuals and M > 1:
    outputs += [f'o{m}' for m in range(M)]
  r = _Refs(plan, refs, _input_names(plan, False), outputs)
  bq, bk = plan.block_q, plan.block_k
  qs = pl.program_id(2) * bq
  params, tile = _query_block_tile(plan, r, acc)
  qs_m = [getattr(r, f'q{m}')[...] for m in range(M)]

  def body(slot, carry):
    ks = pl.multiple_of(r.slots.block(slot) * bk, bk)
    v = r.v[pl.ds(ks, bk), :]
    keep = tile.keep(qs, ks, r.slots.full(slot))
    k_tiles = [_k_ref(plan, r, m)[pl.ds(ks, bk), :] for m in range(plan.num_k)]
    new = []
    for m, (m_prev, l_prev, o_prev) in enumerate(carry):
      s = tile.scores(qs_m[m], k_tiles[0 if plan.shared_k else m], qs, ks, keep, m)
      m_new = jnp.maximum(m_prev, s.max(axis=-1))
      m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new).astype(acc)  # rows with nothing yet
      p = jnp.exp(s - m_safe[:, None])
      alpha = jnp.exp(m_prev - m_safe)
      l_new = alpha * l_prev + p.sum(axis=-1)
      o_new = alpha[:, None] * o_prev + jax.lax.dot_general(
          p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=acc)
      new.append((m_new, l_new, o_new))
    return tuple(new)

  Hv = r.v.shape[-1]
  init = tuple((jnp.full((bq,), -jnp.inf, acc), jnp.zeros((bq,), acc),
                jnp.zeros((bq, Hv), acc)) for _ in range(M))
  final = jax.lax.fori_loop(0, r.slots.count(), body, init)
  coefs = _coefficients(plan, r, acc)
  out = jnp.zeros((bq, Hv), acc)
  for m, (m_run, l, o) in enumerate(final):
    empty = l == 0
    o = o / jnp.where(empty, 1.0, l)[:, None]
    out = out + coefs[m] * o
    lse_ref = getattr(r, f'lse{m}')
    lse_ref[...] = jnp.where(empty, -jnp.inf, m_run + jnp.log(jnp.where(empty, 1.0, l))
                             ).astype(lse_ref.dtype)
    if residuals and M > 1:
      o_ref = getattr(r, f'o{m}')
      o_ref[...] = o.astype(o_ref.dtype)
  r.out[...] = out.astype(r.out.dtype)


def _forward(plan: _Plan, qs, ks, v, coef, bias, params, floor, lists, operands,
             residuals: bool):
  """Pallas forward: out `[B, N, Tp, Hv]`, lse_m `[B, N, 1, Tp]` and, with `residuals` and
  several maps, each map's normalised output o_m `[B, N, Tp, Hv]` (float32)."""
  B, N, Tp, H = qs[0].shape
  Hv = v.shape[-1]
  M = plan.num_maps
  acc = accumulation_dtype(qs[0], ks[0], v)
  specs, args = _prior_inputs(plan, coef, bias, params, floor, operands, 'q')
  in_specs = _qkv_specs(plan, H, Hv, 'q', False) + specs
  lse_dtype = jnp.promote_types(acc, jnp.float32)
  out_specs = [_blockspec((None, None, plan.block_q, Hv), lambda b, n, i, *_: (b, n, i, 0))]
  out_shape = [jax.ShapeDtypeStruct((B, N, Tp, Hv), v.dtype)]
  out_specs += [_blockspec((None, None, None, plan.block_q),
                           lambda b, n, i, *_: (b, n, 0, i))] * M
  out_shape += [jax.ShapeDtypeStruct((B, N, 1, Tp), lse_dtype)] * M
  if residuals and M > 1:
    out_specs += [out_specs[0]] * M
    out_shape += [jax.ShapeDtypeStruct((B, N, Tp, Hv), acc)] * M
  outs = _call(plan, functools.partial(_forward_kernel, plan=plan, acc=acc, residuals=residuals),
               grid=(B, N, Tp // plan.block_q), lists=lists[0], in_specs=in_specs,
               out_specs=out_specs, out_shape=out_shape,
               args=[*qs, *ks, v, *args], name=f'flash_attention_forward_{M}map')
  out, lses = outs[0], list(outs[1:1 + M])
  branch_outs = list(outs[1 + M:]) if residuals and M > 1 else [out]
  return out, lses, branch_outs


# ------------------------------------------------------------------------------------------
# Backward.

def _backward_lse(lse):
  """Rows that saw nothing have lse −∞; +∞ makes their recomputed probabilities exactly 0."""
  return jnp.where(lse == -jnp.inf, jnp.inf, lse)


def _dq_kernel(*refs, plan: _Plan, acc):
  M = plan.num_maps
  outputs = [f'dq{m}' for m in range(M)]
  outputs += ['dbias'] if plan.bias_dims is not None else []
  outputs += ['dparams'] if plan.position_mod is not None else []
  r = _Refs(plan, refs, _input_names(plan, True), outputs)
  bq, bk = plan.block_q, plan.block_k
  qs = pl.program_id(2) * bq
  params, tile = _query_block_tile(plan, r, acc)
  q_m = [getattr(r, f'q{m}')[...] for m in range(M)]
  do = r.do[...]
  lse_m = [_backward_lse(getattr(r, f'lse{m}')[...].astype(acc)) for m in range(M)]
  delta_m = [getattr(r, f'delta{m}')[...].astype(acc) for m in range(M)]
  coefs = _coefficients(plan, r, acc)
  dbias_ref = getattr(r, 'dbias', None)
  if dbias_ref is not None:
    dbias_ref[...] = jnp.zeros(dbias_ref.shape, dbias_ref.dtype)

  def body(slot, carry):
    dqs, dparams = carry
    ks = pl.multiple_of(r.slots.block(slot) * bk, bk)
    v = r.v[pl.ds(ks, bk), :]
    keep = tile.keep(qs, ks, r.slots.full(slot))
    k_tiles = [_k_ref(plan, r, m)[pl.ds(ks, bk), :] for m in range(plan.num_k)]
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=acc)
    new_dqs, ds_sum = [], 0.0
    for m in range(M):
      k = k_tiles[0 if plan.shared_k else m]
      p = jnp.exp(tile.scores(q_m[m], k, qs, ks, keep, m) - lse_m[m][:, None])
      ds = p * (coefs[m] * dp - delta_m[m][:, None])
      new_dqs.append(dqs[m] + jax.lax.dot_general(
          ds.astype(k.dtype), k, (((1,), (0,)), ((), ())), preferred_element_type=acc))
      ds_sum = ds_sum + ds
      if dparams is not None:
        qpos, kpos = tile.positions(qs, ks)
        scalars = tile.map_params(params, m)
        _, vjp = jax.vjp(lambda *prm: tile.position(qpos, kpos, prm), *scalars)
        offset = m * plan.params_width if plan.params_per_map else 0
        dparams = dparams + _place(vjp(ds), offset, params.shape[0], acc)
    if dbias_ref is not None:
      dbias_ref[:, pl.ds(ks, bk)] = ds_sum.astype(dbias_ref.dtype)
    return tuple(new_dqs), dparams

  H = q_m[0].shape[-1]
  dq0 = tuple(jnp.zeros((bq, H), acc) for _ in range(M))
  dp0 = None if params is None else jnp.zeros(params.shape, acc)
  dqs, dparams = jax.lax.fori_loop(0, r.slots.count(), body, (dq0, dp0))
  for m in range(M):
    dq_ref = getattr(r, f'dq{m}')
    dq_ref[...] = (dqs[m] * plan.scale).astype(dq_ref.dtype)
  if dparams is not None:
    r.dparams[...] = dparams.astype(r.dparams.dtype)


def _dkdv_kernel(*refs, plan: _Plan, acc):
  M = plan.num_maps
  outputs = [f'dk{m}' for m in range(plan.num_k)] + ['dv']
  r = _Refs(plan, refs, _input_names(plan, True), outputs)
  bq, bk = plan.block_q, plan.block_k
  ks = pl.program_id(2) * bk
  bias_tile = None if r.bias is None else (lambda qs, ks_: r.bias[pl.ds(qs, bq), :])
  params = None if r.params is None else r.params[...].astype(acc)
  tile = _Tile(plan, acc, bias_tile=bias_tile, params=params,
               operand_read=_col_side_reader(plan, r.operands),
               floor_rows=None if r.floor is None else (lambda qs_: r.floor[pl.ds(qs_, bq)]))
  k_tiles = [_k_ref(plan, r, m)[...] for m in range(plan.num_k)]
  v = r.v[...]
  coefs = _coefficients(plan, r, acc)

  def body(slot, carry):
    dks, dv = carry
    qs = pl.multiple_of(r.slots.block(slot) * bq, bq)
    do = r.do[pl.ds(qs, bq), :]
    keep = tile.keep(qs, ks, r.slots.full(slot))
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=acc)
    dks, p_sum = list(dks), 0.0
    for m in range(M):
      q = getattr(r, f'q{m}')[pl.ds(qs, bq), :]
      lse = _backward_lse(getattr(r, f'lse{m}')[pl.ds(qs, bq)].astype(acc))
      delta = getattr(r, f'delta{m}')[pl.ds(qs, bq)].astype(acc)
      k = k_tiles[0 if plan.shared_k else m]
      p = jnp.exp(tile.scores(q, k, qs, ks, keep, m) - lse[:, None])
      p_sum = p_sum + coefs[m] * p
      ds = p * (coefs[m] * dp - delta[:, None])
      i = 0 if plan.shared_k else m
      dks[i] = dks[i] + jax.lax.dot_general(ds.astype(q.dtype), q, (((0,), (0,)), ((), ())),
                                            preferred_element_type=acc)
    # dV = Σ_m c_m P_mᵀ dO: one product for all maps.
    dv = dv + jax.lax.dot_general(p_sum.astype(do.dtype), do, (((0,), (0,)), ((), ())),
                                  preferred_element_type=acc)
    return tuple(dks), dv

  H, Hv = k_tiles[0].shape[-1], v.shape[-1]
  init = (tuple(jnp.zeros((bk, H), acc) for _ in range(plan.num_k)), jnp.zeros((bk, Hv), acc))
  dks, dv = jax.lax.fori_loop(0, r.slots.count(), body, init)
  for m in range(plan.num_k):
    dk_ref = getattr(r, f'dk{m}')
    dk_ref[...] = (dks[m] * plan.scale).astype(dk_ref.dtype)
  r.dv[...] = dv.astype(r.dv.dtype)


def _backward(plan: _Plan, qs, ks, v, coef, bias, params, floor, lists, operands, lses,
              branch_outs, do):
  B, N, Tp, H = qs[0].shape
  Sp, Hv = v.shape[2], v.shape[-1]
  M = plan.num_maps
  acc = accumulation_dtype(qs[0], ks[0], v)
  fwd_lists, bwd_lists = lists
  c = (jnp.ones((1, 1, 1), acc) if coef is None else coef.astype(acc))   # [Nc, 1, M]
  c_bn = lambda m: c[:, 0, m].reshape(1, -1, 1)                          # → [1, N | 1, 1]
  # delta_m = rowsum(dO_m ∘ O_m) with dO_m = c_m dO, the FlashAttention-2 preprocessing.
  dot_do = [jnp.sum(o.astype(acc) * do.astype(acc), axis=-1) for o in branch_outs]  # [B, N, Tp]
  deltas = [(c_bn(m) * dot_do[m])[:, :, None, :] for m in range(M)]

  # dQ_m (and dS, d params): one program per query block.
  specs, args = _prior_inputs(plan, coef, bias, params, floor, operands, 'q')
  out_specs = [_blockspec((None, None, plan.block_q, H), lambda b, n, i, *_: (b, n, i, 0))] * M
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype) for q in qs]
  if plan.bias_dims is not None:
    out_specs.append(_blockspec((None, None, plan.block_q, Sp), lambda b, n, i, *_: (b, n, i, 0)))
    out_shape.append(jax.ShapeDtypeStruct((B, N, Tp, Sp), acc))
  if plan.position_mod is not None:
    width = params.shape[-1]
    out_specs.append(_blockspec((None, None, None, None, width),
                                lambda b, n, i, *_: (b, n, i, 0, 0)))
    out_shape.append(jax.ShapeDtypeStruct((B, N, Tp // plan.block_q, 1, width), acc))
  dq_out = _call(plan, functools.partial(_dq_kernel, plan=plan, acc=acc),
                 grid=(B, N, Tp // plan.block_q), lists=fwd_lists,
                 in_specs=_qkv_specs(plan, H, Hv, 'q', True) + specs,
                 out_specs=out_specs, out_shape=out_shape,
                 args=[*qs, *ks, v, do, *lses, *deltas, *args], name=f'flash_attention_dq_{M}map')
  dqs = list(dq_out[:M])

  # dK_m, dV: one program per key block, over the transposed lists.
  specs, args = _prior_inputs(plan, coef, bias, params, floor, operands, 'k')
  kspec = _blockspec((None, None, plan.block_k, H), lambda b, n, j, *_: (b, n, j, 0))
  vspec = _blockspec((None, None, plan.block_k, Hv), lambda b, n, j, *_: (b, n, j, 0))
  dkv = _call(plan, functools.partial(_dkdv_kernel, plan=plan, acc=acc),
              grid=(B, N, Sp // plan.block_k), lists=bwd_lists,
              in_specs=_qkv_specs(plan, H, Hv, 'k', True) + specs,
              out_specs=[kspec] * plan.num_k + [vspec],
              out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype) for k in ks]
              + [jax.ShapeDtypeStruct(v.shape, v.dtype)],
              args=[*qs, *ks, v, do, *lses, *deltas, *args], name=f'flash_attention_dkdv_{M}map')
  dks, dv = list(dkv[:plan.num_k]), dkv[-1]

  dcoef = dbias = dparams = None
  if coef is not None:
    # out = Σ_m c_m O_m, so ∂L/∂c_m = Σ dO ∘ O_m over batch, queries and features.
    dc = jnp.stack([d.sum(axis=(0, 2)) for d in dot_do], axis=-1)   # [N, M]
    if coef.shape[0] == 1:
      dc = dc.sum(axis=0, keepdims=True)
    dcoef = dc[:, None, :].astype(coef.dtype)
  if plan.bias_dims is not None:
    batched, headed = plan.bias_dims
    dbias = dq_out[M].sum(axis=tuple(a for a, keep in ((0, batched), (1, headed)) if not keep),
                          keepdims=True).astype(bias.dtype)
  if plan.position_mod is not None:
    dparams = dq_out[-1].sum(axis=(0, 2, 3))                          # [N, P (padded)]
    if plan.params_heads == 1:
      dparams = dparams.sum(axis=0, keepdims=True)
    dparams = dparams[:, None, :].astype(params.dtype)
  return dqs, dks, dv, dcoef, dbias, dparams


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(plan, qs, ks, v, coef, bias, params, floor, lists, operands):
  out, lses, _ = _forward(plan, qs, ks, v, coef, bias, params, floor, lists, operands, False)
  return out, lses


def _attention_fwd(plan, qs, ks, v, coef, bias, params, floor, lists, operands):
  out, lses, branch_outs = _forward(plan, qs, ks, v, coef, bias, params, floor, lists, operands,
                                    True)
  return (out, lses), (qs, ks, v, coef, bias, params, floor, lists, operands, lses, branch_outs)


def _attention_bwd(plan, residuals, cotangents):
  qs, ks, v, coef, bias, params, floor, lists, operands, lses, branch_outs = residuals
  do, _ = cotangents  # the log-sum-exps are outputs for analysis and tests, not trained through
  dqs, dks, dv, dcoef, dbias, dparams = _backward(plan, qs, ks, v, coef, bias, params, floor,
                                                  lists, operands, lses, branch_outs, do)
  # The floor (a selection) and the lists carry no gradient, as top-k's selection.
  return dqs, dks, dv, dcoef, dbias, dparams, None, None, [None] * len(operands)


_attention.defvjp(_attention_fwd, _attention_bwd)


# ------------------------------------------------------------------------------------------
# Public entry points.

def _pad_axis(x, axis: int, length: int):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad)


def _run(qs, ks, v, coef, mask, score_mod, *, block_q, block_k, platform, prior_heads: int,
         what: str, selection=None):
  """Shared driver: checks, priors, block lists, layout; returns (out BTNH, [lse_m BNT]).

  `selection(block_q, block_k) -> (floor [B, N, T] | None, visit [B, N, nq, nk] bool)` makes
  the lists data-dependent (top-k, SEA): only the tiles in `visit` (and not empty under the
  mask) are computed, and keys scoring below their query's floor are dropped."""
  backend = resolve(platform)
  B, T, N, H = qs[0].shape
  S, Hv = v.shape[1], v.shape[-1]
  for name, x, shape in ([(f'q{m}', q, (B, T, N, H)) for m, q in enumerate(qs)]
                         + [(f'k{m}', k, (B, S, N, H)) for m, k in enumerate(ks)]
                         + [('v', v, (B, S, N, Hv))]):
    if x.shape != shape:
      raise ValueError(f'{what}: {name} has shape {x.shape}, expected {shape} ([B, T|S, N, H])')
  block_q, block_k = block_sizes(backend, T, S, block_q, block_k)
  backend.check(head_dim=H, dtype=qs[0].dtype, block_q=block_q, block_k=block_k)
  if Hv != H:
    backend.check(head_dim=Hv, block_q=block_q, block_k=block_k)
  q_pad = -(-T // block_q) * block_q
  kv_pad = -(-S // block_k) * block_k
  M = len(qs)

  bias = params = position_mod = None
  bias_dims = None
  if score_mod is not None:
    if not score_mod.additive:
      raise ValueError('attention.impl=pallas supports additive score mods only (ALiBi, '
                       'distance decay, Gaussian window, arrays, learnable tables); '
                       'multiplicative ones need attention.impl=xla')
    score_mod._check_heads(N * prior_heads)
    position = score_mod.position_params()
    if position is not None:
      position_mod = score_mod
      params = jnp.asarray(position, jnp.float32)                       # [N·prior | 1, P]
      params_width = params.shape[1]
      if prior_heads > 1 and params.shape[0] > 1:
        params = params.reshape(N, prior_heads * params_width)           # map m: slice m
      # A power-of-two row (Triton's tensors are), read with `_pick`.
      params = _pad_axis(params, 1, _next_power_of_two(params.shape[1]))[:, None, :]
    else:
      bias = score_mod.bias(T, S)
      bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
      if prior_heads > 1 and bias.shape[1] > 1:
        raise ValueError(f'{what}: a per-head bias array is not supported with '
                         'attention.impl=pallas; use a bias shared by the heads, a position '
                         'score mod (alibi, distance_decay, gaussian_window) or '
                         'attention.impl=xla')
      bias_dims = (bias.shape[0] > 1, bias.shape[1] > 1)
      bias = _pad_axis(_pad_axis(bias, 2, q_pad), 3, kv_pad)

  summary = block_summary(mask, T, S, block_q, block_k)
  floor = None
  if selection is None:
    lists = (BlockLists.from_summary(summary), BlockLists.from_summary(summary.T))
  else:
    floor, visit = selection(block_q, block_k)
    visit = jax.lax.stop_gradient(visit) & jnp.asarray(summary != masks_lib.EMPTY)
    lists = (BlockLists.from_tiles(visit), BlockLists.from_tiles(jnp.swapaxes(visit, 2, 3)))
    if floor is not None:
      floor = _pad_axis(jax.lax.stop_gradient(floor).astype(jnp.float32), 2, q_pad)[:, :, None]
  program, operands = tile_mask.compile_mask(mask, q_pad, kv_pad)
  operand_heads = tuple(o.value.shape[0] if o.kind == 'array' else 1 for o in operands)
  if prior_heads > 1 and any(h > 1 for h in operand_heads):
    raise ValueError(f'{what}: a per-head mask array is not supported with '
                     'attention.impl=pallas; use a mask shared by the heads or attention.impl=xla')
  plan = _Plan(backend=backend, block_q=block_q, block_k=block_k, q_len=T, kv_len=S,
               q_pad=q_pad, kv_pad=kv_pad, scale=float(H) ** -0.5, num_maps=M,
               shared_k=len(ks) == 1, program=program,
               operand_kinds=tuple(o.kind for o in operands), operand_heads=operand_heads,
               operand_widths=tuple(o.value.shape[-1] for o in operands),
               bias_dims=bias_dims, position_mod=position_mod,
               params_heads=1 if params is None else params.shape[0],
               params_per_map=params is not None and prior_heads > 1 and params.shape[0] > 1,
               params_width=0 if params is None else params_width,
               coef_heads=0 if coef is None else coef.shape[0],
               summary_has_full=selection is None and bool((summary == masks_lib.FULL).any()),
               lists_batched=lists[0].blocks.shape[0] > 1,
               lists_headed=lists[0].blocks.shape[1] > 1, has_floor=floor is not None)
  to_bnth = lambda x, length: _pad_axis(jnp.transpose(x, (0, 2, 1, 3)), 2, length)
  out, lses = _attention(plan, [to_bnth(q, q_pad) for q in qs], [to_bnth(k, kv_pad) for k in ks],
                         to_bnth(v, kv_pad), coef, bias, params, floor, lists,
                         [o.value for o in operands])
  out = jnp.transpose(out[:, :, :T], (0, 2, 1, 3))
  return out, [jax.lax.stop_gradient(lse[:, :, 0, :T]) for lse in lses]


def flash_attention(q, k, v, mask: masks_lib.Mask | None = None,
                    score_mod: ScoreMod | None = None, *, block_q: int | None = None,
                    block_k: int | None = None, platform: str | None = None):
  """Softmax attention by the Pallas flash kernel: `(out [B, T, N, Hv], lse [B, N, T])`.

  `q: [B, T, N, H]`, `k: [B, S, N, H]`, `v: [B, S, N, Hv]` (BTNH); `mask` and `score_mod` as for
  the XLA core (attention/softmax.py). `lse` is the float32 log-sum-exp of each query's logits
  over the keys it sees (−∞ where it sees none); it carries no gradient. `platform` picks the
  backend (default: JAX's default backend; 'cpu' runs the interpreter, 'tpu_interpret' the TPU
  program in the TPU interpreter). Block sizes: `block_sizes`.
  """
  out, lses = _run([q], [k], v, None, mask, score_mod, block_q=block_q, block_k=block_k,
                   platform=platform, prior_heads=1, what='flash_attention')
  return out, lses[0]


def two_map_attention(q1, k1, q2, k2, v, c1, c2, mask: masks_lib.Mask | None = None,
                      score_mod: ScoreMod | None = None, *, interleaved_priors: bool = False,
                      block_q: int | None = None, block_k: int | None = None,
                      platform: str | None = None):
  """c1·softmax(q1 k1ᵀ/√H)·V − c2·softmax(q2 k2ᵀ/√H)·V in one kernel: `(out, (lse1, lse2))`.

  The fused body of daGPAM (q2 = Q⁻, `k2=None`: one K for both maps, loaded once per tile) and
  DIFF (two query/key pairs). Each key tile's K and V are loaded once and feed both score tiles
  and both online softmaxes; the combined output is written once. `c1, c2`: scalars or `[N]`
  per head, differentiable (trainable λs). The mask and score mod apply to both maps; with
  `interleaved_priors` (DIFF) the priors are defined for 2N half-heads and map m of head n uses
  half-head 2n + m. Backward: dQ per map, dK per map (summed when K is shared), one dV for
  both maps (Σ_m c_m P_mᵀ dO), and the gradients of c1, c2.
  """
  N = q1.shape[2]
  acc = accumulation_dtype(q1, v)
  c1 = jnp.broadcast_to(jnp.asarray(c1, acc), (N,) if jnp.ndim(c1) or jnp.ndim(c2) else ())
  c2 = jnp.broadcast_to(jnp.asarray(c2, acc), c1.shape)
  coef = jnp.stack([c1, -c2], axis=-1).reshape(-1, 1, 2)             # [N | 1, 1, 2]
  ks = [k1] if k2 is None else [k1, k2]
  out, lses = _run([q1, q2], ks, v, coef, mask, score_mod, block_q=block_q, block_k=block_k,
                   platform=platform, prior_heads=2 if interleaved_priors else 1,
                   what='two_map_attention')
  return out, tuple(lses)


def selected_attention(q, k, v, mask: masks_lib.Mask | None, score_mod: ScoreMod | None,
                       selection, *, block_q: int | None = None, block_k: int | None = None,
                       platform: str | None = None):
  """Softmax over a data-dependent subset of keys, block-sparse: `(out, lse)`.

  `selection(block_q, block_k)` returns `(floor, visit)`: the per-query score floor
  `[B, N, T]` (keys whose score, after the score mod, is below it are dropped; None: no floor)
  and the tiles to compute `[B, N, ceil(T/block_q), ceil(S/block_k)]` (bool). Tiles outside
  `visit` are never loaded, so a selection that keeps O(k) keys per query costs O(T·k) instead
  of O(T·S), and nothing T×S is stored. Top-k attention passes the midpoint between each
  query's k-th and (k+1)-th score as the floor (attention/topk.py). The selection carries no
  gradient.
  """
  out, lses = _run([q], [k], v, None, mask, score_mod, block_q=block_q, block_k=block_k,
                   platform=platform, prior_heads=1, what='selected_attention',
                   selection=selection)
  return out, lses[0]
