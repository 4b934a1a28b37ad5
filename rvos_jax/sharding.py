"""Device mesh, shardings, and multi-host start-up.

The mesh has two axes (`config.mesh`):
  'data'   data parallelism: parameters are replicated along it;
  'model'  FSDP-style parameter sharding: a large parameter (and its Adam moments) is split along
           one of its dimensions over this axis, and XLA all-gathers it where it is used.
The batch is split over *both* axes (P(('data', 'model'))): every device sees distinct clips, so
'model' shards memory without duplicating any compute. The usual layout is 'model' within a host
(fast links for the all-gathers) and 'data' across hosts.

Which parameters are sharded (`config.sharding`): leaves smaller than `min_bytes` stay replicated
(an all-gather costs more than they weigh); the others are split over 'model' on their largest
dimension divisible by the axis size (ties: the last such dimension, e.g. a conv kernel's output
channels). `rules` overrides this per leaf: (regex, spec) pairs matched with `re.search` against
the '/'-joined parameter path (e.g. 'backbone/layer4/0/conv2/kernel'), first match wins; spec is a
PartitionSpec-like tuple such as (None, 'model') or () for replicated.

The train state's step and rng are replicated; optimizer-state leaves that mirror a parameter
(Adam's mu and nu) get that parameter's sharding, the rest (counts) are replicated.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'
MODEL_AXIS = 'model'
AXES = (DATA_AXIS, MODEL_AXIS)
# Batches: leading (clip) axis over every device of the mesh.
BATCH_AXES = (DATA_AXIS, MODEL_AXIS)
DEFAULT_MIN_BYTES = 1 << 18  # as configs/default.py


# ------------------------------------------------------------------------------ multi-host
def _env_says_multihost(environ: Mapping[str, str]) -> str | None:
  """The launcher that started several processes, judged from environment variables alone
  (no JAX call, no metadata query), or None. These are the launchers whose variables
  `jax.distributed.initialize()` reads itself."""
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  slurm = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
           'SLURM_LOCALID')
  # SLURM_NTASKS > 1 only under `srun` with several tasks: an `salloc` shell or a one-task
  # job is a single process and must not wait for peers.
  if all(k in environ for k in slurm) and int(environ['SLURM_NTASKS']) > 1:
    return 'Slurm'
  if 'OMPI_MCA_orte_hnp_uri' in environ and int(environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'Open MPI'
  hosts = environ.get('TPU_PROCESS_ADDRESSES') or environ.get('TPU_WORKER_HOSTNAMES') or ''
  if len([h for h in hosts.split(',') if h]) > 1:
    return 'TPU pod (GKE)'
  return None


def initialize_distributed(config: ml_collections.ConfigDict | None,
                           environ: Mapping[str, str] | None = None) -> bool:
  """Calls `jax.distributed.initialize` when the run is multi-host; returns whether it did.

  Call it once, before anything touches a JAX device (main.py does, first thing).
  `config.distributed.initialize`:
    'auto'    initialize when coordinator_address / num_processes > 1 are set in the config, or
              when the environment is one of several processes (Slurm srun with several tasks,
              Open MPI, GKE TPU pods, JAX_COORDINATOR_ADDRESS);
    'always'  initialize, letting JAX detect what the config leaves unset (Cloud TPU VMs of a pod
              slice are found through the metadata server, which 'auto' does not query);
    'never'   single process.
  Unset fields (coordinator_address '', num_processes 0, process_id -1) are left to JAX's
  detection.
  """
  environ = os.environ if environ is None else environ
  d = config.get('distributed') if config is not None else None
  d = d if d is not None else ml_collections.ConfigDict()
  mode = d.get('initialize', 'auto')
  if mode not in ('auto', 'always', 'never'):
    raise ValueError(f"config.distributed.initialize must be 'auto', 'always' or 'never', "
                     f'got {mode!r}')
  address = d.get('coordinator_address', '') or None
  num_processes = d.get('num_processes', 0) or None
  process_id = d.get('process_id', -1)
  process_id = None if process_id is None or process_id < 0 else process_id
  if mode == 'never' or jax.distributed.is_initialized():
    return False
  if mode == 'auto':
    reason = ('config.distributed' if address or (num_processes or 1) > 1
              else _env_says_multihost(environ))
    if reason is None:
      return False
    logging.info('multi-host run (%s): initializing jax.distributed', reason)
  kwargs = {}
  if d.get('initialization_timeout', 0):
    kwargs['initialization_timeout'] = d.initialization_timeout
  jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                             process_id=process_id, **kwargs)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


# ------------------------------------------------------------------------------ mesh
def mesh_shape(config: ml_collections.ConfigDict | None, device_count: int) -> tuple[int, int]:
  """(data, model) sizes from config.mesh; -1 means "all the devices the other axis leaves"."""
  m = config.get('mesh') if config is not None else None
  data = m.get('data', -1) if m is not None else -1
  model = m.get('model', 1) if m is not None else 1
  sizes = [data, model]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got data={data} model={model}')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'config.mesh sizes must be positive or -1, got data={data} model={model}')
  if -1 in sizes:
    other = int(np.prod([s for s in sizes if s != -1]))
    if device_count % other:
      raise ValueError(f'config.mesh: {other} does not divide the {device_count} devices')
    sizes[sizes.index(-1)] = device_count // other
  if sizes[0] * sizes[1] != device_count:
    raise ValueError(f'config.mesh: data={sizes[0]} x model={sizes[1]} != {device_count} devices')
  return sizes[0], sizes[1]


def make_mesh(config: ml_collections.ConfigDict | None = None) -> Mesh:
  """A (data, model) mesh over every device of every process."""
  shape = mesh_shape(config, jax.device_count())
  # Auto axes: XLA's partitioner propagates shardings from the jit boundaries (Explicit axes,
  # make_mesh's default in this JAX, would demand an out_sharding on every gather).
  # global_batch relies on each process's devices being one contiguous block of the flattened
  # mesh (its clips are one block of the global batch): jax.make_mesh orders them so (checked
  # for 2 processes x 4 CPU devices by tests/test_scale_out.py).
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


# ------------------------------------------------------------------------------ parameter rules
def _as_spec(spec: Any) -> P:
  """A PartitionSpec from a config tuple: (None, 'model'), ((('data', 'model'),), ...), ()."""
  if isinstance(spec, P):
    return spec
  if isinstance(spec, str):
    return P(spec)
  return P(*(tuple(s) if isinstance(s, (list, tuple)) else s for s in spec))


def sharding_rules(config: ml_collections.ConfigDict | None) -> list[tuple[re.Pattern, P]]:
  s = config.get('sharding') if config is not None else None
  rules = (s.get('rules', ()) if s is not None else ()) or ()
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f'config.sharding.rules: each rule is (regex, spec), got {rule!r}')
    out.append((re.compile(rule[0]), _as_spec(rule[1])))
  return out


def _min_bytes(config) -> int:
  s = config.get('sharding') if config is not None else None
  return s.get('min_bytes', DEFAULT_MIN_BYTES) if s is not None else DEFAULT_MIN_BYTES


def _check_spec(path: str, shape: Sequence[int], spec: P, axis_sizes: Mapping[str, int],
                rule: str) -> None:
  if len(spec) > len(shape):
    raise ValueError(f'sharding rule {rule!r} gives {spec} to {path} of shape {tuple(shape)}: '
                     'more entries than dimensions')
  for dim, axes in zip(shape, spec, strict=False):
    if axes is None:
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    unknown = [a for a in names if a not in axis_sizes]
    if unknown:
      raise ValueError(f'sharding rule {rule!r}: mesh has no axis {unknown} '
                       f'(axes: {list(axis_sizes)})')
    n = int(np.prod([axis_sizes[a] for a in names]))
    if dim % n:
      raise ValueError(f'sharding rule {rule!r} splits dimension {dim} of {path} '
                       f'{tuple(shape)} over {names} ({n} devices): not divisible')


def param_spec(path: str, shape: Sequence[int], dtype: Any, axis_sizes: Mapping[str, int],
               config: ml_collections.ConfigDict | None = None, rules=None) -> P:
  """The PartitionSpec of one parameter-like leaf (see the module docstring).

  `axis_sizes`: {'data': n, 'model': m}, e.g. dict(mesh.shape). Pure: no device is touched, so
  the same decisions can be checked or printed for any mesh shape.
  """
  rules = sharding_rules(config) if rules is None else rules
  for pattern, spec in rules:
    if pattern.search(path):
      _check_spec(path, shape, spec, axis_sizes, pattern.pattern)
      return spec
  n = axis_sizes.get(MODEL_AXIS, 1)
  size = int(np.prod(shape, dtype=np.int64))
  if n == 1 or size * np.dtype(dtype).itemsize < _min_bytes(config):
    return P()
  divisible = [(d, i) for i, d in enumerate(shape) if d % n == 0]
  if not divisible:
    return P()  # nothing splits evenly: replicated (a rule can force a padded layout)
  _, dim = max(divisible)
  return P(*([None] * dim + [MODEL_AXIS]))


def path_names(path) -> tuple[str, ...]:
  """A jax key path as names: ('params', 'backbone', 'conv1', 'kernel')."""
  out = []
  for k in path:
    for attr in ('key', 'name', 'idx'):  # DictKey, GetAttrKey, SequenceKey / FlattenedIndexKey
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return tuple(out)


def state_specs(abstract_state: Any, axis_sizes: Mapping[str, int],
                config: ml_collections.ConfigDict | None = None) -> Any:
  """PartitionSpecs of the train state, leaf by leaf (a tree shaped like `abstract_state`).

  Top-level fields: 'params' and 'batch_stats' follow `param_spec` (paths relative to the
  collection), 'opt_state' leaves take the spec of the parameter they mirror (the longest
  parameter path that ends their own path, with the same shape), everything else (step, rng,
  optimizer counts) is replicated.
  """
  rules = sharding_rules(config)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
  named = [(path_names(path), leaf) for path, leaf in leaves]
  params = {}
  specs = []
  for names, leaf in named:
    spec = P()
    if names and names[0] in ('params', 'batch_stats') and len(names) > 1:
      rel = '/'.join(names[1:])
      spec = param_spec(rel, leaf.shape, leaf.dtype, axis_sizes, config, rules)
      if names[0] == 'params':
        params[names[1:]] = (tuple(leaf.shape), spec)
    specs.append(spec)
  for i, (names, leaf) in enumerate(named):
    if names and names[0] == 'opt_state':
      for start in range(1, len(names)):
        hit = params.get(names[start:])
        if hit is not None and hit[0] == tuple(leaf.shape):
          specs[i] = hit[1]
          break
  return jax.tree_util.tree_unflatten(treedef, specs)


def state_shardings(abstract_state: Any, mesh: Mesh,
                    config: ml_collections.ConfigDict | None = None) -> Any:
  """NamedShardings of the train state, leaf by leaf (see `state_specs`)."""
  specs = state_specs(abstract_state, dict(mesh.shape), config)
  shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                           is_leaf=lambda x: isinstance(x, P))
  sharded = [s for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)) if s != P()]
  logging.info('state shardings on mesh %s: %d leaves sharded, %d replicated',
               dict(mesh.shape), len(sharded),
               len(jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))) - len(sharded))
  return shardings


def bytes_per_device(tree: Any, device: jax.Device | None = None) -> tuple[int, int]:
  """(bytes of `tree`'s shards held by `device`, bytes of `tree` as global arrays).

  Abstract leaves (ShapeDtypeStruct with a sharding) count as their arrays would."""
  device = device or jax.devices()[0]
  held = total = 0
  for leaf in jax.tree.leaves(tree):
    itemsize = np.dtype(leaf.dtype).itemsize
    total += int(np.prod(leaf.shape, dtype=np.int64)) * itemsize
    shard = leaf.sharding.shard_shape(leaf.shape)
    if device in leaf.sharding.device_set:
      held += int(np.prod(shard, dtype=np.int64)) * itemsize
  return held, total


# ------------------------------------------------------------------------------ batches
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
