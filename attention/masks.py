"""Binary attention masks (True = attend), composable with `&`, `|` and `~`.

Build a mask from the constructors below, combine them, then either materialise it
(`mask.dense(T, S)`, the XLA path) or summarise it per (query block, key block) for a kernel that
skips empty blocks (`mask.block_summary(T, S, block_q, block_k)`, as splash attention's
`MaskInfo` and FlexAttention's `BlockMask` do). In configs a mask is written as an expression,
e.g. `attention.mask="local_window(64) | global_tokens([0])"`, read by `parse`.

Write i for the query position and j for the key position:

| constructor | attends where |
|---|---|
| `causal(offset)` | j ≤ i + offset |
| `padding(valid_q, valid_k)` | valid_k[b, j] (∧ valid_q[b, i]) |
| `segments(seg_q, seg_k)` | seg_q[b, i] == seg_k[b, j] (packed documents) |
| `local_window(left, right)` | i − left ≤ j ≤ i + right |
| `dilated(window, dilation)` | \\|i − j\\| ≤ window·dilation ∧ (i − j) mod dilation = 0 (Longformer) |
| `global_tokens(positions)` | i ∈ positions ∨ j ∈ positions (Longformer, BigBird; symmetric) |
| `chunked(size)` | ⌊i/size⌋ == ⌊j/size⌋ |
| `prefix_lm(prefix_len)` | j ≤ i ∨ j < prefix_len (Raffel et al. 2020) |
| `from_array(a)`, `load(path)` | a[i, j] or a[n, i, j] (syntax trees, graphs, any prior) |

A mask is a function of index grids, `mask_fn(q_idx, kv_idx)`, that runs on NumPy arrays (to
classify blocks at trace time) and on `jnp` arrays (to materialise, or inside a kernel), so no
[T, S] array is stored for the structured masks. `padding` and `segments` hold per-example
arrays; holding JAX arrays (the usual case, from the batch) they are *dynamic*: their values are
unknown at trace time, and `block_summary` treats them conservatively.

A query row that attends to nothing is allowed; the attention cores return zeros for it.
"""

from __future__ import annotations

import ast
import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Codes of `Mask.block_summary`, the same as splash attention's `MaskInfo.block_mask`.
EMPTY, PARTIAL, FULL = 0, 1, 2


