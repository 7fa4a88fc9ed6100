"""Continuous priors on the attention scores (score mods), fixed or learnable.

A `ScoreMod` maps the scaled scores `s = q·kᵀ/√H: [B, N, T, S]` to new scores before the mask
and the softmax, in the scores' dtype (float32, or float64 for float64 inputs: the cores compute
in `attention.registry.accumulation_dtype`). Most are *additive log-space biases*, s + B, which
is exactly a multiplicative prior e^B on the unnormalised attention probabilities
(softmax(s + B) ∝ e^s·e^B).
In configs a score mod is written as an expression, e.g. `attention.bias="alibi()"`,
`"learnable(gaussian_window(8))"` or `"alibi() + distance_decay(0.5)"`, read by `parse`.

Write i for the query position and j for the key position:

| constructor | B[h, i, j] |
|---|---|
| `alibi(num_heads)` | −m_h·(i − j), or −m_h·\\|i − j\\| bidirectionally (Press et al. 2022) |
| `distance_decay(rate, form)` | −rate·log(1 + \\|i − j\\|) (KERPLE-style) or −rate·\\|i − j\\| |
| `gaussian_window(sigma)` | −(i − j)² / (2σ²) (a fixed-width Yang et al. 2018 localness prior) |
| `from_array(a)`, `load(path)` | a[i, j] or a[h, i, j]; with `probabilities=True`, log(P + eps) |
| `learnable(prior, max_len)` | a trainable [N, max_len, max_len] table, initialised to `prior` |
| `learnable_alibi(num_heads)` | ALiBi with trainable slopes m_h |
| `multiplicative(M)` | *not additive*: s ⊙ M (see its docstring for the caveat) |

`a + b` applies `a` then `b`; for additive mods that is the sum of their biases.

Every score mod is an `nnx.Module`, so a learnable one keeps its `nnx.Param`s in the model's state
when the attention layer stores it as an attribute. Fixed priors keep their constants outside the
state (as static NumPy data), so checkpoints and optimizers see only what is trained.

Positions are absolute: query t of a call sits at `q_offset + t` and key s at `kv_offset + s`
(`q_offset > 0` when decoding with a KV cache).

Floats: biases computed from positions (ALiBi, distance priors) are formed in JAX's default
float dtype (float32; float64 with `jax_enable_x64`) and cast to the scores' dtype when applied,
so float64 scores get float64 biases. Array priors and learnable tables are stored as float32,
like parameters, and promoted where they are added.
"""

from __future__ import annotations

import ast
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention.masks import evaluate_expression
from attention.registry import accumulation_dtype


def _is_static_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _default_float():
  """float32, or float64 with `jax_enable_x64`: the dtype of biases computed from positions."""
  return jnp.result_type(float)


def _relative_positions(q_len: int, kv_len: int, q_offset=0, kv_offset=0) -> jnp.ndarray:
  """i − j as `[T, S]` in the default float dtype; differences are formed in int32 so large
  offsets stay exact."""
  i = q_offset + jnp.arange(q_len, dtype=jnp.int32)[:, None]
  j = kv_offset + jnp.arange(kv_len, dtype=jnp.int32)[None, :]
  return (i - j).astype(_default_float())


def _rank4(bias: jnp.ndarray) -> jnp.ndarray:
  """[T, S] → [1, 1, T, S]; [N, T, S] → [1, N, T, S]."""
  return bias.reshape((1,) * (4 - bias.ndim) + bias.shape)


