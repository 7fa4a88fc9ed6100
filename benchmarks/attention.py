"""Time and memory of each attention core against sequence length: forward+backward, and SEA's
linear-memory inference path.

    python benchmarks/attention.py                        # every kind, T = 512, 1024, … (CPU)
    python benchmarks/attention.py --kinds=softmax,performer --max_len=65536 --heads=8

For each case and each sequence length T (doubling from `--min_len`) it builds the registered core
alone (`attention.create_core`, the options of `--set`), on random q, k, v `[B, T, N, H]` with a
causal mask, and measures
- the median wall time of the jitted call over `--repeats` runs after a warm-up;
- peak memory: XLA's buffer assignment for the compiled program (`memory_analysis()`: arguments +
  outputs + temporaries − aliased), which is exact for what the program allocates and does not
  depend on allocator noise; on GPU also the allocator's peak (`memory_stats()`).
A case stops growing T after a length whose call takes longer than `--time_limit_s` (timed once
then, not `--repeats` times), or whose compiled program needs more than `--memory_limit_gib`
(then it is compiled, its memory reported, and not run). Cases: `<kind>` is forward+backward (the gradient of Σ out·g with
respect to q, k, v and the core's parameters), `sea-inference` and `softmax-forward` are the
forward pass alone (SEA with `inference='chunked'`).

It prints a table with the growth exponent of memory between the last two lengths
(log₂ of the ratio per doubling: ≈1 linear, ≈2 quadratic), and writes
`<out>/attention-<backend>.json`, `.md` and `.png` (time and memory against T, log–log).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402

_KINDS = flags.DEFINE_list(
    'kinds', None, 'Cases to run: attention kinds (forward+backward) and the forward-only cases '
    'sea-inference and softmax-forward. Default: every registered kind plus both.')
_MIN_LEN = flags.DEFINE_integer('min_len', 512, 'First sequence length.')
_MAX_LEN = flags.DEFINE_integer('max_len', 16384, 'Longest sequence length tried.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size B.')
_HEADS = flags.DEFINE_integer('heads', 4, 'Heads N (DIFF pairs them: N/2 heads of width 2H).')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'Head width H.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'q, k, v dtype.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per length (the median is reported).')
_MEMORY_LIMIT = flags.DEFINE_float('memory_limit_gib', 6.0,
                                   'Stop a case after the length whose program needs more.')
_TIME_LIMIT = flags.DEFINE_float('time_limit_s', 20.0,
                                 'Stop a case after the length whose call takes longer.')
_SET = flags.DEFINE_multi_string(
    'set', [], 'Core option as kind.option=value, e.g. --set=topk.k=128 (repeatable). Defaults: '
    'topk.k=64, topk.query_chunk_size=512, sea.predictor_length=128, sea.k=64, '
    'sea.query_chunk_size=512, performer.chunk_size=128.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results', 'Folder for the result files.')

# Options used unless --set overrides them: the papers' settings where they fit these lengths.
_DEFAULT_OPTIONS = {
    'topk': {'k': 64, 'query_chunk_size': 512},
    'sea': {'predictor_length': 128, 'k': 64, 'query_chunk_size': 512, 'distill': False},
    'performer': {'chunk_size': 128},
}
_FORWARD_ONLY = {'sea-inference': 'sea', 'softmax-forward': 'softmax'}


def _options(kind: str) -> dict:
  out = dict(_DEFAULT_OPTIONS.get(kind, {}))
  for item in _SET.value:
    name, sep, value = item.partition('=')
    k, dot, option = name.partition('.')
    if not sep or not dot:
      raise app.UsageError(f'--set={item!r}: expected kind.option=value')
    if k == kind:
      out[option] = value
  return out


def _build(case: str):
  """(jitted function of (q, k, v, g), the core's parameters) for one case."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  import attention  # pylint: disable=g-import-not-at-top
  from attention import masks  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top

  kind = _FORWARD_ONLY.get(case, case)
  config = common.attention_config()
  config.kind = kind
  for option, value in _options(kind).items():
    current = config[kind][option]
    config[kind][option] = type(current)(value) if not isinstance(current, bool) else (
        str(value).lower() in ('1', 'true'))
  if case == 'sea-inference':
    config.sea.inference = 'chunked'
  core = attention.create_core(config, num_heads=_HEADS.value, head_dim=_HEAD_DIM.value,
                               layer_index=0, max_len=_MAX_LEN.value,
                               rngs=nnx.Rngs(params=0, dropout=1))
  graphdef, params, rest = nnx.split(core, nnx.Param, ...)
  mask = masks.causal()

  def forward(p, q, k, v):
    return nnx.merge(graphdef, p, rest)(q, k, v, mask, deterministic=True)

  if case in _FORWARD_ONLY:
    fn = jax.jit(lambda p, q, k, v, g: forward(p, q, k, v))
  else:
    def loss(p, q, k, v, g):
      return jnp.sum(forward(p, q, k, v).astype(jnp.float32) * g)

    fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
  return fn, params, core


def _inputs(core, t: int):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  b, n, h = _BATCH.value, _HEADS.value, _HEAD_DIM.value
  nq, nkv, hqk, hv = n, n, h, h
  if hasattr(type(core), 'projection_shape'):
    nq, nkv, hqk, hv = type(core).projection_shape(n, h)
  dtype = jnp.dtype(_DTYPE.value)
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (b, t, nq, hqk), dtype)
  k = jax.random.normal(keys[1], (b, t, nkv, hqk), dtype)
  v = jax.random.normal(keys[2], (b, t, nkv, hv), dtype)
  g = jax.random.normal(keys[3], (b, t, nq, hv), jnp.float32)
  return q, k, v, g


