"""Meshes from config: data, FSDP and tensor parallelism on simulated devices.

One subprocess with 8 simulated CPU devices (tests/mesh_worker.py) trains the same model on the
same batches on one device and on data=8, fsdp=8, data=2×fsdp=4 and data=2×tensor=2; the losses
and final parameters must equal the single device's within float32 reduction tolerance. FSDP
must hold about 1/8 of the parameter and optimizer bytes per device; a checkpoint saved under
FSDP on 8 devices must restore exactly onto a 2-device data-parallel mesh and train on with the
losses of the run that never moved; every attention kind must give the single-device loss with
its heads split over 2 devices, and the encoder–decoder its loss under fsdp=2 × tensor=2. The
refusals are checked in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from configs import common, default
from models import partitioning
from training import builders, distributed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def worker() -> dict:
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, str(REPO / 'tests' / 'mesh_worker.py')], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize('layout', ['data8', 'fsdp8', 'data2_fsdp4', 'data2_tensor2'])
def test_mesh_trains_like_one_device(worker, layout):
  np.testing.assert_allclose(worker['losses'][layout], worker['losses']['one'], rtol=2e-6)
  one, other = worker['params']['one'], worker['params'][layout]
  assert one.keys() == other.keys()
  for k in one:
    np.testing.assert_allclose(other[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_fsdp_holds_an_eighth_per_device(worker):
  b = worker['bytes']
  assert b['data8_device0'] == b['total']  # data parallelism replicates everything
  # Norms and the small per-head vectors stay replicated: a little above 1/8.
  assert b['total'] / 8 <= b['fsdp8_device0'] <= 1.25 * b['total'] / 8


@pytest.mark.slow
def test_checkpoint_moves_between_meshes(worker):
  moved = worker['moved']
  assert moved['restored_devices'] == 2
  assert moved['saved'].keys() == moved['restored'].keys()
  for k in moved['saved']:
    np.testing.assert_array_equal(moved['restored'][k], moved['saved'][k], err_msg=k)
  # Training on after the move matches the run that stayed on its mesh (steps 3..).
  np.testing.assert_allclose(moved['losses_after'], worker['losses']['fsdp8'][2:], rtol=2e-6)


@pytest.mark.slow
@pytest.mark.parametrize('kind', list(default.SWEEP_KINDS))
def test_every_kind_runs_with_heads_split(worker, kind):
  one, split = worker['kinds'][kind]
  np.testing.assert_allclose(split, one, rtol=2e-6)


@pytest.mark.slow
def test_encoder_decoder_with_sharded_parameters_and_heads(worker):
  one, split = worker['seq2seq']
  np.testing.assert_allclose(split, one, rtol=2e-6)


def _mesh(**sizes) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict({'data': 1, 'fsdp': 1, 'tensor': 1}, **sizes))


def test_mesh_sizes_fill_and_refuse():
  assert distributed.mesh_shape(_mesh(data=-1, tensor=2), 8) == {'data': 4, 'fsdp': 1,
                                                                 'tensor': 2}
  assert distributed.mesh_shape(_mesh(data=2, fsdp=-1), 8)['fsdp'] == 4
  with pytest.raises(ValueError, match=r'fixed axes \(3 devices\) do not divide the 8'):
    distributed.mesh_shape(_mesh(data=-1, tensor=3), 8)
  with pytest.raises(ValueError, match='has 4 devices but there are 8'):
    distributed.mesh_shape(_mesh(data=2, fsdp=2), 8)
  with pytest.raises(ValueError, match='at most one may be -1'):
    distributed.mesh_shape(_mesh(data=-1, fsdp=-1), 8)


def test_every_parameter_of_every_model_has_logical_names():
  """All kinds, the LM (plain, adaptive, untied, learned positions) and the encoder–decoder."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import iwslt14, wikitext103  # pylint: disable=g-import-not-at-top
  configs = []
  for kind, options in default.SWEEP_KINDS.items():
    c = default.get_config(f'attention={kind}')
    c.update_from_flattened_dict(options)
    c.model.vocab_size = 40
    configs.append(c)
    t = iwslt14.get_config('size=tiny')
    t.attention.kind = kind
    t.update_from_flattened_dict(options)
    t.model.src_vocab_size = t.model.tgt_vocab_size = 40
    configs.append(t)
  w = wikitext103.get_config('size=small')
  w.model.update(vocab_size=1000, adaptive_cutoffs=(100, 500), adaptive_input=True,
                 adaptive_softmax=True, tie_embeddings=False, positions='learned')
  configs.append(w)
  for c in configs:
    params = jax.eval_shape(lambda c=c: builders.split_model(builders.build_model(c))[1])
    names = jax.tree.leaves(partitioning.logical_axes(params),
                            is_leaf=lambda x: isinstance(x, tuple))
    rules = dict(common.LOGICAL_AXIS_RULES)
    assert all(n is None or n in rules for axes in names for n in axes)


def test_unknown_parameter_is_refused_with_its_path():
  with pytest.raises(ValueError, match='layers/0/self_attention/core/new_thing has no logical'):
    partitioning.axes_of('layers/0/self_attention/core/new_thing', 2)


def test_tensor_axis_must_divide_heads_ffn_and_parameters():
  fake = types.SimpleNamespace(shape={'data': 1, 'fsdp': 1, 'tensor': 3})
  c = default.get_config()
  with pytest.raises(ValueError, match=r'model.num_heads=4 is not divisible by mesh.tensor=3'):
    builders.check_mesh(c, fake)
  with pytest.raises(ValueError, match=r'parameter layers/0/ffn/fc1/kernel has shape \(128, 256\)'
                     r': its dimension 1 \(mlp, size 256\) is not divisible by mesh.tensor=3'):
    distributed.param_spec('layers/0/ffn/fc1/kernel', (128, 256), ('embed', 'mlp'), fake)
  two = types.SimpleNamespace(shape={'data': 1, 'fsdp': 2, 'tensor': 2})
  assert tuple(distributed.param_spec('q', (128, 128), ('embed', 'heads'), two)) == ('fsdp',
                                                                                     'tensor')
  # One mesh axis shards one dimension: the second 'embed' stays whole.
  assert tuple(distributed.param_spec('p', (64, 64), ('embed', 'embed'), two)) == ('fsdp', None)


def test_fused_kernels_refuse_head_sharding():
  fake = types.SimpleNamespace(shape={'data': 1, 'fsdp': 1, 'tensor': 2})
  c = default.get_config()
  c.attention.impl = 'pallas'
  with pytest.raises(ValueError, match='attention.impl=pallas runs fused kernels'):
    builders.check_mesh(c, fake)