def _window(table, q_len: int, kv_len: int, q_offset, kv_offset, what: str, fix: str):
  """The `[..., T, S]` block of a position table starting at (q_offset, kv_offset).

  Static offsets are checked against the table's size (an error names `fix`); traced offsets
  (decoding under `jit`) use `dynamic_slice`, which clamps the block inside the table.
  """
  rows, cols = table.shape[-2:]
  if _is_static_int(q_offset) and _is_static_int(kv_offset):
    q_end, kv_end = int(q_offset) + q_len, int(kv_offset) + kv_len
    if q_offset < 0 or kv_offset < 0 or q_end > rows or kv_end > cols:
      raise ValueError(f'{what} covers {rows} query × {cols} key positions but this attention '
                       f'needs positions [{q_offset}, {q_end}) × [{kv_offset}, {kv_end}); {fix}')
    return table[..., q_offset:q_end, kv_offset:kv_end]
  if q_len > rows or kv_len > cols:
    raise ValueError(f'{what} covers {rows} × {cols} positions but this attention needs '
                     f'{q_len} × {kv_len}; {fix}')
  table = jnp.asarray(table)
  starts = (0,) * (table.ndim - 2) + (q_offset, kv_offset)
  return jax.lax.dynamic_slice(table, starts, table.shape[:-2] + (q_len, kv_len))


class _Constant:
  """Holds a NumPy array as a static attribute of an nnx.Module: part of the module's
  definition (compared by identity), not of its state, so it is neither trained nor saved."""

  def __init__(self, value: np.ndarray):
    self.value = value


class ScoreMod(nnx.Module):
  """A continuous prior on the scaled attention scores `[B, N, T, S]`.

  Call it as `score_mod(scores, q_offset=0, kv_offset=0) -> scores`, in the scores' dtype (at
  least float32). Additive mods (the default) implement `bias(q_len, kv_len, q_offset,
  kv_offset)`; `dense(T, S, N)` materialises that bias as `[1, N, T, S]` float32 for kernels
  that take a bias tensor (cuDNN) and for learnable tables.
  """

  # Whether `__call__` is `scores + bias`; kernels that add a bias tensor need this.
  additive: bool = True
  # Heads the mod is defined for; None = the same bias for every head.
  num_heads: int | None = None

  def bias(self, q_len: int, kv_len: int, q_offset=0, kv_offset=0) -> jnp.ndarray:
    """The additive bias (float32, or float64 under `jax_enable_x64` for the position-based
    mods), rank 4, broadcastable to `[1, N, T, S]`."""
    raise NotImplementedError

  def __call__(self, scores: jnp.ndarray, q_offset=0, kv_offset=0) -> jnp.ndarray:
    self._check_heads(scores.shape[-3])
    q_len, kv_len = scores.shape[-2:]
    bias = self.bias(q_len, kv_len, q_offset, kv_offset)
    return scores + bias.astype(accumulation_dtype(scores))

  def position_params(self) -> jnp.ndarray | None:
    """`[N | 1, P]` per-head numbers if the bias is a function of i − j alone, else None.

    Kernels evaluate such a mod tile by tile (`position_bias`) instead of reading a [T, S]
    bias, and return the gradient of these numbers (e.g. learnable ALiBi slopes).
    """
    return None

  # Numbers per head of a position mod (the width P of `position_params`).
  position_width: int = 0

  def position_bias(self, d: jnp.ndarray, params) -> jnp.ndarray:
    """The bias at relative positions `d = i − j` (float) for one head's P parameters
    (`params[0]`, … `params[P − 1]`: an array or a tuple of scalars, as kernels pass them)."""
    raise NotImplementedError

  def dense(self, q_len: int, kv_len: int, num_heads: int) -> jnp.ndarray:
    """The bias at positions [0, T) × [0, S) as float32 `[1, num_heads, T, S]`."""
    self._check_heads(num_heads)
    b = self.bias(q_len, kv_len)
    return jnp.broadcast_to(b, (1, num_heads, q_len, kv_len)).astype(jnp.float32)

  def _check_heads(self, num_heads: int) -> None:
    if self.num_heads is not None and self.num_heads != num_heads:
      raise ValueError(f'{type(self).__name__.lstrip("_")} was built for {self.num_heads} heads '
                       f'but the attention has {num_heads}')

  def __add__(self, other: 'ScoreMod') -> 'ScoreMod':
    if not isinstance(other, ScoreMod):
      return NotImplemented
    mods = lambda m: list(m.mods) if isinstance(m, _Compose) else [m]
    return _Compose(mods(self) + mods(other))

  def __radd__(self, other):
    # So that `sum(mods)` works: Python starts the sum at 0.
    if isinstance(other, int) and other == 0:
      return self
    return NotImplemented


