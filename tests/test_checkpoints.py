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
