"""Devices: JAX's own SPMD runtime, one process per host, a (data, fsdp, tensor) mesh.

`maybe_initialize()` calls `jax.distributed.initialize()` when the environment says this is one
process of several (a coordinator address, SLURM or Open MPI with more than one task, or a TPU
pod slice with several workers); JAX then discovers the cluster itself. `check_same_config`
then compares a hash of the config across processes before anything runs.

`make_mesh(config.mesh)` arranges the devices on three named axes; `param_shardings` places each
parameter by its logical axis names (models/partitioning.py) and `configs/common.py`
`LOGICAL_AXIS_RULES`; `state_shardings` gives the optimizer state its parameter's placement;
batches are split over `data` × `fsdp` (`batch_sharding`). The axes are `Auto` (GSPMD): we pin
where the state and the batch live and XLA's sharding propagation partitions the model's
computation, inserting the collectives (FSDP's all-gathers and reduce-scatters, tensor
parallelism's all-reduces). See docs/architecture.md for why not `Explicit` axes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the axes a batch is split over


def multi_host_environment() -> bool:
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS') or env.get('COORDINATOR_ADDRESS'):
    return True
  if int(env.get('SLURM_NTASKS', '1')) > 1 or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return True
  return ',' in env.get('TPU_WORKER_HOSTNAMES', '')


_initialized = False


def maybe_initialize() -> None:
  """`jax.distributed.initialize()` once, when this is one process of several.

  JAX reads the coordinator from `JAX_COORDINATOR_ADDRESS` and the process count and id from
  SLURM, Open MPI or the TPU environment; elsewhere (e.g. several processes on one machine)
  set `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` too. CPU processes exchange data through gloo.
  """
  global _initialized
  if not _initialized and multi_host_environment():
    env = os.environ
    kwargs = {}
    if env.get('JAX_NUM_PROCESSES') and env.get('JAX_PROCESS_ID'):
      kwargs = dict(num_processes=int(env['JAX_NUM_PROCESSES']),
                    process_id=int(env['JAX_PROCESS_ID']))
    if env.get('JAX_PLATFORMS', '').split(',')[0] == 'cpu':
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(**kwargs)
  _initialized = True


def sync(name: str) -> None:
  """A barrier across processes (nothing with one process); `name` must match on all."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def check_same_config(config_dict: dict) -> None:
  """ValueError (on every process) unless all processes run the same config."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=str).encode()).digest()
  mine = np.frombuffer(digest[:8], np.uint32).copy()
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
  differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
  if differ:
    raise ValueError(f'the processes disagree on the config: process(es) {differ} differ from '
                     'process 0 (config hashes compared at start); launch every process with '
                     'the same --config and flags')


def mesh_shape(mesh_config, n_devices: int) -> dict[str, int]:
  """`config.mesh` → {axis: size} for `n_devices`, with one -1 filled; ValueError otherwise."""
  sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
  text = ' × '.join(f'{a}={v}' for a, v in sizes.items())
  free = [a for a, v in sizes.items() if v == -1]
  if len(free) > 1 or any(v == 0 or v < -1 for v in sizes.values()):
    raise ValueError(f'mesh {text}: each axis size must be positive, and at most one may be -1 '
                     '(the devices left over)')
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if n_devices % fixed:
      raise ValueError(f'mesh {text}: the fixed axes ({fixed} devices) do not divide the '
                       f'{n_devices} device(s)')
    sizes[free[0]] = n_devices // fixed
  elif fixed != n_devices:
    raise ValueError(f'mesh {text} has {fixed} devices but there are {n_devices}; make the '
                     'product equal the device count, or set one axis to -1')
  return sizes


def make_mesh(mesh_config=None, devices=None) -> Mesh:
  """The (data, fsdp, tensor) mesh of `config.mesh` (None: every device on `data`).

  `devices` defaults to all devices (every process's); `jax.make_mesh` orders them so that the
  innermost axis (`tensor`) stays within a host, where its all-reduces are cheapest.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = (mesh_shape(mesh_config, len(devices)) if mesh_config is not None else
           {'data': len(devices), 'fsdp': 1, 'tensor': 1})
  if jax.process_count() > 1 and jax.local_device_count() % sizes['tensor']:
    raise ValueError(f'mesh.tensor={sizes["tensor"]} must divide the {jax.local_device_count()} '
                     'devices of each process: tensor-parallel groups stay within one host')
  shape = tuple(sizes[a] for a in MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def data_mesh() -> Mesh:
  """All devices on the `data` axis: the batch is split across them, parameters replicated."""
  return make_mesh()


def batch_shards(mesh: Mesh) -> int:
  """Into how many parts a batch is split (the `data` × `fsdp` devices)."""
  return math.prod(mesh.shape.get(a, 1) for a in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
  spec = [None] * batch_axis + [axes]
  return NamedSharding(mesh, P(*spec))


def _rules() -> dict[str, Any]:
  from configs import common  # pylint: disable=g-import-not-at-top
  return dict(common.LOGICAL_AXIS_RULES)


def param_spec(name: str, shape: tuple[int, ...], logical: tuple[str | None, ...], mesh: Mesh,
               rules: dict[str, Any] | None = None) -> P:
  """The PartitionSpec of one parameter; ValueError naming it when a mesh axis does not divide.

  A mesh axis shards at most one dimension of a parameter (the first that names it), and axes
  of size 1 are left out of the spec.
  """
  rules = _rules() if rules is None else rules
  used, spec = set(), []
  for dim, (size, name_) in enumerate(zip(shape, logical)):
    if name_ is not None and name_ not in rules:
      raise ValueError(f'parameter {name}: logical axis {name_!r} has no rule in '
                       'configs/common.py LOGICAL_AXIS_RULES')
    target = rules.get(name_) if name_ is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in targets if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
    n = math.prod(mesh.shape[a] for a in axes)
    if axes and size % n:
      over = ' × '.join(f'mesh.{a}={mesh.shape[a]}' for a in axes)
      raise ValueError(f'parameter {name} has shape {tuple(shape)}: its dimension {dim} '
                       f'({name_}, size {size}) is not divisible by {over}; change the mesh '
                       'or the model size')
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


def param_shardings(params: Any, mesh: Mesh) -> Any:
  """NamedShardings for a parameter tree (shapes or arrays) by their logical axis names."""
  from models import partitioning  # pylint: disable=g-import-not-at-top
  rules = _rules()

  def one(path, x):
    name = partitioning.path_name(path)
    logical = partitioning.axes_of(name, len(x.shape))
    return NamedSharding(mesh, param_spec(name, tuple(x.shape), logical, mesh, rules))

  return jax.tree_util.tree_map_with_path(one, params)


def state_shardings(state: Any, params_sharding: Any, mesh: Mesh) -> Any:
  """Shardings of a train state: `params` as given, optimizer moments like their parameter
  (matched by path suffix and shape), everything else (step, key, counters) replicated."""
  by_path = {}
  for path, s in jax.tree_util.tree_flatten_with_path(params_sharding)[0]:
    by_path[tuple(getattr(k, 'key', getattr(k, 'idx', k)) for k in path)] = s
  flat_params = {tuple(getattr(k, 'key', getattr(k, 'idx', k)) for k in p): x.shape
                 for p, x in jax.tree_util.tree_flatten_with_path(state['params'])[0]}

  def one(path, x):
    keys = tuple(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))) for k in path)
    for start in range(len(keys)):
      tail = keys[start:]
      if tail in by_path and flat_params[tail] == getattr(x, 'shape', None):
        return by_path[tail]
    return replicated(mesh)

  out = jax.tree_util.tree_map_with_path(one, {k: v for k, v in state.items() if k != 'params'})
  return {'params': params_sharding, **out}