class _Compose(ScoreMod):
  """Mods applied in order; for additive mods, the sum of their biases."""

  def __init__(self, mods: list[ScoreMod]):
    self.mods = nnx.List(mods)

  @property
  def additive(self) -> bool:
    return all(m.additive for m in self.mods)

  def __call__(self, scores, q_offset=0, kv_offset=0):
    for m in self.mods:
      scores = m(scores, q_offset, kv_offset)
    return scores

  def bias(self, q_len, kv_len, q_offset=0, kv_offset=0):
    if not self.additive:
      raise ValueError('a composition with a multiplicative score mod has no additive bias')
    return sum(m.bias(q_len, kv_len, q_offset, kv_offset) for m in self.mods)

  def _check_heads(self, num_heads):
    for m in self.mods:
      m._check_heads(num_heads)

  def position_params(self):
    parts = [m.position_params() for m in self.mods]
    if any(p is None for p in parts):
      return None
    heads = max(p.shape[0] for p in parts)
    return jnp.concatenate([jnp.broadcast_to(p, (heads, p.shape[1])) for p in parts], axis=1)

  @property
  def position_width(self) -> int:
    return sum(m.position_width for m in self.mods)

  def position_bias(self, d, params):
    out, start = 0.0, 0
    for m in self.mods:
      out = out + m.position_bias(d, params[start:start + m.position_width])
      start += m.position_width
    return out


# ------------------------------------------------------------------------------------------
# ALiBi.

def alibi_slopes(num_heads: int) -> tuple[float, ...]:
  """Head slopes of ALiBi (Press et al. 2022, §3): m_h = 2^(−8h/H) for h = 1..H.

  For H a power of two this is the geometric sequence 1/2, 1/4, …, 1/256 (H = 8). Otherwise the
  paper takes the slopes of the closest smaller power of two, P, and adds the odd-indexed slopes
  of the 2P sequence (2^(−8h/2P) for h = 1, 3, 5, …) until there are H of them.
  """
  if isinstance(num_heads, bool) or not _is_static_int(num_heads) or num_heads < 1:
    raise ValueError(f'alibi: num_heads must be a positive int, got {num_heads!r}')

  def geometric(n: int) -> list[float]:
    return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

  power = 2 ** int(math.floor(math.log2(num_heads)))
  if power == num_heads:
    return tuple(geometric(num_heads))
  return tuple(geometric(power) + geometric(2 * power)[0::2][:num_heads - power])


class _Alibi(ScoreMod):

  position_width = 1

  def __init__(self, num_heads: int, bidirectional: bool):
    self.num_heads = num_heads
    self.bidirectional = bidirectional
    self.initial_slopes = alibi_slopes(num_heads)  # a tuple: static, not state

  def slopes(self) -> jnp.ndarray:
    return jnp.asarray(self.initial_slopes, _default_float())

  def bias(self, q_len, kv_len, q_offset=0, kv_offset=0):
    d = _relative_positions(q_len, kv_len, q_offset, kv_offset)
    # The causal form keeps the sign: keys in the future get a positive bias, which the causal
    # mask removes anyway (and which keeps the paper's formula exact).
    d = jnp.abs(d) if self.bidirectional else d
    return -self.slopes()[None, :, None, None] * d

  def position_params(self):
    return self.slopes()[:, None]

  def position_bias(self, d, params):
    return -params[0] * (jnp.abs(d) if self.bidirectional else d)


class _LearnableAlibi(_Alibi):

  def __init__(self, num_heads: int, bidirectional: bool):
    super().__init__(num_heads, bidirectional)
    self.learned_slopes = nnx.Param(jnp.asarray(self.initial_slopes, jnp.float32))

  def slopes(self) -> jnp.ndarray:
    return self.learned_slopes[...]


