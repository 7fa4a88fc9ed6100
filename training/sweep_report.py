"""The report of a sweep folder: mean ± standard deviation over seeds, ranks that respect the
seed noise, learning curves, metric-against-x and time- and memory-against-x plots.

    python -m training.sweep report --root=sweeps/default-mqar_pairs [--update_doc=docs/results.md]

Reads what the jobs of training/sweep.py left (`<root>/<row>/seed<s>/sweep/`: `job.json`,
`done.json`, `eval-<name>.json`, and the run's `metrics.jsonl`); only finished jobs count.
Writes `<root>/report.md`, `<root>/report.json` and `<root>/report/*.png`.

Statistics per row and metric: n (finished seeds), the mean, and the sample standard deviation
(ddof = 1; none for n = 1). The primary metric is the first eval's (`value` of its JSON line,
e.g. test perplexity, BPC, accuracy or BLEU), or the final validation metric when the sweep has
no evals. **Ranking:** rows are ordered by the primary metric's mean, and the best row's tier is
every row that Welch's t-test (two-sided, unequal variances) cannot tell from it at p < 0.05;
the next tier starts at the best remaining row, and so on. Rows with one seed are not ranked. So
two rows whose difference is inside the seed noise always share a tier, and the table says so.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HIGHER_IS_BETTER = ('accuracy', 'bleu', 'sacrebleu', 'bleu_compound')
ALPHA = 0.05
BEGIN, END = '<!-- begin sweep report: {} -->', '<!-- end sweep report: {} -->'


class ReportError(ValueError):
  pass


@dataclasses.dataclass
class Finished:
  """One finished job: its record and the numbers it produced."""
  record: dict
  done: dict
  evals: dict[str, dict]          # eval name -> {'name', 'x', 'command', 'result'}
  workdir: Path

  def metrics(self) -> dict[str, float]:
    final = self.done.get('final', {})
    out = {}
    for key in ('accuracy', 'bpc', 'perplexity', 'loss'):
      if isinstance(final.get(key), (int, float)):
        out[f'valid {key}'] = float(final[key])
    for name, ev in self.evals.items():
      result = ev['result']
      if isinstance(result.get('value'), (int, float)):
        out[f'{name} {result.get("metric", "value")}'] = float(result['value'])
      if isinstance(result.get('peak_memory_bytes'), (int, float)):
        out[f'{name} peak_memory_bytes'] = float(result['peak_memory_bytes'])
    if isinstance(final.get('parameters'), int):
      out['parameters'] = float(final['parameters'])
    if isinstance(self.done.get('seconds'), (int, float)):
      out['train seconds'] = float(self.done['seconds'])
    return out


def collect(root: Path) -> list[Finished]:
  """The finished jobs under `root`, in folder order."""
  out = []
  for job_json in sorted(root.glob('*/seed*/sweep/job.json')):
    state = job_json.parent
    if not (state / 'done.json').exists():
      continue
    record = json.loads(job_json.read_text())
    evals = {}
    for ev in record.get('evals', []):
      path = state / f'eval-{ev["name"]}.json'
      if path.exists():
        evals[ev['name']] = json.loads(path.read_text())
    out.append(Finished(record, json.loads((state / 'done.json').read_text()), evals,
                        state.parent))
  if not out:
    raise ReportError(f'no finished jobs under {root} (a job is finished when its '
                      '<row>/seed<s>/sweep/done.json exists; run the sweep first)')
  return out


def summary(values: Sequence[float]) -> dict[str, Any]:
  a = np.asarray(values, np.float64)
  return {'n': int(a.size), 'mean': float(a.mean()),
          'std': float(a.std(ddof=1)) if a.size > 1 else None, 'values': [float(v) for v in a]}


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
  """Two-sided p-value of Welch's t-test; None when either side has one value."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size < 2 or b.size < 2:
    return None
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  if va + vb == 0:
    return 1.0 if a.mean() == b.mean() else 0.0
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def higher_is_better(metric: str) -> bool:
  return metric.rsplit(' ', 1)[-1] in HIGHER_IS_BETTER


def primary_metric(jobs: Sequence[Finished]) -> str:
  first = jobs[0]
  names = [e['name'] for e in first.record.get('evals', [])]
  for name in names:
    if name in first.evals:
      return f'{name} {first.evals[name]["result"].get("metric", "value")}'
  valid = [m for m in first.metrics() if m.startswith('valid ') and m != 'valid loss']
  return valid[0] if valid else 'valid loss'