def _xp(*arrays):
  """`jnp` if any argument is a JAX array (or tracer), else `np`: masks run in both worlds."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


class Mask:
  """A mask evaluated lazily on query/key index grids.

  `mask_fn(q_idx, kv_idx)` gets `q_idx: [T, 1]` and `kv_idx: [1, S]` integer arrays (NumPy or
  `jnp`) and returns a boolean array broadcastable to `[B, N, T, S]`: a static mask returns
  `[T, S]`, a per-head array mask `[N, T, S]`, a per-example mask `[B, 1, T, S]`.
  """

  def mask_fn(self, q_idx, kv_idx):
    raise NotImplementedError

  @property
  def is_static(self) -> bool:
    """Whether the mask is known at trace time (holds no JAX arrays), so blocks can be skipped."""
    return True

  def dense(self, q_len: int, kv_len: int) -> jnp.ndarray:
    """The mask as a bool array of rank 4, broadcastable to `[B, N, T, S]`."""
    q_idx = jnp.arange(q_len)[:, None]
    kv_idx = jnp.arange(kv_len)[None, :]
    m = jnp.asarray(self.mask_fn(q_idx, kv_idx), bool)
    m = jnp.broadcast_to(m, m.shape[:-2] + (q_len, kv_len))
    return m.reshape((1,) * (4 - m.ndim) + m.shape)

  def block_summary(self, q_len: int, kv_len: int, block_q: int, block_k: int) -> np.ndarray:
    """Classifies each (query block, key block) tile as EMPTY (0), PARTIAL (1) or FULL (2).

    Returns a NumPy int8 array `[ceil(q_len / block_q), ceil(kv_len / block_k)]`, the input a
    block-sparse kernel needs to skip EMPTY tiles and drop the mask on FULL ones.

    - Lengths need not be block multiples: positions past `q_len` / `kv_len` count as not
      attended, so a ragged last tile is never FULL (the kernel must mask the padding anyway).
    - Per-head or per-example masks are summarised over all heads and examples: a tile is EMPTY
      (FULL) only if it is empty (full) for every one of them.
    - Static masks are classified exactly. Dynamic parts (`padding`, `segments` holding JAX
      arrays) count as PARTIAL everywhere and are combined conservatively (`&` is the minimum,
      `|` the maximum, `~` swaps EMPTY and FULL), so `causal() & padding(...)` still skips the
      tiles above the diagonal while a tile is never wrongly skipped.
    """
    for name, value in (('q_len', q_len), ('kv_len', kv_len), ('block_q', block_q),
                        ('block_k', block_k)):
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'block_summary: {name} must be a positive int, got {value!r}')
    grid = _BlockGrid(int(q_len), int(kv_len), int(block_q), int(block_k))
    return self._summary(grid)

  def _summary(self, grid: '_BlockGrid') -> np.ndarray:
    """Conservative summary of a mask that is not static; combinators refine it."""
    if self.is_static:
      return grid.classify(self)
    return grid.cap_ragged(np.full(grid.shape, PARTIAL, np.int8))

  def __and__(self, other: 'Mask | None') -> 'Mask':
    if other is None:
      return self
    if not isinstance(other, Mask):
      return NotImplemented
    return _And(self, other)

  __rand__ = __and__

  def __or__(self, other: 'Mask') -> 'Mask':
    if not isinstance(other, Mask):
      return NotImplemented
    return _Or(self, other)

  __ror__ = __or__

  def __invert__(self) -> 'Mask':
    return _Not(self)


class _BlockGrid:
  """Tiling of a [q_len, kv_len] score matrix into [block_q, block_k] tiles, padded at the end."""

  def __init__(self, q_len: int, kv_len: int, block_q: int, block_k: int):
    self.q_len, self.kv_len, self.block_q, self.block_k = q_len, kv_len, block_q, block_k
    self.shape = (-(-q_len // block_q), -(-kv_len // block_k))

  def classify(self, mask: Mask) -> np.ndarray:
    """Exact summary of a static mask, one row of tiles at a time to bound memory."""
    nq, nk = self.shape
    padded_kv = nk * self.block_k
    kv_idx = np.arange(padded_kv)[None, :]
    out = np.empty((nq, nk), np.int8)
    for qb in range(nq):
      q_idx = np.arange(qb * self.block_q, (qb + 1) * self.block_q)[:, None]
      m = np.asarray(mask.mask_fn(q_idx, kv_idx), bool)
      m = np.broadcast_to(m, m.shape[:-2] + (self.block_q, padded_kv))
      m = m & (q_idx < self.q_len) & (kv_idx < self.kv_len)
      m = m.reshape((-1, self.block_q, nk, self.block_k))
      any_ = m.any(axis=(0, 1, 3))
      all_ = m.all(axis=(0, 1, 3))
      out[qb] = np.where(all_, FULL, np.where(any_, PARTIAL, EMPTY))
    return out

  def cap_ragged(self, summary: np.ndarray) -> np.ndarray:
    """Ragged last tiles contain padding, which is never attended, so they cannot be FULL."""
    summary = summary.copy()
    if self.q_len % self.block_q:
      summary[-1, :] = np.minimum(summary[-1, :], PARTIAL)
    if self.kv_len % self.block_k:
      summary[:, -1] = np.minimum(summary[:, -1], PARTIAL)
    return summary


def _wrap(mask: Mask, parent: type) -> str:
  """repr of an operand, parenthesised where Python's precedence (~ > & > |) needs it."""
  text = repr(mask)
  needs = (isinstance(mask, _Or) and parent is not _Or) or (
      isinstance(mask, _And) and parent is _Not)
  return f'({text})' if needs else text


class _Binary(Mask):
  """`a <op> b` for the element-wise logical `op`; block summaries combine with `combine`."""

  op: staticmethod       # (bool array, bool array) -> bool array, NumPy or jnp
  combine: staticmethod  # (summary, summary) -> summary, for masks that hold arrays
  symbol: str

  def __init__(self, a: Mask, b: Mask):
    self.a, self.b = a, b

  def mask_fn(self, q_idx, kv_idx):
    return type(self).op(self.a.mask_fn(q_idx, kv_idx), self.b.mask_fn(q_idx, kv_idx))

  @property
  def is_static(self) -> bool:
    return self.a.is_static and self.b.is_static

  def _summary(self, grid):
    if self.is_static:
      return grid.classify(self)
    return type(self).combine(self.a._summary(grid), self.b._summary(grid))

  def __repr__(self):
    cls = type(self)
    return f'{_wrap(self.a, cls)} {self.symbol} {_wrap(self.b, cls)}'