def alibi(num_heads: int, *, bidirectional: bool = False) -> ScoreMod:
  """ALiBi (Press et al. 2022): B[h, i, j] = −m_h·(i − j), slopes from `alibi_slopes`.

  Use with a causal mask, as in the paper; `bidirectional=True` gives −m_h·|i − j| for
  encoders. In configs `num_heads` is filled in: `attention.bias="alibi()"`.
  """
  return _Alibi(num_heads, bool(bidirectional))


def learnable_alibi(num_heads: int, *, bidirectional: bool = False) -> ScoreMod:
  """ALiBi whose per-head slopes m_h are trained, starting from the paper's values.

  A cheap learnable prior: N parameters instead of `learnable`'s N·max_len².
  """
  return _LearnableAlibi(num_heads, bool(bidirectional))


# ------------------------------------------------------------------------------------------
# Distance priors.

class _DistanceDecay(ScoreMod):

  position_width = 1

  def __init__(self, rate: float, form: str):
    self.rate, self.form = rate, form

  def bias(self, q_len, kv_len, q_offset=0, kv_offset=0):
    d = jnp.abs(_relative_positions(q_len, kv_len, q_offset, kv_offset))
    d = jnp.log1p(d) if self.form == 'log' else d
    return _rank4(-self.rate * d)

  def position_params(self):
    return jnp.full((1, 1), self.rate, _default_float())

  def position_bias(self, d, params):
    d = jnp.abs(d)
    return -params[0] * (jnp.log1p(d) if self.form == 'log' else d)


def distance_decay(rate: float, form: str = 'log') -> ScoreMod:
  """Attention that decays with distance: −rate·log(1 + |i − j|) (`form='log'`) or −rate·|i − j|.

  The log form is the kernel of KERPLE (Chi et al. 2022) with fixed parameters: a power-law
  decay of the attention weights, e^B = (1 + |i − j|)^(−rate). The linear form is a
  head-independent ALiBi.
  """
  if form not in ('log', 'linear'):
    raise ValueError(f'distance_decay: form must be \'log\' or \'linear\', got {form!r}')
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate >= 0:
    raise ValueError(f'distance_decay: rate must be a number ≥ 0, got {rate!r}')
  return _DistanceDecay(float(rate), form)


class _GaussianWindow(ScoreMod):

  position_width = 1

  def __init__(self, sigma: float):
    self.sigma = sigma

  def bias(self, q_len, kv_len, q_offset=0, kv_offset=0):
    d = _relative_positions(q_len, kv_len, q_offset, kv_offset)
    return _rank4(-(d * d) / (2.0 * self.sigma ** 2))

  def position_params(self):
    return jnp.full((1, 1), 1.0 / (2.0 * self.sigma ** 2), _default_float())

  def position_bias(self, d, params):
    return -(d * d) * params[0]


def gaussian_window(sigma: float) -> ScoreMod:
  """A soft local window: B = −(i − j)²/(2σ²), weights ∝ a Gaussian of the distance.

  The localness prior of Yang et al. (2018, "Modeling Localness for Self-Attention Networks")
  with a fixed centre (the query) and width; wrap it in `learnable` to train it.
  """
  if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
    raise ValueError(f'gaussian_window: sigma must be a number > 0, got {sigma!r}')
  return _GaussianWindow(float(sigma))


# ------------------------------------------------------------------------------------------
# Array priors.

class _ArrayBias(ScoreMod):

  def __init__(self, array: np.ndarray, source: str):
    self.table = _Constant(array)
    self.source = source
    self.num_heads = array.shape[0] if array.ndim == 3 else None

  def bias(self, q_len, kv_len, q_offset=0, kv_offset=0):
    b = _window(self.table.value, q_len, kv_len, q_offset, kv_offset, self.source,
                'give a prior as large as the longest sequence')
    return _rank4(jnp.asarray(b, jnp.float32))


