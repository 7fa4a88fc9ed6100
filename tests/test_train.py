"""End-to-end tests of train.py and eval.py as a user runs them (real subprocesses).

Properties: a run killed with SIGKILL and rerun ends with parameters bitwise equal to an
uninterrupted run's; 4 simulated devices (FSDP × tensor parallel) give the loss of 1 device; eval.py prints one JSON line
with its protocol; bad input exits non-zero with a message and changes nothing.
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

REPO = Path(__file__).resolve().parents[1]

# A small, fast run of the default synthetic task.
TINY = ['--config=configs/default.py', '--config.model.d_model=32', '--config.model.d_ff=64',
        '--config.model.num_heads=2', '--config.batch_size=8', '--config.train_steps=40',
        '--config.log_every=5', '--config.eval_every=20', '--config.eval_batches=2',
        '--config.checkpoint_every=5', '--config.progress_bar=false',
        '--config.model.dropout=0.1']


def _env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def run(script: str, *args: str, devices: int = 1, check: bool = True) -> subprocess.CompletedProcess:
  proc = subprocess.run([sys.executable, script, *args], cwd=REPO, env=_env(devices),
                        capture_output=True, text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f'{script} {args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
  return proc


def flatten_params(params: dict) -> dict[str, np.ndarray]:
  """A nested parameter dict as {'/a/b/kernel': array}."""
  flat = {}

  def visit(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        visit(f'{prefix}/{k}', v)
    else:
      flat[prefix] = np.asarray(node)

  visit('', params)
  return flat


def read_params(workdir: Path, step: int) -> dict[str, np.ndarray]:
  """The saved parameters on this process's first device, whatever mesh saved them."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = workdir / 'checkpoints' / str(step) / 'params'
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    metadata = ckptr.metadata(path).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
    params = ckptr.restore(path, target)
  return flatten_params(params)


def test_killed_run_resumes_bitwise(uninterrupted, tmp_path):
  workdir = tmp_path / 'killed'
  proc = subprocess.Popen([sys.executable, 'train.py', *TINY, f'--workdir={workdir}'], cwd=REPO,
                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  # Kill it mid-run: once a checkpoint past step 10 exists, wait a moment more, then SIGKILL.
  deadline = time.time() + 300
  ckpt_dir = workdir / 'checkpoints'
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in ckpt_dir.glob('[0-9]*') if p.name.isdigit()] if ckpt_dir.exists() else []
    if any(s >= 10 for s in steps):
      time.sleep(0.3)
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run finished before it could be killed; make it longer'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(int(p.name) for p in ckpt_dir.glob('[0-9]*') if p.name.isdigit())
  assert killed_at < 40
  resumed = run('train.py', *TINY, f'--workdir={workdir}')
  assert 'Resuming' in resumed.stdout
  a, b = read_params(uninterrupted, 40), read_params(workdir, 40)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # The metric log reads as one run: one train row per logged step.
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train_steps = [r['step'] for r in rows if r['split'] == 'train']
  assert train_steps == sorted(set(train_steps)) == list(range(5, 41, 5))


def test_rerun_of_finished_run_changes_nothing(uninterrupted):
  before = read_params(uninterrupted, 40)
  proc = run('train.py', *TINY, f'--workdir={uninterrupted}')
  assert 'final' in proc.stdout
  after = read_params(uninterrupted, 40)
  for k in before:
    np.testing.assert_array_equal(before[k], after[k])


def test_four_devices_match_one(uninterrupted, tmp_path):
  """train.py on a 4-device mesh (fsdp=2 × tensor=2: parameters, optimizer state and heads
  sharded) gives the single device's losses."""
  args = [a for a in TINY if not a.startswith('--config.train_steps')] + [
      '--config.train_steps=10', '--config.mesh.fsdp=2', '--config.mesh.tensor=2']
  proc = run('train.py', *args, f'--workdir={tmp_path / "d4"}', devices=4)
  assert '4 device(s) (data=1 × fsdp=2 × tensor=2)' in proc.stdout
  one = [json.loads(l) for l in (uninterrupted / 'metrics.jsonl').read_text().splitlines()]
  four = [json.loads(l) for l in (tmp_path / 'd4' / 'metrics.jsonl').read_text().splitlines()]
  one = {r['step']: r['loss'] for r in one if r['split'] == 'train' and r['step'] <= 10}
  four = {r['step']: r['loss'] for r in four if r['split'] == 'train'}
  assert one.keys() == four.keys() == {5, 10}
  for s in one:
    np.testing.assert_allclose(four[s], one[s], rtol=2e-5)


