"""Training checkpoints: save, resume (onto any topology), and stop cleanly on preemption.

Layout: <workdir>/checkpoints/<step>/{state,meta}, written by an Orbax `CheckpointManager`:
  state  the TrainState pytree (StandardSave; typed PRNG keys are stored as their key data and
         come back as typed keys when the restore target says so),
  meta   JSON: the full config, the data position (what the loop needs to continue the data
         order), the vocabulary's sha256 and size, and a few facts about the writer.

Resume never trusts a checkpoint blindly: `restore_latest` compares the stored model config and
the stored array tree (paths, shapes, dtypes) with what the run expects and raises
`CheckpointMismatchError` naming every difference, rather than letting Orbax fail on the first
array (or, with truncation enabled, silently pad/crop it).

The training loop, in outline:

  manager = checkpointing.make_manager(workdir, max_to_keep=3, save_interval_steps=1000)
  restored = checkpointing.restore_latest(manager, abstract_state, config=config)
  if restored:
    state, meta = restored
    checkpointing.check_vocabulary(meta, vocab.fingerprint)
  with checkpointing.PreemptionGuard() as guard:
    for step in range(start, total_steps + 1):
      state = train_step(state, next(batches))
      checkpointing.save(manager, step, state, meta_for(step))      # on every process
      if checkpointing.should_stop(guard, step):                     # on every process
        checkpointing.save(manager, step, state, meta_for(step), force=True)
        break
  manager.wait_until_finished()   # saves are asynchronous; or manager.close()
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import types
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from rvos_jax import sharding
from rvos_jax.models import mlrl_sa

CHECKPOINTS_DIR = 'checkpoints'
STATE, META = 'state', 'meta'
# Keys `save` requires in `meta`; the loop may add any other JSON-serialisable entries.
REQUIRED_META_KEYS = ('config', 'data', 'vocab_sha256', 'vocab_size')
# Model-config keys that only matter when the parameters are initialised, never on resume
# (the weights then come from the checkpoint), so a difference in them is not a mismatch.
# Keys that do not change what the parameters mean: where the backbone came from, and the
# compute dtype (train in bfloat16 on a GPU, evaluate in float32 on a CPU).
INIT_ONLY_MODEL_KEYS = ('model.backbone_init', 'model.compute_dtype')
# Keys added after checkpoints existed: absent from an older checkpoint, they read as the value
# that reproduces what that checkpoint was trained with.
LATER_MODEL_KEYS = {'model.embedding_position': 'none',
                    'model.embedding_heads': 1, 'model.text_pixel_head': False,
                    'model.backbone_stem_pool': True,
                    'model.text_pixel_to_decoder': False, 'model.decoder_finest_stride': 4,
                    'model.mask_upsample': 'bilinear', 'model.video_motion': 'none',
                    'model.velocity_head': False, 'model.velocity_match': False}
# Switches that existed and were removed (they measured nothing; docs/refer_shapes_experiments.md
# keeps the finding), with the value that is what the network now always does. A checkpoint
# saved with that value restores; one trained with the other value was a different network
# (the product term of the alignment has no parameters of its own, so the arrays alone would
# restore silently) and is refused.
REMOVED_MODEL_KEYS = {f'model.{k}': v for k, v in mlrl_sa.REMOVED_SWITCHES.items()}
META_FORMAT = 1


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the run that tries to restore it (config, arrays or vocabulary)."""


def make_manager(workdir: str | os.PathLike, *, max_to_keep: int | None,
                 save_interval_steps: int) -> ocp.CheckpointManager:
  """A manager for <workdir>/checkpoints keeping the newest `max_to_keep` steps.

  The item handlers are given up front: without them, a fresh manager's `item_metadata(step)`
  returns None for every item (Orbax only learns the handler types from a save/restore call).
  A local path is made absolute: Orbax's array writer rejects relative paths, and only in its
  background thread, once the first save is under way.
  Note Orbax's default policy also saves the first step it is offered when the directory has no
  checkpoint yet, whatever `save_interval_steps` says.
  """
  workdir = os.fspath(workdir)
  if '://' not in workdir:  # gs://... and other URLs stay as they are.
    workdir = os.path.abspath(workdir)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=save_interval_steps,
      create=True,
      # A run killed in the middle of an (async) save leaves `<step>.orbax-checkpoint-tmp-*`;
      # Orbax never restores those, this deletes them when the next run starts.
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(
      os.path.join(workdir, CHECKPOINTS_DIR),
      item_handlers={STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()},
      options=options)


