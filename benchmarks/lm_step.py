"""Throughput of the LM training step: bare jitted step vs the full training loop, and on CPU
against the same model in PyTorch.

    python benchmarks/lm_step.py --config=configs/wikitext103.py:size=small \
        --config.data.dir=../shared/data/wikitext-2 [--steps=60] [--peak_tflops=989]

    # the CPU comparison with PyTorch (docs/benchmarks.md, "CPU training step vs PyTorch")
    python benchmarks/lm_step.py --config=configs/enwik8.py:size=small \
        --config.data.dir=../shared/data/wikitext-2 --config.model.num_heads=8 \
        --config.model.activation=gelu --config.batch_size=8 --full_loop=false --rounds=15 \
        --out=benchmarks/results/lm_step-enwik8-cpu-vs-pytorch.json

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
  `--peak_tflops` (default: the bf16 dense peak of known GPUs; none on CPU);
- on the CPU backend, `--rounds` rounds that time in turns (the order rotating each round, so a
  change of machine load hits all alike) `--steps_per_round` steps (after
  `--warmup_per_turn` untimed ones) of:
  the JAX step traced without the CPU-only paths (attention/cpu_paths.py) and with the
  threefry lowering JAX ships for CPU (the state before training/cpu_settings.py: "generic");
  the JAX step as train.py runs it ("CPU paths"); and, when `torch` is importable, the same
  model, batch, loss and optimizer in PyTorch (`TorchLM`: pre- or post-LN decoder, GELU or ReLU,
  dropout, tied embedding, `F.scaled_dot_product_attention` with `is_causal`); without torch
  the comparison prints a note and times JAX alone. Medians of the per-step times give tokens/s
  and the ratios to PyTorch; each round's own ratio shows the spread. With `--phases`, the
  forward pass alone and forward + backward are timed the same way, so the table splits each
  step into forward, backward and optimizer update.

PyTorch is not a dependency of the project: install the CPU wheel in the environment only to
measure (`pip install torch --index-url https://download.pytorch.org/whl/cpu`).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import timing  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/wikitext103.py:size=small', 'Task config, as for train.py.', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 60, 'Training steps for the full-loop measurement.')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed runs of the bare step.')
_PEAK = flags.DEFINE_float('peak_tflops', None, 'Peak dense TFLOP/s of one device for MFU.')
_OUT = flags.DEFINE_string('out', None, 'Result file (default benchmarks/results/lm_step-<name>.json).')
_FULL_LOOP = flags.DEFINE_bool('full_loop', True, 'Also time the full training loop.')
_TORCH = flags.DEFINE_bool('torch', True, 'On CPU, compare with the PyTorch model when torch is '
                           'importable.')
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'CPU comparison: rounds of timing in turns.')
_STEPS_PER_ROUND = flags.DEFINE_integer('steps_per_round', 3,
                                        'CPU comparison: timed steps of each variant per round.')
_WARMUP = flags.DEFINE_integer('warmup_per_turn', 0,
                               'CPU comparison: untimed steps at the start of each turn, so that '
                               'every variant is timed in its steady state.')
_PHASES = flags.DEFINE_bool('phases', True, 'CPU comparison: also time forward and '
                            'forward + backward alone.')

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


def _jax_runner(fn: Callable, state, batch, *, updates_state: bool) -> Callable[[], None]:
  """Calls `fn(state, batch)` and waits for it; a train step (`updates_state`, donating its
  state) gets the state it returned at the next call."""
  import jax  # pylint: disable=g-import-not-at-top
  holder = {'state': state}

  def run():
    out = fn(holder['state'], batch)
    if updates_state:
      holder['state'] = out[0]
    jax.block_until_ready(out)

  return run


def _jax_phases(graphdef, rest, label_smoothing: float) -> dict[str, Callable]:
  """Forward and forward + backward of the training loss (dropout on), as the step runs them
  on its first micro-batch; functions of `(state, batch)` that do not update the state."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  def loss(params, batch, key):
    micro = jax.tree.map(lambda x: x[0], batch)
    model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, rest))
    nnx.reseed(model, dropout=key)
    hidden = model(micro['inputs'], deterministic=False)
    nll = model.token_nll(hidden, micro['targets'], label_smoothing=label_smoothing,
                          deterministic=False)
    return jnp.sum(nll * micro['weights'])

  forward = jax.jit(lambda state, batch: loss(state['params'], batch, state['rng']))
  backward = jax.jit(lambda state, batch: jax.value_and_grad(loss)(state['params'], batch,
                                                                   state['rng']))
  return {'forward': forward, 'forward+backward': backward}


