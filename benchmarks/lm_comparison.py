"""Trains and evaluates the shared LM once per attention kind on the same token budget.

    python benchmarks/lm_comparison.py --data_dir=../shared/data/wikitext-2 --root=runs/compare

Every kind runs the same command, `train.py --config=configs/wikitext103.py:size=small,...` with
the same seed, data order, steps, batch and schedule; only `attention.kind` and that kind's
options (`KIND_OPTIONS`, chosen for 256-token sequences) differ. SEA is distilled from the softmax
run (`attention.sea.teacher=<root>/softmax`), so softmax runs first. After training, `eval.py`
scores the best checkpoint on the whole validation and test splits with the config's context
window. A rerun skips the kinds whose workdir already holds a finished run of `--steps` updates
and resumes interrupted ones.

Writes `<root>/comparison.json` and `<root>/comparison.md`: per kind, validation and test
perplexity (with the context window), parameters, training tokens/s (median over the logging
windows after the first, which holds compilation) and the exact commands of the row.
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

_DATA = flags.DEFINE_string('data_dir', '../shared/data/wikitext-2',
                            'WikiText folder (wiki.*.tokens or train/valid/test.txt).')
_ROOT = flags.DEFINE_string('root', 'runs/compare', 'One workdir per kind is made under it.')
_KINDS = flags.DEFINE_list('kinds', ['softmax', 'dagpam', 'diff', 'performer', 'topk', 'sea'],
                           'Kinds in run order (sea needs softmax before it).')
_STEPS = flags.DEFINE_integer('steps', 200, 'Updates per run (16 × 256 tokens each).')
_WARMUP = flags.DEFINE_integer('warmup', 100, 'Learning-rate warm-up updates.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 100, 'Validation (50 batches) interval.')
_EXTRA = flags.DEFINE_multi_string('set', [], 'Extra --config.<key>=<value> for every run.')
_EVAL_BATCH = flags.DEFINE_integer('eval_batch_size', 32, 'Windows per batch in eval.py.')

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


def _tokens_per_s(workdir: Path) -> float | None:
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  rates = [r['tokens_per_s'] for r in rows if r.get('split') == 'train']
  return statistics.median(rates[1:]) if len(rates) > 1 else None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if 'sea' in _KINDS.value and ('softmax' not in _KINDS.value or
                                _KINDS.value.index('softmax') > _KINDS.value.index('sea')):
    if not (Path(_ROOT.value) / 'softmax' / 'final.json').exists():
      raise app.UsageError('--kinds: sea is distilled from the softmax run; list softmax first '
                           f'or train {Path(_ROOT.value) / "softmax"} beforehand')
  root = Path(_ROOT.value)
  root.mkdir(parents=True, exist_ok=True)
  rows = []
  for kind in _KINDS.value:
    workdir = root / kind
    log = root / f'{kind}.log'
    train = _train_command(kind, workdir)
    done = workdir / 'final.json'
    if done.exists() and json.loads(done.read_text())['step'] >= _STEPS.value:
      print(f'{workdir} is trained ({_STEPS.value} steps); evaluating it', flush=True)
    else:
      _run(train, log)
    final = json.loads((workdir / 'final.json').read_text())
    evals = {}
    for split in ('valid', 'test'):
      cmd = [sys.executable, 'eval.py', f'--workdir={workdir}', f'--split={split}',
             f'--batch_size={_EVAL_BATCH.value}']
      _run(cmd, log)
      out = sorted((workdir / 'eval').glob(f'{split}-*.json'), key=lambda p: p.stat().st_mtime)
      evals[split] = json.loads(out[-1].read_text())
    row = {
        'kind': kind, 'parameters': final['parameters'], 'steps': final['step'],
        'tokens_per_s': _tokens_per_s(workdir),
        'valid_perplexity': evals['valid']['value'], 'test_perplexity': evals['test']['value'],
        'context_window': evals['test']['protocol']['context_window'],
        'checkpoint_step': evals['test']['step'],
        'commands': [' '.join(shlex.quote(c) for c in ['python'] + train[1:]),
                     f'python eval.py --workdir={workdir} --split=valid|test '
                     f'--batch_size={_EVAL_BATCH.value}'],
    }
    rows.append(row)
    print(json.dumps(row), flush=True)
    (root / 'comparison.json').write_text(json.dumps(rows, indent=2) + '\n')

  lines = ['| attention | valid ppl | test ppl | parameters | tokens/s (train) |',
           '|---|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r["kind"]} | {r["valid_perplexity"]:.1f} | {r["test_perplexity"]:.1f} | '
                 f'{r["parameters"]:,} | {r["tokens_per_s"]:,.0f} |')
  (root / 'comparison.md').write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
