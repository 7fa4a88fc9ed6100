"""Registry of attention cores: `attention.kind` → an `nnx.Module` class.

A core implements one attention algorithm on already-projected heads. It is built by the
shared multi-head layer (`models/transformer.py`) and called as

    core(q, k, v, mask, *, score_mod=None, deterministic, sow_weights=False) -> out

with `q: [B, T, N, H]`, `k, v: [B, S, N, H]` (BTNH, as `jax.nn.dot_product_attention`),
`mask: attention.masks.Mask | None` (True = attend) and `score_mod: attention.biases.ScoreMod |
None` (continuous priors applied to the scaled scores). With `sow_weights=True` a core stores
its attention weights (or, for linear variants, an estimate of them) with
`self.sow(nnx.Intermediate, 'attention_weights', w)`, `w: [B, N, T, S]`; analysis reads them
back with `attention.capture.attention_maps(model, …)` (under `nnx.capture`, so nothing stays
on the module), and the model has one code path. What each core sows when asked:

  every core   'attention_weights' [B, N, T, S]: the map that multiplies the values, so that
               context_i = Σ_j w_ij v_j. Exact for softmax, daGPAM (signed), top-k (sparse),
               NON, NAP and CoDA (signed, rows not summing to 1) and Performer (the implied,
               normalised kernel map: the output is exactly this map times V); SEA's is its
               sparse branch σ(s_prob)·P, which its output mixes with an average branch, so
               it is an estimate of how SEA mixes its values.
  daGPAM       with `attention.dagpam.sow_branches`: P⁺, P⁻ as 'positive_weights' /
               'negative_weights' and (c⁺, c⁻) as 'branch_coefficients', P = c⁺P⁺ − c⁻P⁻.
  DIFF         'query_scale' [B, N/2, T] and 'value_scale' [2d]: its per-head RMSNorm makes
               context_i = query_scale_i · Σ_j w_ij (value_scale ⊙ v_j), exact per query.
  SEA          'estimate', 'estimate_log_probs', 'dense_log_probs' (attention/sea.py).
The layer around the core sows 'values' (v with its bias) and 'context' (the core's output).
Cores that form dense scores (softmax, daGPAM's two branches, DIFF, NON, NAP, CoDA's affinity)
also mark them with `perturb('scores', s)` while sowing under `nnx.capture`, so
`attention.capture.score_gradients` gives ∂loss/∂scores.

Building one core by hand (tests, notebooks) needs no ConfigDict:

    core = make_core('dagpam', num_heads=4, head_dim=16, lambda_pos=0.3)   # defaults + overrides

Registering a new variant is one decorated class in one file:

    @register('mykind')
    class MyAttention(nnx.Module):
        @classmethod
        def default_config(cls) -> ml_collections.ConfigDict: ...   # `attention.mykind`
        def __init__(self, *, num_heads, head_dim, config, layer_index, max_len, rngs): ...

`config` is the whole `attention` ConfigDict; the core reads `config.dropout`, `config.impl`
and its own options in `config.<kind>`. `layer_index` (0-based depth of the layer, for cores
whose initialisation depends on depth, e.g. DIFF's λ_init) and `max_len` (the longest sequence
the model is built for, for cores with position tables) may be ignored.

A core that cannot honour a mask or a score mod raises ValueError naming the option
(`attention/masks.py` `causal_padding_parts` splits the masks that linear-time cores support).

Floating point: floats follow the inputs. A core computes its scores, softmax and sums in
`accumulation_dtype(q, k, v)` = `jnp.promote_types(jnp.result_type(q, k, v), jnp.float32)`:
float32 for bfloat16, float16 and float32 inputs (float32 accumulation of low-precision
products), float64 for float64 inputs (with `jax_enable_x64`), so float64 reference checks and
finite differences see float64 arithmetic throughout, not float32 cast up. The output is in
`v`'s dtype. Parameters are stored in float32 and promoted where they meet the activations;
score mods return scores in the scores' dtype. The linear-time cores (Performer, SEA) follow the
same rule for their feature maps and sums; their random projections are float32 draws.
"""

from __future__ import annotations

import math

import importlib
from typing import Callable

import jax.numpy as jnp
import ml_collections
from flax import nnx

_CORES: dict[str, type[nnx.Module]] = {}

# Modules that register cores when imported. A variant added in its own file is listed here.
_CORE_MODULES = ('attention.softmax', 'attention.dagpam', 'attention.diff', 'attention.performer',
                 'attention.topk', 'attention.sea', 'attention.non_nap', 'attention.coda')


def accumulation_dtype(*inputs) -> jnp.dtype:
  """The dtype a core computes in: the inputs' promoted dtype, at least float32.

  float32 for bfloat16/float16/float32 arrays (or dtypes), float64 for float64 ones.
  """
  return jnp.promote_types(jnp.result_type(*inputs), jnp.float32)


def register(kind: str) -> Callable[[type], type]:
  """Class decorator that makes a core selectable as `attention.kind=<kind>`."""

  def wrap(cls: type) -> type:
    if kind in _CORES and _CORES[kind] is not cls:
      raise ValueError(f'attention.kind {kind!r} is registered twice: '
                       f'{_CORES[kind].__qualname__} and {cls.__qualname__}')
    _CORES[kind] = cls
    cls.kind = kind
    return cls

  return wrap


def _load_all() -> None:
  for name in _CORE_MODULES:
    importlib.import_module(name)


