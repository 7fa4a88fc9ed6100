"""Where a Pallas kernel runs: Triton on NVIDIA GPUs, Mosaic on TPUs, the interpreter on CPU.

`pl.pallas_call` needs to be told how to compile. On GPUs jax's default Pallas lowering is
Mosaic GPU, which rejects kernels written in the portable, Triton-style subset used here (block
specs, `fori_loop`, `pl.ds` loads), so the GPU path always passes `pltriton.CompilerParams`
explicitly. TPUs get `pltpu.CompilerParams`. CPUs have no Pallas compiler: kernels run in
interpret mode there, which is for tests only (it is orders of magnitude slower than XLA).

`resolve(platform)` gives the `Backend` for a platform name (`'gpu'`/`'cuda'`, `'tpu'`, `'cpu'`;
None = `jax.default_backend()`), and `Backend.check(...)` refuses what a backend cannot take
(head dims, dtypes, block sizes) with a message that lists what it can.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp

_PLATFORMS = {'gpu': 'triton', 'cuda': 'triton', 'tpu': 'tpu', 'cpu': 'interpret'}
# Dtypes a kernel computes on. float64 is for reference checks in the interpreter only.
_DTYPES = {'triton': ('bfloat16', 'float16', 'float32'),
           'tpu': ('bfloat16', 'float32'),
           'interpret': ('bfloat16', 'float16', 'float32', 'float64')}


def _power_of_two(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class Backend:
  """One Pallas target. `name` is 'triton', 'tpu' or 'interpret'; `tpu_interpret` runs the
  TPU program in the TPU interpreter on CPU (SMEM/VMEM semantics, race detection; tests)."""
  name: str
  tpu_interpret: bool = False

  @property
  def interpret(self):
    """The `interpret` argument of `pl.pallas_call`."""
    if self.tpu_interpret:
      from jax.experimental.pallas import tpu as pltpu
      return pltpu.InterpretParams(detect_races=True)
    return self.name == 'interpret'

  def compiler_params(self, num_grid_axes: int, head_dim: int):
    """The `compiler_params` of `pl.pallas_call` for a kernel whose grid is all parallel."""
    if self.name == 'triton':
      from jax.experimental.pallas import triton as pltriton
      return pltriton.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)
    if self.name == 'tpu':
      from jax.experimental.pallas import tpu as pltpu
      return pltpu.CompilerParams(dimension_semantics=('parallel',) * num_grid_axes)
    return None

  def check(self, *, head_dim: int, block_q: int, block_k: int, dtype=None) -> None:
    """A ValueError naming the value and the supported ones when the backend cannot take it."""
    if dtype is not None and jnp.dtype(dtype).name not in _DTYPES[self.name]:
      raise ValueError(f'attention.impl=pallas on {self.name}: dtype {jnp.dtype(dtype).name} is '
                       f'not supported; supported: {", ".join(_DTYPES[self.name])}')
    for what, value in (('block_q', block_q), ('block_k', block_k)):
      if isinstance(value, bool) or not isinstance(value, int) or not _power_of_two(value) \
          or value < 16:
        raise ValueError(f'attention.{what}={value!r} is not supported by the Pallas kernels; '
                         'expected a power of two ≥ 16 (16, 32, 64, 128, ...) or 0 for the '
                         'default')
      if self.name == 'tpu' and value % 128:
        raise ValueError(f'attention.{what}={value} is not supported on tpu; expected a '
                         'multiple of 128 (the TPU lane width)')
    if self.name == 'triton' and not (_power_of_two(head_dim) and 16 <= head_dim <= 256):
      raise ValueError(f'attention.impl=pallas on triton: head dim {head_dim} is not supported; '
                       'supported: 16, 32, 64, 128, 256')
    if self.name == 'tpu' and head_dim % 128 and head_dim not in (32, 64):
      raise ValueError(f'attention.impl=pallas on tpu: head dim {head_dim} is not supported; '
                       'supported: 32, 64 or a multiple of 128')


def resolve(platform: str | None = None) -> Backend:
  """The backend for `platform` (None: the default JAX backend); 'tpu_interpret' is the TPU
  program under the TPU interpreter, for tests on CPU."""
  platform = jax.default_backend() if platform is None else platform
  if platform == 'tpu_interpret':
    return Backend('tpu', tpu_interpret=True)
  if platform not in _PLATFORMS:
    raise ValueError(f'Pallas kernels: unknown platform {platform!r}; known: '
                     f'{", ".join(sorted(_PLATFORMS) + ["tpu_interpret"])}')
  return Backend(_PLATFORMS[platform])


_LOGGED_CHOICES: set = set()


def auto_implementation(kind: str, dtype, *, dropout: float, additive: bool,
                        cudnn: bool = False, platform: str | None = None) -> str:
  """What `attention.impl=auto` runs for a kind with a Pallas kernel, logged once per choice.

  CPU: xla (the kernels only interpret there). GPU: cudnn where the kind has it (softmax) and
  the inputs are bfloat16/float16, else pallas; TPU: pallas. The kernels have no attention
  dropout and only additive score mods, so either of those means xla.
  """
  platform = jax.default_backend() if platform is None else platform
  dtype = jnp.dtype(dtype)
  if platform not in ('gpu', 'tpu') or dropout or not additive:
    choice = 'xla'
  elif platform == 'gpu' and cudnn and dtype in (jnp.bfloat16, jnp.float16):
    choice = 'cudnn'
  else:
    choice = 'pallas'
  key = (kind, platform, dtype.name, choice)
  if key not in _LOGGED_CHOICES:
    _LOGGED_CHOICES.add(key)
    logging.info('attention.impl=auto: attention.kind=%s runs impl=%s on %s (%s inputs)',
                 kind, choice, platform, dtype.name)
  return choice


def describe(attention_config, dtype) -> str:
  """One line saying which implementation `attention.kind/impl` runs here, and on what.

  Shown by `train.py --show_config` and at the start of training, so that `impl=auto` and
  the Pallas backend (Triton, Mosaic TPU, or the CPU interpreter) are never a surprise.
  """
  import importlib  # pylint: disable=import-outside-toplevel
  from attention import registry  # pylint: disable=import-outside-toplevel
  kind, impl = attention_config.kind, attention_config.impl
  module = importlib.import_module(registry.core_class(kind).__module__)
  implementations = getattr(module, 'IMPLEMENTATIONS', ('xla',))
  platform = jax.default_backend()
  choice = impl
  if impl == 'auto':
    choice = 'xla'
    if 'pallas' in implementations:
      choice = auto_implementation(
          kind, dtype, dropout=attention_config.dropout,
          additive='multiplicative' not in str(attention_config.get('bias', '')),
          cudnn='cudnn' in implementations, platform=platform)
  line = f'attention.kind={kind} impl={impl}' + (f' → {choice}' if impl == 'auto' else '')
  line += f' on {platform}'
  if choice == 'pallas':
    name = resolve(platform).name
    line += f' (Pallas: {"the interpreter, slow: for tests" if name == "interpret" else name})'
  return line