def rank(rows: list[dict], metric: str) -> None:
  """Sets each row's 'tier' and 'verdict' (see the module docstring)."""
  sign = -1.0 if higher_is_better(metric) else 1.0
  ranked = [r for r in rows if metric in r['metrics'] and r['metrics'][metric]['n'] >= 2]
  for r in rows:
    if r not in ranked:
      r['tier'], r['verdict'] = None, ('not ranked: one seed' if metric in r['metrics']
                                       else f'not ranked: no {metric}')
  ranked.sort(key=lambda r: sign * r['metrics'][metric]['mean'])
  tier, remaining = 0, ranked
  while remaining:
    tier += 1
    head, rest = remaining[0], []
    head['tier'] = tier
    head['verdict'] = ('best' if tier == 1 else
                       f'tier {tier}: worse than tier {tier - 1} (Welch p < {ALPHA})')
    for r in remaining[1:]:
      p = welch_p(head['metrics'][metric]['values'], r['metrics'][metric]['values'])
      if p >= ALPHA:
        r['tier'] = tier
        r['verdict'] = f'within seed noise of {head["name"]} (Welch p = {p:.2f})'
      else:
        rest.append(r)
    remaining = rest


def build(root: Path) -> dict:
  """The report as a dict (what report.json holds)."""
  jobs = collect(root)
  spec = json.loads((root / 'sweep.json').read_text()) if (root / 'sweep.json').exists() else {}
  order = spec.get('rows') or []
  by_row: dict[str, list[Finished]] = {}
  for job in jobs:
    by_row.setdefault(job.record['row'], []).append(job)
  names = [n for n in order if n in by_row] + sorted(n for n in by_row if n not in order)
  metric = primary_metric(jobs)
  rows = []
  for name in names:
    group = sorted(by_row[name], key=lambda j: j.record['seed'])
    per_metric: dict[str, list[float]] = {}
    for job in group:
      for key, value in job.metrics().items():
        per_metric.setdefault(key, []).append(value)
    first = group[0]
    protocols = {ev: first.evals[ev]['result'].get('protocol') for ev in first.evals}
    rows.append({
        'name': name, 'group': first.record.get('group', name), 'x': first.record.get('x'),
        'seeds': [j.record['seed'] for j in group],
        'metrics': {k: summary(v) for k, v in per_metric.items()},
        'eval_x': {ev['name']: ev.get('x') for ev in first.record.get('evals', [])},
        'protocol': protocols,
        'machine': sorted({j.done.get('machine', '?') for j in group}),
        'commands': [_seed_placeholder(first.record['train'], first.record['seed'], root)]
                    + [_seed_placeholder(e['command'], first.record['seed'], root)
                       for e in first.record.get('evals', [])],
        'workdirs': [str(j.workdir) for j in group]})
  rank(rows, metric)
  return {'root': str(root), 'sweep': spec.get('sweep'), 'config': spec.get('config'),
          'doc': spec.get('doc', ''), 'x_label': spec.get('x_label', ''),
          'seeds_requested': spec.get('seeds'), 'command': spec.get('command'),
          'primary_metric': metric, 'higher_is_better': higher_is_better(metric),
          'alpha': ALPHA, 'rows': rows}


def _seed_placeholder(argv: Sequence[str], seed: int, root: Path) -> str:
  """The command with SEED for the seed and the sweep folder as the report was asked for it
  (relative to the working directory when inside it), not the absolute path jobs were given."""
  line = shlex.join(['python', *argv])
  absolute = str(root.resolve())
  try:
    shown = str(root.resolve().relative_to(Path.cwd().resolve()))
  except ValueError:
    shown = str(root)
  line = line.replace(absolute + '/', shown + '/')
  return re.sub(rf'--config\.seed={seed}\b', '--config.seed=SEED',
                re.sub(rf'/seed{seed}(\b|/)', r'/seedSEED\1', line))


def _fmt(stat: dict | None, metric: str) -> str:
  if stat is None:
    return '–'
  if 'bytes' in metric:
    scale, unit = 2 ** 20, ' MiB'
  else:
    scale, unit = 1, ''
  mean = stat['mean'] / scale
  digits = 0 if metric in ('parameters', 'train seconds') or abs(mean) >= 1000 else (
      2 if abs(mean) >= 10 else 4)
  if stat['std'] is None:
    return f'{mean:,.{digits}f}{unit} (n=1)'
  return f'{mean:,.{digits}f} ± {stat["std"] / scale:,.{digits}f}{unit}'


