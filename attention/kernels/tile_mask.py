"""A `Mask` evaluated tile by tile inside a Pallas kernel, with no [T, S] array in memory.

A kernel cannot close over JAX arrays, and it sees one (query block, key block) tile at a time.
`compile_mask` therefore splits a mask (attention/masks.py) into

- a *program*: the mask's tree of `&`, `|`, `~` with its index-only leaves (causal, local
  window, dilated, global tokens, chunked, prefix LM) kept as they are, evaluated on the tile's
  position grids in the kernel;
- *operands*: the arrays of its data leaves, passed to the kernel as inputs. Padding and segment
  ids become per-example rows `[B, 1, L]` (int32); an array mask (`from_array`, `load`) becomes
  `[N | 1, T, S]` int8, read one tile at a time (the fallback for arbitrary priors); a
  compressed mask (`compressed_rows`, SEA) its `[B, N, T, K]` table plus rows of L_i and pos_j.

`program_tile(program, qpos, kpos, read)` evaluates the program on one tile: `qpos: [bq, 1]`,
`kpos: [1, bk]` absolute positions, and `read(operand_index, side)` returns the operand's part
for this tile (`side` is 'q' or 'k' for per-example rows, 'qk' for an array mask).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from attention import masks as masks_lib


@dataclasses.dataclass(frozen=True, eq=False)
class Operand:
  """One array the kernel reads: `kind` 'row_q', 'row_k' ([B, 1, L] int32) or 'array'
  ([N | 1, T, S] int8)."""
  kind: str
  value: Any


def _padded_row(x, length: int, fill, dtype=jnp.int32):
  x = jnp.asarray(x)
  x = x.astype(dtype)
  x = jnp.pad(x, ((0, 0), (0, length - x.shape[1])), constant_values=fill)
  return x[:, None, :]


def compile_mask(mask: masks_lib.Mask | None, q_pad: int, kv_pad: int):
  """(program, operands) for `mask` on a score matrix padded to `[q_pad, kv_pad]`.

  The program is a nested tuple: ('and' | 'or', a, b), ('not', a), ('index', leaf),
  ('padding', iq | None, ik), ('segments', iq, ik), ('array', i); integers index `operands`.
  `None` (no mask) compiles to None.
  """
  operands: list[Operand] = []

  def add(kind, value):
    operands.append(Operand(kind, value))
    return len(operands) - 1

  def walk(m):
    if isinstance(m, masks_lib._And):
      return ('and', walk(m.a), walk(m.b))
    if isinstance(m, masks_lib._Or):
      return ('or', walk(m.a), walk(m.b))
    if isinstance(m, masks_lib._Not):
      return ('not', walk(m.a))
    if isinstance(m, masks_lib._Padding):
      iq = None if m.valid_q is None else add('row_q', _padded_row(m.valid_q, q_pad, 0))
      return ('padding', iq, add('row_k', _padded_row(m.valid_k, kv_pad, 0)))
    if isinstance(m, masks_lib._Segments):
      # Padded positions get different ids on each side, so they never match.
      return ('segments', add('row_q', _padded_row(m.seg_q, q_pad, -1)),
              add('row_k', _padded_row(m.seg_k, kv_pad, -2)))
    if isinstance(m, masks_lib._ArrayMask):
      a = np.asarray(m.array, bool)
      a = a.reshape((1,) * (3 - a.ndim) + a.shape)[:, :q_pad, :kv_pad]
      a = np.pad(a, ((0, 0), (0, q_pad - a.shape[1]), (0, kv_pad - a.shape[2])))
      return ('array', add('array', jnp.asarray(a, jnp.int8)))
    if isinstance(m, masks_lib._CompressedRows):
      table = jnp.asarray(m.table).astype(jnp.int32)
      table = jnp.pad(table, ((0, 0), (0, 0), (0, q_pad - table.shape[2]), (0, 0)))
      return ('compressed', add('table', table),
              add('row_q', _padded_row(m.lengths, q_pad, 0)),
              add('row_k', _padded_row(m.positions, kv_pad, 0, jnp.float32)),
              table.shape[-1])
    if isinstance(m, (masks_lib._Causal, masks_lib._LocalWindow, masks_lib._Dilated,
                      masks_lib._GlobalTokens, masks_lib._Chunked, masks_lib._PrefixLM)):
      return ('index', m)
    raise ValueError(f'attention.impl=pallas cannot evaluate the mask term {m!r} in a kernel; '
                     'supported: causal, padding, segments, local_window, dilated, '
                     'global_tokens, chunked, prefix_lm, from_array/load, and & | ~ of them')

  if mask is None:
    return None, []
  return walk(mask), operands


def _index_leaf(m, qpos, kpos):
  if isinstance(m, masks_lib._GlobalTokens):
    # `isin` with a constant table would be a captured array; compare position by position.
    out = jnp.zeros(jnp.broadcast_shapes(qpos.shape, kpos.shape), bool)
    for p in m.positions:
      out = out | (qpos == p) | (kpos == p)
    return out
  return m.mask_fn(qpos, kpos)


def program_tile(program, qpos, kpos, read: Callable[[int, str], Any]):
  """The mask's `[bq, bk]` boolean tile (see the module docstring)."""
  op = program[0]
  if op == 'and':
    return program_tile(program[1], qpos, kpos, read) & program_tile(program[2], qpos, kpos, read)
  if op == 'or':
    return program_tile(program[1], qpos, kpos, read) | program_tile(program[2], qpos, kpos, read)
  if op == 'not':
    return ~program_tile(program[1], qpos, kpos, read)
  if op == 'index':
    return jnp.broadcast_to(_index_leaf(program[1], qpos, kpos),
                            (qpos.shape[0], kpos.shape[1]))
  if op == 'padding':
    keep = read(program[2], 'k')[None, :] != 0
    if program[1] is not None:
      keep = keep & (read(program[1], 'q')[:, None] != 0)
    return jnp.broadcast_to(keep, (qpos.shape[0], kpos.shape[1]))
  if op == 'segments':
    return read(program[1], 'q')[:, None] == read(program[2], 'k')[None, :]
  if op == 'array':
    return read(program[1], 'qk') != 0
  if op == 'compressed':
    return _compressed_tile(read(program[1], 'table'), read(program[2], 'q'),
                            read(program[3], 'k'), program[4])
  raise AssertionError(op)


def _compressed_tile(table, lengths, positions, width: int):
  """table[i, c(i, j)] on a tile: `table: [bq, K]`, `lengths: [bq]`, `positions: [bk]`.

  A gather along K is not available in every Pallas backend, so the tile loops over the
  columns it spans (a few when T ≫ K) and picks each column with a masked sum.
  """
  c = masks_lib.compressed_columns(positions[None, :], lengths[:, None], width)  # [bq, bk]
  iota = jnp.arange(width, dtype=jnp.int32)[None, :]

  def body(col, acc):
    column = jnp.sum(jnp.where(iota == col, table, 0), axis=1)                     # [bq]
    return acc | ((c == col) & (column[:, None] != 0)).astype(jnp.int32)

  hit = jax.lax.fori_loop(jnp.min(c), jnp.max(c) + 1, body, jnp.zeros(c.shape, jnp.int32))
  return hit != 0
