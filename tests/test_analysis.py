"""eval.py --analysis end to end: every analysis on a trained LM and on a trained translation
model, their files, and the refusals (one line, exit 2, nothing under W/analysis/ changed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import alignment as align_lib
from tests.test_eval_flags import _workdir
from tests.test_faults import _tree
from tests.test_train import run


@pytest.fixture(scope='module')
def lm_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('analysis') / 'lm'
  run('train.py', f'--workdir={workdir}', '--config.train_steps=20', '--config.eval_every=20',
      '--config.progress_bar=False')
  return workdir


@pytest.fixture(scope='module')
def mt_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('analysis') / 'mt'
  run('train.py', '--config=configs/alignment.py:size=tiny,steps=20', f'--workdir={workdir}',
      '--config.progress_bar=False', '--config.decode.valid_sentences=0')
  return workdir


def _analyse(workdir, *flags):
  proc = run('eval.py', f'--workdir={workdir}', *flags)
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize('analysis', ['norms', 'maps', 'collapse'])
def test_lm_analyses_write_their_files(lm_workdir, analysis):
  result = _analyse(lm_workdir, f'--analysis={analysis}', '--num_examples=3')
  assert result['analysis'] == analysis and result['step'] == 20
  for path in result['files'].values():
    assert (lm_workdir / 'analysis' / path.split('/')[-1]).stat().st_size > 0
  arrays = np.load(result['files']['npz'])
  if analysis == 'norms':
    layer = result['layers'][0]
    assert layer['reconstruction_error'] < 1e-5 and layer['weights'] == 'exact'
    assert set(layer['mixing_ratio']) == {'ATTN-W', 'ATTN-N', 'ATTNRES-W', 'ATTNRES-N',
                                          'ATTNRESLN-N'}
    assert arrays['self/weights'].ndim == 4                   # [L, N, T, S] of example 0
  if analysis == 'collapse':
    assert set(result['stacks']) == {'self', 'pure_attention'}
    assert len(result['stacks']['self']['grad_wq']) == 2


@pytest.mark.slow
@pytest.mark.parametrize('analysis', ['norms', 'maps', 'collapse', 'alignment'])
def test_translation_analyses_write_their_files(mt_workdir, analysis):
  result = _analyse(mt_workdir, f'--analysis={analysis}', '--num_examples=6', '--split=test')
  assert result['analysis'] == analysis
  if analysis == 'alignment':
    assert result['sentences'] == 6
    table = result['aer_percent']['layer']
    assert set(table) == {'weights AWO', 'weights AWI', 'norms AWO', 'norms AWI'}
    assert all(0 <= x <= 100 for values in table.values() for x in values)
    pharaoh = [p for k, p in result['files'].items() if k.endswith('.pharaoh')]
    assert len(pharaoh) == 4
    assert len(align_lib.read_pharaoh(pharaoh[0], expected_sentences=6)) == 6
  if analysis == 'norms':
    roles = {layer['path'].split('.')[-1] for layer in result['layers']}
    assert roles == {'self_attention', 'cross_attention'}


def _refused(workdir, *flags, named: str):
  before = _tree(workdir)
  proc = run('eval.py', f'--workdir={workdir}', *flags, check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and lines and named in lines[-1], proc.stderr[-2000:]
  assert not any('Traceback' in line for line in lines)
  assert _tree(workdir) == before
  return lines[-1]


def test_unknown_analysis_lists_the_known_ones(tmp_path):
  workdir = _workdir(tmp_path, 'wikitext103', 'size=tiny')
  line = _refused(workdir, '--analysis=norm', named="--analysis='norm'")
  assert 'norms, alignment, collapse, maps' in line


def test_alignment_on_a_language_model_is_refused(tmp_path):
  workdir = _workdir(tmp_path, 'wikitext103', 'size=tiny')
  _refused(workdir, '--analysis=alignment', named='needs a translation workdir')


def _gold_files(tmp_path, sources, targets, links):
  paths = [tmp_path / 'src.txt', tmp_path / 'tgt.txt', tmp_path / 'gold.talp']
  paths[0].write_text(''.join(s + '\n' for s in sources))
  paths[1].write_text(''.join(t + '\n' for t in targets))
  paths[2].write_text(''.join(line + '\n' for line in links))
  return [f'--source_file={paths[0]}', f'--target_file={paths[1]}', f'--gold_file={paths[2]}']


def test_gold_with_another_sentence_count_is_refused(tmp_path):
  workdir = _workdir(tmp_path, 'alignment', 'size=tiny')
  (workdir / 'analysis').mkdir()
  (workdir / 'analysis' / 'alignment-test-step20.json').write_text('{"kept": true}\n')
  flags = _gold_files(tmp_path, ['ka to', 'me'], ['vyd hau', 'glo'], ['1-1 2-2'])
  line = _refused(workdir, '--analysis=alignment', *flags, named='1')
  assert '2' in line and 'gold.talp' in line and 'src.txt' in line
  assert json.loads((workdir / 'analysis' / 'alignment-test-step20.json').read_text())


def test_gold_link_outside_the_sentence_is_refused(tmp_path):
  workdir = _workdir(tmp_path, 'alignment', 'size=tiny')
  flags = _gold_files(tmp_path, ['ka to', 'me'], ['vyd hau', 'glo'], ['1-1 2-2', '1-3'])
  _refused(workdir, '--analysis=alignment', *flags, named='sentence 2')


def test_text_longer_than_the_positions_is_refused(tmp_path):
  workdir = _workdir(tmp_path, 'alignment', 'size=tiny')
  long = ' '.join(['ka'] * 400)
  _refused(workdir, '--analysis=maps', f'--text={long} ||| vyd', named='positions')


def test_analysis_flags_need_an_analysis(tmp_path):
  workdir = _workdir(tmp_path, 'wikitext103', 'size=tiny')
  _refused(workdir, '--num_examples=3', named='--num_examples')
