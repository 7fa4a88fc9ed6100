"""The pieces of the CPU training step timed alone, forward + backward, JAX against PyTorch.

    pip install torch --index-url https://download.pytorch.org/whl/cpu   # only to measure
    python benchmarks/cpu_components.py [--rounds=10] [--out=benchmarks/results/cpu_components.json]

Where `benchmarks/lm_step.py` says how far the whole step is behind PyTorch on CPU, this says
which piece holds the gap, at the byte-level `small` LM's shapes (batch 8 × 256 tokens,
d_model 256, 8 heads × 32, FFN 1024): the causal softmax attention core (ours with the CPU paths
of attention/cpu_paths.py against `F.scaled_dot_product_attention(is_causal=True)`, both taking
and returning `[B, T, N, H]`), the GELU FFN (two linear layers), a LayerNorm and the GELU
alone. Each is the gradient of Σ output·g with respect to the inputs and the parameters. The
variants take turns round by round in a rotating order, `--steps_per_round` calls each, and
the table gives medians of the per-call times (milliseconds) and JAX / PyTorch.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from benchmarks import timing  # noqa: E402

_ROUNDS = flags.DEFINE_integer('rounds', 10, 'Rounds of timing in turns.')
_STEPS = flags.DEFINE_integer('steps_per_round', 5, 'Timed calls of each variant per round.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/cpu_components.json', 'Result file.')

B, T, D, N, FF = 8, 256, 256, 8, 1024


def _jax_pieces() -> dict[str, Callable[[], None]]:
  """`name → call`: the gradient of each piece, jitted, on fixed random inputs."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  import attention  # pylint: disable=g-import-not-at-top
  from attention import masks  # pylint: disable=g-import-not-at-top
  from models import transformer  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
  x, g, g_ff = normal(B, T, D), normal(B, T, D), normal(B, T, FF)
  q, k, v, g_heads = (normal(B, T, N, D // N) for _ in range(4))
  core = attention.make_core('softmax', num_heads=N, head_dim=D // N)
  causal = masks.causal()

  def module_grad(module, call, inputs, cotangent):
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params, *inputs):
      return jnp.sum(call(nnx.merge(graphdef, params, rest), *inputs) * cotangent)

    grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(inputs) + 1))))
    return lambda: jax.block_until_ready(grad(params, *inputs))

  ffn = transformer.FeedForward(D, FF, activation='gelu', rngs=nnx.Rngs(0))
  norm = nnx.LayerNorm(D, epsilon=transformer.LAYER_NORM_EPS, rngs=nnx.Rngs(0))
  gelu = jax.jit(jax.grad(lambda h: jnp.sum(transformer.gelu(h) * g_ff)))
  h = normal(B, T, FF)
  return {
      'attention core': module_grad(core, lambda c, q, k, v: c(q, k, v, causal), (q, k, v),
                                    g_heads),
      'GELU FFN': module_grad(ffn, lambda f, x: f(x, deterministic=True), (x,), g),
      'LayerNorm': module_grad(norm, lambda m, x: m(x), (x,), g),
      'GELU': lambda: jax.block_until_ready(gelu(h)),
  }


def _torch_pieces() -> dict[str, Callable[[], None]] | None:
  """The same pieces in PyTorch (None without torch)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.manual_seed(0)
  leaf = lambda *shape: torch.randn(*shape, requires_grad=True)
  x, q, k, v = leaf(B, T, D), leaf(B, T, N, D // N), leaf(B, T, N, D // N), leaf(B, T, N, D // N)
  h = leaf(B, T, FF)
  g, g_ff, g_heads = torch.randn(B, T, D), torch.randn(B, T, FF), torch.randn(B, T, N, D // N)
  fc1, fc2, norm = torch.nn.Linear(D, FF), torch.nn.Linear(FF, D), torch.nn.LayerNorm(D)
  tensors = [x, q, k, v, h, *fc1.parameters(), *fc2.parameters(), *norm.parameters()]

  def backward(fn, cotangent):
    def run():
      fn().backward(cotangent)
      for t in tensors:
        t.grad = None
    return run

  def sdpa():
    heads = lambda t: t.transpose(1, 2)
    return heads(F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True))

  return {
      'attention core': backward(sdpa, g_heads),
      'GELU FFN': backward(lambda: fc2(F.gelu(fc1(x))), g),
      'LayerNorm': backward(lambda: norm(x), g),
      'GELU': backward(lambda: F.gelu(h), g_ff),
  }


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  runners = {f'jax: {k}': fn for k, fn in _jax_pieces().items()}
  torch_pieces = _torch_pieces()
  note = 'torch not importable: JAX alone' if torch_pieces is None else ''
  for k, fn in (torch_pieces or {}).items():
    runners[f'pytorch: {k}'] = fn
  machine = timing.machine()
  times = timing.time_in_turns(runners, _ROUNDS.value, _STEPS.value)
  ms = {name: 1e3 * statistics.median(t for r in rounds for t in r)
        for name, rounds in times.items()}
  pieces = [name.split(': ', 1)[1] for name in runners if name.startswith('jax: ')]
  rows = []
  print(f'forward + backward, median ms over {_ROUNDS.value} rounds × {_STEPS.value} calls '
        f'(jax {jax.__version__}, {jax.default_backend()}) {note}')
  print(f'  {"piece":16s} {"JAX":>8s} {"PyTorch":>8s} {"JAX/PyTorch":>12s}')
  for piece in pieces:
    ours, theirs = ms[f'jax: {piece}'], ms.get(f'pytorch: {piece}')
    rows.append({'piece': piece, 'jax_ms': ours, 'pytorch_ms': theirs,
                 'jax_over_pytorch': None if theirs is None else ours / theirs})
    line = f'  {piece:16s} {ours:8.2f}'
    if theirs is not None:
      line += f' {theirs:8.2f} {ours / theirs:12.2f}'
    print(line)
  out = Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({'shapes': {'B': B, 'T': T, 'd_model': D, 'heads': N, 'd_ff': FF},
                             'rounds': _ROUNDS.value, 'steps_per_round': _STEPS.value,
                             'machine': machine, 'backend': jax.default_backend(),
                             'rows': rows, 'note': note}, indent=2) + '\n')
  print(f'  written to {out}')


if __name__ == '__main__':
  app.run(main)
