"""SIGTERM and SIGINT end a training run cleanly: finish the update, save it, exit 143 / 130.

SLURM, Kubernetes and TPU maintenance send SIGTERM some seconds before they kill a job; Ctrl-C
sends SIGINT. The first such signal only sets a flag, which the loop reads after each update
(`StopRequest.should_stop`); the loop then saves a checkpoint of that step and raises
`Interrupted`, which train.py turns into "interrupted at step N; saved; rerun the same command
to resume" and exit code 128 + the signal number. The handler restores the default action, so a
second signal ends the process at once, even inside a long compilation.

With several processes (`jax.process_count() > 1`) every host must save the *same* step, so the
decision is JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point`): JAX's
own SIGTERM notifier tells the coordination service, which picks a step every host reaches; this
module installs no SIGTERM handler then, and a SIGINT is passed on to that notifier as SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading

import jax

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
  """The run stopped on a signal after saving `step`; exit with `exit_code`."""

  def __init__(self, signum: int, step: int, *, saved: bool = True):
    self.signum, self.step = signum, step
    self.exit_code = 128 + signum
    what = 'saved' if saved else 'nothing new to save'
    super().__init__(f'interrupted at step {step} by {signal.Signals(signum).name}; {what}; '
                     'rerun the same command to resume')


class StopRequest:
  """Context manager that records SIGTERM / SIGINT instead of dying on the first one."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}
    self._multi_host = jax.process_count() > 1

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():  # signal.signal needs it
      for sig in _SIGNALS:
        if self._multi_host and sig == signal.SIGTERM:
          continue  # JAX's preemption notifier owns SIGTERM
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum: int, frame) -> None:
    del frame
    self.signum = signum
    for sig in self._previous:  # a second signal: the default action, immediately
      signal.signal(sig, signal.SIG_DFL)
    if self._multi_host and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)  # let JAX coordinate the stop across hosts

  def before_training(self) -> bool:
    """Whether a signal came while the run was being prepared (one process; with several,
    JAX's sync point decides at the first step)."""
    return not self._multi_host and self.signum is not None

  def should_stop(self, step: int) -> bool:
    """Whether to save `step` and stop; on several hosts, called at every step by all."""
    if self._multi_host:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = self.signum or signal.SIGTERM
        return True
      return False
    return self.signum is not None