class _And(_Binary):
  op, combine, symbol = staticmethod(lambda x, y: x & y), staticmethod(np.minimum), '&'


class _Or(_Binary):
  op, combine, symbol = staticmethod(lambda x, y: x | y), staticmethod(np.maximum), '|'


class _Not(Mask):

  def __init__(self, a: Mask):
    self.a = a

  def mask_fn(self, q_idx, kv_idx):
    return ~self.a.mask_fn(q_idx, kv_idx)

  @property
  def is_static(self) -> bool:
    return self.a.is_static

  def _summary(self, grid):
    if self.is_static:
      return grid.classify(self)
    return grid.cap_ragged((FULL - self.a._summary(grid)).astype(np.int8))

  def __repr__(self):
    return f'~{_wrap(self.a, _Not)}'


class _Causal(Mask):

  def __init__(self, offset: int = 0):
    self.offset = offset

  def mask_fn(self, q_idx, kv_idx):
    return q_idx + self.offset >= kv_idx

  def __repr__(self):
    return f'causal({self.offset})' if self.offset else 'causal()'


class _Padding(Mask):

  def __init__(self, valid_q, valid_k):
    self.valid_q, self.valid_k = valid_q, valid_k

  @property
  def is_static(self) -> bool:
    return not isinstance(self.valid_k, jax.Array) and not isinstance(self.valid_q, jax.Array)

  def mask_fn(self, q_idx, kv_idx):
    # Gather with the grids (rather than assume they cover 0..S-1) so tiles can be evaluated
    # alone; clip because a padded tile may index past the end (those positions are dropped).
    # The result gets a head axis: [B, 1, T, S].
    xp = _xp(q_idx, kv_idx, self.valid_k)
    valid_k = xp.asarray(self.valid_k)
    m = valid_k[:, xp.clip(kv_idx, 0, valid_k.shape[1] - 1)][:, None]
    if self.valid_q is not None:
      valid_q = xp.asarray(self.valid_q)
      m = m & valid_q[:, xp.clip(q_idx, 0, valid_q.shape[1] - 1)][:, None]
    return m

  def __repr__(self):
    return f'padding(<{"" if self.valid_q is None else "valid_q, "}valid_k>)'


class _Segments(Mask):

  def __init__(self, seg_q, seg_k):
    self.seg_q, self.seg_k = seg_q, seg_k

  @property
  def is_static(self) -> bool:
    return not isinstance(self.seg_q, jax.Array) and not isinstance(self.seg_k, jax.Array)

  def mask_fn(self, q_idx, kv_idx):
    xp = _xp(q_idx, kv_idx, self.seg_q, self.seg_k)
    seg_q, seg_k = xp.asarray(self.seg_q), xp.asarray(self.seg_k)
    qi = xp.clip(q_idx, 0, seg_q.shape[1] - 1)  # as in `_Padding`
    ki = xp.clip(kv_idx, 0, seg_k.shape[1] - 1)
    return (seg_q[:, qi] == seg_k[:, ki])[:, None]

  def __repr__(self):
    return 'segments(<seg_q, seg_k>)'


class _LocalWindow(Mask):

  def __init__(self, left: int | None, right: int | None):
    self.left, self.right = left, right

  def mask_fn(self, q_idx, kv_idx):
    xp = _xp(q_idx, kv_idx)
    m = xp.ones(np.broadcast_shapes(q_idx.shape, kv_idx.shape), bool)
    if self.left is not None:
      m = m & (kv_idx >= q_idx - self.left)
    if self.right is not None:
      m = m & (kv_idx <= q_idx + self.right)
    return m

  def __repr__(self):
    return (f'local_window({self.left})' if self.right == 0 else
            f'local_window({self.left}, {self.right})')


class _Dilated(Mask):

  def __init__(self, window: int, dilation: int):
    self.window, self.dilation = window, dilation

  def mask_fn(self, q_idx, kv_idx):
    xp = _xp(q_idx, kv_idx)
    d = q_idx - kv_idx
    # Python/NumPy/jnp `%` with a positive divisor is non-negative, so negative offsets work.
    return (xp.abs(d) <= self.window * self.dilation) & (d % self.dilation == 0)

  def __repr__(self):
    return f'dilated({self.window}, {self.dilation})'


