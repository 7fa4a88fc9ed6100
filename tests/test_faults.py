"""Fault injection: runs that are killed, interrupted, fed damaged checkpoints, diverge or are
refused, checked against an uninterrupted run and against the disk as it was.

Each test is one kind of fault (docs/reliability.md tabulates them):
- SIGKILL at seeded random moments, one of them while a saved step is not yet committed: the
  rerun resumes and ends bitwise equal to the uninterrupted run;
- SIGTERM / SIGINT: the current step is saved, the process exits 143 / 130 with one line, and the
  resumed run is bitwise equal; TensorBoard and metrics.jsonl hold each step once; a second
  signal ends the process at once and loses nothing committed;
- one flipped byte in each file of a saved step: detected on restore, named, nothing deleted;
  train.py refuses (one line) or, with --resume_intact, resumes from the newest intact step and
  keeps the damaged one; eval.py reads parameters only, so a damaged optimizer state does not
  block it;
- a non-finite loss at step k: the run stops (exit 3) without saving it, every earlier committed
  checkpoint stays intact, the JSON stays strict; `skip_update` drops and counts the update;
- each refused command: the filesystem is unchanged, and the corrected command then runs;
- two processes and one SIGTERM: both save the same step.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_train import REPO, TINY, _env, _listing, read_params, run

STEPS = 40


def _args(*extra: str) -> list[str]:
  return [a for a in TINY if not any(a.startswith(e.split('=')[0] + '=') for e in extra)] + list(extra)


def _strict_json(text: str):
  def refuse(constant):
    raise ValueError(f'non-strict JSON constant {constant}')
  return json.loads(text, parse_constant=refuse)


def _committed_steps(workdir: Path) -> list[int]:
  ckpt = workdir / 'checkpoints'
  return sorted(int(p.name) for p in ckpt.iterdir()
                if p.name.isdigit() and (p / 'checksums.json').exists())


def _all_intact(workdir: Path) -> list[int]:
  from training import checkpoints as ckpt_lib  # pylint: disable=g-import-not-at-top
  steps = _committed_steps(workdir)
  for s in steps:
    ckpt_lib.verify_step(workdir / 'checkpoints' / str(s), s)
  return steps


def _assert_same_params(a: Path, b: Path, step: int = STEPS) -> None:
  pa, pb = read_params(a, step), read_params(b, step)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def _assert_logs_read_as_one_run(workdir: Path) -> None:
  from training.metric_log import read_events  # pylint: disable=g-import-not-at-top
  rows = [_strict_json(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  for split in ('train', 'valid'):
    steps = [r['step'] for r in rows if r['split'] == split]
    assert steps == sorted(set(steps)), (split, steps)
  assert [r['step'] for r in rows if r['split'] == 'train'] == list(range(5, STEPS + 1, 5))
  events = [(tag, step) for tag, step, _ in read_events(workdir / 'tensorboard')]
  assert events and len(events) == len(set(events)), 'a step appears twice in TensorBoard'
  assert {s for t, s in events if t == 'train/loss'} == set(range(5, STEPS + 1, 5))


def _start(workdir: Path, *extra: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, 'train.py', *_args(*extra), f'--workdir={workdir}'],
                          cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _logged_step(workdir: Path) -> int:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return 0
  steps = [0]
  for line in path.read_text().splitlines():
    try:
      steps.append(json.loads(line)['step'])
    except (ValueError, KeyError):
      pass
  return max(steps)


def _wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 300) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f'the run ended ({proc.returncode}) before {what}:\n'
                           f'{proc.stderr.read()[-3000:]}')
    if condition():
      return
    time.sleep(0.01)
  proc.kill()
  raise AssertionError(f'timed out waiting for {what}')


# --------------------------------------------------------------------------------- SIGKILL


# Two random moments (each a full run and a resume: about a minute of the CI budget each).
@pytest.mark.parametrize('seed', [0, 1])
def test_sigkill_at_a_random_moment_resumes_bitwise(uninterrupted, tmp_path, seed):
  rng = random.Random(seed)
  target, delay = rng.randrange(5, STEPS - 5), rng.uniform(0.0, 0.3)
  workdir = tmp_path / 'killed'
  proc = _start(workdir)
  _wait_for(proc, lambda: _logged_step(workdir) >= target, f'step {target}')
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
  committed = _all_intact(workdir)
  resumed = run('train.py', *TINY, f'--workdir={workdir}')
  if committed:  # killed before its first commit: the rerun starts afresh, as it should
    assert f'from step {committed[-1]}.' in resumed.stdout
  _assert_same_params(uninterrupted, workdir)
  _assert_logs_read_as_one_run(workdir)
  _all_intact(workdir)


def test_sigkill_while_a_saved_step_is_uncommitted(uninterrupted, tmp_path):
  """Killed between Orbax's rename of a step and its checksums: that step is not trusted, the
  rerun resumes from the step before and moves the uncommitted folder aside (not deleted).

  The kill comes from the run itself (`inject_kill_before_commit_step`), at that exact moment:
  watching the folder from outside missed it on a fast machine, where the window lasts only
  as long as hashing a few small files."""
  workdir = tmp_path / 'killed'
  ckpt = workdir / 'checkpoints'
  proc = _start(workdir, '--config.inject_kill_before_commit_step=15')
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == -signal.SIGKILL, err[-3000:]
  assert _all_intact(workdir) == [5, 10]
  left = [int(p.name) for p in ckpt.iterdir()
          if p.name.isdigit() and not (p / 'checksums.json').exists()]
  assert left == [15] and (ckpt / '15' / '_CHECKPOINT_METADATA').exists(), 'not written by Orbax'
  resumed = run('train.py', *TINY, f'--workdir={workdir}')
  assert 'from step 10.' in resumed.stdout
  assert 'step folder(s) [15] newer than step 10' in resumed.stdout, resumed.stdout
  assert (workdir / 'set_aside' / '15').is_dir()
  _assert_same_params(uninterrupted, workdir)
  _assert_logs_read_as_one_run(workdir)


# ---------------------------------------------------------------------------- SIGTERM/SIGINT


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_signal_saves_the_step_and_resumes_bitwise(uninterrupted, tmp_path, sig):
  workdir = tmp_path / 'signalled'
  proc = _start(workdir)
  _wait_for(proc, lambda: _logged_step(workdir) >= 10, 'step 10')
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + sig, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith('interrupted at step ') and 'saved; rerun the same command' in last
  step = int(last.split()[3])
  assert 10 <= step < STEPS
  assert step in _all_intact(workdir), 'the interrupted step was not saved'
  resumed = run('train.py', *TINY, f'--workdir={workdir}')
  assert f'from step {step}' in resumed.stdout
  _assert_same_params(uninterrupted, workdir)
  _assert_logs_read_as_one_run(workdir)


def test_second_signal_exits_at_once_and_loses_nothing_committed(uninterrupted, tmp_path):
  workdir = tmp_path / 'twice'
  proc = _start(workdir)
  _wait_for(proc, lambda: _logged_step(workdir) >= 10, 'step 10')
  proc.send_signal(signal.SIGINT)
  proc.send_signal(signal.SIGINT)
  proc.communicate(timeout=60)
  assert proc.returncode in (-signal.SIGINT, 130)
  assert _all_intact(workdir)
  run('train.py', *TINY, f'--workdir={workdir}')
  _assert_same_params(uninterrupted, workdir)


# ------------------------------------------------------------------------ damaged checkpoints


def _flip(path: Path, seed: int) -> None:
  data = bytearray(path.read_bytes())
  i = random.Random(seed).randrange(len(data))
  data[i] ^= 0x20
  path.write_bytes(bytes(data))


def _damaged_copy(source: Path, workdir: Path, item: str, seed: int) -> Path:
  """A copy of `source` with one byte flipped in an array file of the last step's `item`."""
  shutil.copytree(source, workdir)
  victim = next(p for p in (workdir / 'checkpoints' / str(STEPS) / item).rglob('*')
                if p.is_file() and p.parent.name == 'd')
  _flip(victim, seed)
  return victim


