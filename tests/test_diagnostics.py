"""Diagnostics during training (`diagnostics.every`): what the run logs at step s equals what
`eval.py --analysis=collapse` measures on the checkpoint of step s, in both models; the
TensorBoard scalars; the refusals."""

from __future__ import annotations

import json
import math

import pytest

from tests.test_train import run
from training import diagnostics


def _lines(workdir, split):
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {row['step']: row for row in rows if row['split'] == split}


def _collapse(workdir, step, examples):
  proc = run('eval.py', f'--workdir={workdir}', '--analysis=collapse', f'--checkpoint={step}',
             f'--num_examples={examples}')
  return json.loads(proc.stdout.strip().splitlines()[-1])['stacks']


def _assert_same(logged, stacks):
  expected = diagnostics.flatten(stacks)
  assert set(logged) - {'step', 'split'} == set(expected)
  for key, value in expected.items():
    assert logged[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_lm_logs_the_collapse_analysis_of_its_checkpoints(tmp_path):
  from training.metric_log import read_events  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'lm'
  run('train.py', f'--workdir={workdir}', '--config.train_steps=20', '--config.eval_every=20',
      '--config.checkpoint_every=10', '--config.diagnostics.every=10',
      '--config.diagnostics.examples=4', '--config.progress_bar=False')
  logged = _lines(workdir, 'diagnostics')
  assert sorted(logged) == [10, 20]
  for step in (10, 20):
    stacks = _collapse(workdir, step, 4)
    assert set(stacks) == {'self', 'pure_attention'}
    _assert_same(logged[step], stacks)
  assert logged[10]['self/grad_wq/layer1'] != logged[20]['self/grad_wq/layer1']
  tags = {(tag, step) for tag, step, _ in read_events(workdir / 'tensorboard')}
  assert {('diagnostics/self/relative_residual/layer2', 10),
          ('diagnostics/pure_attention/mean_pairwise_cosine/layer1', 20)} <= tags


@pytest.mark.slow
def test_translation_logs_every_stack(tmp_path):
  workdir = tmp_path / 'mt'
  run('train.py', '--config=configs/alignment.py:size=tiny,steps=12', f'--workdir={workdir}',
      '--config.diagnostics.every=5', '--config.diagnostics.examples=3',
      '--config.decode.valid_sentences=0', '--config.progress_bar=False')
  logged = _lines(workdir, 'diagnostics')
  assert sorted(logged) == [5, 10, 12]   # every 5 updates and after the last
  stacks = _collapse(workdir, 12, 3)
  assert set(stacks) == {'encoder', 'decoder', 'cross'}
  _assert_same(logged[12], stacks)


def test_bad_options_are_refused_before_anything_is_written(tmp_path):
  workdir = tmp_path / 'refused'
  proc = run('train.py', f'--workdir={workdir}', '--config.train_steps=2',
             '--config.diagnostics.every=-1', check=False)
  assert proc.returncode != 0
  assert 'diagnostics.every=-1' in proc.stderr.strip().splitlines()[-1]
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()


def test_check_and_flatten():
  from configs import common  # pylint: disable=g-import-not-at-top
  config = common.base_config()
  diagnostics.check(config, process_count=4)   # off: any run
  config.diagnostics.every = 10
  with pytest.raises(ValueError, match='single process'):
    diagnostics.check(config, process_count=2)
  config.diagnostics.examples = 0
  with pytest.raises(ValueError, match='diagnostics.examples=0'):
    diagnostics.check(config, process_count=1)
  flat = diagnostics.flatten({'self': {'grad_wq': [1.0, None]}})
  assert flat['self/grad_wq/layer1'] == 1.0 and math.isnan(flat['self/grad_wq/layer2'])