class _GlobalTokens(Mask):

  def __init__(self, positions: tuple[int, ...]):
    self.positions = positions

  def mask_fn(self, q_idx, kv_idx):
    xp = _xp(q_idx, kv_idx)
    if not self.positions:
      return xp.zeros(np.broadcast_shapes(q_idx.shape, kv_idx.shape), bool)
    g = xp.asarray(self.positions)
    return xp.isin(q_idx, g) | xp.isin(kv_idx, g)

  def __repr__(self):
    return f'global_tokens({list(self.positions)})'


class _Chunked(Mask):

  def __init__(self, size: int):
    self.size = size

  def mask_fn(self, q_idx, kv_idx):
    return q_idx // self.size == kv_idx // self.size

  def __repr__(self):
    return f'chunked({self.size})'


class _PrefixLM(Mask):

  def __init__(self, prefix_len: int):
    self.prefix_len = prefix_len

  def mask_fn(self, q_idx, kv_idx):
    return (kv_idx <= q_idx) | (kv_idx < self.prefix_len)

  def __repr__(self):
    return f'prefix_lm({self.prefix_len})'


class _ArrayMask(Mask):
  """A stored [T, S] or [N, T, S] mask; indices past its edges are not attended."""

  def __init__(self, array: np.ndarray, source: str | None = None):
    self.array, self.source = array, source

  def mask_fn(self, q_idx, kv_idx):
    xp = _xp(q_idx, kv_idx)
    rows, cols = self.array.shape[-2:]
    inside = (q_idx < rows) & (kv_idx < cols)
    # Clip so the gather stays in bounds, then drop what was clipped.
    qi = xp.clip(q_idx, 0, rows - 1)
    ki = xp.clip(kv_idx, 0, cols - 1)
    return xp.asarray(self.array)[..., qi, ki] & inside

  def __repr__(self):
    if self.source is not None:
      return f'load({self.source!r})'
    return f'from_array(<bool array of shape {self.array.shape}>)'


COMPRESSED_LOOKUP_EPS = 1e-4   # keeps exact cell boundaries in the lower cell (SEA's code)


def compressed_columns(positions, lengths, width: int):
  """c(i, j) = ⌊(pos_j + 0.5)/L_i·K − 1e−4⌋ clipped to [0, K − 1], int32.

  The column of a `[.., K]`-wide compressed row that key j falls in for query i, when query i's
  L_i keys are spread evenly over the K columns by their rank pos_j among them (SEA, Lee et al.
  2024, arXiv:2310.01777, step 8). `positions` and `lengths` broadcast against each other
  (`[.., 1, S]` and `[.., R, 1]`); rows with L_i = 0 give column 0.
  """
  xp = _xp(positions, lengths)
  l = xp.maximum(lengths, 1).astype(xp.float32)
  c = xp.floor((positions + 0.5) / l * width - COMPRESSED_LOOKUP_EPS)
  return xp.clip(c, 0, width - 1).astype(xp.int32)


class _CompressedRows(Mask):
  """Attend where table[b, n, i, c(i, j)] (see `compressed_rows`)."""

  def __init__(self, table, lengths, positions):
    self.table, self.lengths, self.positions = table, lengths, positions

  @property
  def is_static(self) -> bool:
    return False

  def mask_fn(self, q_idx, kv_idx):
    table = jnp.asarray(self.table)
    rows, cols = table.shape[2], self.positions.shape[1]
    lengths = jnp.asarray(self.lengths)[:, jnp.clip(q_idx[:, 0], 0, rows - 1)]      # [B, T]
    positions = jnp.asarray(self.positions)[:, jnp.clip(kv_idx[0], 0, cols - 1)]    # [B, S]
    c = compressed_columns(positions[:, None, :], lengths[:, :, None], table.shape[-1])
    t_rows = table[:, :, jnp.clip(q_idx[:, 0], 0, rows - 1)]                         # [B,N,T,K]
    idx = jnp.broadcast_to(c[:, None], t_rows.shape[:3] + (c.shape[-1],))
    return jnp.take_along_axis(t_rows, idx, axis=-1) != 0

  def __repr__(self):
    return 'compressed_rows(<table, lengths, positions>)'