def _measure(case: str, t: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  fn, params, core = _build(case)
  args = (params,) + _inputs(core, t)
  compiled = fn.lower(*args).compile()
  mem = compiled.memory_analysis()
  program_bytes = None
  if mem is not None:
    program_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                     + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  row = {'case': case, 'seq_len': t, 'time_s': None, 'program_bytes': program_bytes,
         'temp_bytes': None if mem is None else mem.temp_size_in_bytes}
  if (program_bytes or 0) > _MEMORY_LIMIT.value * 2**30:
    return row  # compiled only: too big to run here, but its memory need is known
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))  # warm-up
  warm_up = time.perf_counter() - start
  times = [warm_up]
  if warm_up <= _TIME_LIMIT.value:  # a slow length is timed once, not `repeats` times
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
  row['time_s'] = statistics.median(times)
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    row['allocator_peak_bytes'] = stats['peak_bytes_in_use']
  return row


def _growth(rows: list[dict]) -> float | None:
  """log₂ of the memory ratio between the last two lengths, per doubling of T."""
  pts = [r for r in rows if r['program_bytes']]
  if len(pts) < 2:
    return None
  a, b = pts[-2], pts[-1]
  return math.log(b['program_bytes'] / a['program_bytes']) / math.log(b['seq_len'] / a['seq_len'])


def _plot(results: dict, path: Path, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
  for case, rows in results.items():
    lens = [r['seq_len'] for r in rows]
    timed = [r for r in rows if r['time_s'] is not None]
    ax_t.plot([r['seq_len'] for r in timed], [r['time_s'] * 1e3 for r in timed], marker='o',
              label=case)
    ax_m.plot(lens, [r['program_bytes'] / 2**20 for r in rows], marker='o', label=case)
  for ax, label in ((ax_t, 'time per call (ms)'), (ax_m, 'program memory (MiB)')):
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlabel('sequence length T')
    ax.set_ylabel(label)
    ax.grid(True, which='both', alpha=0.3)
  ax_m.legend(fontsize=8)
  fig.suptitle(textwrap.fill(title, 150), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  import attention  # pylint: disable=g-import-not-at-top

  known = attention.known_kinds()
  cases = _KINDS.value or known + [c for c, k in _FORWARD_ONLY.items() if k in known]
  for case in cases:
    if _FORWARD_ONLY.get(case, case) not in known:
      raise app.UsageError(f'--kinds: unknown case {case!r}; known: '
                           f'{", ".join(known + list(_FORWARD_ONLY))}')
  device = jax.devices()[0]
  machine = f'{jax.default_backend()} ({getattr(device, "device_kind", "")}), jax {jax.__version__}'
  setup = (f'B={_BATCH.value}, N={_HEADS.value}, H={_HEAD_DIM.value}, {_DTYPE.value}, causal; '
           f'options {json.dumps({k: _options(k) for k in _DEFAULT_OPTIONS})}')
  print(f'{machine}\n{setup}', flush=True)
  results = {}
  for case in cases:
    rows = []
    t = _MIN_LEN.value
    while t <= _MAX_LEN.value:
      row = _measure(case, t)
      rows.append(row)
      mib = row['program_bytes'] / 2**20 if row['program_bytes'] else float('nan')
      ms = 'not run' if row['time_s'] is None else f'{row["time_s"] * 1e3:.1f} ms'
      print(f'{case:16s} T={t:6d}  {ms:>12s}  {mib:10.1f} MiB', flush=True)
      if row['time_s'] is None or row['time_s'] > _TIME_LIMIT.value:
        break
      t *= 2
    results[case] = rows

  lines = ['| case | ' + ' | '.join(f'T={r["seq_len"]}' for r in max(results.values(), key=len))
           + ' | memory growth per doubling |', '']
  lines[1] = '|' + '---|' * (len(max(results.values(), key=len)) + 2)
  for case, rows in results.items():
    cells = [('not run' if r['time_s'] is None else f'{r["time_s"] * 1e3:.1f} ms')
             + f' / {r["program_bytes"] / 2**20:.0f} MiB' for r in rows]
    cells += [''] * (len(max(results.values(), key=len)) - len(rows))
    growth = _growth(rows)
    lines.append(f'| {case} | ' + ' | '.join(cells)
                 + f' | {"n/a" if growth is None else f"T^{growth:.2f}"} |')
  table = '\n'.join(lines)
  print(table)
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  stem = out / f'attention-{jax.default_backend()}'
  command = 'python benchmarks/attention.py ' + ' '.join(sys.argv[1:])
  stem.with_suffix('.json').write_text(json.dumps(
      {'command': command.strip(), 'machine': machine, 'setup': setup, 'results': results,
       'memory_growth': {c: _growth(r) for c, r in results.items()}}, indent=2) + '\n')
  stem.with_suffix('.md').write_text(
      f'`{command.strip()}`\n\n{machine}; {setup}\n\nCells: median time per call / program '
      f'memory (XLA buffer assignment).\n\n{table}\n')
  _plot(results, stem.with_suffix('.png'), f'{machine}; {setup}')
  print(f'wrote {stem}.json, .md, .png')


if __name__ == '__main__':
  app.run(main)
