"""Trains and evaluates the shared LM once per attention kind on the same token budget.

    python benchmarks/lm_comparison.py --data_dir=../shared/data/wikitext-2 --root=runs/compare

Every kind runs the same command, `train.py --config=configs/wikitext103.py:size=small,...` with
the same seed, data order, steps, batch and schedule; only `attention.kind` and that kind's
options (`KIND_OPTIONS`, chosen for 256-token sequences) differ. SEA is distilled from the softmax
run (`attention.sea.teacher=<root>/softmax`), so softmax runs first. After training, `eval.py`
scores the checkpoint at the end of the budget (step `--steps`) on the whole validation and test
splits with the config's context window. A rerun skips training for the kinds whose workdir
already holds that checkpoint (a longer run's prefix is the same run: the inverse-sqrt schedule
does not depend on the total) and resumes interrupted ones.

With `--analyses=collapse,norms`, each kind's budget checkpoint is also analysed
(`eval.py --analysis=... --split=valid --checkpoint=<steps>`, on `--analysis_examples` validation
windows; analysis/), and the kinds are laid side by side (analysis/compare.py):
`<root>/collapse-by-kind.png` (rank collapse and gradient norms over depth, one line per kind),
`<root>/collapse-by-kind.md` and `<root>/norms-by-kind.md`.

Writes `<root>/comparison.json` and `<root>/comparison.md`: per kind, validation and test
perplexity (with the context window), parameters, training tokens/s (median over the run's
logging windows after the first, which holds compilation; affected by whatever else ran on the
machine), tokens/s of the bare train step measured side by side for all kinds in the file (in
turns, so load changes hit all alike) and the exact commands of the row.
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from absl import app, flags

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))  # the repository's packages, imported lazily (keeps --help fast)

_DATA = flags.DEFINE_string('data_dir', '../shared/data/wikitext-2',
                            'WikiText folder (wiki.*.tokens or train/valid/test.txt).')
_ROOT = flags.DEFINE_string('root', 'runs/compare', 'One workdir per kind is made under it.')
_KINDS = flags.DEFINE_list('kinds', ['softmax', 'dagpam', 'diff', 'performer', 'topk', 'sea'],
                           'Kinds in run order (sea needs softmax before it).')
_STEPS = flags.DEFINE_integer('steps', 100, 'Updates per run (16 × 256 tokens each).')
_WARMUP = flags.DEFINE_integer('warmup', 100, 'Learning-rate warm-up updates.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 100, 'Validation (50 batches) interval.')
_EXTRA = flags.DEFINE_multi_string('set', [], 'Extra --config.<key>=<value> for every run.')
_EVAL_BATCH = flags.DEFINE_integer('eval_batch_size', 32, 'Windows per batch in eval.py.')
_REPEATS = flags.DEFINE_integer(
    'throughput_repeats', 5, 'Side-by-side throughput: timed train steps per kind, taken in '
    'turns (kind 1, kind 2, …, kind 1, …) so a change of machine load hits every kind alike; '
    '0 skips it.')
_SPLITS = flags.DEFINE_list(
    'splits', ['valid', 'test'], 'Splits eval.py scores in full. valid left out is reported '
    'from the run\'s own validation at update --steps instead (its first `eval_batches` '
    'batches, no context window), which the table shows as context 0; test left out is shown '
    'as \'–\' (not evaluated).')
_ANALYSES = flags.DEFINE_list(
    'analyses', [], 'Analyses of each kind\'s budget checkpoint to run and lay side by side: '
    'collapse (rank collapse and gradient norms over depth), norms (weight- vs norm-based '
    'attention to token categories). Empty: none.')
_ANALYSIS_EXAMPLES = flags.DEFINE_integer('analysis_examples', 16, 'Validation windows each '
                                          'analysis reads (eval.py --num_examples).')
COMPARABLE_ANALYSES = ('collapse', 'norms')

# Per-kind options for 256-token sequences: top-k and SEA keep 32 of up to 256 keys per query
# (1/8, as SEA's k = 64 of 2048 × 4 in OPT); SEA compresses the keys into K = 64 columns.
KIND_OPTIONS = {
    'topk': ['--config.attention.topk.k=32', '--config.attention.topk.query_chunk_size=256'],
    'sea': ['--config.attention.sea.predictor_length=64', '--config.attention.sea.k=32'],
}


def _run(cmd: list[str], log: Path) -> None:
  print('$ ' + ' '.join(shlex.quote(c) for c in cmd), flush=True)
  with log.open('a') as f:
    proc = subprocess.run(cmd, cwd=_REPO, stdout=f, stderr=subprocess.STDOUT, check=False)
  if proc.returncode:
    raise RuntimeError(f'command failed (exit {proc.returncode}); see {log}')


def _train_command(kind: str, workdir: Path) -> list[str]:
  cmd = [sys.executable, 'train.py',
         f'--config=configs/wikitext103.py:size=small,steps={_STEPS.value}',
         f'--config.data.dir={_DATA.value}', f'--config.attention.kind={kind}',
         f'--config.optimizer.warmup_steps={_WARMUP.value}',
         f'--config.eval_every={_EVAL_EVERY.value}', '--config.progress_bar=False',
         f'--workdir={workdir}']
  cmd += KIND_OPTIONS.get(kind, [])
  if kind == 'sea':
    cmd.append(f'--config.attention.sea.teacher={Path(_ROOT.value) / "softmax"}')
  return cmd + [f'--config.{s}' for s in _EXTRA.value]


def _tokens_per_s(metrics: list[dict]) -> float | None:
  """Median training tokens/s over the logging windows of the budget after the first."""
  rates = [r['tokens_per_s'] for r in metrics
           if r['split'] == 'train' and r['step'] <= _STEPS.value]
  return statistics.median(rates[1:]) if len(rates) > 1 else None


def _finished_eval(workdir: Path, split: str) -> dict | None:
  """eval.py's result for the budget's checkpoint at the config's context window, if any."""
  results = [json.loads(p.read_text()) for p in (workdir / 'eval').glob(f'{split}-*.json')]
  config = json.loads((workdir / 'config.json').read_text())
  for r in results:
    if (r['step'] == _STEPS.value and
        r['protocol']['context_window'] == config['eval_context_window']):
      return r
  return None