def markdown(report: dict, figures: Sequence[str]) -> str:
  metric = report['primary_metric']
  columns = [metric] + sorted({m for r in report['rows'] for m in r['metrics']} - {metric},
                               key=lambda m: (m in ('parameters', 'train seconds'), m))
  lines = [f'### Sweep `{report["sweep"]}` of `{report["config"]}`', '']
  if report['doc']:
    lines += [report['doc'], '']
  machines = sorted({m for r in report['rows'] for m in r['machine']})
  lines += [f'Command: `{report["command"]}`  ', f'Machine: {"; ".join(machines)}  ',
            f'Primary metric: **{metric}** ({"higher" if report["higher_is_better"] else "lower"}'
            f' is better), mean ± sample std over seeds (n each). Tier: rows that Welch\'s t-test '
            f'cannot tell apart at p < {report["alpha"]} share one; one-seed rows are not ranked.',
            '']
  lines.append('| row | n | ' + ' | '.join(columns) + ' | tier | verdict |')
  lines.append('|---|---:|' + '---:|' * len(columns) + '---:|---|')
  order = sorted(report['rows'], key=lambda r: (r['tier'] is None, r['tier'] or 0,
                                                  _sort_key(r, metric, report)))
  for r in order:
    n = r['metrics'].get(metric, {}).get('n', len(r['seeds']))
    cells = [_fmt(r['metrics'].get(c), c) for c in columns]
    lines.append(f'| {r["name"]} | {n} | ' + ' | '.join(cells)
                 + f' | {r["tier"] or "–"} | {r["verdict"]} |')
  lines += ['', 'Protocol and commands per row (SEED = 0 … n−1):', '']
  for r in report['rows']:
    protocol = '; '.join(f'{k}: {json.dumps(v, sort_keys=True)}' for k, v in r['protocol'].items()
                         if v)
    lines.append(f'- **{r["name"]}**' + (f' (protocol {protocol})' if protocol else ''))
    lines += [f'  - `{c}`' for c in r['commands']]
  if figures:
    lines += ['']
    lines += [f'![{Path(f).stem}]({f})' for f in figures]
  return '\n'.join(lines) + '\n'


def _sort_key(row: dict, metric: str, report: dict) -> float:
  stat = row['metrics'].get(metric)
  if stat is None:
    return math.inf
  return -stat['mean'] if report['higher_is_better'] else stat['mean']


def _valid_curves(workdir: Path) -> dict[str, dict[int, float]]:
  curves: dict[str, dict[int, float]] = {}
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return curves
  for line in path.read_text().splitlines():
    row = json.loads(line)
    for key in ('loss', 'accuracy', 'bpc', 'perplexity'):
      if isinstance(row.get(key), (int, float)):
        curves.setdefault(f'{row["split"]} {key}', {})[row['step']] = float(row[key])
  return curves


