"""Throughput of the LM training step: bare jitted step vs the full training loop.

    python benchmarks/lm_step.py --config=configs/wikitext103.py:size=small \
        --config.data.dir=../shared/data/wikitext-2 [--steps=60] [--peak_tflops=989]

Prints, and writes to benchmarks/results/lm_step-<name>.json:
- tokens/s of the bare jitted train step (one batch on device, repeated; median of timed runs);
- tokens/s of the full loop (`training.loop.train_and_evaluate`: data pipeline, metric logging
  and checkpointing included; validation runs once, after the last timed window), the median
  over its logging windows after the first (which holds compilation);
- their ratio (target ≥ 0.95 at size=small);
- peak memory (device allocator peak on GPU/TPU; process max RSS on CPU);
- model FLOPs per token (6·N + 12·L·T·d, Kaplan et al. 2020 / PaLM appendix B, with N the
  parameters that take part in matrix products: a tied embedding counts once, for the output
  layer; a learned position table does not count) and XLA's own cost-analysis count, achieved TFLOP/s, and MFU against
  `--peak_tflops` (default: the bf16 dense peak of known GPUs; none on CPU).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/wikitext103.py:size=small', 'Task config, as for train.py.', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 60, 'Training steps for the full-loop measurement.')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed runs of the bare step.')
_PEAK = flags.DEFINE_float('peak_tflops', None, 'Peak dense TFLOP/s of one device for MFU.')
_OUT = flags.DEFINE_string('out', None, 'Result file (default benchmarks/results/lm_step-<name>.json).')

# Dense bf16 peaks (TFLOP/s, no sparsity) from the vendors' datasheets.
_KNOWN_PEAKS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L4': 121.0}


def _peak_tflops(device) -> float | None:
  if _PEAK.value:
    return _PEAK.value
  kind = getattr(device, 'device_kind', '')
  return next((v for k, v in _KNOWN_PEAKS.items() if k in kind), None)


def model_flops_per_token(config, n_matmul_params: int) -> float:
  m = config.model
  return 6 * n_matmul_params + 12 * m.num_layers * config.seq_len * m.d_model


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  from training import builders, distributed, loop, optim, steps  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  config.progress_bar = False
  data = builders.build_data(config)
  mesh = distributed.data_mesh()
  model = builders.build_model(config)
  graphdef, params, rest = builders.split_model(model)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  n_params = sum(x.size for _, x in leaves)
  n_positions = sum(x.size for p, x in leaves if 'position' in jax.tree_util.keystr(p).lower())
  optimizer = optim.make_optimizer(config.optimizer, config.train_steps)
  state = jax.device_put(builders.initial_state(config, params, optimizer), distributed.replicated(mesh))
  accum = config.optimizer.grad_accum_steps
  it = data.train_iterator(batch_size=config.batch_size, seq_len=config.seq_len, seed=0)
  local = {k: v.reshape((accum, -1) + v.shape[1:]) for k, v in next(it).items()}
  batch = distributed.global_batch(local, mesh, batch_axis=1)
  step_fn = jax.jit(steps.make_train_step(graphdef, rest, optimizer, grad_accum_steps=accum,
                                          label_smoothing=config.label_smoothing), donate_argnums=0)
  compiled = step_fn.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get('flops', 0.0)) if cost else 0.0
  for _ in range(3):
    state, m = step_fn(state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(_REPEATS.value):
    t = time.perf_counter()
    state, m = step_fn(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  tokens_per_step = config.batch_size * config.seq_len
  bare = tokens_per_step / statistics.median(times)
  del state

  # The full loop, in a fresh workdir, with its own data, logging, validation and checkpoints.
  log_every = max(_STEPS.value // 6, 1)
  config.train_steps, config.log_every = _STEPS.value, log_every
  config.checkpoint_every = max(_STEPS.value // 3, 1)
  # Validation is a separate cost, not loop overhead: it runs once, after the last window.
  config.eval_every = _STEPS.value
  with tempfile.TemporaryDirectory() as workdir:
    loop.train_and_evaluate(config, workdir)
    rows = [json.loads(l) for l in (Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  windows = [r['tokens_per_s'] for r in rows if r['split'] == 'train'][1:]
  full = statistics.median(windows)

  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    peak_mem, mem_kind = stats['peak_bytes_in_use'], 'device allocator peak'
  else:
    peak_mem, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process max RSS'
  fpt = model_flops_per_token(config, n_params - n_positions)
  achieved = bare * fpt / 1e12
  peak = _peak_tflops(device)
  result = {
      'config': config_flags.get_config_filename(flags.FLAGS['config']),
      'device': f'{jax.device_count()} × {getattr(device, "device_kind", device.platform)}',
      'parameters': int(n_params), 'seq_len': config.seq_len, 'batch_size': config.batch_size,
      'dtype': config.model.dtype, 'attention': f'{config.attention.kind}/{config.attention.impl}',
      'bare_step_tokens_per_s': bare, 'full_loop_tokens_per_s': full,
      'full_over_bare': full / bare, 'full_loop_windows_tokens_per_s': windows,
      'peak_memory_bytes': int(peak_mem), 'peak_memory_kind': mem_kind,
      'model_flops_per_token': fpt, 'xla_flops_per_token': xla_flops / tokens_per_step,
      'achieved_model_tflops': achieved, 'peak_tflops': peak,
      'mfu': None if peak is None else achieved / (peak * jax.device_count()),
  }
  stem = Path(result['config'].split(':')[0]).stem
  tag = result['config'].partition(':')[2].replace('=', '').replace(',', '-')
  out = Path(_OUT.value) if _OUT.value else Path('benchmarks/results') / f'lm_step-{stem}{"-" + tag if tag else ""}.json'
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + '\n')
  print(f'{result["config"]} on {result["device"]}, {n_params:,} parameters, '
        f'{config.batch_size}×{config.seq_len} tokens/step, {config.model.dtype}')
  print(f'  bare jitted step : {bare:12,.0f} tokens/s (median of {len(times)})')
  print(f'  full loop        : {full:12,.0f} tokens/s (median of {len(windows)} windows)')
  print(f'  full / bare      : {full / bare:12.3f}')
  print(f'  peak memory      : {peak_mem / 2**20:12,.1f} MiB ({mem_kind})')
  print(f'  model FLOPs/token: {fpt:12.4g} (XLA cost analysis: {xla_flops / tokens_per_step:.4g})')
  mfu = 'n/a (pass --peak_tflops)' if peak is None else f'{100 * result["mfu"]:.1f}% of {peak} TFLOP/s'
  print(f'  achieved         : {achieved:12.4f} TFLOP/s; MFU {mfu}')
  print(f'  written to {out}')


if __name__ == '__main__':
  app.run(main)
