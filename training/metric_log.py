"""Metrics to TensorBoard event files and to a JSON-lines log in the workdir.

`W/metrics.jsonl` holds one object per write: `{"step": s, "split": "train", ...}`. It is strict
JSON: a non-finite value is written as `null` and its name listed under `"nonfinite"` (`json_safe`;
Python's `json` would otherwise write a bare `NaN`, which no JSON reader accepts).
`W/tensorboard/` holds event files (`tensorboard --logdir W/tensorboard`).

On resume from step s, whatever the interrupted run logged after s is dropped from both, lines
and events alike (a record cut short by a kill included), so the log and TensorBoard read as one
uninterrupted run with no step twice.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import jax


def json_safe(row: dict[str, Any]) -> dict[str, Any]:
  """`row` with non-finite floats replaced by None and their keys listed under 'nonfinite'."""
  out, bad = {}, []
  for k, v in row.items():
    if isinstance(v, float) and not math.isfinite(v):
      out[k] = None
      bad.append(k)
    elif isinstance(v, dict):
      out[k] = json_safe(v)
    else:
      out[k] = v
  if bad:
    out['nonfinite'] = sorted(set(bad) | set(row.get('nonfinite') or []))
  return out


def _event_records(data: bytes):
  """(start, end, payload) of each complete TFRecord in an event file."""
  pos = 0
  while pos + 12 <= len(data):
    (length,) = struct.unpack('<Q', data[pos:pos + 8])
    end = pos + 12 + length + 4
    if end > len(data):
      return  # cut short by a kill
    yield pos, end, data[pos + 12:pos + 12 + length]
    pos = end


def truncate_events(directory: Path, last_step: int) -> None:
  """Drops the events after `last_step` from every event file in `directory` (atomically)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  for path in sorted(directory.glob('events.out.tfevents.*')):
    data = path.read_bytes()
    kept, changed, end = [], False, 0
    for start, end, payload in _event_records(data):
      if event_pb2.Event.FromString(payload).step <= last_step:
        kept.append(data[start:end])
      else:
        changed = True
    if not changed and end == len(data):
      continue
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_bytes(b''.join(kept))
    os.replace(tmp, path)


def read_events(directory: Path) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar in the event files of `directory`, in file order."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted(directory.glob('events.out.tfevents.*')):
    for _, _, payload in _event_records(path.read_bytes()):
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        out.append((value.tag, int(event.step), float(value.simple_value)))
  return out


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
        except (json.JSONDecodeError, KeyError, TypeError):
          continue  # a line cut short by a kill
      tmp = self.path.with_name(self.path.name + '.tmp')
      tmp.write_text(''.join(l + '\n' for l in kept))
      os.replace(tmp, self.path)
    tb_dir = workdir / 'tensorboard'
    if tb_dir.exists():
      truncate_events(tb_dir, resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(str(tb_dir))

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: v if isinstance(v, int) else float(v) for k, v in metrics.items()
              if not isinstance(v, (list, dict, str))}
    row = json_safe({'step': int(step), 'split': split, **values,
                     **{k: v for k, v in metrics.items() if k not in values}})
    with self.path.open('a') as f:
      f.write(json.dumps(row, allow_nan=False) + '\n')
    for k, v in values.items():
      if math.isfinite(v):  # a non-finite value is in the JSON line as null, flagged
        self._tb.add_scalar(f'{split}/{k}', v, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