def test_eval_prints_one_json_line(uninterrupted):
  proc = run('eval.py', f'--workdir={uninterrupted}', '--checkpoint=last', '--split=test')
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result['split'] == 'test' and result['metric'] == 'accuracy' and result['step'] == 40
  assert 0.0 <= result['value'] <= 1.0 and result['tokens'] > 0
  assert result['protocol']['context_window'] == 0
  assert (uninterrupted / 'eval' / 'test-40-cw0.json').exists()
  best = json.loads(run('eval.py', f'--workdir={uninterrupted}').stdout)
  assert best['checkpoint'] == 'best' and best['step'] in (20, 40)


# ----------------------------------------------------------------------------- bad input


def _listing(path: Path) -> dict[str, tuple[int, int]]:
  return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(path.rglob('*')) if p.is_file()}


def test_unknown_attention_kind_lists_known(tmp_path):
  proc = run('train.py', *TINY, '--config.attention.kind=dagpm', f'--workdir={tmp_path}', check=False)
  assert proc.returncode != 0
  assert "unknown attention.kind 'dagpm'" in proc.stderr and 'softmax' in proc.stderr


@pytest.mark.parametrize('overrides, option', [
    (['--config.attention.kind=topk', '--config.attention.topk.k=0'], 'attention.topk.k'),
    (['--config.attention.kind=diff', '--config.model.num_heads=1'], 'model.num_heads'),
    (['--config.attention.kind=sea', '--config.attention.sea.predictor_length=8'],
     'attention.sea.teacher'),
])
def test_contradictory_attention_options_name_the_option(tmp_path, overrides, option):
  proc = run('train.py', *TINY, *overrides, f'--workdir={tmp_path}', check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert option in proc.stderr
  assert not (tmp_path / 'checkpoints').exists()


def test_misspelled_config_key_is_an_error(tmp_path):
  proc = run('train.py', *TINY, '--config.modle.d_model=64', f'--workdir={tmp_path}', check=False)
  assert proc.returncode != 0
  assert 'modle' in proc.stderr


def test_missing_data_names_the_files(tmp_path):
  proc = run('train.py', '--config=configs/wikitext103.py:size=tiny',
             f'--config.data.dir={tmp_path / "nowhere"}', f'--workdir={tmp_path / "w"}', check=False)
  assert proc.returncode == 2
  assert 'wiki.train.tokens' in proc.stderr and 'train.txt' in proc.stderr


def test_incompatible_resume_is_refused(uninterrupted):
  before = _listing(uninterrupted)
  proc = run('train.py', *TINY, '--config.model.d_model=48', f'--workdir={uninterrupted}', check=False)
  assert proc.returncode == 2
  assert 'model.d_model' in proc.stderr and '32' in proc.stderr and '48' in proc.stderr
  assert _listing(uninterrupted) == before


def test_corrupt_checkpoint_is_reported_and_kept(uninterrupted, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'corrupt'
  shutil.copytree(uninterrupted, workdir)
  args = [a for a in TINY if not a.startswith('--config.train_steps')] + ['--config.train_steps=50']
  # Damage every data file of the last checkpoint's parameters.
  for f in (workdir / 'checkpoints' / '40' / 'params').rglob('*'):
    if f.is_file() and f.stat().st_size > 0 and 'metadata' not in f.name:
      f.write_bytes(b'\0' * 7)
  before = _listing(workdir)
  proc = run('train.py', *args, f'--workdir={workdir}', check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert 'checkpoint step 40 is damaged' in lines[0] and '--resume_intact' in lines[0]
  assert _listing(workdir) == before