def test_a_flipped_byte_in_any_file_is_detected_on_restore(uninterrupted, tmp_path):
  from training import checkpoints as ckpt_lib  # pylint: disable=g-import-not-at-top
  source = uninterrupted / 'checkpoints' / str(STEPS)
  files = sorted(str(p.relative_to(source)) for p in source.rglob('*')
                 if p.is_file() and p.stat().st_size > 0)
  kinds = {Path(f).parts[0] if len(Path(f).parts) > 1 else f for f in files}
  assert {'params', 'train_state', 'data', 'checksums.json', '_CHECKPOINT_METADATA'} <= kinds
  for n, rel in enumerate(files):
    root = tmp_path / f'case{n}' / 'checkpoints'
    shutil.copytree(source, root / str(STEPS))
    _flip(root / str(STEPS) / rel, seed=n)
    before = _listing(root)
    ckpts = ckpt_lib.Checkpoints(root, keep=3, read_only=True)
    with pytest.raises(ckpt_lib.DamagedCheckpointError) as info:
      ckpts.verify(STEPS)
    assert info.value.step == STEPS
    with pytest.raises(ckpt_lib.DamagedCheckpointError):
      ckpts.restore(STEPS, None)  # verification comes first: no target needed to fail
    ckpts.close()
    assert _listing(root) == before, rel


