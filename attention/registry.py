"""Registry of attention cores: `attention.kind` → an `nnx.Module` class.

A core implements one attention algorithm on already-projected heads. It is built by the
shared multi-head layer (`models/transformer.py`) and called as

    core(q, k, v, mask, *, score_mod=None, deterministic, sow_weights=False) -> out

with `q: [B, T, N, H]`, `k, v: [B, S, N, H]` (BTNH, as `jax.nn.dot_product_attention`),
`mask: attention.masks.Mask | None` (True = attend) and `score_mod: attention.biases.ScoreMod |
None` (continuous priors applied to the scaled scores). With `sow_weights=True` a core stores
its attention weights (or, for linear variants, an estimate of them) with
`self.sow(nnx.Intermediate, 'attention_weights', w)`, `w: [B, N, T, S]`; analysis code reads
them back with `nnx.pop(model, nnx.Intermediate)`, so the model has one code path.

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

import importlib
from typing import Callable

import jax.numpy as jnp
import ml_collections
from flax import nnx

_CORES: dict[str, type[nnx.Module]] = {}

# Modules that register cores when imported. A variant added in its own file is listed here.
_CORE_MODULES = ('attention.softmax', 'attention.dagpam', 'attention.diff', 'attention.performer',
                 'attention.topk', 'attention.sea')


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
  """`config.impl` if `kind` has it; otherwise a ValueError listing the ones it has."""
  if config.impl not in implementations:
    raise ValueError(f'attention.impl={config.impl!r} is not available for attention.kind={kind}; '
                     f'choose one of: {", ".join(implementations)}')
  return config.impl


def check_choice(kind: str, option: str, value, choices) -> None:
  """A ValueError naming `attention.<kind>.<option>` when `value` is not one of `choices`."""
  if value not in choices:
    raise ValueError(f'attention.{kind}.{option}={value!r} is not supported; expected one of: '
                     f'{", ".join(map(str, choices))}')


def create_core(config: ml_collections.ConfigDict, *, num_heads: int, head_dim: int,
                rngs: nnx.Rngs, layer_index: int = 0, max_len: int = 512) -> nnx.Module:
  """Builds the core named by `config.kind` (`config` is the `attention` ConfigDict)."""
  cls = core_class(config.kind)
  return cls(num_heads=num_heads, head_dim=head_dim, config=config, layer_index=layer_index,
             max_len=max_len, rngs=rngs)
