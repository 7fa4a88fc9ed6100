"""Devices: JAX's own SPMD runtime, one process per host, a 1-D data-parallel mesh.

`maybe_initialize()` calls `jax.distributed.initialize()` when the environment says this is one
process of several (a coordinator address, SLURM or Open MPI with more than one task, or a TPU
pod slice with several workers); JAX then discovers the cluster itself.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


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


def data_mesh() -> Mesh:
  """All devices on one `data` axis: the batch is split across them, parameters replicated."""
  return Mesh(np.asarray(jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  spec = [None] * batch_axis + ['data']
  return NamedSharding(mesh, P(*spec))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, batch_axis: int = 0) -> dict[str, jax.Array]:
  """This process's rows → one global array per key, split over the `data` axis."""
  sharding = batch_sharding(mesh, batch_axis)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