def step_path(manager: ocp.CheckpointManager, step: int) -> str:
  """The directory of `step` (the default Orbax step naming: no prefix, no padding)."""
  return os.fspath(manager.directory / str(step))


# ---------------------------------------------------------------------------------------------
# Metadata.


def _json_default(x: Any) -> Any:
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, (set, frozenset)):
    return sorted(x)
  if isinstance(x, os.PathLike):
    return os.fspath(x)
  raise TypeError(f'checkpoint metadata: {type(x).__name__} is not JSON serialisable: {x!r}')


def config_to_dict(config: Any) -> dict[str, Any]:
  """A ConfigDict (or plain mapping) as the nested dict its JSON gives back."""
  if hasattr(config, 'to_json_best_effort'):  # ml_collections ConfigDict / FrozenConfigDict.
    return json.loads(config.to_json_best_effort())
  if isinstance(config, Mapping):
    return json.loads(json.dumps(config, default=_json_default))
  raise TypeError(f'config must be a ConfigDict or a mapping, got {type(config).__name__}')


def _normalise_meta(step: int, meta: Mapping[str, Any]) -> dict[str, Any]:
  missing = [k for k in REQUIRED_META_KEYS if k not in meta]
  if missing:
    raise ValueError(f'checkpoint metadata for step {step} lacks {missing}; '
                     f'required: {list(REQUIRED_META_KEYS)}')
  meta = dict(meta)
  meta['config'] = config_to_dict(meta['config'])
  meta.setdefault('step', int(step))
  meta.setdefault('format', META_FORMAT)
  meta.setdefault('saved_at', datetime.datetime.now(datetime.timezone.utc).isoformat())
  meta.setdefault('process_count', jax.process_count())
  meta.setdefault('device_count', jax.device_count())
  meta.setdefault('versions', {'jax': jax.__version__, 'orbax': ocp.__version__})
  # Through JSON and back: numpy scalars become Python numbers and an unserialisable entry fails
  # here, synchronously, naming itself, not later in Orbax's background thread.
  return json.loads(json.dumps(meta, default=_json_default))


# ---------------------------------------------------------------------------------------------
# Save.


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: Mapping[str, Any], *,
         force: bool = False) -> bool:
  """Saves `state` and `meta` at `step` if the manager's policy says so (or `force`).

  Call it on every process with the same arguments: Orbax coordinates the processes itself,
  every process writes its own shards, and only the primary process writes the JSON metadata.
  The save is asynchronous (it returns once the arrays are copied off the devices); the loop must
  call `manager.wait_until_finished()` (or `manager.close()`) before it exits.
  Besides every `save_interval_steps`, Orbax's default policy also saves at a JAX preemption
  sync point (multi-process runs with `jax.distributed`), see `should_stop`.

  Returns whether a checkpoint of `step` was started. A forced save of a step that is already
  saved (the regular save just did it) is skipped and returns False, where Orbax would raise.
  """
  step = int(step)
  if force and step in manager.all_steps():
    return False
  meta = _normalise_meta(step, meta)
  return manager.save(
      step,
      args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                 META: ocp.args.JsonSave(meta)}),
      force=force)


# ---------------------------------------------------------------------------------------------
# Restore.


def _flatten_dict(d: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, Mapping) and v:
      out.update(_flatten_dict(v, key + '.'))
    else:
      out[key] = v
  return out


def check_model_config(meta: Mapping[str, Any], config: Any, *, path: str = '<checkpoint>',
                       ignore: Iterable[str] = INIT_ONLY_MODEL_KEYS) -> None:
  """Raises CheckpointMismatchError naming each `model.*` key whose value differs."""
  current = config_to_dict(config).get('model')
  if current is None:
    raise ValueError('the current config has no `model` section to compare with the checkpoint')
  stored = meta.get('config', {}).get('model')
  if stored is None:
    raise CheckpointMismatchError(f'checkpoint {path}: its metadata holds no `config.model`, so '
                                  'it cannot be checked against the current model config')
  a, b = _flatten_dict(stored, 'model.'), _flatten_dict(current, 'model.')
  missing = object()
  diffs = []
  for key in sorted(set(a) | set(b)):
    if key in ignore:
      continue
    if key in REMOVED_MODEL_KEYS and key not in b:
      if a[key] != REMOVED_MODEL_KEYS[key]:
        diffs.append(f'  {key}: {a[key]!r} in the checkpoint, a switch this version no longer '
                     f'has (it always runs {REMOVED_MODEL_KEYS[key]!r}; see '
                     'docs/refer_shapes_experiments.md)')
      continue
    va, vb = a.get(key, LATER_MODEL_KEYS.get(key, missing)), b.get(key, missing)
    if va != vb:
      show = lambda v: '<absent>' if v is missing else repr(v)
      diffs.append(f'  {key}: {show(va)} in the checkpoint vs {show(vb)} in the current config')
  if diffs:
    raise CheckpointMismatchError(
        f'checkpoint {path} was written with a different model config:\n' + '\n'.join(diffs)
        + '\nRestore it with its own config (its meta holds it) or use a new --workdir.')


