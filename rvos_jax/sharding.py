"""Device mesh and shardings. Data-parallel: parameters and optimizer state replicated, batches
split along their leading (clip) axis over the 'data' mesh axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(config: ml_collections.ConfigDict | None = None) -> Mesh:
  """A 1-D mesh over every device of every process (data parallelism)."""
  del config  # the mesh shape will come from the config once parameter sharding exists
  # Auto axes: XLA's partitioner propagates shardings from the jit boundaries (Explicit axes,
  # make_mesh's default in this JAX, would demand an out_sharding on every gather).
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def state_shardings(abstract_state, mesh: Mesh):
  """Shardings of the train state, leaf by leaf (replicated for data parallelism)."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from this process's local batch (numeric arrays only; strings
  such as video ids stay on the host). The local batch size must divide evenly over the local
  devices; the global batch is local_batch_size * process_count."""
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    if value.dtype.kind in 'OSU':
      continue
    if value.shape[0] % jax.local_device_count():
      raise ValueError(
          f"batch['{key}'] has {value.shape[0]} clips per process, which does not divide over "
          f'{jax.local_device_count()} local devices: set config.data.batch_size to a multiple')
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out
