"""Run by tests/test_mesh.py in a subprocess with 8 simulated CPU devices; prints one JSON line.

Trains the tiny MQAR model for a few updates on several meshes (each a subset of the devices)
with the same batches, and reports losses, final parameters (as float lists), per-device bytes,
a checkpoint moved between meshes and the tensor-parallel forward loss of every attention kind.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import default  # noqa: E402
from training import builders, distributed, optim, steps  # noqa: E402
from training import checkpoints as ckpt_lib  # noqa: E402

STEPS = 3


def tiny_config(kind: str = 'softmax', layers: int = 2) -> ml_collections.ConfigDict:
  c = default.get_config(f'attention={kind}')
  c.model.d_model, c.model.d_ff, c.model.num_heads, c.model.num_layers = 32, 64, 4, layers
  c.model.dropout = 0.1
  c.batch_size, c.seq_len = 16, 32
  # Nesterov SGD: an update linear in the gradient, so parameters differ between meshes only by
  # the gradients' reduction order. (Adam divides by √v + ε and turns float noise in a
  # near-zero gradient coordinate into a difference of up to a whole step.)
  c.optimizer.name, c.optimizer.learning_rate = 'nag', 0.5
  c.update_from_flattened_dict(default.SWEEP_KINDS[kind])  # options that fit short sequences
  return c


def mesh_of(sizes: dict, n: int):
  c = ml_collections.ConfigDict(dict({'data': 1, 'fsdp': 1, 'tensor': 1}, **sizes))
  return distributed.make_mesh(c, jax.devices()[:n])


class Run:
  """One model trained on one mesh with given batches."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    data = builders.build_data(config)
    graphdef, params, rest = builders.split_model(builders.build_model(config))
    optimizer = optim.make_optimizer(config.optimizer, config.train_steps)
    self.state, self.shardings = distributed.place_state(
        builders.initial_state(config, params, optimizer), mesh)
    self.step = jax.jit(steps.make_train_step(graphdef, rest, optimizer, grad_accum_steps=1,
                                              label_smoothing=0.0),
                        out_shardings=(self.shardings, distributed.replicated(mesh)))
    self.eval_step = jax.jit(steps.make_eval_step(graphdef, rest, with_accuracy=False))
    it = data.train_iterator(batch_size=config.batch_size, seq_len=config.seq_len, seed=0)
    self.batches = [{k: v[None] for k, v in next(it).items()} for _ in range(STEPS)]

  def train(self, batches) -> list[float]:
    losses = []
    for b in batches:
      self.state, m = self.step(self.state, distributed.global_batch(b, self.mesh, batch_axis=1))
      losses.append(float(m['loss_sum'] / m['weight']))
    return losses

  def eval_loss(self) -> float:
    b = {k: v[0] for k, v in self.batches[0].items()}
    m = self.eval_step(self.state['params'], distributed.global_batch(b, self.mesh))
    return float(m['loss_sum'] / m['weight'])

  def params(self) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(self.state['params']))[0]
    return {jax.tree_util.keystr(p): np.asarray(x).ravel().tolist() for p, x in flat}


def seq2seq_losses() -> list[float]:
  """The encoder–decoder's teacher-forced loss on one device and with fsdp=2 × tensor=2."""
  from configs import iwslt14  # pylint: disable=g-import-not-at-top
  c = iwslt14.get_config('size=tiny')
  c.model.src_vocab_size = c.model.tgt_vocab_size = 40
  graphdef, params, rest = builders.split_model(builders.build_model(c))
  rng = np.random.default_rng(0)
  batch = {'source': rng.integers(2, 40, (8, 9)).astype(np.int32),
           'target_in': rng.integers(2, 40, (8, 7)).astype(np.int32),
           'targets': rng.integers(2, 40, (8, 7)).astype(np.int32),
           'weights': np.ones((8, 7), np.float32)}
  batch['source'][:, -2:] = c.model.pad_id  # padded sources
  eval_step = jax.jit(steps.make_eval_step(graphdef, rest, with_accuracy=False))
  losses = []
  for sizes, n in (({}, 1), ({'fsdp': 2, 'tensor': 2}, 4)):
    mesh = mesh_of(sizes, n)
    placed = jax.device_put(params, distributed.param_shardings(params, mesh))
    m = eval_step(placed, distributed.global_batch(batch, mesh))
    losses.append(float(m['loss_sum'] / m['weight']))
  return losses


def main() -> None:
  assert jax.device_count() == 8, jax.device_count()
  out = {'losses': {}, 'params': {}}
  layouts = {'one': ({}, 1), 'data8': ({'data': 8}, 8), 'fsdp8': ({'fsdp': 8}, 8),
             'data2_fsdp4': ({'data': 2, 'fsdp': 4}, 8),
             'data2_tensor2': ({'data': 2, 'tensor': 2}, 4)}
  runs = {}
  for name, (sizes, n) in layouts.items():
    run = runs[name] = Run(tiny_config(), mesh_of(sizes, n))
    out['losses'][name] = run.train(run.batches)
    out['params'][name] = run.params()

  # Bytes of parameters + optimizer state on one device, against the whole.
  fsdp = runs['fsdp8'].state
  total = sum(x.nbytes for k in ('params', 'opt_state') for x in jax.tree.leaves(fsdp[k]))
  out['bytes'] = {'total': total,
                  'fsdp8_device0': distributed.local_bytes([fsdp['params'], fsdp['opt_state']]),
                  'data8_device0': distributed.local_bytes(
                      [runs['data8'].state['params'], runs['data8'].state['opt_state']])}

  # A checkpoint of an FSDP run on 8 devices restored onto a data-parallel mesh of 2 devices,
  # then trained on: the same losses as training on without the move.
  with tempfile.TemporaryDirectory() as tmp:
    first = Run(tiny_config(), mesh_of({'fsdp': 8}, 8))
    first.train(first.batches[:2])
    saved = first.params()
    ckpts = ckpt_lib.Checkpoints(Path(tmp) / 'checkpoints', keep=2)
    ckpts.save(2, first.state, {'position': 2})
    ckpts.close()
    second = Run(tiny_config(), mesh_of({'data': 2}, 2))
    ckpts = ckpt_lib.Checkpoints(Path(tmp) / 'checkpoints', keep=2, read_only=True)
    second.state, _ = ckpts.restore(2, ckpt_lib.abstract_like(second.state))
    ckpts.close()
    out['moved'] = {'saved': saved, 'restored': second.params(),
                    'restored_devices': len(jax.tree.leaves(second.state['params'])[0].devices()),
                    'losses_after': second.train(second.batches[2:])}

  # Every attention kind under tensor parallelism (heads split over 2 devices): forward loss.
  out['kinds'] = {}
  for kind in default.SWEEP_KINDS:
    losses = [Run(tiny_config(kind, layers=1), mesh_of(sizes, n)).eval_loss()
              for sizes, n in (({}, 1), ({'data': 2, 'tensor': 2}, 4))]
    out['kinds'][kind] = losses
  out['seq2seq'] = seq2seq_losses()
  print(json.dumps(out))


if __name__ == '__main__':
  main()
