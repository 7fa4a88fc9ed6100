"""Orbax checkpoints of a run: the last N, plus the best on validation.

Each checkpoint `W/checkpoints/<step>/` holds
- `state`: params, optimizer state, step and base RNG key (`ocp.args.StandardSave`);
- `data`: the training iterator's state (JSON), so the data stream resumes mid-epoch.
Checkpoints saved after a validation carry `{'valid_loss': …}` as Orbax metrics; the best one
(lowest validation loss) is kept even when it falls out of the last N.

Orbax writes a step into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoints intact, and an existing step is never overwritten.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = 'valid_loss'


class _QuietUntrackedSaves(logging.Filter):
  """Orbax warns at every save without metrics (normal here: between validations) and whenever
  eval.py or a distillation teacher opens checkpoints read-only (as they mean to)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(m in message for m in ('did not provide metrics', 'is read only',
                                           'read_only=True'))


logging.getLogger('absl').addFilter(_QuietUntrackedSaves())


class CheckpointError(RuntimeError):
  pass


class Checkpoints:

  def __init__(self, directory: Path, *, keep: int, read_only: bool = False):
    if keep < 1:
      raise ValueError(f'keep_checkpoints must be ≥ 1, got {keep}')
    best_fn = lambda m: m[BEST_METRIC]
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode='min',
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=best_fn, reverse=True, n=1,
                           keep_checkpoints_without_metrics=False),
        ]),
        read_only=read_only, create=not read_only,
        enable_async_checkpointing=True)
    self.directory = Path(directory).absolute()
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    steps = [s for s in self.all_steps() if self._metrics(s) is not None]
    if not steps:
      return None
    return min(steps, key=lambda s: (self._metrics(s)[BEST_METRIC], s))

  def _metrics(self, step: int) -> dict | None:
    for info in self._manager._checkpoints:  # pylint: disable=protected-access
      if info.step == step:
        return info.metrics
    return None

  def resolve(self, which: str) -> int:
    """`best`, `last` or a step number → a saved step; a clear error otherwise."""
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f'no checkpoints in {self.directory}')
    if which == 'last':
      return self.latest_step()
    if which == 'best':
      best = self.best_step()
      if best is None:
        raise CheckpointError(f'no checkpoint in {self.directory} has a validation loss '
                              f'(saved steps: {steps}); use --checkpoint=last')
      return best
    try:
      step = int(which)
    except ValueError:
      raise CheckpointError(f'--checkpoint={which!r}: expected best, last or a step number') from None
    if step not in steps:
      raise CheckpointError(f'no checkpoint for step {step} in {self.directory}; saved: {steps}')
    return step

  def save(self, step: int, state: Any, data_state: dict, valid_loss: float | None = None) -> None:
    metrics = None if valid_loss is None else {BEST_METRIC: float(valid_loss)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any, *, with_data: bool = True):
    """(state, data_state) at `step`, arrays placed like `abstract_state`'s leaves."""
    args = {'state': ocp.args.StandardRestore(abstract_state)}
    if with_data:
      args['data'] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # Orbax raises many types for damaged or mismatched files.
      raise CheckpointError(
          f'checkpoint {self.directory / str(step)} could not be read: {type(e).__name__}: {e}\n'
          'It is damaged, or was written by a different model shape. Nothing was changed; '
          'remove that step folder to resume from an earlier checkpoint.') from e
    return restored['state'], (restored['data'] if with_data else None)

  def last_steps(self, n: int) -> list[int]:
    """The `n` most recent saved steps (ascending); a clear error when fewer are saved."""
    steps = sorted(self.all_steps())
    if n < 1:
      raise CheckpointError(f'--average_last={n}: expected a positive number of checkpoints')
    if len(steps) < n:
      raise CheckpointError(
          f'--average_last={n} but {self.directory} holds {len(steps)} checkpoint(s) {steps}; '
          'train with keep_checkpoints ≥ N (and checkpoint_every small enough) to average N')
    return steps[-n:]

  def average_params(self, steps: list[int], abstract_state: Any) -> Any:
    """The element-wise mean of the parameters saved at `steps` (fairseq's
    `scripts/average_checkpoints.py`), summed in float64 and returned in each array's dtype."""
    total = None
    for step in steps:
      params = jax.device_get(self.restore(step, abstract_state, with_data=False)[0]['params'])
      params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
      total = params64 if total is None else jax.tree.map(np.add, total, params64)
    return jax.tree.map(lambda t, a: (t / len(steps)).astype(a.dtype), total,
                        abstract_state['params'])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a live state, the target of a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