def test_damaged_newest_checkpoint_is_refused_then_resumed_from_intact(uninterrupted, tmp_path):
  workdir = tmp_path / 'damaged'
  victim = _damaged_copy(uninterrupted, workdir, 'train_state', seed=0)
  damaged_bytes = victim.read_bytes()
  args = _args('--config.train_steps=50')
  before = _listing(workdir)
  proc = run('train.py', *args, f'--workdir={workdir}', check=False)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and f'checkpoint step {STEPS} is damaged' in lines[0]
  assert 'does not match its checksum' in lines[0] and '--resume_intact' in lines[0]
  assert 'from step 35' in lines[0] and 'Traceback' not in proc.stderr
  assert _listing(workdir) == before
  # The same advice for eval.py; and eval.py reads parameters only, so step 40 still evaluates.
  ok = run('eval.py', f'--workdir={workdir}', '--checkpoint=last', '--split=valid')
  assert json.loads(ok.stdout)['step'] == STEPS
  assert 'optimizer state was not read' in ok.stderr
  proc = run('train.py', *args, '--resume_intact', f'--workdir={workdir}')
  assert 'resuming from step 35' in proc.stdout and 'Resuming' in proc.stdout
  kept = workdir / 'set_aside' / str(STEPS)
  assert (kept / victim.relative_to(workdir / 'checkpoints' / str(STEPS))).read_bytes() == damaged_bytes
  assert _committed_steps(workdir)[-1] == 50
  _all_intact(workdir)


def test_eval_names_an_earlier_intact_step_when_parameters_are_damaged(uninterrupted, tmp_path):
  workdir = tmp_path / 'damaged-params'
  _damaged_copy(uninterrupted, workdir, 'params', seed=1)
  before = _listing(workdir)
  proc = run('eval.py', f'--workdir={workdir}', '--checkpoint=last', check=False)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and f'checkpoint step {STEPS} is damaged' in lines[0]
  assert '--checkpoint=35' in lines[0]
  assert _listing(workdir) == before


# ----------------------------------------------------------------------------- non-finite


