"""The XLA:CPU-only computation paths, and the switch that turns them off.

On the CPU backend three computations take a different route to the same result, because
XLA:CPU runs the generic one slowly (docs/benchmarks.md, "CPU training step vs PyTorch"):

- softmax attention (`attention/softmax.py`, impl `xla`) runs query block by query block over
  the keys each block's mask lets it see, skipping the tiles above a causal diagonal;
- the transformer's linear layers (`models/transformer.py` `flat_dot_general`) multiply
  `[B, T, I]` inputs as one `[B·T, I]` matrix, so that the weight gradient is a plain 2-D
  product;
- the FFN's exact GELU (`models/transformer.py` `gelu`) is written x·(1 + erf(x/√2))/2, as
  PyTorch writes it, instead of `jax.nn.gelu`'s erfc form, which XLA:CPU expands into slower
  code.

Accelerators never take them. `enabled()` is read while a function is traced; trace under
`disabled()` to get the generic computation on CPU as well (the benchmark's "before", tests
comparing the two):

    with cpu_paths.disabled():
      compiled = jax.jit(step).lower(state, batch).compile()
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax

_enabled = True


def enabled() -> bool:
  """Whether code traced now should take the CPU paths: on the CPU backend, unless disabled."""
  return _enabled and jax.default_backend() == 'cpu'


@contextlib.contextmanager
def disabled() -> Iterator[None]:
  """Traces inside this block take the generic paths. A function already traced (and cached by
  `jax.jit`) keeps the paths it was traced with."""
  global _enabled
  previous, _enabled = _enabled, False
  try:
    yield
  finally:
    _enabled = previous