def place_state(state: Any, mesh: Mesh) -> tuple[Any, Any]:
  """(state on `mesh`, its shardings): parameters by their logical axes, the optimizer state
  like its parameters, the rest replicated. A ValueError names a parameter the mesh cannot
  split."""
  shardings = state_shardings(state, param_shardings(state['params'], mesh), mesh)
  return jax.device_put(state, shardings), shardings


def local_bytes(tree: Any, device=None) -> int:
  """Bytes of `tree`'s arrays held on `device` (default: the first local device)."""
  device = jax.local_devices()[0] if device is None else device
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == device)


class OwnRows:
  """This process's consecutive share of the rows of every batch of `batches` (a global batch
  that every process builds the same way); all of it with one process. Keeps `len()`."""

  def __init__(self, batches):
    self._batches = batches

  def __len__(self):
    return len(self._batches)

  def __iter__(self):
    p, n = jax.process_index(), jax.process_count()
    for batch in self._batches:
      if n == 1:
        yield batch
        continue
      rows = len(next(iter(batch.values())))
      if rows % n:
        raise ValueError(f'an evaluation batch of {rows} rows cannot be shared by {n} processes')
      share = rows // n
      yield {k: v[p * share:(p + 1) * share] for k, v in batch.items()}


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, batch_axis: int = 0) -> dict[str, jax.Array]:
  """This process's rows → one global array per key, split over the `data` axis."""
  sharding = batch_sharding(mesh, batch_axis)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
