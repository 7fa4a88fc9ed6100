"""Checkpoint pruning: committed steps on disk, whoever wrote them, are pruned by the same rule."""

import shutil

import jax.numpy as jnp

from training import checkpoints as ckpt_lib


def _state(value: float) -> dict:
  return {'params': {'w': jnp.full((3,), value)}, 'step': jnp.asarray(int(value))}


def test_a_step_folder_copied_in_mid_run_is_pruned_like_the_others(tmp_path):
  root = tmp_path / 'checkpoints'
  ckpts = ckpt_lib.Checkpoints(root, keep=1)
  ckpts.save(10, _state(10), {'epoch': 0})
  ckpts.commit()
  # Another process puts a committed step beside the run's own after the run opened its folder.
  shutil.copytree(root / '10', root / '5')
  ckpt_lib.write_manifest(root / '5', 5, None)
  assert ckpts.all_steps() == [5, 10]
  ckpts.save(20, _state(20), {'epoch': 0})
  assert ckpts.commit() == 20            # pruning a step Orbax had not listed is no error
  assert ckpts.all_steps() == [20]
  restored, data = ckpts.restore(20, ckpt_lib.abstract_like(_state(20)))
  assert float(restored['params']['w'][0]) == 20.0 and data == {'epoch': 0}
  ckpts.close()


def test_a_run_killed_while_pruning_leaves_only_intact_committed_steps(tmp_path, monkeypatch):
  root = tmp_path / 'checkpoints'
  ckpts = ckpt_lib.Checkpoints(root, keep=1)
  ckpts.save(10, _state(10), {'epoch': 0})
  ckpts.commit()
  ckpts.save(20, _state(20), {'epoch': 0})

  class Killed(BaseException):
    pass

  def dies_halfway(path, *args, **kwargs):  # deletes the first file of the folder, then "dies"
    first = sorted(p for p in path.rglob('*') if p.is_file())[0]
    first.unlink()
    raise Killed()

  monkeypatch.setattr(ckpt_lib.shutil, 'rmtree', dies_halfway)
  try:
    ckpts.commit()
  except Killed:
    pass
  monkeypatch.undo()
  # Step 10 was half deleted: it must not look committed, and every committed step is intact.
  assert ckpt_lib.Checkpoints(root, keep=1, read_only=True).all_steps() == [20]
  for step in ckpt_lib.Checkpoints(root, keep=1, read_only=True).all_steps():
    ckpt_lib.verify_step(root / str(step), step)
  # The next run to open the folder for writing finishes the deletion and resumes from 20.
  reopened = ckpt_lib.Checkpoints(root, keep=1)
  assert sorted(p.name for p in root.iterdir() if not p.name.startswith('.')) == ['20']
  restored, _ = reopened.restore(20, ckpt_lib.abstract_like(_state(20)))
  assert float(restored['params']['w'][0]) == 20.0
  reopened.close()