def _torch_reference(config, batch: dict, params_count: int):
  """The model, loss and optimizer of `config` in PyTorch, on `batch` (`[micro, B, T]` numpy).

  Returns `(phases, note)`: `phases` maps 'forward', 'forward+backward' and 'step' to callables,
  or is None with `note` saying why there is no reference (no torch, or a config it does not
  mirror). It mirrors the LM of models/lm.py with softmax attention and no priors: token
  embedding N(0, D^-1/2) scaled by √D, sinusoidal (sin half, cos half) or learned positions,
  dropout after the embedding and on each sublayer's output, pre- or post-LN blocks with
  Q/K/V/output projections with biases, a ReLU or exact-GELU FFN, final LayerNorm (pre-LN), the
  transposed embedding (tied) or a bias-free output layer; loss = Σ token NLL · weight / Σ
  weight; gradient clipping and Adam / AdamW / Nesterov SGD as training/optim.py sets them up
  (the learning-rate schedule, a scalar per step, is left out).
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from torch import nn  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, ('PyTorch reference skipped: torch is not importable (pip install torch '
                  '--index-url https://download.pytorch.org/whl/cpu)')
  m, a, o = config.model, config.attention, config.optimizer
  unsupported = [
      (config.task != 'lm', f'task={config.task}'),
      (a.kind != 'softmax', f'attention.kind={a.kind}'),
      (bool(a.mask or a.bias), 'attention.mask / attention.bias priors'),
      (m.adaptive_input or m.adaptive_softmax, 'adaptive input / softmax'),
      (m.dtype != 'float32', f'model.dtype={m.dtype}'),
      (config.label_smoothing > 0, 'label_smoothing'),
  ]
  reasons = [why for bad, why in unsupported if bad]
  if reasons:
    return None, 'PyTorch reference skipped: it does not mirror ' + ', '.join(reasons)
  torch.manual_seed(config.seed)
  act = F.relu if m.activation == 'relu' else F.gelu  # F.gelu is the exact (erf) form

  class Block(nn.Module):

    def __init__(self):
      super().__init__()
      self.q, self.k, self.v, self.o = (nn.Linear(m.d_model, m.d_model) for _ in range(4))
      self.fc1, self.fc2 = nn.Linear(m.d_model, m.d_ff), nn.Linear(m.d_ff, m.d_model)
      self.ln_attn, self.ln_ffn = nn.LayerNorm(m.d_model), nn.LayerNorm(m.d_model)
      self.drop, self.act_drop = nn.Dropout(m.dropout), nn.Dropout(m.activation_dropout)

    def attend(self, x):
      b, t, d = x.shape
      q, k, v = (p(x).view(b, t, m.num_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
      y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                         dropout_p=a.dropout if self.training else 0.0)
      return self.o(y.transpose(1, 2).reshape(b, t, d))

    def ffn(self, x):
      return self.fc2(self.act_drop(act(self.fc1(x))))

    def forward(self, x):
      for sub, norm in ((self.attend, self.ln_attn), (self.ffn, self.ln_ffn)):
        x = x + self.drop(sub(norm(x))) if m.pre_norm else norm(x + self.drop(sub(x)))
      return x

  class TorchLM(nn.Module):

    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(m.vocab_size, m.d_model)
      nn.init.normal_(self.embed.weight, std=m.d_model ** -0.5)
      self.scale = math.sqrt(m.d_model) if m.scale_embeddings else 1.0
      length = config.seq_len
      if m.positions == 'sinusoidal':
        half = m.d_model // 2
        inv_freq = torch.exp(torch.arange(half) * -(math.log(1e4) / max(half - 1, 1)))
        angles = torch.arange(length)[:, None] * inv_freq
        table = F.pad(torch.cat([angles.sin(), angles.cos()], -1), (0, m.d_model % 2))
        self.register_buffer('positions', table)
      elif m.positions == 'learned':
        self.positions = nn.Parameter(torch.randn(m.max_len, m.d_model) * m.d_model ** -0.5)
      else:
        self.positions = None
      self.drop = nn.Dropout(m.dropout)
      self.blocks = nn.ModuleList(Block() for _ in range(m.num_layers))
      self.final_norm = nn.LayerNorm(m.d_model) if m.pre_norm and m.final_norm else None
      self.output = None if m.tie_embeddings else nn.Linear(m.d_model, m.vocab_size, bias=False)

    def forward(self, tokens):
      x = self.embed(tokens) * self.scale
      if self.positions is not None:
        x = x + self.positions[:tokens.shape[1]]
      x = self.drop(x)
      for block in self.blocks:
        x = block(x)
      if self.final_norm is not None:
        x = self.final_norm(x)
      return x @ self.embed.weight.T if self.output is None else self.output(x)

  model = TorchLM()
  n_torch = sum(p.numel() for p in model.parameters())
  if n_torch != params_count:
    return None, (f'PyTorch reference skipped: it has {n_torch:,} parameters, the JAX model '
                  f'{params_count:,}; the two models differ')
  if o.name == 'adamw':
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                                  eps=o.eps, weight_decay=o.weight_decay)
  elif o.name == 'adam':
    optimizer = torch.optim.Adam(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                                 eps=o.eps, weight_decay=o.weight_decay)
  else:
    optimizer = torch.optim.SGD(model.parameters(), lr=o.learning_rate, momentum=o.momentum,
                                nesterov=True, weight_decay=o.weight_decay)
  micro = [{k: torch.from_numpy(v[i].copy()) for k, v in batch.items()}
           for i in range(batch['inputs'].shape[0])]
  micro = [dict(mb, inputs=mb['inputs'].long(), targets=mb['targets'].long()) for mb in micro]
  total_weight = sum(float(mb['weights'].sum()) for mb in micro)

  def loss(mb):
    logits = model(mb['inputs'])
    nll = F.cross_entropy(logits.flatten(0, 1), mb['targets'].flatten(), reduction='none')
    return (nll * mb['weights'].flatten()).sum() / max(total_weight, 1.0)

  def forward():
    loss(micro[0]).item()

  def forward_backward():
    optimizer.zero_grad(set_to_none=True)
    loss(micro[0]).backward()

  def step():
    optimizer.zero_grad(set_to_none=True)
    for mb in micro:
      loss(mb).backward()
    if o.grad_clip_norm > 0:
      nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip_norm)
    optimizer.step()

  model.train()
  return ({'forward': forward, 'forward+backward': forward_backward, 'step': step},
          f'torch {torch.__version__}, {torch.get_num_threads()} threads')


def compare_on_cpu(config, state, batch, np_batch: dict, graphdef, rest, params_count: int,
                   generic_step, cpu_paths_step) -> dict:
  """The generic JAX step, the step with the CPU paths and PyTorch, timed in turns."""
  import jax  # pylint: disable=g-import-not-at-top
  from attention import cpu_paths  # pylint: disable=g-import-not-at-top
  copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)
  runners = {
      'jax generic: step': _jax_runner(generic_step, copy(state), batch, updates_state=True),
      'jax CPU paths: step': _jax_runner(cpu_paths_step, copy(state), batch, updates_state=True)}
  torch_phases, note = None, 'PyTorch reference not requested (--torch=false)'
  if _TORCH.value:
    torch_phases, note = _torch_reference(config, np_batch, params_count)
  if torch_phases is not None:
    runners['pytorch: step'] = torch_phases['step']
  if _PHASES.value:
    with cpu_paths.disabled():  # compiled here: jit would trace at the first call, outside
      generic = {k: fn.lower(state, batch).compile()
                 for k, fn in _jax_phases(graphdef, rest, config.label_smoothing).items()}
    paths = {k: fn.lower(state, batch).compile()
             for k, fn in _jax_phases(graphdef, rest, config.label_smoothing).items()}
    for phase in ('forward', 'forward+backward'):
      runners[f'jax generic: {phase}'] = _jax_runner(generic[phase], state, batch,
                                                      updates_state=False)
      runners[f'jax CPU paths: {phase}'] = _jax_runner(paths[phase], state, batch,
                                                        updates_state=False)
      if torch_phases is not None:
        runners[f'pytorch: {phase}'] = torch_phases[phase]
  times = timing.time_in_turns(runners, _ROUNDS.value, _STEPS_PER_ROUND.value, _WARMUP.value)
  median = {name: statistics.median(t for r in rounds for t in r) for name, rounds in times.items()}
  tokens = config.batch_size * config.seq_len
  out = {'rounds': _ROUNDS.value, 'steps_per_round': _STEPS_PER_ROUND.value,
         'warmup_per_turn': _WARMUP.value, 'pytorch': note,
         'seconds_median': median,
         'tokens_per_s': {name.split(':')[0]: tokens / median[name] for name in median
                          if name.endswith(': step')}}
  if torch_phases is not None:
    # Throughput ratios (> 1: JAX is faster): overall from the medians, and round by round.
    variants = ('jax generic', 'jax CPU paths')
    out['ratio_to_pytorch'] = {v: median['pytorch: step'] / median[f'{v}: step']
                               for v in variants}
    out['ratio_to_pytorch_per_round'] = {
        v: [statistics.median(r) / statistics.median(t)
            for r, t in zip(times['pytorch: step'], times[f'{v}: step'])]
        for v in variants}
  out['load_average_1min_at_end'] = os.getloadavg()[0]
  return out


def _print_comparison(cmp: dict, tokens: int) -> None:
  med = cmp['seconds_median']
  variants = [v for v in ('jax generic', 'jax CPU paths', 'pytorch') if f'{v}: step' in med]
  warmup = cmp.get('warmup_per_turn', 0)
  print(f'  CPU comparison, {cmp["rounds"]} rounds × {cmp["steps_per_round"]} steps in turns'
        f'{f" after {warmup} untimed" if warmup else ""} ({cmp["pytorch"]})')
  has_phases = all(f'{v}: forward' in med for v in variants)
  header = '    variant        tokens/s  vs PyTorch (rounds)'
  if has_phases:
    header += '    forward  backward  optimizer  (ms per step)'
  print(header)
  for v in variants:
    line = f'    {v:13s} {tokens / med[f"{v}: step"]:9,.0f}'
    if 'ratio_to_pytorch' in cmp and v != 'pytorch':
      rounds = cmp['ratio_to_pytorch_per_round'][v]
      line += f'  {cmp["ratio_to_pytorch"][v]:5.2f} ({min(rounds):.2f}–{max(rounds):.2f})'
    else:
      line += ' ' * 19
    if has_phases:
      f, fb, st = (1e3 * med[f'{v}: {p}'] for p in ('forward', 'forward+backward', 'step'))
      line += f'  {f:9.0f} {fb - f:9.0f} {st - fb:10.0f}'
    print(line)
  if 'ratio_to_pytorch' not in cmp:
    print(f'    {cmp["pytorch"]}')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  from attention import cpu_paths  # pylint: disable=g-import-not-at-top
  from training import builders, cpu_settings, distributed, loop, optim, steps  # pylint: disable=g-import-not-at-top

  machine = timing.machine()
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

  def make_step():
    return jax.jit(steps.make_train_step(graphdef, rest, optimizer, grad_accum_steps=accum,
                                         label_smoothing=config.label_smoothing),
                   donate_argnums=0)

  on_cpu = jax.default_backend() == 'cpu'
  if on_cpu:
    # The "before": traced without the CPU paths and lowered before cpu_settings changes the
    # threefry lowering (compiled executables keep what they were compiled with).
    with cpu_paths.disabled():
      generic_step = make_step().lower(state, batch).compile()
  cpu_settings.configure()  # as train.py
  compiled = make_step().lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get('flops', 0.0)) if cost else 0.0
  bare_state = jax.tree.map(lambda x: x.copy(), state)
  for _ in range(3):
    bare_state, m = compiled(bare_state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(_REPEATS.value):
    t = time.perf_counter()
    bare_state, m = compiled(bare_state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  tokens_per_step = config.batch_size * config.seq_len
  bare = tokens_per_step / statistics.median(times)
  del bare_state

  comparison = None
  if on_cpu:
    comparison = compare_on_cpu(config, state, batch, local, graphdef, rest, int(n_params),
                                generic_step, compiled)
  del state

  full, windows = None, []
  if _FULL_LOOP.value:
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
      'overrides': [a for a in sys.argv[1:] if a.startswith('--config.')],
      'device': f'{jax.device_count()} × {getattr(device, "device_kind", device.platform)}',
      'machine': machine,
      'parameters': int(n_params), 'seq_len': config.seq_len, 'batch_size': config.batch_size,
      'dtype': config.model.dtype, 'attention': f'{config.attention.kind}/{config.attention.impl}',
      'bare_step_tokens_per_s': bare, 'full_loop_tokens_per_s': full,
      'full_over_bare': None if full is None else full / bare,
      'full_loop_windows_tokens_per_s': windows,
      'peak_memory_bytes': int(peak_mem), 'peak_memory_kind': mem_kind,
      'model_flops_per_token': fpt, 'xla_flops_per_token': xla_flops / tokens_per_step,
      'achieved_model_tflops': achieved, 'peak_tflops': peak,
      'mfu': None if peak is None else achieved / (peak * jax.device_count()),
      'cpu_comparison': comparison,
  }
  stem = Path(result['config'].split(':')[0]).stem
  tag = result['config'].partition(':')[2].replace('=', '').replace(',', '-')
  out = Path(_OUT.value) if _OUT.value else Path('benchmarks/results') / f'lm_step-{stem}{"-" + tag if tag else ""}.json'
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + '\n')
  cpu = ', '.join(str(machine[k]) for k in ('cpu', 'cpu_family_model', 'vector_isa') if k in machine)
  print(f'{result["config"]} on {result["device"]} ({cpu}, {machine["cores"]} cores), '
        f'{n_params:,} parameters, {config.batch_size}×{config.seq_len} tokens/step, '
        f'{config.model.dtype}')
  print(f'  bare jitted step : {bare:12,.0f} tokens/s (median of {len(times)})')
  if full is not None:
    print(f'  full loop        : {full:12,.0f} tokens/s (median of {len(windows)} windows)')
    print(f'  full / bare      : {full / bare:12.3f}')
  print(f'  peak memory      : {peak_mem / 2**20:12,.1f} MiB ({mem_kind})')
  print(f'  model FLOPs/token: {fpt:12.4g} (XLA cost analysis: {xla_flops / tokens_per_step:.4g})')
  mfu = 'n/a (pass --peak_tflops)' if peak is None else f'{100 * result["mfu"]:.1f}% of {peak} TFLOP/s'
  print(f'  achieved         : {achieved:12.4f} TFLOP/s; MFU {mfu}')
  if comparison is not None:
    _print_comparison(comparison, tokens_per_step)
  print(f'  written to {out}')


if __name__ == '__main__':
  app.run(main)
