"""Several workdirs' analyses side by side: one figure and one table per analysis.

    summaries = {kind: read_summary(workdir, 'collapse', 'valid', 300) for kind, workdir in …}
    depth_figure(summaries, 'collapse-by-kind.png')   # one line per kind in every panel
    print(collapse_table(summaries))                  # Markdown, one row per kind and stack
    print(norms_table(norms_summaries))               # Markdown, one row per kind and layer
    print(mixing_table(norms_summaries))              # the mixing ratios, the same rows

The summaries are the JSON files `eval.py --analysis=collapse|norms` writes under
`W/analysis/`; this module only reads and lays them out (benchmarks/lm_comparison.py
--analyses uses it for every attention kind of the small LM).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from analysis import plots
from analysis import report

CATEGORIES = ('eos', 'punctuation', 'frequent')
MIXING_RATIOS = ('ATTN-W', 'ATTN-N', 'ATTNRES-W', 'ATTNRES-N', 'ATTNRESLN-N')


def summary_path(workdir: str | Path, analysis: str, split: str, step: int) -> Path:
  """Where `eval.py --analysis=<analysis> --split=<split>` put the summary of checkpoint `step`."""
  return Path(workdir) / 'analysis' / f'{report.output_name(analysis, split, step)}.json'


def read_summary(workdir: str | Path, analysis: str, split: str, step: int) -> dict[str, Any]:
  """The summary of one analysis of a workdir; a one-line error naming the missing file."""
  path = summary_path(workdir, analysis, split, step)
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing; run eval.py --workdir={workdir} '
                            f'--analysis={analysis} --split={split} --checkpoint={step}')
  summary = json.loads(path.read_text())
  if summary.get('analysis') != analysis:
    raise ValueError(f'{path} holds a {summary.get("analysis")!r} analysis; expected {analysis!r}')
  return summary


def depth_figure(summaries: Mapping[str, dict[str, Any]], path: str | Path, *,
                 title: str = 'rank collapse and gradient norms over depth') -> str:
  """Rank-collapse and gradient-norm curves of several collapse summaries `{label: summary}`,
  one panel per metric and one line per label (and stack), written to `path`."""
  return plots.depth_curves(str(path), report.curves_by_metric(dict(summaries)), title=title)


def _cell(value: float | None, fmt: str) -> str:
  return '–' if value is None else format(value, fmt)


def collapse_table(summaries: Mapping[str, dict[str, Any]]) -> str:
  """Markdown: per label and stack, each collapse metric from the first to the last layer."""
  metrics = list(report.CURVE_METRICS)
  lines = ['| kind | stack | ' + ' | '.join(report.CURVE_METRICS[m] for m in metrics) + ' |',
           '|---|---|' + '---|' * len(metrics)]
  for label, summary in summaries.items():
    for stack, entry in summary['stacks'].items():
      cells = []
      for m in metrics:
        values = entry.get(m)
        fmt = '.2e' if m.startswith('grad') else '.3f'
        cells.append('' if values is None else ' → '.join(_cell(v, fmt) for v in
                                                             (values[0], values[-1])))
      lines.append(f'| {label} | {stack} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def norms_table(summaries: Mapping[str, dict[str, Any]]) -> str:
  """Markdown: per label and attention layer, the attention a category receives by weight (α)
  and by norm (its share of Σ‖α f‖), the category's mean ‖f(x)‖ over that of other tokens, and
  the two Spearman correlations of Kobayashi et al. 2020 §4."""
  head = ['kind', 'layer']
  for c in CATEGORIES:
    head += [f'{c} α', f'{c} norm share', f'{c} ‖f‖ / other ‖f‖']
  head += ['ρ(α, ‖f‖)', 'ρ(‖f‖, freq. rank)']
  lines = ['| ' + ' | '.join(head) + ' |', '|---|---|' + '---:|' * (len(head) - 2)]
  for label, summary in summaries.items():
    for layer in summary['layers']:
      cats = layer['categories']
      other = cats.get('other', {}).get('f_norm')
      cells = [label, layer['layer']]
      for c in CATEGORIES:
        entry = cats.get(c, {})
        f_norm = entry.get('f_norm')
        cells += [_cell(entry.get('weight'), '.3f'), _cell(entry.get('share'), '.3f'),
                  _cell(f_norm / other if f_norm is not None and other else None, '.2f')]
      cells += [_cell(layer['spearman_alpha_vs_fnorm'], '.2f'),
                _cell(layer['spearman_fnorm_vs_frequency_rank'], '.2f')]
      lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def mixing_table(summaries: Mapping[str, dict[str, Any]]) -> str:
  """Markdown: per label and self-attention layer, the mean mixing ratios of Kobayashi et al.
  2021 (the share of a token's new state that comes from the other tokens; analysis/norms.py).
  Cross-attention layers have none and are left out."""
  lines = ['| kind | layer | ' + ' | '.join(MIXING_RATIOS) + ' |',
           '|---|---|' + '---:|' * len(MIXING_RATIOS)]
  for label, summary in summaries.items():
    for layer in summary['layers']:
      if 'mixing_ratio' in layer:
        cells = [_cell(layer['mixing_ratio'].get(r), '.3f') for r in MIXING_RATIOS]
        lines.append(f'| {label} | {layer["layer"]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'