def _validation_at(metrics: list[dict], step: int, workdir: Path) -> dict:
  """The run's periodic validation logged at `step` (first `eval_batches` batches)."""
  for r in metrics:
    if r['step'] == step and r['split'] == 'valid':
      return r
  raise RuntimeError(f'{workdir}/metrics.jsonl has no validation at step {step}; make '
                     '--steps a multiple of --eval_every')


def _parameters(workdir: Path) -> int:
  """Parameter count of the workdir's model, from its recorded config (shapes only)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from training import builders, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = workdir_lib.load_config(workdir)
  model = nnx.eval_shape(lambda: builders.build_model(config))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _merge_rows(path: Path, row: dict) -> list[dict]:
  """Adds (or replaces) one kind's row in the comparison file; other kinds' rows are kept."""
  rows = json.loads(path.read_text()) if path.exists() else []
  rows = [r for r in rows if r['kind'] != row['kind']] + [row]
  order = {k: i for i, k in enumerate(_KINDS.default)}
  rows.sort(key=lambda r: order.get(r['kind'], len(order)))
  path.write_text(json.dumps(rows, indent=2) + '\n')
  return rows


def _side_by_side_throughput(root: Path, kinds: list[str]) -> dict[str, float]:
  """Median tokens/s of each kind's jitted train step on one batch, measured in turns.

  The step is the model's own (SEA without its teacher: distillation adds a teacher forward).
  """
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from training import builders, distributed, optim, steps  # pylint: disable=g-import-not-at-top
  from training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  mesh = distributed.data_mesh()
  batch, runs = None, {}
  for kind in kinds:
    config = workdir_lib.load_config(root / kind)
    if kind == 'sea':
      config.attention.sea.distill = False
    if batch is None:
      data = builders.build_data(config)
      it = data.train_iterator(batch_size=config.batch_size, seq_len=config.seq_len, seed=0)
      batch = distributed.global_batch({k: v[None] for k, v in next(it).items()}, mesh,
                                       batch_axis=1)
    graphdef, params, rest = builders.split_model(builders.build_model(config))
    optimizer = optim.make_optimizer(config.optimizer, config.train_steps)
    state = builders.initial_state(config, params, optimizer)
    step = jax.jit(steps.make_train_step(graphdef, rest, optimizer, grad_accum_steps=1,
                                         label_smoothing=0.0))
    jax.block_until_ready(step(state, batch))  # compile and warm up
    runs[kind] = (step, state, [])
  tokens = batch['inputs'].size
  for _ in range(_REPEATS.value):
    for kind, (step, state, times) in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(step(state, batch))
      times.append(time.perf_counter() - start)
  return {kind: tokens / statistics.median(times) for kind, (_, _, times) in runs.items()}


def _analyse(workdir: Path, log: Path) -> None:
  """Runs each of --analyses on the budget checkpoint of `workdir`, unless already there."""
  from analysis import compare  # pylint: disable=g-import-not-at-top
  for analysis in _ANALYSES.value:
    if not compare.summary_path(workdir, analysis, 'valid', _STEPS.value).is_file():
      _run([sys.executable, 'eval.py', f'--workdir={workdir}', f'--analysis={analysis}',
            '--split=valid', f'--checkpoint={_STEPS.value}',
            f'--num_examples={_ANALYSIS_EXAMPLES.value}'], log)


def _compare_analyses(root: Path, kinds: list[str]) -> None:
  """The side-by-side figure and tables of --analyses over `kinds`."""
  from analysis import compare  # pylint: disable=g-import-not-at-top
  for analysis in _ANALYSES.value:
    summaries = {k: compare.read_summary(root / k, analysis, 'valid', _STEPS.value) for k in kinds}
    note = (f'\n{_STEPS.value} updates; {_ANALYSIS_EXAMPLES.value} validation windows; '
            f'`python eval.py --workdir={root}/KIND --analysis={analysis} --split=valid '
            f'--checkpoint={_STEPS.value} --num_examples={_ANALYSIS_EXAMPLES.value}`\n')
    if analysis == 'collapse':
      print(compare.depth_figure(summaries, root / 'collapse-by-kind.png',
                                 title=f'small LM, {_STEPS.value} updates: rank collapse and '
                                 'gradient norms over depth'), flush=True)
      table = compare.collapse_table(summaries)
    else:
      table = compare.norms_table(summaries) + '\n' + compare.mixing_table(summaries)
    (root / f'{analysis}-by-kind.md').write_text(table + note)
    print(table, flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  unknown = sorted(set(_ANALYSES.value) - set(COMPARABLE_ANALYSES))
  if unknown:
    raise app.UsageError(f'--analyses: {", ".join(unknown)} cannot be compared here; known: '
                         f'{", ".join(COMPARABLE_ANALYSES)}')
  if 'sea' in _KINDS.value and ('softmax' not in _KINDS.value or
                                _KINDS.value.index('softmax') > _KINDS.value.index('sea')):
    if not (Path(_ROOT.value) / 'softmax' / 'final.json').exists():
      raise app.UsageError('--kinds: sea is distilled from the softmax run; list softmax first '
                           f'or train {Path(_ROOT.value) / "softmax"} beforehand')
  root = Path(_ROOT.value)
  root.mkdir(parents=True, exist_ok=True)
  rows = []  # every kind in the comparison file, including earlier invocations'
  for kind in _KINDS.value:
    workdir = root / kind
    log = root / f'{kind}.log'
    train = _train_command(kind, workdir)
    if (workdir / 'checkpoints' / str(_STEPS.value)).exists():
      print(f'{workdir} has its step-{_STEPS.value} checkpoint; evaluating it', flush=True)
    else:
      _run(train, log)
    metrics = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    final = _validation_at(metrics, _STEPS.value, workdir)
    evals = {}
    for split in ('valid', 'test'):
      if split in _SPLITS.value:
        done = _finished_eval(workdir, split)
      elif split == 'test':   # not evaluated: the table shows '–'
        evals[split] = {'value': None, 'tokens': None, 'step': _STEPS.value,
                        'protocol': {'context_window': None}}
        continue
      else:  # the same partial protocol for every row, even where a full evaluation exists
        done = {'value': final['perplexity'], 'tokens': int(final['tokens']), 'step': final['step'],
                'protocol': {'context_window': 0, 'partial': True}}
      if done is None:
        _run([sys.executable, 'eval.py', f'--workdir={workdir}', f'--split={split}',
              f'--checkpoint={_STEPS.value}', f'--batch_size={_EVAL_BATCH.value}'], log)
        done = _finished_eval(workdir, split)
      evals[split] = done
    row = {
        'kind': kind, 'parameters': _parameters(workdir), 'steps': _STEPS.value,
        'tokens_per_s': _tokens_per_s(metrics),
        'valid_perplexity': evals['valid']['value'], 'test_perplexity': evals['test']['value'],
        'valid_tokens': evals['valid']['tokens'], 'test_tokens': evals['test']['tokens'],
        'valid_context_window': evals['valid']['protocol']['context_window'],
        'context_window': evals['test']['protocol']['context_window'],
        'checkpoint_step': evals['test']['step'],
        'commands': [' '.join(shlex.quote(c) for c in ['python'] + train[1:])],
    }
    if _SPLITS.value:
      row['commands'].append(f'python eval.py --workdir={workdir} '
                             f'--split={"|".join(_SPLITS.value)} --checkpoint={_STEPS.value} '
                             f'--batch_size={_EVAL_BATCH.value}')
    print(json.dumps(row), flush=True)
    rows = _merge_rows(root / 'comparison.json', row)
    _analyse(workdir, log)

  if _REPEATS.value:
    speed = _side_by_side_throughput(root, [r['kind'] for r in rows])
    for r in rows:
      r['step_tokens_per_s'] = speed[r['kind']]
    (root / 'comparison.json').write_text(json.dumps(rows, indent=2) + '\n')
  lines = ['| attention | valid ppl (tokens, context) | test ppl (tokens, context) | parameters '
           '| tokens/s (training run) | tokens/s (side by side) |',
           '|---|---:|---:|---:|---:|---:|']
  for r in rows:
    side = r.get('step_tokens_per_s')
    test = ('–' if r['test_perplexity'] is None else
            f'{r["test_perplexity"]:.1f} ({r["test_tokens"]:,}, {r["context_window"]})')
    lines.append(
        f'| {r["kind"]} | {r["valid_perplexity"]:.1f} ({r["valid_tokens"]:,}, '
        f'{r["valid_context_window"]}) | {test} | {r["parameters"]:,} | '
        f'{r["tokens_per_s"]:,.0f} | '
        f'{"" if side is None else f"{side:,.0f}"} |')
  (root / 'comparison.md').write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))
  _compare_analyses(root, [r['kind'] for r in rows if r['kind'] in _KINDS.value])


if __name__ == '__main__':
  app.run(main)