def _as_prior(array: Any, source: str, probabilities: bool, eps: float) -> np.ndarray:
  a = np.asarray(array)
  if a.ndim not in (2, 3):
    raise ValueError(f'{source}: a prior must be [T, S] or [N, T, S], got shape {a.shape}')
  if a.dtype.kind not in 'biuf':
    raise ValueError(f'{source}: a prior must hold numbers, got dtype {a.dtype}')
  a = a.astype(np.float64)
  if not np.isfinite(a).all():
    raise ValueError(f'{source}: the prior holds NaN or ±inf; for a hard mask use '
                     'attention.mask instead, for probabilities pass probabilities=True')
  if probabilities:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < np.inf:
      raise ValueError(f'{source}: eps must be a finite number > 0, got {eps!r}')
    if (a < 0).any():
      raise ValueError(f'{source}: probabilities must be ≥ 0 (min {a.min()})')
    # The floor log(eps) keeps P = 0 finite: a −inf bias would give NaN on rows it fully
    # covers, and blocking attention is the mask's job.
    a = np.log(a + eps)
  return a.astype(np.float32)


def from_array(array: Any, *, probabilities: bool = False, eps: float = 1e-6) -> ScoreMod:
  """A prior given as an array, `[T, S]` or per-head `[N, T, S]`.

  By default the array is the additive bias B itself. With `probabilities=True` it is a
  non-negative prior P (e.g. alignment probabilities, normalised co-occurrence), used as
  B = log(P + eps): the softmax then multiplies the attention by (P + eps), and P = 0 gives the
  finite floor log(eps), never −inf. The sequence must fit inside the array.
  """
  return _ArrayBias(_as_prior(array, 'from_array', probabilities, eps), 'from_array')