def plots(report: dict, out_dir: Path) -> list[Path]:
  """Learning curves with seed bands; metric against x (rows' or evals') per group; training
  time and evaluation peak memory against the rows' x (T in a length sweep)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  metric_name = report['primary_metric'].rsplit(' ', 1)[-1]
  for split in ('train', 'valid'):
    key = f'{split} loss' if split == 'train' else next(
        (f'valid {m}' for m in ('accuracy', 'bpc', 'perplexity') if m == metric_name), 'valid loss')
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for r in report['rows']:
      curves = [_valid_curves(Path(w)).get(key, {}) for w in r['workdirs']]
      steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
      if not steps:
        continue
      values = np.array([[c[s] for s in steps] for c in curves])
      mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else 0 * values[0]
      ax.plot(steps, mean, label=f'{r["name"]} (n={len(values)})')
      ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
      drawn = True
    if drawn:
      ax.set_xlabel('update')
      ax.set_ylabel(key)
      ax.set_title(f'{report["sweep"]}: {key}, mean ± std over seeds')
      ax.legend(fontsize=7)
      fig.tight_layout()
      path = out_dir / f'curve-{key.replace(" ", "_")}.png'
      fig.savefig(path, dpi=120)
      written.append(path)
    plt.close(fig)
  metric = report['primary_metric']
  with_x = [r for r in report['rows'] if r['x'] is not None and metric in r['metrics']]
  if with_x:
    fig, ax = plt.subplots(figsize=(6, 4))
    for group in sorted({r['group'] for r in with_x}):
      pts = sorted((r['x'], r['metrics'][metric]) for r in with_x if r['group'] == group)
      xs = [p[0] for p in pts]
      ys = np.array([p[1]['mean'] for p in pts])
      es = np.array([p[1]['std'] or 0.0 for p in pts])
      ax.errorbar(xs, ys, yerr=es, marker='o', capsize=3, label=group)
    ax.set_xlabel(report['x_label'] or 'x')
    ax.set_ylabel(metric)
    ax.set_title(f'{report["sweep"]}: {metric} (mean ± std over seeds)')
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / 'metric-vs-x.png'
    fig.savefig(path, dpi=120)
    written.append(path)
    plt.close(fig)
  cost = [r for r in report['rows'] if r['x'] is not None]
  if cost and any('train seconds' in r['metrics'] for r in cost):
    # Time and memory against the row's x (the sequence length T in a length sweep).
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    memory = sorted({k for r in cost for k in r['metrics'] if k.endswith(' peak_memory_bytes')})
    for group in sorted({r['group'] for r in cost}):
      rows = sorted((r for r in cost if r['group'] == group), key=lambda r: r['x'])
      for ax, key in zip(axes, ('train seconds', memory[0] if memory else None)):
        pts = [(r['x'], r['metrics'][key]) for r in rows if key in r['metrics']]
        if pts:
          ax.errorbar([x for x, _ in pts], [m['mean'] for _, m in pts],
                      yerr=[m['std'] or 0.0 for _, m in pts], marker='o', capsize=3,
                      label=group)
    axes[0].set_ylabel('training wall time (s; jobs may share the machine)')
    axes[1].set_ylabel('evaluation peak memory (bytes)')
    for ax in axes:
      ax.set_xlabel(report['x_label'] or 'x')
      if ax.lines:
        ax.legend(fontsize=7)
    fig.suptitle(f'{report["sweep"]}: time and memory (mean ± std over seeds)')
    fig.tight_layout()
    path = out_dir / 'cost-vs-x.png'
    fig.savefig(path, dpi=120)
    written.append(path)
    plt.close(fig)
  eval_x = [r for r in report['rows'] if any(v is not None for v in r['eval_x'].values())]
  if eval_x:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in eval_x:
      for ax, suffix in zip(axes, ('value', 'peak_memory_bytes')):
        pts = []
        for name, x in r['eval_x'].items():
          keys = [m for m in r['metrics'] if m.startswith(f'{name} ')
                  and (m.endswith('peak_memory_bytes') == (suffix == 'peak_memory_bytes'))]
          if x is not None and keys:
            pts.append((x, r['metrics'][keys[0]]))
        if pts:
          pts.sort(key=lambda p: p[0])
          ax.errorbar([p[0] for p in pts], [p[1]['mean'] for p in pts],
                      yerr=[p[1]['std'] or 0.0 for p in pts], marker='o', capsize=3,
                      label=r['name'])
    axes[0].set_ylabel(metric_name)
    axes[1].set_ylabel('peak memory (bytes)')
    for ax in axes:
      ax.set_xlabel(report['x_label'] or 'eval x')
      if ax.lines:
        ax.legend(fontsize=7)
    fig.suptitle(f'{report["sweep"]}: one checkpoint evaluated at several settings')
    fig.tight_layout()
    path = out_dir / 'eval-vs-x.png'
    fig.savefig(path, dpi=120)
    written.append(path)
    plt.close(fig)
  return written


def write(root: Path, update_doc: Path | None = None) -> dict:
  """Builds the report of `root` and writes its files; returns the report."""
  report = build(root)
  figures = plots(report, root / 'report')
  (root / 'report.json').write_text(json.dumps(report, indent=2, allow_nan=False) + '\n')
  (root / 'report.md').write_text(
      markdown(report, [str(p.relative_to(root)) for p in figures]), encoding='utf-8')
  if update_doc is not None:
    update_document(update_doc, report, figures, root)
  return report


def update_document(doc: Path, report: dict, figures: Sequence[Path], root: Path) -> None:
  """Replaces (or appends) the block of this sweep in `doc`; figures go beside it."""
  name = root.name
  figure_dir = doc.parent / 'figures' / name
  figure_dir.mkdir(parents=True, exist_ok=True)
  links = []
  for f in figures:
    target = figure_dir / f.name
    target.write_bytes(f.read_bytes())
    links.append(str(target.relative_to(doc.parent)))
  text = markdown(report, links)
  for spelling in sorted({str(root.resolve()), str(root)}, key=len, reverse=True):
    text = text.replace(spelling, '<root>')
  block = BEGIN.format(name) + '\n' + text + END.format(name)
  text = doc.read_text(encoding='utf-8') if doc.exists() else ''
  begin, end = BEGIN.format(name), END.format(name)
  if begin in text and end in text:
    head, rest = text.split(begin, 1)
    text = head + block + rest.split(end, 1)[1]
  else:
    text = text.rstrip('\n') + '\n\n' + block + '\n'
  doc.write_text(text, encoding='utf-8')
