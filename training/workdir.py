"""What a workdir records about its run, so a resume on another config or data is refused.

`W/config.json` holds the config of the run that created W and `W/data.json` the data it read.
A rerun of the same command resumes; a rerun that changes anything that shapes the model, the
optimizer or the data stream is refused with the list of differences, before anything is
written (`check_recorded` reads, `record` writes). Keys that only change the
run's length or its bookkeeping may change between runs (`RESUMABLE_KEYS`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ml_collections

# Keys a resumed run may change: how long to train and how often to log, evaluate and save.
RESUMABLE_KEYS = ('train_steps', 'log_every', 'eval_every', 'eval_batches', 'checkpoint_every',
                  'keep_checkpoints', 'progress_bar', 'eval_context_window',
                  'decode',  # decoding settings: validation BLEU only, never the training
                  'nan_policy', 'inject_nonfinite_step',  # only act on a non-finite update
                  'inject_kill_before_commit_step',  # a fault for tests
                  'mesh',  # how devices are arranged: a checkpoint restores onto any mesh
                  'diagnostics')  # measurements on the side, never the training


class IncompatibleWorkdirError(ValueError):
  pass


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  if isinstance(tree, tuple):
    tree = list(tree)
  return {prefix[:-1]: tree}


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  # A JSON round trip turns tuples into lists, so a saved and a live config compare equal.
  return json.loads(config.to_json())


def atomic_write_json(path: Path, obj: Any) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + '\n')
  os.replace(tmp, path)


def differences(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
  a, b = _flatten(saved), _flatten(current)
  out = []
  for key in sorted(set(a) | set(b)):
    if key.split('.')[0] in ignore or key in ignore:
      continue
    if a.get(key, '<absent>') != b.get(key, '<absent>'):
      out.append(f'{key}: workdir has {a.get(key, "<absent>")!r}, this run has {b.get(key, "<absent>")!r}')
  return out


def check_recorded(workdir: Path, name: str, current: dict, ignore: tuple[str, ...] = ()) -> bool:
  """Refuses any difference from `W/<name>.json`; whether that file exists. Writes nothing."""
  path = workdir / f'{name}.json'
  if not path.exists():
    return False
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise IncompatibleWorkdirError(f'{path} is not valid JSON ({e}); the workdir is damaged') from e
  diff = differences(saved, current, ignore)
  if diff:
    raise IncompatibleWorkdirError(
        f'workdir {workdir} holds a run with a different {name}; refusing to resume it.\n  '
        + '\n  '.join(diff)
        + f'\nUse a new --workdir, or rerun with the recorded {name}.')
  return True


def record(workdir: Path, name: str, current: dict) -> None:
  """Writes `W/<name>.json` unless it exists (check it first with `check_recorded`)."""
  path = workdir / f'{name}.json'
  if not path.exists():
    atomic_write_json(path, current)


def load_config(workdir: Path) -> ml_collections.ConfigDict:
  """The config recorded in a workdir (for eval.py)."""
  path = workdir / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: {workdir} is not a training workdir '
                            '(train.py writes config.json there on its first run)')
  return ml_collections.ConfigDict(json.loads(path.read_text()))
