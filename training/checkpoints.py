"""Orbax checkpoints of a run, verified by checksums: the last N, plus the best on validation.

Each checkpoint `W/checkpoints/<step>/` holds
- `params`: the model parameters (`ocp.args.StandardSave`), all that evaluation reads;
- `train_state`: the optimizer state, step and base RNG key;
- `data`: the training iterator's state (JSON), so the data stream resumes mid-epoch;
- `checksums.json`: the SHA-256 and size of every other file of the step, the step's validation
  loss (when it was saved after a validation) and a checksum of the manifest itself.

Orbax writes a step asynchronously into a temporary folder and renames it when complete. The
manifest is written once Orbax has finished (`commit`); only then does the step count as saved,
and only then are older steps pruned, so a run killed at any moment has an intact committed step
to resume from (or none yet). Pruning first renames the step folder to `pruning-<step>` (one
atomic rename), then deletes it: a run killed mid-delete leaves a `pruning-` folder, never a
committed step with files missing, and the next run to open the folder finishes the deletion.
A step folder without a manifest (the run died between Orbax's rename and the manifest) is
*uncommitted*: it is never resumed from, evaluated or deleted, and a resumed run moves it to
`W/set_aside/` before it saves that step again.

Restoring a step first checks every file it reads against the manifest, so a flipped byte is
reported as `DamagedCheckpointError` naming the step and the file, before Orbax or TensorStore
see the damage. Nothing here ever deletes a step that has not been superseded by a newer
committed one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from training import distributed

MANIFEST = 'checksums.json'
_PRUNING = 'pruning-'  # a superseded step being deleted (renamed first, so never half a step)
_ITEMS = ('params', 'train_state', 'data')


class _QuietOrbax(logging.Filter):
  """Orbax warns whenever eval.py or a distillation teacher opens checkpoints read-only (as they
  mean to)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(m in message for m in ('is read only', 'read_only=True'))


logging.getLogger('absl').addFilter(_QuietOrbax())


class CheckpointError(RuntimeError):
  pass


