"""Sweeps (training/sweep.py, training/sweep_report.py): jobs, resumption, SLURM through
submitit, the report's statistics against NumPy, and refusals.

A tiny sweep config is written beside the test (1-layer MQAR models, 4 updates), so each job is
a real train.py run and eval.py run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_train import REPO, _env
from training import sweep_report

TINY = '''
from configs import default

def get_config(arg=None):
  c = default.get_config(arg)
  c.train_steps, c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 4, 2, 2, 2, 2
  c.batch_size, c.seq_len = 8, 32
  m = c.model
  m.num_layers, m.d_model, m.d_ff, m.num_heads = 1, 32, 64, 2
  c.data.num_test_examples = 16
  return c

def get_sweep(arg=None):
  test = [{'name': 'test', 'flags': ['--split=test', '--batch_size=8']}]
  return {
      'tiny': {'doc': 'two kinds', 'evals': test, 'rows': [
          {'name': 'softmax', 'attention.kind': 'softmax'},
          {'name': 'dagpam', 'attention.kind': 'dagpam'}]},
      'same_folder': {'rows': [{'name': 'a', 'seq_len': 24}, {'name': 'a', 'seq_len': 32}]},
      'bad_key': {'rows': [{'attention.kindd': 'softmax'}]},
      'bad_type': {'rows': [{'seq_len': 'long'}]},
      'bad_value': {'rows': [{'name': 'few_pairs', 'data.num_kv_pairs': 4}]},
  }
'''


@pytest.fixture(scope='module')
def config_file(tmp_path_factory) -> Path:
  path = tmp_path_factory.mktemp('sweep_config') / 'tiny_sweep.py'
  path.write_text(TINY)
  return path


def sweep(*args: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
  proc = subprocess.run([sys.executable, '-m', 'training.sweep', *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=900, **popen)
  if check and proc.returncode != 0:
    raise AssertionError(f'sweep {args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n'
                         f'{proc.stderr[-3000:]}')
  return proc


@pytest.fixture(scope='module')
def finished(tmp_path_factory, config_file) -> Path:
  root = tmp_path_factory.mktemp('sweeps') / 'tiny'
  sweep(f'--config={config_file}', '--sweep=tiny', '--seeds=2', f'--root={root}')
  return root


def test_local_sweep_runs_every_job_and_its_evals(finished):
  for row in ('softmax', 'dagpam'):
    for seed in (0, 1):
      state = finished / row / f'seed{seed}' / 'sweep'
      assert (state / 'done.json').exists()
      result = json.loads((state / 'eval-test.json').read_text())['result']
      assert result['split'] == 'test' and result['metric'] == 'accuracy'
      config = json.loads((finished / row / f'seed{seed}' / 'config.json').read_text())
      assert config['seed'] == seed and config['attention']['kind'] == row


def test_report_statistics_equal_numpy_on_the_run_files(finished):
  proc = sweep('report', f'--root={finished}')
  assert json.loads(proc.stdout.splitlines()[-1])['jobs'] == 4
  report = json.loads((finished / 'report.json').read_text())
  assert report['primary_metric'] == 'test accuracy'
  for row in report['rows']:
    values = [json.loads((finished / row['name'] / f'seed{s}' / 'sweep' / 'eval-test.json')
                         .read_text())['result']['value'] for s in (0, 1)]
    stat = row['metrics']['test accuracy']
    assert stat['n'] == 2
    np.testing.assert_allclose(stat['mean'], np.mean(values), rtol=1e-12)
    np.testing.assert_allclose(stat['std'], np.std(values, ddof=1), rtol=1e-12)
    finals = [json.loads((finished / row['name'] / f'seed{s}' / 'final.json').read_text())
              for s in (0, 1)]
    np.testing.assert_allclose(row['metrics']['valid accuracy']['mean'],
                               np.mean([f['accuracy'] for f in finals]), rtol=1e-12)
  text = (finished / 'report.md').read_text()
  assert '| softmax | 2 |' in text and '| dagpam | 2 |' in text and '±' in text
  assert (finished / 'report' / 'curve-train_loss.png').exists()


def test_rerun_of_a_finished_sweep_runs_nothing(finished, config_file):
  stamps = {p: p.stat().st_mtime_ns for p in finished.glob('*/seed*/sweep/*')}
  proc = sweep(f'--config={config_file}', '--sweep=tiny', '--seeds=2', f'--root={finished}')
  assert json.loads(proc.stdout.splitlines()[-1].removeprefix('sweep '))['skipped'] == 4
  assert stamps == {p: p.stat().st_mtime_ns for p in finished.glob('*/seed*/sweep/*')}


def test_killed_sweep_rerun_finishes_without_redoing_finished_jobs(tmp_path, config_file):
  root = tmp_path / 'killed'
  proc = subprocess.Popen([sys.executable, '-m', 'training.sweep', f'--config={config_file}',
                           '--sweep=tiny', '--seeds=1', f'--root={root}'], cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          start_new_session=True)
  first = root / 'softmax' / 'seed0' / 'sweep' / 'done.json'
  deadline = time.time() + 600
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)          # the launcher and its running train.py
  proc.wait()
  assert first.exists(), proc.stderr.read()[-2000:]
  finished_log = (first.parent / 'train.log').read_text()
  stamp = first.stat().st_mtime_ns
  out = sweep(f'--config={config_file}', '--sweep=tiny', '--seeds=1', f'--root={root}').stdout
  counts = json.loads(out.splitlines()[-1].removeprefix('sweep '))
  assert counts['skipped'] == 1 and counts['done'] == 1
  assert first.stat().st_mtime_ns == stamp
  assert (first.parent / 'train.log').read_text() == finished_log
  assert (root / 'dagpam' / 'seed0' / 'sweep' / 'done.json').exists()


def test_slurm_path_runs_through_submitit_local_executor(tmp_path, config_file):
  pytest.importorskip('submitit')
  root = tmp_path / 'slurm'
  out = sweep(f'--config={config_file}', '--sweep=tiny', '--seeds=1', f'--root={root}',
              '--launcher=slurm', '--slurm_cluster=local').stdout
  assert json.loads(out.splitlines()[-1].removeprefix('sweep '))['done'] == 2
  for row in ('softmax', 'dagpam'):
    assert (root / row / 'seed0' / 'sweep' / 'eval-test.json').exists()
  assert list((root / 'slurm').rglob('*_log.out'))  # submitit's logs live in the sweep folder


@pytest.mark.parametrize('args,named', [
    (['--sweep=nope'], "unknown sweep 'nope'"),
    (['--sweep=bad_key'], "no key 'attention.kindd'"),
    (['--sweep=bad_type'], 'seq_len'),
    (['--sweep=bad_value'], "row 'few_pairs': num_queries (8) may not exceed num_kv_pairs (4)"),
    (['--sweep=same_folder'], 'two jobs would share the workdir'),
    (['--sweep=tiny', '--launcher=slurm'], 'use --launcher=local'),
    (['--sweep=tiny', '--set=seq_len=long'], "--set=seq_len=long: invalid literal"),
    (['--sweep=same_folder', '--set=seq_len=8'], "row 'a' of sweep 'same_folder' sets it too"),
])
def test_bad_sweeps_are_refused_in_one_line_before_anything_is_written(tmp_path, config_file,
                                                                        args, named):
  root = tmp_path / 'root'
  proc = sweep(f'--config={config_file}', f'--root={root}', *args, check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and named in lines[0], proc.stderr[-2000:]
  if named == 'use --launcher=local':
    assert 'sbatch' in lines[0]
  assert not root.exists()


def test_report_over_a_folder_without_finished_jobs_is_refused(tmp_path):
  proc = sweep('report', f'--root={tmp_path}', check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and 'no finished jobs' in lines[0]


def _row(name, values):
  return {'name': name, 'metrics': {'m perplexity': sweep_report.summary(values)}}


def test_ranking_shares_a_tier_inside_the_seed_noise():
  rows = [_row('a', [10.0, 10.2, 9.9]), _row('b', [10.1, 9.8, 10.3]),
          _row('c', [12.0, 12.1, 11.9]), _row('d', [15.0])]
  sweep_report.rank(rows, 'm perplexity')
  tiers = {r['name']: r['tier'] for r in rows}
  assert tiers == {'a': 1, 'b': 1, 'c': 2, 'd': None}
  assert 'within seed noise of a' in rows[1]['verdict']
  assert rows[3]['verdict'] == 'not ranked: one seed'
  from scipy import stats
  want = stats.ttest_ind([10.0, 10.2, 9.9], [12.0, 12.1, 11.9], equal_var=False).pvalue
  np.testing.assert_allclose(sweep_report.welch_p([10.0, 10.2, 9.9], [12.0, 12.1, 11.9]), want)


def test_every_sweep_of_every_task_config_names_real_keys(tmp_path):
  """Each sweep beside the task configs expands and its overrides exist with the right types;
  the parameter-matched control has daGPAM's parameter count within one FFN unit per layer."""
  from training import sweep as sweep_lib
  from configs import sweeps as rows_lib
  configs = sweep_lib.configs_with_sweeps()
  assert {'configs/default.py', 'configs/wikitext103.py', 'configs/enwik8.py',
          'configs/iwslt14.py', 'configs/wmt14.py'} <= set(configs)
  for path in configs:
    for arg in ('size=tiny', 'size=paper') if path != 'configs/default.py' else ('',):
      spec = f'{path}:{arg}' if arg else path
      module = sweep_lib._import_config_module(sweep_lib.REPO / path)  # pylint: disable=protected-access
      for name in module.get_sweep(arg or None):
        s = sweep_lib.load_sweep(spec, name)
        sweep_lib.check_overrides(spec, s)
        jobs = sweep_lib.make_jobs(spec, s, 2, tmp_path / name)
        assert len(jobs) == 2 * len(s.rows)
        sweep_lib.stages(jobs)
  from configs import wikitext103
  config = wikitext103.get_config('size=small')
  d, ffn_unit = config.model.d_model, 2 * config.model.d_model + 1
  extra = rows_lib.dagpam_extra_parameters(config)
  assert extra == config.model.num_layers * (d // config.model.num_heads) ** 2
  added = (rows_lib.matched_d_ff(config) - config.model.d_ff) * config.model.num_layers * ffn_unit
  assert abs(added - extra) <= config.model.num_layers * ffn_unit / 2


def test_a_row_after_another_waits_for_it_and_reads_its_workdir(tmp_path):
  from training import sweep as sweep_lib
  rows = (sweep_lib.Row('teacher', (('attention.kind', 'softmax'),), 'teacher'),
          sweep_lib.Row('student', (('attention.sea.teacher', '{root}/teacher/seed{seed}'),),
                        'student', after='teacher', evals=('k8',)))
  evals = (sweep_lib.Eval('test', ('--split=test',)), sweep_lib.Eval('k8', ('--split=test',), 8.0))
  s = sweep_lib.Sweep('s', '', rows, evals)
  jobs = sweep_lib.make_jobs('configs/default.py', s, 2, tmp_path)
  waves = sweep_lib.stages(jobs)
  assert [[(j.row.name, j.seed) for j in w] for w in waves] == [
      [('teacher', 0), ('teacher', 1)], [('student', 0), ('student', 1)]]
  student = waves[1][1]
  assert f'--config.attention.sea.teacher={tmp_path.resolve()}/teacher/seed1' in student.train
  assert [e.name for e, _ in student.evals] == ['k8']


def test_report_updates_its_block_of_a_results_page_in_place(finished, tmp_path):
  doc = tmp_path / 'docs' / 'results.md'
  doc.parent.mkdir()
  doc.write_text('# Results\n\nhand-written text\n')
  for _ in range(2):                                   # the second run replaces, never appends
    sweep('report', f'--root={finished}', f'--update_doc={doc}')
  text = doc.read_text()
  assert text.startswith('# Results\n\nhand-written text\n')
  assert text.count('<!-- begin sweep report: tiny -->') == 1
  assert text.count('<!-- end sweep report: tiny -->') == 1
  assert str(finished.resolve()) not in text and '<root>/softmax/seedSEED' in text
  assert (doc.parent / 'figures' / 'tiny' / 'curve-train_loss.png').exists()
  assert '](figures/tiny/curve-train_loss.png)' in text


def test_rows_with_an_x_get_time_and_memory_plots(tmp_path):
  """A length sweep (x = T) plots the metric, the training time and the evaluation peak memory
  against T; without timings there is no cost plot."""
  def row(group, x, seconds):
    metrics = {'test accuracy': {'mean': 0.9, 'std': 0.01, 'n': 3},
               'test peak_memory_bytes': {'mean': 1e6 * x, 'std': 0.0, 'n': 3}}
    if seconds:
      metrics['train seconds'] = {'mean': seconds * x, 'std': 1.0, 'n': 3}
    return {'name': f'{group}-len{x}', 'group': group, 'x': x, 'metrics': metrics,
            'eval_x': {'test': None}, 'workdirs': []}

  for seconds, want in ((0.5, True), (None, False)):
    report = {'sweep': 'mqar_length', 'x_label': 'sequence length',
              'primary_metric': 'test accuracy',
              'rows': [row(g, x, seconds) for g in ('softmax', 'performer') for x in (32, 128)]}
    out = tmp_path / str(want)
    written = {p.name for p in sweep_report.plots(report, out)}
    assert 'metric-vs-x.png' in written
    assert ('cost-vs-x.png' in written) == want
    assert {p.name for p in out.iterdir()} == written


def test_report_commands_name_the_sweep_folder_as_given_not_the_absolute_path(monkeypatch,
                                                                              tmp_path):
  monkeypatch.chdir(tmp_path)
  root = Path('sweeps/s')
  argv = ['train.py', '--config.seed=1', f'--workdir={(tmp_path / root).resolve()}/a/seed1']
  line = sweep_report._seed_placeholder(argv, 1, root)  # pylint: disable=protected-access
  assert line == 'python train.py --config.seed=SEED --workdir=sweeps/s/a/seedSEED'