def compressed_rows(table, lengths, positions) -> Mask:
  """A mask stored compressed per query row: attend to key j iff `table[b, n, i, c(i, j)]`.

  `table: [B, N, T, K]` (bool or 0/1), `lengths: [B, T]` (L_i, the keys query i sees),
  `positions: [B, S]` (pos_j, key j's rank among them); c(i, j) from `compressed_columns`. This
  is SEA's sparse mask M̂ read at full resolution (step 8); no [T, S] array is stored, and
  kernels evaluate it tile by tile. AND it with the causal/padding mask that defines L and pos.
  """
  return _CompressedRows(table, lengths, positions)


def _check_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{name} must be an int ≥ {minimum}, got {value!r}')
  return int(value)


def causal(offset: int = 0) -> Mask:
  """Attend to j ≤ i + offset; `offset = S − T` aligns the last query with the last key."""
  if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
    raise ValueError(f'causal: offset must be an int, got {offset!r}')
  return _Causal(int(offset))


def padding(valid_q, valid_k) -> Mask:
  """Per-example validity: `valid_q: [B, T] | None`, `valid_k: [B, S]` bool (True = real token)."""
  return _Padding(valid_q, valid_k)


def segments(seg_q, seg_k) -> Mask:
  """Packed sequences: attend where the segment ids match; `seg_q: [B, T]`, `seg_k: [B, S]`."""
  return _Segments(seg_q, seg_k)


def local_window(left: int | None, right: int | None = 0) -> Mask:
  """Sliding window i − left ≤ j ≤ i + right; `None` leaves that side unbounded.

  `local_window(L)` is the causal sliding window of Mistral/Longformer-style models (keys
  [i − L, i]); it matches `jax.nn.dot_product_attention(local_window_size=(L, R))`.
  """
  left = None if left is None else _check_int('local_window: left', left, 0)
  right = None if right is None else _check_int('local_window: right', right, 0)
  return _LocalWindow(left, right)


def dilated(window: int, dilation: int) -> Mask:
  """Dilated sliding window (Beltagy et al. 2020, Longformer §3.1): every `dilation`-th key.

  Attends where |i − j| ≤ window·dilation and (i − j) mod dilation = 0, i.e. `window` keys on
  each side of the query, `dilation` apart. Symmetric; `& causal()` for a decoder.
  """
  return _Dilated(_check_int('dilated: window', window, 0),
                  _check_int('dilated: dilation', dilation, 1))


def global_tokens(positions: Sequence[int]) -> Mask:
  """Global attention at `positions` (Longformer; BigBird ITC): they see all, all see them.

  Usually OR-ed with a local pattern: `local_window(64, 64) | global_tokens([0])`.
  """
  if isinstance(positions, (int, np.integer)):
    positions = [positions]
  positions = tuple(_check_int('global_tokens: position', p, 0) for p in positions)
  return _GlobalTokens(positions)


def chunked(size: int) -> Mask:
  """Block-diagonal attention within chunks of `size` tokens: ⌊i/size⌋ == ⌊j/size⌋."""
  return _Chunked(_check_int('chunked: size', size, 1))


def prefix_lm(prefix_len: int) -> Mask:
  """Prefix LM (Raffel et al. 2020, §3.2.1): the first `prefix_len` keys are visible to all,
  the rest causally."""
  return _PrefixLM(_check_int('prefix_lm: prefix_len', prefix_len, 0))


def and_terms(mask: Mask | None) -> list[Mask]:
  """The terms of a top-level AND (`a & b & c` → [a, b, c]); [] for None."""
  terms, stack = [], [] if mask is None else [mask]
  while stack:
    m = stack.pop()
    if isinstance(m, _And):
      stack += [m.b, m.a]
    else:
      terms.append(m)
  return terms


class CausalPadding(NamedTuple):
  """A mask split into the parts linear-time cores support (see `causal_padding_parts`)."""
  causal: bool            # attend to j ≤ i only
  valid_q: Any            # [B, T] bool or None (every query valid)
  valid_k: Any            # [B, S] bool or None (every key valid)


