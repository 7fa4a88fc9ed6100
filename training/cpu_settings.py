"""Process-wide settings for training on the CPU backend; train.py calls `configure()` first.

What it sets, and why (measured with benchmarks/lm_step.py, docs/benchmarks.md "CPU training
step vs PyTorch"):

- Dropout's random bits. JAX lowers the threefry2x32 hash as a loop of 5 iterations on CPU
  (it compiles faster) and unrolled on every other platform. XLA:CPU runs that loop as separate
  passes over the `[B, T, D]` counters, one per iteration; unrolled, the whole hash fuses into
  one pass with the mask. The bits are the same (it is one function either way), so runs stay
  bitwise reproducible; the byte-level LM's training step (9 dropout sites) runs about 3%
  faster and compiles about 5 s slower, which a training run repays within its first few
  hundred steps. Tests do not call this: they compile far more often than they step.

Nothing here initialises a backend (multi-host runs must call `jax.distributed.initialize`
first), and nothing changes what an accelerator compiles: the rule is registered for the CPU
platform only. The model's CPU-only computation paths are chosen at trace time instead
(attention/cpu_paths.py).
"""

from __future__ import annotations


def configure() -> None:
  """Applies the settings above; a no-op where this jax lays its internals out differently."""
  try:
    # pylint: disable-next=g-import-not-at-top
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  unrolled = getattr(threefry2x32, '_threefry2x32_lowering_rule', None)
  primitive = getattr(threefry2x32, 'threefry2x32_p', None)
  if unrolled is not None and primitive is not None:
    mlir.register_lowering(primitive, unrolled, platform='cpu')