class DamagedCheckpointError(CheckpointError):
  """A saved step whose files do not match its manifest (or that Orbax could not read)."""

  def __init__(self, step: int, detail: str):
    self.step, self.detail = step, detail
    super().__init__(f'checkpoint step {step} is damaged ({detail})')


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with path.open('rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()


def _manifest_digest(body: dict) -> str:
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _step_files(step_dir: Path) -> dict[str, Path]:
  return {str(p.relative_to(step_dir)): p for p in sorted(step_dir.rglob('*'))
          if p.is_file() and p.name != MANIFEST}


def write_manifest(step_dir: Path, step: int, valid_loss: float | None) -> None:
  """Hashes every file of a finished step and writes `checksums.json` atomically."""
  files = {rel: {'sha256': _sha256(p), 'bytes': p.stat().st_size}
           for rel, p in _step_files(step_dir).items()}
  body = {'step': int(step), 'valid_loss': valid_loss, 'files': files}
  tmp = step_dir / (MANIFEST + '.tmp')
  tmp.write_text(json.dumps({**body, 'manifest_sha256': _manifest_digest(body)}, indent=1,
                            sort_keys=True) + '\n')
  os.replace(tmp, step_dir / MANIFEST)


def read_manifest(step_dir: Path, step: int) -> dict:
  """The manifest of a committed step; DamagedCheckpointError if it is unreadable or altered."""
  try:
    manifest = json.loads((step_dir / MANIFEST).read_text())
    body = {k: manifest[k] for k in ('step', 'valid_loss', 'files')}
    digest = manifest['manifest_sha256']
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise DamagedCheckpointError(step, f'{MANIFEST} unreadable: {type(e).__name__}') from None
  if _manifest_digest(body) != digest or body['step'] != step:
    raise DamagedCheckpointError(step, f'{MANIFEST} was altered')
  return body


def verify_step(step_dir: Path, step: int, items: tuple[str, ...] = _ITEMS) -> dict:
  """Checks the files of `items` (and the step's own metadata) against the manifest."""
  manifest = read_manifest(step_dir, step)
  wanted = lambda rel: '/' not in rel or rel.split('/', 1)[0] in items
  expected = {rel: v for rel, v in manifest['files'].items() if wanted(rel)}
  present = {rel: p for rel, p in _step_files(step_dir).items() if wanted(rel)}
  for rel in sorted(set(expected) | set(present)):
    if rel not in present:
      raise DamagedCheckpointError(step, f'{rel} is missing')
    if rel not in expected:
      raise DamagedCheckpointError(step, f'{rel} is not in the manifest')
    p, want = present[rel], expected[rel]
    if p.stat().st_size != want['bytes'] or _sha256(p) != want['sha256']:
      raise DamagedCheckpointError(step, f'{rel} does not match its checksum')
  return manifest


class Checkpoints:
  """The checkpoints of one workdir: save (async), commit, verify, restore, prune."""

  def __init__(self, directory: Path, *, keep: int, read_only: bool = False,
               kill_before_commit: int = 0):
    """`kill_before_commit=k` (testing only, `config.inject_kill_before_commit_step`): the
    process SIGKILLs itself once step k's files are written and before its manifest, the
    moment a crash leaves a saved but uncommitted step."""
    if keep < 1:
      raise ValueError(f'keep_checkpoints must be ≥ 1, got {keep}')
    self.directory = Path(directory).absolute()
    self.keep = keep
    # No Orbax preservation policy: pruning is ours, after the newer step is committed.
    options = ocp.CheckpointManagerOptions(read_only=read_only, create=not read_only,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=_ITEMS)
    self._pending: tuple[int, float | None] | None = None
    self._kill_before_commit = int(kill_before_commit)
    self._verified: set[tuple[int, tuple[str, ...]]] = set()  # (step, items) hashed already
    if not read_only and jax.process_index() == 0 and self.directory.is_dir():
      for leftover in self.directory.glob(_PRUNING + '*'):  # a run killed while pruning
        shutil.rmtree(leftover)

  # -------------------------------------------------------------------------------- listing

  def _folders(self) -> list[int]:
    if not self.directory.is_dir():
      return []
    return sorted(int(p.name) for p in self.directory.iterdir()
                  if p.is_dir() and p.name.isdigit())

  def step_dir(self, step: int) -> Path:
    return self.directory / str(step)

  def all_steps(self) -> list[int]:
    """Committed steps (those with a manifest), ascending."""
    return [s for s in self._folders() if (self.step_dir(s) / MANIFEST).exists()]

  def uncommitted_steps(self) -> list[int]:
    pending = self._pending[0] if self._pending else None
    return [s for s in self._folders()
            if s != pending and not (self.step_dir(s) / MANIFEST).exists()]

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def valid_loss(self, step: int) -> float | None:
    try:
      return read_manifest(self.step_dir(step), step)['valid_loss']
    except DamagedCheckpointError:
      return None

  def best_step(self) -> int | None:
    """The committed step with the lowest validation loss (the later one on ties)."""
    losses = {s: self.valid_loss(s) for s in self.all_steps()}
    scored = [s for s, v in losses.items() if v is not None]
    return min(scored, key=lambda s: (losses[s], -s)) if scored else None

  def resolve(self, which: str) -> int:
    """`best`, `last` or a step number → a committed step; a clear error otherwise."""
    steps = self.all_steps()
    if not steps:
      extra = self.uncommitted_steps()
      note = (f' (uncommitted step folders without {MANIFEST}: {extra})' if extra else '')
      raise CheckpointError(f'no checkpoints in {self.directory}{note}')
    if which == 'last':
      return steps[-1]
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

  def verify(self, step: int, items: tuple[str, ...] = _ITEMS) -> None:
    """DamagedCheckpointError unless the files of `items` match the manifest (each (step,
    items) is hashed once per instance: a resume verifies its step, then restores it)."""
    if (step, items) not in self._verified:
      verify_step(self.step_dir(step), step, items)
      self._verified.add((step, items))

  def newest_intact(self, below: int | None = None, items: tuple[str, ...] = _ITEMS) -> int | None:
    """The newest committed step (older than `below`) whose files match their manifest."""
    for step in reversed(self.all_steps()):
      if below is not None and step >= below:
        continue
      try:
        self.verify(step, items)
        return step
      except DamagedCheckpointError:
        continue
    return None

  # ---------------------------------------------------------------------------------- saving

  def save(self, step: int, state: Any, data_state: dict, valid_loss: float | None = None) -> None:
    """Starts an asynchronous save of `state` at `step` (committing the previous save first)."""
    self.commit()
    params = state['params']
    train_state = {k: v for k, v in state.items() if k != 'params'}
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), train_state=ocp.args.StandardSave(train_state),
        data=ocp.args.JsonSave(data_state)), force=True)
    self._pending = (step, None if valid_loss is None else float(valid_loss))

  def commit(self) -> int | None:
    """Waits for the save in flight, writes its manifest, prunes superseded steps; its step."""
    if self._pending is None:
      return None
    step, valid_loss = self._pending
    self._manager.wait_until_finished()
    if step == self._kill_before_commit:  # fault injection: crash before the commit
      os.kill(os.getpid(), signal.SIGKILL)
    if jax.process_index() == 0:
      write_manifest(self.step_dir(step), step, valid_loss)
    distributed.sync(f'checkpoint_commit_{step}')  # every process sees the manifest
    self._pending = None
    superseded = self._superseded()
    distributed.sync(f'checkpoint_prune_{step}')   # every process has listed before any deletes
    if superseded:
      self._prune(superseded)
    return step

  def _prune(self, steps: list[int]) -> None:
    """Deletes superseded steps: each is renamed out of the step namespace first, so a process
    killed mid-delete leaves no committed step with files missing."""
    if jax.process_index() == 0:
      for old in steps:
        doomed = self.directory / f'{_PRUNING}{old}'
        if doomed.exists():
          shutil.rmtree(doomed)
        os.rename(self.step_dir(old), doomed)
        shutil.rmtree(doomed)
    distributed.sync('checkpoint_pruned')
    # The listing is read from disk; Orbax's own may not know a step another process (a copy,
    # an earlier run's leftovers) put there since it was opened, nor that ours are gone.
    self._manager.reload()

  def _superseded(self) -> list[int]:
    """Committed steps that are neither among the last `keep` nor the best."""
    steps = self.all_steps()
    keep = set(steps[-self.keep:])
    best = self.best_step()
    if best is not None:
      keep.add(best)
    return [s for s in steps if s not in keep]

  def set_aside(self, steps: list[int], destination: Path) -> None:
    """Moves step folders out of the way (never deletes them)."""
    if jax.process_index() == 0:
      destination.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = destination / str(step)
        if target.exists():
          target = destination / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
        shutil.move(str(self.step_dir(step)), str(target))
    distributed.sync('checkpoint_set_aside')
    self._manager.reload()

  # ------------------------------------------------------------------------------- restoring

  def _restore(self, step: int, items: dict[str, Any]) -> dict:
    """Orbax's restore of `items` at `step`, whose files have been verified."""
    quiet = logging.getLogger('asyncio')
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # TensorStore failures also print event-loop tracebacks
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises many types for unreadable or mismatched files.
      first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ''
      raise DamagedCheckpointError(
          step, f'Orbax could not read it: {type(e).__name__}: {first}; its files match their '
          'checksums, so it was most likely written by a different model shape') from None
    finally:
      quiet.setLevel(level)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(state, data_state) at `step`, arrays placed like `abstract_state`'s leaves."""
    self.verify(step)
    train_target = {k: v for k, v in abstract_state.items() if k != 'params'}
    restored = self._restore(step, {
        'params': ocp.args.StandardRestore(abstract_state['params']),
        'train_state': ocp.args.StandardRestore(train_target),
        'data': ocp.args.JsonRestore()})
    return {'params': restored['params'], **restored['train_state']}, restored['data']

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """The parameters at `step` alone (the optimizer state is neither read nor checked)."""
    self.verify(step, ('params',))
    return self._restore(step, {'params': ocp.args.StandardRestore(abstract_params)})['params']

  def last_steps(self, n: int) -> list[int]:
    """The `n` most recent committed steps (ascending); a clear error when fewer are saved."""
    steps = self.all_steps()
    if n < 1:
      raise CheckpointError(f'--average_last={n}: expected a positive number of checkpoints')
    if len(steps) < n:
      raise CheckpointError(
          f'--average_last={n} but {self.directory} holds {len(steps)} checkpoint(s) {steps}; '
          'train with keep_checkpoints ≥ N (and checkpoint_every small enough) to average N')
    return steps[-n:]

  def average_params(self, steps: list[int], abstract_params: Any) -> Any:
    """The element-wise mean of the parameters saved at `steps` (fairseq's
    `scripts/average_checkpoints.py`), summed in float64 and returned in each array's dtype."""
    total = None
    for step in steps:
      params = jax.device_get(self.restore_params(step, abstract_params))
      params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
      total = params64 if total is None else jax.tree.map(np.add, total, params64)
    return jax.tree.map(lambda t, a: (t / len(steps)).astype(a.dtype), total, abstract_params)

  def close(self) -> None:
    self.commit()
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a live state, the target of a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