def load(path: str, *, probabilities: bool = False, eps: float = 1e-6) -> ScoreMod:
  """`from_array` of a `.npy` file (`np.save(path, array)`), read without pickle."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'bias file {path!r} not found (working directory {os.getcwd()!r})')
  try:
    array = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f'bias file {path!r} is not a plain .npy array: {e}') from None
  source = f'bias file {path!r}'
  return _ArrayBias(_as_prior(array, source, probabilities, eps), source)


# ------------------------------------------------------------------------------------------
# Learnable tables and the multiplicative form.

class _Learnable(ScoreMod):

  def __init__(self, prior: ScoreMod, max_len: int, num_heads: int):
    self.max_len = max_len
    self.num_heads = num_heads
    self.table = nnx.Param(prior.dense(max_len, max_len, num_heads)[0])  # [N, L, L]

  def bias(self, q_len, kv_len, q_offset=0, kv_offset=0):
    return _rank4(_window(self.table[...], q_len, kv_len, q_offset, kv_offset,
                          f'the learnable bias table (max_len={self.max_len})',
                          'raise max_len (model.max_len) or use shorter sequences'))


def learnable(prior: ScoreMod, max_len: int, *, num_heads: int | None = None) -> ScoreMod:
  """A trainable bias B = table[h, i, j] initialised to `prior` (B = B_prior + Δ, Δ₀ = 0).

  The table is an `nnx.Param` of shape `[N, max_len, max_len]` float32 (N·max_len² parameters
  per layer, so mind max_len); positions beyond max_len are an error. Its gradient is the score
  gradient dS, so every (head, i, j) entry is trained from the pairs it scores. For the idea of
  a learned mask see Barrios & Jin (2024, arXiv 2406.02761); here it starts from a prior. For a
  few parameters instead, see `learnable_alibi`.

  Args:
    prior: an additive score mod (`alibi(8)`, `gaussian_window(8)`, `load('p.npy')`, ...).
    max_len: the longest query/key position the table covers.
    num_heads: heads of the table; taken from the prior when it has per-head values.
  """
  if not isinstance(prior, ScoreMod) or not prior.additive:
    raise ValueError(f'learnable: the prior must be an additive score mod (e.g. alibi(), '
                     f'gaussian_window(8)), got {type(prior).__name__}')
  if isinstance(max_len, bool) or not _is_static_int(max_len) or max_len < 1:
    raise ValueError(f'learnable: max_len must be a positive int, got {max_len!r}')
  num_heads = num_heads if num_heads is not None else prior.num_heads
  if num_heads is None:
    raise ValueError('learnable: pass num_heads (the prior is the same for every head)')
  return _Learnable(prior, int(max_len), int(num_heads))


class _Multiplicative(ScoreMod):

  additive = False

  def __init__(self, factor: ScoreMod):
    self.factor = factor
    self.num_heads = factor.num_heads

  def __call__(self, scores, q_offset=0, kv_offset=0):
    self._check_heads(scores.shape[-3])
    q_len, kv_len = scores.shape[-2:]
    factor = self.factor.bias(q_len, kv_len, q_offset, kv_offset)
    return scores * factor.astype(accumulation_dtype(scores))

  def bias(self, q_len, kv_len, q_offset=0, kv_offset=0):
    raise ValueError('a multiplicative score mod has no additive bias')

  def dense(self, q_len, kv_len, num_heads):
    """The factor M (not an additive bias) as float32 `[1, num_heads, T, S]`."""
    return self.factor.dense(q_len, kv_len, num_heads)


def multiplicative(factor: Any) -> ScoreMod:
  """Scores multiplied by M before the softmax, softmax(s ⊙ M), as some papers do.

  Caveat: this is *not* a mask and not a log-prior. M = 0 sets the score to 0, which still gets
  weight e⁰ relative to the others, so M = 0 does **not** block attention; a negative M inverts
  preferences; M acts as a per-pair temperature. It gives no sparsity (no block can be skipped)
  and cuDNN cannot run it. To forbid attention use `attention.mask`; to weight it use an
  additive prior (B = log w).

  Args:
    factor: M as an array `[T, S]` / `[N, T, S]`, or an additive score mod whose bias values
      are used as M (`multiplicative(load('m.npy'))`, or `learnable(...)` to train M).
  """
  if isinstance(factor, ScoreMod):
    if not factor.additive:
      raise ValueError('multiplicative: the factor must be an array or an additive score mod')
    return _Multiplicative(factor)
  return _Multiplicative(from_array(factor))


# ------------------------------------------------------------------------------------------
# Config expressions.

def parse(spec: str | None, *, num_heads: int, max_len: int, rngs: nnx.Rngs,
          option: str = 'attention.bias') -> ScoreMod | None:
  """Builds the score mod a config string describes; `None` for an empty string.

  Examples: `"alibi()"`, `"learnable(gaussian_window(8))"`, `"alibi() + distance_decay(0.5)"`,
  `"multiplicative(load('m.npy'))"`, `"load('p.npy', probabilities=True)"`. `num_heads` and
  `max_len` come from the model and are filled in (do not type them). Allowed: the constructors
  of this module with literal or nested-call arguments, `+` and parentheses.

  Args:
    spec: the expression (`config.attention.bias`).
    num_heads: attention heads of the layer.
    max_len: longest sequence, the size of `learnable` tables (`config.model.max_len`).
    rngs: for learnable mods with a random initialisation; those here all start from their
      prior, so it is unused today but part of the signature callers rely on.
  """
  del rngs  # See the docstring: every learnable mod here starts from its prior.
  if spec is None or not spec.strip():
    return None
  functions = {
      'alibi': functools.partial(alibi, num_heads),
      'learnable_alibi': functools.partial(learnable_alibi, num_heads),
      'distance_decay': distance_decay,
      'gaussian_window': gaussian_window,
      'from_array': from_array,
      'load': load,
      'learnable': functools.partial(learnable, max_len=max_len, num_heads=num_heads),
      'multiplicative': multiplicative,
  }
  out = evaluate_expression(spec, functions=functions, operators={ast.Add: lambda a, b: a + b},
                            option=option, nested_calls=True,
                            hint=' (num_heads and max_len come from the model; do not pass them)')
  if not isinstance(out, ScoreMod):
    raise ValueError(f'{option}={spec!r} does not describe a score mod '
                     f'(got {type(out).__name__})')
  return out
