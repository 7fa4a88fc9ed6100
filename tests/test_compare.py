"""Analyses side by side (analysis/compare.py): tables carry the summaries' numbers, the figure
has one line per kind, a missing summary names the command that makes it.

The summaries are written by hand in the shape eval.py writes (analysis/report.py), with values
whose table cells are known exactly.
"""

from __future__ import annotations

import json

import pytest

from analysis import compare
from tests.test_plots import assert_png


def _norms_summary(eos_weight: float, eos_share: float) -> dict:
  cats = {'eos': {'weight': eos_weight, 'share': eos_share, 'norm': 0.1, 'f_norm': 1.0},
          'punctuation': {'weight': 0.2, 'share': 0.3, 'norm': 0.1, 'f_norm': 6.0},
          'other': {'weight': 0.3, 'share': 0.6, 'norm': 0.2, 'f_norm': 4.0}}  # no 'frequent'
  return {'analysis': 'norms', 'layers': [
      {'layer': 'layer 1', 'categories': cats, 'spearman_alpha_vs_fnorm': -0.25,
       'spearman_fnorm_vs_frequency_rank': None,
       'mixing_ratio': {'ATTN-W': 0.75, 'ATTN-N': eos_weight, 'ATTNRES-W': 0.375,
                        'ATTNRES-N': 0.125}},   # no ATTNRESLN-N
      {'layer': 'cross 1', 'categories': cats, 'spearman_alpha_vs_fnorm': None,
       'spearman_fnorm_vs_frequency_rank': None}]}


def _collapse_summary(scale: float) -> dict:
  return {'analysis': 'collapse', 'stacks': {
      'self': {'relative_residual': [0.9, 0.5 * scale, 0.25 * scale],
               'mean_pairwise_cosine': [0.1, 0.5, 0.75], 'grad_wq': [1e-3, 1e-4, 2e-5],
               'grad_scores': [None, None, None]}}}


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip('|').split('|')]


def test_norms_table_cells():
  table = compare.norms_table({'softmax': _norms_summary(0.5, 0.125),
                               'diff': _norms_summary(0.25, 0.0625)})
  lines = table.strip().splitlines()
  header, rows = _cells(lines[0]), [dict(zip(_cells(lines[0]), _cells(l))) for l in lines[2:]]
  assert len(rows) == 4 and all(len(_cells(l)) == len(header) for l in lines)
  softmax, _, diff, _ = rows
  assert softmax['kind'] == 'softmax' and softmax['layer'] == 'layer 1'
  assert softmax['eos α'] == '0.500' and softmax['eos norm share'] == '0.125'
  assert softmax['eos ‖f‖ / other ‖f‖'] == '0.25'          # 1.0 / 4.0
  assert softmax['punctuation ‖f‖ / other ‖f‖'] == '1.50'  # 6.0 / 4.0
  assert softmax['frequent α'] == '–'                      # a category the data lacks
  assert softmax['ρ(α, ‖f‖)'] == '-0.25' and softmax['ρ(‖f‖, freq. rank)'] == '–'
  assert diff['kind'] == 'diff' and diff['eos α'] == '0.250'


def test_collapse_table_gives_first_and_last_layer():
  table = compare.collapse_table({'softmax': _collapse_summary(1.0),
                                  'dagpam': _collapse_summary(2.0)})
  lines = table.strip().splitlines()
  assert len(lines) == 4
  assert '| softmax | self | 0.900 → 0.250 |' in lines[2]
  assert '| dagpam | self | 0.900 → 0.500 |' in lines[3]
  assert '1.00e-03 → 2.00e-05' in lines[2] and '– → –' in lines[2]


def test_depth_figure_and_summaries_from_workdirs(tmp_path):
  summaries = {}
  for kind, scale in (('softmax', 1.0), ('dagpam', 2.0)):
    path = compare.summary_path(tmp_path / kind, 'collapse', 'valid', 300)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_collapse_summary(scale)))
    summaries[kind] = compare.read_summary(tmp_path / kind, 'collapse', 'valid', 300)
  assert summaries['dagpam']['stacks']['self']['relative_residual'][-1] == 0.5
  figure = tmp_path / 'by-kind.png'
  assert_png(figure, compare.depth_figure(summaries, figure))


def test_a_missing_or_wrong_summary_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'collapse-valid-step300\.json is missing; run '
                     r'eval\.py --workdir=\S+ --analysis=collapse --split=valid --checkpoint=300'):
    compare.read_summary(tmp_path, 'collapse', 'valid', 300)
  path = compare.summary_path(tmp_path, 'collapse', 'valid', 300)
  path.parent.mkdir()
  path.write_text(json.dumps(_norms_summary(0.5, 0.1)))
  with pytest.raises(ValueError, match="holds a 'norms' analysis; expected 'collapse'"):
    compare.read_summary(tmp_path, 'collapse', 'valid', 300)


def test_mixing_table_has_self_attention_rows_only():
  table = compare.mixing_table({'softmax': _norms_summary(0.5, 0.125),
                                'diff': _norms_summary(0.25, 0.0625)})
  lines = table.strip().splitlines()
  assert _cells(lines[0]) == ['kind', 'layer', *compare.MIXING_RATIOS]
  assert len(lines) == 4   # the cross-attention layers have no mixing ratio
  assert _cells(lines[2]) == ['softmax', 'layer 1', '0.750', '0.500', '0.375', '0.125', '–']
  assert _cells(lines[3])[:4] == ['diff', 'layer 1', '0.750', '0.250']