def causal_padding_parts(mask: Mask | None, *, kind: str) -> CausalPadding:
  """Splits `mask` into causal + padding, the only masks kernelised cores can honour.

  Performer, SEA and other cores that never form the T×S score matrix cannot evaluate an
  arbitrary mask; they accept an AND of `causal()` (offset 0) and `padding(...)` terms. Anything
  else (a prior mask such as `local_window(64)`, segments, OR, NOT, causal offsets) raises a
  ValueError naming `attention.kind=<kind>` and the mask, so a config is refused rather than
  silently attending where the mask forbids it.
  """
  terms = and_terms(mask)
  is_causal, valid_q, valid_k = False, None, None

  def combine(old, new):
    return new if old is None else old & new

  for m in terms:
    if isinstance(m, _Causal) and m.offset == 0:
      is_causal = True
    elif isinstance(m, _Padding):
      valid_k = combine(valid_k, m.valid_k)
      if m.valid_q is not None:
        valid_q = combine(valid_q, m.valid_q)
    else:
      raise ValueError(
          f'attention.kind={kind} supports only causal() and padding masks (it never forms '
          f'the full score matrix), but the layer got the mask {mask!r} (the term {m!r} is not '
          'supported); remove attention.mask or use attention.kind=softmax')
  return CausalPadding(is_causal, valid_q, valid_k)


def allowed_keys(mask: Mask | None, shape: Sequence[int]) -> jnp.ndarray:
  """`mask` as a dense bool array broadcast to `shape` = `[B, N, T, S]` (all True for None)."""
  *_, q_len, kv_len = shape
  m = jnp.ones((), bool) if mask is None else mask.dense(q_len, kv_len)
  return jnp.broadcast_to(m, tuple(shape))


def row_mean(x: jnp.ndarray, allowed: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(mean over the keys each query may see `[.., T, 1]`, their number `[.., T, 1]`).

  `x, allowed: [.., T, S]`. Keys outside the mask do not enter (whatever `x` holds there); a
  query that sees no key has mean 0 and count 0, with a finite gradient.
  """
  count = jnp.sum(allowed, axis=-1, keepdims=True).astype(x.dtype)
  total = jnp.sum(jnp.where(allowed, x, jnp.zeros((), x.dtype)), axis=-1, keepdims=True)
  return total / jnp.maximum(count, 1), count


def _as_bool_array(array: Any, source: str) -> np.ndarray:
  a = np.asarray(array)
  if a.ndim not in (2, 3):
    raise ValueError(f'{source}: a mask array must be [T, S] or [N, T, S], got shape {a.shape}')
  if a.size == 0:
    raise ValueError(f'{source}: the mask array is empty (shape {a.shape})')
  if a.dtype == bool:
    return a
  if a.dtype.kind not in 'iuf' or not np.isin(a, (0, 1)).all():
    raise ValueError(f'{source}: a mask array must be bool or hold only 0 and 1 '
                     f'(got dtype {a.dtype}); for a soft prior use attention.bias instead')
  return a.astype(bool)


def from_array(array: Any) -> Mask:
  """A mask given as an array: `[T, S]` or per-head `[N, T, S]`, bool or 0/1 (True = attend).

  For structure from outside the model (a dependency tree, a graph adjacency with self-loops).
  Queries or keys beyond the array's edges are not attended, so a longer sequence sees only
  the part the array describes.
  """
  return _ArrayMask(_as_bool_array(array, 'from_array'))


def load(path: str) -> Mask:
  """`from_array` of a `.npy` file (`np.save(path, array)`), read without pickle."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'mask file {path!r} not found (working directory {os.getcwd()!r})')
  try:
    array = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f'mask file {path!r} is not a plain .npy array: {e}') from None
  return _ArrayMask(_as_bool_array(array, f'mask file {path!r}'), source=path)


# -------------------------------------------------------------------------------------------
# Config expressions.