def test_nonfinite_loss_stops_without_saving_and_keeps_the_checkpoints(uninterrupted, tmp_path):
  workdir = tmp_path / 'nan'
  proc = run('train.py', *TINY, '--config.inject_nonfinite_step=23', f'--workdir={workdir}',
             check=False)
  assert proc.returncode == 3, proc.stderr[-2000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith('error: non-finite loss') and 'at step 23' in line
  assert 'newest checkpoint is step 20' in line
  assert _all_intact(workdir) == [10, 15, 20]   # keep_checkpoints=3; nothing after the fault
  assert not (workdir / 'final.json').exists()
  rows = [_strict_json(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  bad = [r for r in rows if r['step'] == 23]
  assert len(bad) == 1 and bad[0]['loss'] is None and 'loss' in bad[0]['nonfinite']
  # Without the fault the rerun resumes from step 20 and ends where the uninterrupted run ends.
  resumed = run('train.py', *TINY, f'--workdir={workdir}')
  assert 'from step 20' in resumed.stdout
  _assert_same_params(uninterrupted, workdir)


def test_skip_update_drops_and_counts_nonfinite_updates(tmp_path):
  workdir = tmp_path / 'skip'
  run('train.py', *TINY, '--config.inject_nonfinite_step=23', '--config.nan_policy=skip_update',
      f'--workdir={workdir}')
  final = _strict_json((workdir / 'final.json').read_text())
  assert final['skipped_updates'] == 1 and final['step'] == STEPS
  rows = [_strict_json(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train = {r['step']: r for r in rows if r['split'] == 'train'}
  assert train[20]['skipped_updates'] == 0 and train[25]['skipped_updates'] == 1
  assert all(np.isfinite(v).all() for v in read_params(workdir, STEPS).values())


# --------------------------------------------------------------------------- refused input


def _tree(path: Path) -> dict[str, tuple[int, int]]:
  """Every file and folder under `path` with its size and mtime (the configs link left out)."""
  return {str(p.relative_to(path)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
          for p in sorted(path.rglob('*')) if 'configs' not in p.relative_to(path).parts}


REFUSALS = {
    'unknown attention kind': ['--config.attention.kind=flash'],
    'mask a core cannot honour': ['--config.attention.kind=performer',
                                  '--config.attention.mask=local_window(4)'],
    'missing config file': ['--config=configs/' + 'nothere.py'],  # (not a repository path)
    'misspelled preset': ['--config=configs/default.py:sze=tiny'],
    'bad preset value': ['--config=configs/wikitext103.py:size=huge'],
    'bad preset kind': ['--config=configs/default.py:attention=flash'],
    'misspelled key': ['--config.optimizer.learning_rat=0.1'],
    'value of the wrong type': ['--config.train_steps=many'],
    'iwslt14 without train files': ['--config=configs/iwslt14.py:size=tiny'],
    'zero batch size': ['--config.batch_size=0'],
}


@pytest.mark.parametrize('case', list(REFUSALS), ids=list(REFUSALS))
def test_refused_command_leaves_the_filesystem_unchanged(tmp_path, case):
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  (cwd / 'configs').symlink_to(REPO / 'configs')  # relative --config paths, as from the repo
  before = _tree(tmp_path)
  uses_default_workdir = case in ('missing config file', 'iwslt14 without train files')
  workdir = [] if uses_default_workdir else [f'--workdir={tmp_path / "w"}']
  proc = subprocess.run([sys.executable, str(REPO / 'train.py'), *REFUSALS[case], *workdir],
                        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
  assert _tree(tmp_path) == before


def test_corrected_command_runs_after_a_refusal(tmp_path):
  workdir = tmp_path / 'w'
  proc = run('train.py', *_args('--config.train_steps=5'), '--config.attention.kind=flash',
             f'--workdir={workdir}', check=False)
  assert proc.returncode == 2 and not workdir.exists()
  run('train.py', *_args('--config.train_steps=5'), f'--workdir={workdir}')
  assert (workdir / 'final.json').exists()


# ------------------------------------------------------------------------------ multi-host


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_save_the_same_step_on_sigterm(tmp_path):
  workdir = tmp_path / 'two'
  port = _free_port()
  procs = []
  for i in range(2):
    env = dict(_env(), JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, 'train.py', *_args('--config.train_steps=400'), f'--workdir={workdir}'],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  try:
    _wait_for(procs[0], lambda: (workdir / 'checkpoints').exists() and _committed_steps(workdir),
              'a committed checkpoint', timeout=400)
    procs[0].send_signal(signal.SIGTERM)  # only one host is told; JAX tells the other
    results = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  lasts = [err.strip().splitlines()[-1] for _, err in results]
  assert [p.returncode for p in procs] == [143, 143], lasts
  steps = {int(l.split()[3]) for l in lasts}
  assert len(steps) == 1, lasts
  assert steps.pop() in _all_intact(workdir)