def check_vocabulary(meta: Mapping[str, Any], vocab_sha256: str, vocab_size: int | None = None,
                     *, path: str = '<checkpoint>') -> None:
  """Raises CheckpointMismatchError if the run's vocabulary is not the checkpoint's.

  The word embeddings are indexed by vocabulary id: another vocabulary (even of the same size)
  silently maps every word to a different embedding row.
  """
  stored_sha, stored_size = meta.get('vocab_sha256'), meta.get('vocab_size')
  if stored_sha != vocab_sha256 or (vocab_size is not None and stored_size != vocab_size):
    raise CheckpointMismatchError(
        f'checkpoint {path} was trained with another vocabulary: sha256 {stored_sha} '
        f'(size {stored_size}) in the checkpoint vs {vocab_sha256}'
        + (f' (size {vocab_size})' if vocab_size is not None else '') + ' now. Use the '
        "vocabulary file saved in the checkpoint's workdir instead of rebuilding it.")


def _leaf_paths(tree: Any) -> dict[str, Any]:
  """'a/b/0/c' -> leaf. Dataclass fields, namedtuple fields and dict keys all read as names,
  which is how Orbax stores them (a namedtuple or flax.struct node becomes a dict on disk)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(sharding.path_names(path)): leaf for path, leaf in leaves}


def _as_stored(leaf: jax.ShapeDtypeStruct) -> tuple[tuple[int, ...], np.dtype]:
  """The shape and dtype a target leaf has on disk: a typed PRNG key is stored as its data."""
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
    return tuple(data.shape), np.dtype(data.dtype)
  return tuple(leaf.shape), np.dtype(leaf.dtype)


def check_tree(stored_tree: Any, abstract_state: Any, *, path: str = '<checkpoint>') -> None:
  """Raises CheckpointMismatchError naming every leaf missing, extra, or of another shape/dtype.

  `stored_tree` is the checkpoint's array metadata (ArrayMetadata / ScalarMetadata leaves).
  A Python scalar in the checkpoint (ScalarMetadata, e.g. an int step) is only checked for shape:
  it is stored as int64/float64 whatever the target's scalar dtype.
  """
  stored, target = _leaf_paths(stored_tree), _leaf_paths(abstract_state)
  problems = []
  for name in sorted(set(stored) | set(target)):
    if name not in stored:
      shape, dtype = _as_stored(target[name])
      problems.append(f'  {name}: missing from the checkpoint (the target has {shape} {dtype})')
    elif name not in target:
      s = stored[name]
      problems.append(f'  {name}: in the checkpoint ({tuple(s.shape)} {np.dtype(s.dtype)}) but '
                      'not in the target')
    else:
      s = stored[name]
      shape, dtype = _as_stored(target[name])
      same_dtype = isinstance(s, ocp.metadata.ScalarMetadata) or np.dtype(s.dtype) == dtype
      if tuple(s.shape) != shape or not same_dtype:
        problems.append(f'  {name}: {tuple(s.shape)} {np.dtype(s.dtype)} in the checkpoint vs '
                        f'{shape} {dtype} in the target')
  if problems:
    raise CheckpointMismatchError(
        f'checkpoint {path} does not fit the state being restored ({len(problems)} '
        'arrays):\n' + '\n'.join(problems))


def _check_shardings(abstract_state: Any) -> None:
  unsharded = [name for name, leaf in _leaf_paths(abstract_state).items()
               if getattr(leaf, 'sharding', None) is None]
  if unsharded:
    raise ValueError(
        'restore target leaves need a sharding (restored arrays are laid out as the target '
        f'says, not as the checkpoint was written); none on: {unsharded[:10]}'
        + (f' and {len(unsharded) - 10} more' if len(unsharded) > 10 else '')
        + '. Use jax.ShapeDtypeStruct(shape, dtype, sharding=...) leaves, e.g. '
        'jax.tree.map(lambda a, s: a.update(sharding=s), jax.eval_shape(init), shardings).')


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The JSON metadata of `step`, without touching its arrays."""
  return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, *, config: Any,
                   step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
  """(state, meta) of the latest checkpoint (or of `step`), or None when there is none.

  `abstract_state` is the target: jax.ShapeDtypeStruct leaves with shardings (jax.eval_shape of
  the init plus the run's shardings). Restored arrays get the target's shardings, which is what
  lets a run resume on another mesh or number of hosts. Before any array is read, the stored
  model config is compared with `config.model` and the stored tree with `abstract_state`; any
  difference raises CheckpointMismatchError. The vocabulary is checked by `check_vocabulary`.
  Call it on every process.
  """
  manager.reload()  # Another process may have written steps since this manager was created.
  if step is None:
    step = manager.latest_step()
    if step is None:
      return None
  elif step not in manager.all_steps():
    raise FileNotFoundError(f'no checkpoint of step {step} in {manager.directory}; '
                            f'steps there: {list(manager.all_steps())}')
  path = step_path(manager, step)
  _check_shardings(abstract_state)
  meta = read_meta(manager, step)
  check_model_config(meta, config, path=path)
  stored = manager.item_metadata(step)[STATE]
  check_tree(getattr(stored, 'tree', stored), abstract_state, path=path)
  restored = manager.restore(
      step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)}))
  logging.info('Restored step %d from %s', step, path)
  return restored[STATE], meta