def known_kinds() -> list[str]:
  _load_all()
  return sorted(_CORES)


def core_class(kind: str) -> type[nnx.Module]:
  """The class registered for `kind`; a clear error listing the known kinds otherwise."""
  _load_all()
  if kind not in _CORES:
    raise ValueError(f'unknown attention.kind {kind!r}; known: {", ".join(sorted(_CORES))}')
  return _CORES[kind]


def default_configs() -> ml_collections.ConfigDict:
  """`{kind: options}` for every registered core, to be placed under `config.attention`."""
  _load_all()
  out = ml_collections.ConfigDict()
  for kind in sorted(_CORES):
    cls = _CORES[kind]
    out[kind] = cls.default_config() if hasattr(cls, 'default_config') else ml_collections.ConfigDict()
  return out


def check_implementation(config: ml_collections.ConfigDict, kind: str,
                         implementations: tuple[str, ...] = ('xla',)) -> str:
  """`config.impl` if `kind` has it; otherwise a ValueError listing the ones it has.

  `auto` is accepted by every kind: a kind without an `auto` rule of its own runs its first
  implementation (xla)."""
  if config.impl == 'auto' and 'auto' not in implementations:
    return implementations[0]
  if config.impl not in implementations:
    raise ValueError(f'attention.impl={config.impl!r} is not available for attention.kind={kind}; '
                     f'choose one of: {", ".join(implementations)}')
  return config.impl


def check_shapes(kind: str, num_heads: int, head_dim: int, q, k, v) -> None:
  """A ValueError naming `attention.kind=<kind>` unless `q: [B, T, N, H]` and `k, v: [B, S, N, H]`
  with the core's N = `num_heads` and H = `head_dim`."""
  expected = (num_heads, head_dim)
  if any(x.ndim != 4 or x.shape[2:] != expected or x.shape[0] != q.shape[0]
         for x in (q, k, v)) or k.shape[1] != v.shape[1]:
    raise ValueError(f'attention.kind={kind} expects q [B, T, {num_heads}, {head_dim}] and '
                     f'k, v [B, S, {num_heads}, {head_dim}] (BTNH); got q {tuple(q.shape)}, '
                     f'k {tuple(k.shape)}, v {tuple(v.shape)}')


def check_choice(kind: str, option: str, value, choices) -> None:
  """A ValueError naming `attention.<kind>.<option>` when `value` is not one of `choices`."""
  if value not in choices:
    raise ValueError(f'attention.{kind}.{option}={value!r} is not supported; expected one of: '
                     f'{", ".join(map(str, choices))}')


def check_number(kind: str, option: str, value, *, minimum: float, strict: bool) -> float:
  """`value` as a float, or a ValueError naming `attention.<kind>.<option>` unless it is a finite
  number above `minimum` (`strict`) or at least `minimum`."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      (value > minimum if strict else value >= minimum) and value < math.inf):
    raise ValueError(f'attention.{kind}.{option}={value!r} is not supported; expected a finite '
                     f'number {">" if strict else "≥"} {minimum:g}')
  return float(value)


def create_core(config: ml_collections.ConfigDict, *, num_heads: int, head_dim: int,
                rngs: nnx.Rngs, layer_index: int = 0, max_len: int = 512) -> nnx.Module:
  """Builds the core named by `config.kind` (`config` is the `attention` ConfigDict)."""
  cls = core_class(config.kind)
  return cls(num_heads=num_heads, head_dim=head_dim, config=config, layer_index=layer_index,
             max_len=max_len, rngs=rngs)


# The `attention.*` keys a core reads besides its own options.
CORE_KEYS = ('impl', 'dropout', 'block_q', 'block_k')


def core_config(kind: str, **overrides) -> ml_collections.ConfigDict:
  """The `attention` ConfigDict a core of `kind` reads: defaults, then `overrides`.

  An override is `impl=` or `dropout=`, or one of the kind's options by name
  (`core_config('topk', k=8)` sets `attention.topk.k`); an unknown name is an error listing
  the known ones.
  """
  cls = core_class(kind)
  options = cls.default_config() if hasattr(cls, 'default_config') else ml_collections.ConfigDict()
  config = ml_collections.ConfigDict({'kind': kind, 'impl': 'xla', 'dropout': 0.0,
                                      'block_q': 0, 'block_k': 0, 'mask': '', 'bias': ''})
  config[kind] = options
  for name, value in overrides.items():
    if name in CORE_KEYS:
      config[name] = value
    elif name in options:
      options[name] = value
    else:
      known = ', '.join(CORE_KEYS + tuple(sorted(options)))
      raise ValueError(f'make_core({kind!r}): unknown option {name!r}; known: {known}')
  return config


def make_core(kind: str, *, num_heads: int, head_dim: int, seed: int = 0,
              rngs: nnx.Rngs | None = None, layer_index: int = 0, max_len: int = 512,
              **overrides) -> nnx.Module:
  """A core of `kind` with its default options and keyword `overrides` (`core_config`).

  `rngs` default to `nnx.Rngs(params=seed, dropout=seed + 1)`. Called as
  `core(q, k, v, mask, *, score_mod=None, deterministic=True, sow_weights=False)`; its
  attention maps: `attention.capture.attention_maps(core, q, k, v, mask)['']`.
  """
  if rngs is None:
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  return create_core(core_config(kind, **overrides), num_heads=num_heads, head_dim=head_dim,
                     rngs=rngs, layer_index=layer_index, max_len=max_len)