def evaluate_expression(spec: str, *, functions: Mapping[str, Callable[..., Any]],
                        operators: Mapping[type, Callable[..., Any]], option: str,
                        nested_calls: bool = False, hint: str = '') -> Any:
  """Evaluates a config expression safely: whitelisted calls, literal arguments, operators.

  Nothing is `eval`-ed: the expression is parsed with `ast` and only these nodes are allowed:
  calls `name(args, key=value)` of a name in `functions`, whose arguments are Python literals
  (numbers, strings, lists, tuples, True/False/None) or, with `nested_calls`, other allowed
  expressions; operators whose `ast` type is in `operators` (e.g. `ast.BitAnd`, `ast.Invert`);
  and parentheses. Errors quote the offending token and list what is allowed.

  Args:
    spec: the expression, e.g. `"local_window(64) | global_tokens([0])"`.
    functions: the callable for each allowed name.
    operators: the callable for each allowed `ast.operator` / `ast.unaryop` type.
    option: the config key, for messages (`'attention.mask'`).
    nested_calls: whether call arguments may themselves be expressions (`learnable(alibi())`).
    hint: appended to errors about a call's arguments (e.g. which arguments are filled in).
  """
  text = spec.strip()
  symbols = {ast.BitAnd: '&', ast.BitOr: '|', ast.Invert: '~', ast.Add: '+', ast.Mult: '*',
             ast.Sub: '-', ast.USub: '-'}
  allowed = (f'allowed: calls of {", ".join(sorted(functions))}; literal arguments'
             + ('' if not nested_calls else ' or nested calls')
             + (f'; operators {" ".join(symbols.get(o, o.__name__) for o in operators)}'
                if operators else '') + '; parentheses')

  def fail(node: ast.AST, why: str):
    token = ast.get_source_segment(text, node) or type(node).__name__
    raise ValueError(f'{option}={spec!r}: {why} {token!r}; {allowed}')

  def expression(node: ast.AST) -> Any:
    if isinstance(node, ast.BinOp) and type(node.op) in operators:
      return operators[type(node.op)](expression(node.left), expression(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in operators:
      return operators[type(node.op)](expression(node.operand))
    if isinstance(node, ast.Call):
      return call(node)
    if isinstance(node, ast.Name) and node.id in functions:
      fail(node, 'a bare name must be called, e.g. with (), not')
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
      op = node.op
      fail(node, f'operator {symbols.get(type(op), type(op).__name__)!r} is not allowed in')
    fail(node, 'not allowed:')

  def argument(node: ast.AST) -> Any:
    try:
      return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
      pass
    if nested_calls and isinstance(node, (ast.Call, ast.BinOp, ast.UnaryOp)):
      return expression(node)
    fail(node, 'arguments must be literals (numbers, strings, lists), not')

  def call(node: ast.Call) -> Any:
    if isinstance(node.func, ast.Attribute):
      fail(node.func, 'attribute access is not allowed:')
    if not isinstance(node.func, ast.Name):
      fail(node.func, 'only calls of allowed names are allowed, not')
    name = node.func.id
    if name not in functions:
      fail(node.func, 'unknown name')
    args = []
    for a in node.args:
      if isinstance(a, ast.Starred):
        fail(a, 'argument unpacking is not allowed:')
      args.append(argument(a))
    kwargs = {}
    for kw in node.keywords:
      if kw.arg is None:
        fail(kw.value, 'argument unpacking is not allowed: **')
      kwargs[kw.arg] = argument(kw.value)
    try:
      return functions[name](*args, **kwargs)
    except FileNotFoundError as e:
      raise FileNotFoundError(f'{option}={spec!r}: {e}') from None
    except (TypeError, ValueError) as e:
      token = ast.get_source_segment(text, node)
      # A TypeError here means the arguments do not fit the signature: say what is implied.
      extra = hint if isinstance(e, TypeError) else ''
      raise ValueError(f'{option}={spec!r}: in {token!r}: {e}{extra}') from None

  try:
    tree = ast.parse(text, mode='eval')
  except SyntaxError as e:
    raise ValueError(f'{option}={spec!r} is not a valid expression ({e.msg}); {allowed}') from None
  return expression(tree.body)


_PARSE_FUNCTIONS = {
    'causal': causal,
    'local_window': local_window,
    'dilated': dilated,
    'global_tokens': global_tokens,
    'chunked': chunked,
    'prefix_lm': prefix_lm,
    'from_array': from_array,
    'load': load,
}


def parse(spec: str | None, *, option: str = 'attention.mask') -> Mask | None:
  """Builds the mask a config string describes; `None` for an empty string (no prior mask).

  Examples: `"local_window(64) | global_tokens([0, 1])"`, `"dilated(4, 2) & ~chunked(16)"`,
  `"load('prior.npy')"`. Allowed: the static constructors of this module (`causal`,
  `local_window`, `dilated`, `global_tokens`, `chunked`, `prefix_lm`, `from_array`, `load`) with
  literal arguments, `&`, `|`, `~` and parentheses. `repr(mask)` gives the expression back.
  """
  if spec is None or not spec.strip():
    return None
  operators = {ast.BitAnd: lambda a, b: a & b, ast.BitOr: lambda a, b: a | b,
               ast.Invert: lambda a: ~a}
  out = evaluate_expression(spec, functions=_PARSE_FUNCTIONS, operators=operators,
                            option=option)
  if not isinstance(out, Mask):
    raise ValueError(f'{option}={spec!r} does not describe a mask (got {type(out).__name__})')
  return out