# ---------------------------------------------------------------------------------------------
# Preemption.


def _jax_preemption_service_active() -> bool:
  """True when jax.distributed runs JAX's preemption notifier, which owns SIGTERM (C++ side)."""
  return jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service


class PreemptionGuard:
  """Context manager: SIGTERM/SIGINT only set `requested`; the loop saves and exits cleanly.

  Handlers are installed on entry (main thread only) and the previous ones restored on exit.
  A second SIGINT while a stop is already requested raises KeyboardInterrupt (Ctrl-C twice
  still kills a stuck run).

  When `jax.distributed` is initialised with JAX's preemption service (the default), SIGTERM is
  left alone: JAX's notifier has installed a C++ SIGTERM handler (invisible to Python's
  `signal.getsignal`, which reports SIG_DFL) and propagates the notice to all processes;
  replacing it would break that, and "restoring" SIG_DFL afterwards would make SIGTERM kill the
  process. `should_stop` then reads JAX's sync point instead of this flag.
  """

  def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)):
    self.signals = tuple(signals)
    self.requested = False
    self.signal_received: int | None = None
    self._previous: dict[int, Any] = {}

  def _handler(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    self.signal_received = signum

  def request(self) -> None:
    """Asks for a stop as a signal would (for tests and for loop-side conditions)."""
    self.requested = True

  def __enter__(self) -> PreemptionGuard:
    for sig in self.signals:
      if sig == signal.SIGTERM and _jax_preemption_service_active():
        logging.info('PreemptionGuard: SIGTERM left to JAX\'s preemption service')
        continue
      self._previous[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc_info) -> bool:
    for sig, previous in self._previous.items():
      # None: the previous handler was not installed from Python and cannot be put back.
      signal.signal(sig, signal.SIG_DFL if previous is None else previous)
    self._previous.clear()
    return False


def should_stop(guard: PreemptionGuard, step: int | None = None, *, sync_every: int = 1) -> bool:
  """Whether the loop should save and stop now; the same answer on every process.

  One process: the guard's flag. Several processes: every process must call it at the same
  steps (it runs collectives). It is True on all of them when
    - JAX's preemption service (jax.distributed) reached its sync point at `step`: JAX agrees
      on that step in the background, without a per-step collective (Orbax's default save
      policy saves at the same step on its own, `ocp.multihost.reached_preemption`), or
    - any process's flag is set, found by an all-gather every `sync_every` steps (at steps
      divisible by `sync_every`; every call when `step` is None). The all-gather blocks the
      host until the devices have caught up, so on pods keep `sync_every` at tens of steps.
  """
  if jax.process_count() == 1:
    return guard.requested
  if step is not None and ocp.multihost.reached_preemption(int(step)):
    return True
  if step is not None and int(step) % sync_every:
    return False
  flags = multihost_utils.process_allgather(np.asarray(guard.requested))
  return bool(np.any(flags))
