"""Real multi-process training on this machine: two train.py processes on localhost.

The processes find each other through `jax.distributed.initialize` (a coordinator address and
process ids from the environment, as on a cluster) and exchange data through gloo, JAX's CPU
collectives: the engine TPU pods and GPU clusters run on, with one CPU device per process here.
Properties, each against an independent run:
- the losses and final parameters equal one process holding both devices, on the same global
  batches (each process reads only its rows of them);
- every checkpoint step is intact (files match the manifest process 0 wrote after both
  processes had finished writing), so it was written once;
- both processes killed with SIGKILL and restarted end bitwise where the uninterrupted
  two-process run ends;
- processes launched with different configs are refused before any step;
- a translation run's validation (perplexity, and BLEU of a beam search whose batches are split
  across the processes and gathered) equals one process holding both devices.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_train import REPO, TINY, read_params
from tests.test_translate import _args as translation_args, _write_corpus
from training import checkpoints as ckpt_lib

pytestmark = pytest.mark.slow
STEPS = 40
ARGS = list(TINY)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu', **extra)
  return env


def start(workdir: Path, extra=(), per_process=None, base=None) -> list[subprocess.Popen]:
  """Two train.py processes of one run (one CPU device each); `base`: the run's flags
  (default: the tiny LM run)."""
  port = _free_port()
  procs = []
  for i in range(2):
    args = list(ARGS if base is None else base) + list(extra) + list((per_process or {}).get(i, ()))
    env = _env(1, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, 'train.py', *args, f'--workdir={workdir}'],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  return procs


def finish(procs, check: bool = True) -> list[tuple[int, str, str]]:
  out = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=600)
    out.append((p.returncode, stdout, stderr))
  if check:
    for i, (rc, _, stderr) in enumerate(out):
      assert rc == 0, f'process {i} failed ({rc}):\n{stderr[-4000:]}'
  return out


def train_rows(workdir: Path) -> dict[int, float]:
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['loss'] for r in rows if r['split'] in ('train', 'valid')
          and 'loss' in r}


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp('two_processes')
  finish(start(workdir))
  return workdir


def test_two_processes_train_like_one(two_processes, tmp_path):
  """Against one process holding both devices: the same global batches and the same device
  mesh (so the same reductions), the same losses and parameters."""
  single = tmp_path / 'single'
  proc = subprocess.run([sys.executable, 'train.py', *ARGS, f'--workdir={single}'], cwd=REPO,
                        env=_env(2), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  a, b = train_rows(single), train_rows(two_processes)
  assert a.keys() == b.keys() and len(a) >= 8
  for step in a:
    np.testing.assert_allclose(b[step], a[step], rtol=2e-6, err_msg=f'step {step}')
  pa, pb = read_params(single, STEPS), read_params(two_processes, STEPS)
  for k in pa:
    np.testing.assert_allclose(pb[k], pa[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_checkpoints_are_written_once(two_processes):
  checkpoints = ckpt_lib.Checkpoints(two_processes / 'checkpoints', keep=3, read_only=True)
  try:
    steps = checkpoints.all_steps()
    assert steps and steps[-1] == STEPS
    for step in steps:
      checkpoints.verify(step)  # every file matches the one manifest
  finally:
    checkpoints.close()


def test_both_processes_killed_resume_exactly(two_processes, tmp_path):
  workdir = tmp_path / 'killed'
  procs = start(workdir)
  ckpt_dir = workdir / 'checkpoints'
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if ckpt_dir.exists() and any(p.name.isdigit() and int(p.name) >= 5 and
                                 (p / ckpt_lib.MANIFEST).exists() for p in ckpt_dir.iterdir()):
      break
    time.sleep(0.05)
  assert all(p.poll() is None for p in procs), 'the run ended before it could be killed'
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.communicate()
  out = finish(start(workdir))
  assert 'Resuming' in out[0][1]
  a, b = read_params(two_processes, STEPS), read_params(workdir, STEPS)
  for k in a:
    np.testing.assert_array_equal(b[k], a[k], err_msg=k)


def test_processes_with_different_configs_are_refused(tmp_path):
  workdir = tmp_path / 'disagree'
  out = finish(start(workdir, per_process={1: ['--config.seed=7']}), check=False)
  for rc, _, stderr in out:
    assert rc != 0
    assert 'the processes disagree on the config' in stderr
    assert 'Traceback' not in stderr
  assert not (workdir / 'checkpoints').exists()


def test_two_process_translation_validates_like_one(tmp_path):
  """The validation BLEU decodes each process's rows of a batch and gathers the hypotheses with
  their sentence ids and length limits: every process must score all 12 sentences, and the
  scores, hypothesis length and unigram precision must be those of one process holding both
  devices (a hypothesis matched with another sentence's limit or id changes them)."""
  corpus = tmp_path / 'corpus'
  _write_corpus(corpus)
  args = translation_args(corpus, steps=30) + [
      '--config.decode.valid_sentences=12', '--config.decode.valid_beam_size=2',
      '--config.eval_every=15', '--config.optimizer.learning_rate=3e-3']
  single = tmp_path / 'single'
  proc = subprocess.run([sys.executable, 'train.py', *args, f'--workdir={single}'], cwd=REPO,
                        env=_env(2), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  finish(start(tmp_path / 'two', base=args))

  def valid(workdir):
    rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
    return {r['step']: r for r in rows if r['split'] == 'valid'}

  a, b = valid(single), valid(tmp_path / 'two')
  assert sorted(a) == sorted(b) == [15, 30]
  for step in a:
    assert a[step]['bleu_sentences'] == b[step]['bleu_sentences'] == 12
    assert a[step]['bleu_p1'] > 0  # some right words, so that a mix-up of rows would show
    np.testing.assert_allclose(b[step]['loss'], a[step]['loss'], rtol=2e-6)
    for key in ('bleu', 'sacrebleu', 'bleu_hyp_len', 'bleu_p1'):
      np.testing.assert_allclose(b[step][key], a[step][key], rtol=1e-9, err_msg=key)
