"""Metrics to TensorBoard event files and to a JSON-lines log in the workdir.

`W/metrics.jsonl` holds one object per write: `{"step": s, "split": "train", ...}`.
`W/tensorboard/` holds event files (`tensorboard --logdir W/tensorboard`).
On resume from step s, log lines written after s by the interrupted run are dropped, so the log
reads as one uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax


class MetricLog:

  def __init__(self, workdir: Path, *, resume_step: int):
    self.enabled = jax.process_index() == 0
    self.path = workdir / 'metrics.jsonl'
    self._tb = None
    if not self.enabled:
      return
    if self.path.exists():
      kept = []
      for line in self.path.read_text().splitlines():
        try:
          if json.loads(line)['step'] <= resume_step:
            kept.append(line)
        except (json.JSONDecodeError, KeyError):
          continue  # a line cut short by a kill
      self.path.write_text(''.join(l + '\n' for l in kept))
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(str(workdir / 'tensorboard'), purge_step=resume_step + 1)

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), 'split': split, **{k: float(v) for k, v in metrics.items()}}
    with self.path.open('a') as f:
      f.write(json.dumps(row) + '\n')
    for k, v in metrics.items():
      self._tb.add_scalar(f'{split}/{k}', float(v), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
