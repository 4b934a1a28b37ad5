"""PyTorch <-> Flax weight conversion by the naming rule, and a torch-free checkpoint reader.

Naming rule (notes/conventions.md): a Flax variable's module path joined with '.' equals the torch
`state_dict` key once the leaf is renamed:

  kernel    -> weight        conv: Flax (*spatial, in, out) <- torch (out, in, *spatial);
                             dense: Flax (in, out) <- torch (out, in)
  scale     -> weight        (LayerNorm / GroupNorm / BatchNorm affine)
  bias      -> bias
  mean      -> running_mean  (BatchNorm statistics)
  var       -> running_var
  embedding -> weight        (nn.Embed)
  any other leaf name is kept as is, with no transpose (a plain torch nn.Parameter of that name).

The collection ('params', 'batch_stats', ...) is not part of the torch key, so one torch key fits
either BatchNorm variant (trainable affine in 'params' or frozen affine in 'batch_stats').
ConvTranspose kernels do not follow this rule (torch stores them (in, out, *spatial) and Flax flips
nothing); none of the project's modules uses one.

`read_torch_checkpoint` reads `torch.save` files without importing torch (torch is a test-only
dependency), and `save_backbone_checkpoint` / `load_backbone_checkpoint` store a ported backbone as
an Orbax checkpoint and place it into a model's variables.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

Variables = Mapping[str, Any]

# Flax leaf name -> torch leaf name.
_LEAF_TO_TORCH = {
  'kernel': 'weight',
  'scale': 'weight',
  'bias': 'bias',
  'mean': 'running_mean',
  'var': 'running_var',
  'embedding': 'weight',
}


class PortError(ValueError):
  """A state_dict / checkpoint does not match the target variables. Lists every problem at once."""

  def __init__(self, what: str, *, missing=(), unused=(), mismatched=(), other=()):
    self.missing = list(missing)
    self.unused = list(unused)
    self.mismatched = list(mismatched)
    self.other = list(other)
    lines = [what]
    for title, items in (('other problems', self.other),
                         ('shape mismatches', self.mismatched),
                         ('missing (expected but absent)', self.missing),
                         ('unused (present but matching nothing)', self.unused)):
      if items:
        lines.append(f'{len(items)} {title}:')
        lines.extend(f'  {item}' for item in items)
    super().__init__('\n'.join(lines))


def ignore_num_batches_tracked(key: str) -> bool:
  """An `ignore` predicate for torch BatchNorm's step counter, which has no Flax counterpart."""
  return key.endswith('num_batches_tracked')


# ---------------------------------------------------------------------------------------------
# Naming rule.


def _torch_leaf(flax_leaf: str, ndim: int) -> tuple[str, tuple[int, ...] | None]:
  """Torch leaf name, and the permutation taking a torch array to the Flax layout (None = as is)."""
  name = _LEAF_TO_TORCH.get(flax_leaf, flax_leaf)
  if flax_leaf == 'kernel' and ndim >= 2:
    # torch (out, in, *spatial) -> Flax (*spatial, in, out); for ndim == 2 this is (1, 0).
    return name, tuple(range(2, ndim)) + (1, 0)
  return name, None


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(int(i) for i in np.argsort(perm))


def _split_prefix(prefix: str) -> tuple[str, ...]:
  return tuple(p for p in prefix.split('.') if p) if prefix else ()


def _flatten(variables: Variables, prefix: str, what: str
             ) -> dict[tuple[str, ...], tuple[tuple[str, ...], Any]]:
  """Module path (relative to prefix) + leaf -> (full flat key incl. collection, leaf value)."""
  pre = _split_prefix(prefix)
  out = {}
  collisions = []
  for full_key, leaf in traverse_util.flatten_dict(variables).items():
    rel = full_key[1:]  # drop the collection
    if rel[:len(pre)] != pre:
      continue
    rel = rel[len(pre):]
    if rel in out:
      collisions.append(f"{'.'.join(rel)} is in collections {out[rel][0][0]!r} and {full_key[0]!r}")
    out[rel] = (full_key, leaf)
  if collisions:
    raise PortError(f'{what}: the same variable path exists in two collections', other=collisions)
  if not out:
    raise PortError(f'{what}: no variables under prefix {prefix!r} '
                    f'(top-level modules: {_top_level(variables)})')
  return out


def _top_level(variables: Variables) -> list[str]:
  return sorted({k for coll in variables.values() if isinstance(coll, Mapping) for k in coll})


def _torch_key(rel: tuple[str, ...], ndim: int) -> tuple[str, tuple[int, ...] | None]:
  leaf, perm = _torch_leaf(rel[-1], ndim)
  return '.'.join((*rel[:-1], leaf)), perm


def torch_to_flax(state_dict: Mapping[str, Any], target: Variables, *, prefix: str = '',
                  ignore: Callable[[str], bool] | None = None) -> dict[str, Any]:
  """Ports a torch state_dict onto Flax variables, strictly.

  Args:
    state_dict: torch key -> array (numpy, or anything np.asarray accepts, e.g. a CPU tensor).
    target: the Flax variables {'params': ..., 'batch_stats': ...}; leaves may be abstract
      (jax.ShapeDtypeStruct from jax.eval_shape). Only shapes and dtypes are read.
    prefix: dotted module path inside `target` (e.g. 'backbone'): only the leaves under it are
      ported, and they are looked up in `state_dict` WITHOUT the prefix, i.e. `state_dict` is the
      sub-module's own state_dict (a torchvision ResNet's for the model's backbone). Leaves
      outside the prefix are returned unchanged. To port from a whole-model torch state_dict
      onto a sub-module, strip the key prefix first.
    ignore: state_dict keys that match no variable are not reported as unused when this
      returns True for them (e.g. `ignore_num_batches_tracked`, or `lambda k: k.startswith('fc.')`).
      A key that matches a variable is always ported.

  Returns:
    A new variables dict with the target's structure; ported leaves are numpy arrays of the
    target leaf's dtype.

  Raises:
    PortError: listing all missing torch keys, all unused state_dict keys and all shape
      mismatches (shapes given in torch layout, and in Flax layout after the transpose).
  """
  what = f'torch_to_flax(prefix={prefix!r})'
  leaves = _flatten(target, prefix, what)
  flat_out = dict(traverse_util.flatten_dict(target))
  wanted = {}
  duplicates = []
  for rel, (full_key, leaf) in leaves.items():
    key, perm = _torch_key(rel, len(leaf.shape))
    if key in wanted:
      duplicates.append(f'{key} <- {".".join(wanted[key][0])} and {".".join(full_key)}')
    wanted[key] = (full_key, leaf, perm)
  if duplicates:
    raise PortError(f'{what}: two Flax variables map to one torch key', other=duplicates)

  missing, mismatched = [], []
  for key, (full_key, leaf, perm) in wanted.items():
    if key not in state_dict:
      missing.append(f'{key} (for {".".join(full_key)}, Flax shape {tuple(leaf.shape)})')
      continue
    value = np.asarray(state_dict[key])
    ported = value.transpose(perm) if perm is not None and value.ndim == len(perm) else value
    if ported.shape != tuple(leaf.shape):
      mismatched.append(
        f'{key}: torch shape {value.shape} -> Flax {ported.shape}, but {".".join(full_key)} '
        f'has shape {tuple(leaf.shape)}')
      continue
    # Always a copy: np.asarray of a torch tensor shares its memory, and torch updates BN
    # statistics in place.
    flat_out[full_key] = np.array(ported, dtype=leaf.dtype, order='C', copy=True)
  unused = sorted(k for k in state_dict
                  if k not in wanted and not (ignore is not None and ignore(k)))
  if missing or unused or mismatched:
    raise PortError(f'{what}: state_dict does not match the Flax variables',
                    missing=missing, unused=unused, mismatched=mismatched)
  return traverse_util.unflatten_dict(flat_out)


def flax_to_torch(variables: Variables, *, prefix: str = '') -> dict[str, np.ndarray]:
  """The inverse of `torch_to_flax`: Flax variables (all collections) -> torch state_dict.

  With `prefix`, only the leaves under that module path are exported, keyed relative to it.
  """
  leaves = _flatten(variables, prefix, f'flax_to_torch(prefix={prefix!r})')
  out: dict[str, np.ndarray] = {}
  for rel, (full_key, leaf) in leaves.items():
    value = np.asarray(leaf)
    key, perm = _torch_key(rel, value.ndim)
    if key in out:
      raise PortError('flax_to_torch: two Flax variables map to one torch key',
                      other=[f'{key} <- {".".join(full_key)}'])
    # np.asarray(order='C'), not np.ascontiguousarray: the latter turns a 0-d leaf into (1,).
    out[key] = np.asarray(value.transpose(_inverse(perm)) if perm else value, order='C')
  return out


# ---------------------------------------------------------------------------------------------
# Reading torch.save files without torch.

# torch's pickled storage classes -> numpy dtype of their elements.
_STORAGE_DTYPES = {
  'DoubleStorage': np.float64,
  'FloatStorage': np.float32,
  'HalfStorage': np.float16,
  'BFloat16Storage': ml_dtypes.bfloat16,
  'LongStorage': np.int64,
  'IntStorage': np.int32,
  'ShortStorage': np.int16,
  'CharStorage': np.int8,
  'ByteStorage': np.uint8,
  'BoolStorage': np.bool_,
  'ComplexFloatStorage': np.complex64,
  'ComplexDoubleStorage': np.complex128,
  # Untyped storages are raw bytes; _rebuild_tensor_v3 names the element dtype separately.
  'UntypedStorage': np.uint8,
}
# torch dtypes (pickled as globals 'torch.<name>' by _rebuild_tensor_v3) -> numpy.
_TORCH_DTYPES = {
  'float64': np.float64, 'float32': np.float32, 'float16': np.float16,
  'bfloat16': ml_dtypes.bfloat16, 'int64': np.int64, 'int32': np.int32, 'int16': np.int16,
  'int8': np.int8, 'uint8': np.uint8, 'uint16': np.uint16, 'uint32': np.uint32,
  'uint64': np.uint64, 'bool': np.bool_, 'complex64': np.complex64,
  'complex128': np.complex128, 'float8_e4m3fn': ml_dtypes.float8_e4m3fn,
  'float8_e5m2': ml_dtypes.float8_e5m2, 'float8_e4m3fnuz': ml_dtypes.float8_e4m3fnuz,
  'float8_e5m2fnuz': ml_dtypes.float8_e5m2fnuz,
}
# Low-precision floats are widened: nothing downstream computes in them before the model casts.
_WIDEN = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e4m3fn),
          np.dtype(ml_dtypes.float8_e5m2), np.dtype(ml_dtypes.float8_e4m3fnuz),
          np.dtype(ml_dtypes.float8_e5m2fnuz)}
# Top-level keys under which training scripts commonly nest the state_dict.
STATE_DICT_WRAPPER_KEYS = ('state_dict', 'model', 'model_state_dict', 'module')


class _StorageType:
  def __init__(self, name: str, dtype):
    self.name, self.dtype = name, np.dtype(dtype)


class _TorchDtype:
  def __init__(self, name: str, dtype):
    self.name, self.dtype = name, np.dtype(dtype)


class _Storage:
  """A storage's elements as a flat numpy array (shared by every tensor that views it)."""

  def __init__(self, data: np.ndarray):
    self.data = data


def _rebuild_array(storage: _Storage, offset: int, size, stride, *, dtype=None) -> np.ndarray:
  data = storage.data
  if dtype is not None and dtype != data.dtype:  # _rebuild_tensor_v3: untyped bytes -> dtype
    data = data.view(dtype)
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if any(s == 0 for s in size):
    return np.zeros(size, dtype=data.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
  if offset < 0 or last >= data.size or any(s < 0 for s in stride):
    raise pickle.UnpicklingError(
      f'tensor view (offset {offset}, size {size}, stride {stride}) exceeds its storage of '
      f'{data.size} elements')
  view = np.lib.stride_tricks.as_strided(
    data[offset:], shape=size, strides=tuple(s * data.itemsize for s in stride), writeable=False)
  return np.array(view, order='C')  # a C-contiguous copy that owns its memory


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _rebuild_array(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _rebuild_array(storage, offset, size, stride, dtype=dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  del new_type, state  # tensor subclasses (e.g. nn.Parameter) become plain arrays
  return func(*args)


class _Marker:
  """A harmless stand-in for globals that only carry type information (nn.Parameter, ...)."""

  def __init__(self, name: str):
    self.name = name


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles torch.save's data.pkl into numpy; only a fixed set of globals is allowed."""

  _GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
    ('torch.nn.parameter', 'Parameter'): _Marker('Parameter'),
    ('torch', 'Size'): tuple,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice,
  }

  def __init__(self, file, read_record: Callable[[str], bytes], byteorder: str, source: str):
    super().__init__(file)
    self._read_record = read_record
    self._byteorder = '<' if byteorder == 'little' else '>'
    self._source = source
    self._storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str):
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[(module, name)]
    if module in ('torch', 'torch.storage', 'torch.cuda') and name in _STORAGE_DTYPES:
      return _StorageType(name, _STORAGE_DTYPES[name])
    if module == 'torch' and name in _TORCH_DTYPES:
      return _TorchDtype(name, _TORCH_DTYPES[name])
    raise pickle.UnpicklingError(
      f'{self._source}: unsupported global {module}.{name} in a torch checkpoint (only tensors, '
      f'dicts, lists and numbers are read without torch)')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise pickle.UnpicklingError(f'{self._source}: unsupported persistent id {pid!r}')
    _, storage_type, key, _location, _numel = pid
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f'{self._source}: unsupported storage type {storage_type!r}')
    if key not in self._storages:
      raw = self._read_record(f'data/{key}')
      dtype = storage_type.dtype.newbyteorder(self._byteorder)
      data = np.frombuffer(raw, dtype=dtype)
      if not dtype.isnative:
        data = data.astype(dtype.newbyteorder('='))
      self._storages[key] = _Storage(data)
    return self._storages[key]


def _to_numpy_tree(obj):
  if isinstance(obj, np.ndarray):
    return obj.astype(np.float32) if obj.dtype in _WIDEN else obj
  if isinstance(obj, Mapping):
    return {k: _to_numpy_tree(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return type(obj)(_to_numpy_tree(v) for v in obj)
  return obj


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
    if len(pkl) != 1:
      raise ValueError(f'{path}: a zip file but not a torch.save checkpoint '
                       f'(expected one <name>/data.pkl, found {pkl or "none"})')
    root = pkl[0][:-len('data.pkl')]
    byteorder_name = root + 'byteorder'
    byteorder = (zf.read(byteorder_name).decode().strip() if byteorder_name in names
                 else 'little')  # torch's own assumption for files without the record

    def read_record(name: str) -> bytes:
      try:
        return zf.read(root + name)
      except KeyError:
        raise ValueError(f'{path}: record {root + name} is missing from the checkpoint') from None

    unpickler = _TorchUnpickler(io.BytesIO(zf.read(pkl[0])), read_record, byteorder, path)
    return unpickler.load()


def _load_legacy(path: str) -> Any:
  try:
    import torch  # optional: only the pre-1.6 non-zip format needs it
  except ImportError:
    raise ValueError(
      f'{path}: not a zip-format torch.save file (legacy pre-torch-1.6 serialisation); reading it '
      f'needs torch, which is not installed. Re-save it with a current torch '
      f'(torch.save(torch.load(f), f2)) or install torch.') from None
  obj = torch.load(path, map_location='cpu', weights_only=True)

  def convert(x):
    if isinstance(x, torch.Tensor):
      x = x.detach()
      if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
      return x.numpy().copy()
    if isinstance(x, Mapping):
      return {k: convert(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
      return type(x)(convert(v) for v in x)
    return x

  return convert(obj)


def load_torch_file(path: str | os.PathLike) -> Any:
  """Unpickles a torch.save file into numpy arrays / dicts / lists; torch is not imported
  unless the file is in the legacy non-zip format. float16/bfloat16/float8 become float32."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'torch checkpoint {path} does not exist')
  obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  return _to_numpy_tree(obj)


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch.save'd state_dict as {key: numpy array}, without importing torch.

  Accepts a bare state_dict or one wrapped in a dict under one of STATE_DICT_WRAPPER_KEYS
  (e.g. {'state_dict': ..., 'epoch': 3}); the unwrapping is logged.
  """
  path = os.fspath(path)
  obj = load_torch_file(path)
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}')
  if not all(isinstance(v, np.ndarray) for v in obj.values()):
    wrapper = next((k for k in STATE_DICT_WRAPPER_KEYS
                    if isinstance(obj.get(k), Mapping)), None)
    if wrapper is None:
      raise ValueError(
        f'{path}: neither a state_dict nor a checkpoint wrapping one under '
        f'{list(STATE_DICT_WRAPPER_KEYS)}; top-level keys: {sorted(map(str, obj))}')
    logging.info('%s: reading the state_dict stored under %r (other top-level keys ignored: %s)',
                 path, wrapper, sorted(str(k) for k in obj if k != wrapper))
    obj = obj[wrapper]
  bad = sorted(f'{k} ({type(v).__name__})' for k, v in obj.items()
               if not isinstance(v, np.ndarray))
  if bad:
    raise ValueError(f'{path}: state_dict entries that are not tensors: {bad}')
  return {str(k): v for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------
# Backbone checkpoints (Orbax): a collection-agnostic nested dict mirroring the module tree.

METADATA_FILE = 'port_metadata.json'
ARRAYS_DIR = 'arrays'


def sha256(path: str | os.PathLike) -> str:
  """Hex digest of a file (recorded beside every port: which file the weights came from)."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def merge_collections(variables: Variables, *, prefix: str = '') -> dict[str, Any]:
  """{'params': {...}, 'batch_stats': {...}} -> one nested dict keyed by module path only."""
  leaves = _flatten(variables, prefix, 'merge_collections')
  return traverse_util.unflatten_dict({rel: leaf for rel, (_, leaf) in leaves.items()})


def save_backbone_checkpoint(tree: Mapping[str, Any], output_dir: str | os.PathLike,
                             metadata: Mapping[str, Any]) -> str:
  """Writes `tree` (from merge_collections) as an Orbax checkpoint in output_dir/arrays and
  `metadata` as output_dir/port_metadata.json. Returns the Orbax directory."""
  output_dir = os.path.abspath(os.fspath(output_dir))
  arrays_dir = os.path.join(output_dir, ARRAYS_DIR)
  if os.path.exists(arrays_dir):
    raise FileExistsError(f'{arrays_dir} already exists; choose a new --output_dir')
  os.makedirs(output_dir, exist_ok=True)
  tree = jax.tree.map(np.asarray, dict(tree))
  # A synchronous Checkpointer: the CLI exits right after, and nothing else is running.
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
    checkpointer.save(arrays_dir, args=ocp.args.StandardSave(tree))
  with open(os.path.join(output_dir, METADATA_FILE), 'w') as f:
    json.dump(dict(metadata), f, indent=2, sort_keys=True)
  return arrays_dir


def read_backbone_checkpoint(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
  """Reads the nested dict of numpy arrays written by save_backbone_checkpoint.

  checkpoint_dir may be the output_dir of the port or its 'arrays' sub-directory.
  """
  checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir))
  arrays_dir = os.path.join(checkpoint_dir, ARRAYS_DIR)
  if not os.path.isdir(arrays_dir):
    arrays_dir = checkpoint_dir
  if not os.path.isdir(arrays_dir):
    raise FileNotFoundError(f'backbone checkpoint {checkpoint_dir} does not exist')
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
    # No target: the arrays were saved from numpy and come back as host numpy arrays, so that
    # load_backbone_checkpoint checks them and places them (with their sharding) itself.
    restored = checkpointer.restore(arrays_dir, args=ocp.args.StandardRestore())
  return jax.tree.map(np.asarray, restored)


def _describe_checkpoint(checkpoint_dir: str | os.PathLike) -> str:
  for path in (os.path.join(checkpoint_dir, METADATA_FILE),
               os.path.join(checkpoint_dir, os.pardir, METADATA_FILE)):
    if os.path.isfile(path):
      with open(path) as f:
        meta = json.load(f)
      return f"checkpoint: ResNet-{meta.get('depth', '?')} ported from {meta.get('source', '?')}"
  return f'no {METADATA_FILE} next to the checkpoint'


def load_backbone_checkpoint(variables: Variables, checkpoint_dir: str | os.PathLike, *,
                             subtree: str = 'backbone') -> dict[str, Any]:
  """Places a ported backbone checkpoint into a model's variables, strictly.

  Each stored leaf goes to whichever collection `variables` holds it in ('params' for a trainable
  BatchNorm affine, 'batch_stats' for the frozen one). Leaves outside `subtree` are unchanged.

  Args:
    variables: the model's variables (concrete or jax.eval_shape-abstract). A leaf that is a
      jax.Array or carries a sharding gets the loaded value with the same sharding.
    checkpoint_dir: the --output_dir of `python -m rvos_jax.port_resnet50` (or its arrays dir).
    subtree: dotted module path of the backbone in `variables` ('' for a bare ResNet).

  Raises:
    PortError: naming every missing / extra leaf and every shape mismatch (both shapes).
  """
  stored = traverse_util.flatten_dict(read_backbone_checkpoint(checkpoint_dir))
  what = f'load_backbone_checkpoint({os.fspath(checkpoint_dir)}, subtree={subtree!r})'
  leaves = _flatten(variables, subtree, what)
  flat_out = dict(traverse_util.flatten_dict(variables))
  missing, mismatched = [], []
  for rel, (full_key, leaf) in leaves.items():
    name = '.'.join(rel)
    if rel not in stored:
      missing.append(f'{name} (model {".".join(full_key)} shape {tuple(leaf.shape)})')
      continue
    value = stored[rel]
    if value.shape != tuple(leaf.shape):
      mismatched.append(f'{name}: checkpoint shape {value.shape}, model {".".join(full_key)} '
                        f'shape {tuple(leaf.shape)}')
      continue
    value = value.astype(leaf.dtype, copy=False)
    sharding = getattr(leaf, 'sharding', None)
    flat_out[full_key] = jax.device_put(value, sharding) if sharding is not None else value
  unused = sorted('.'.join(rel) for rel in stored if rel not in leaves)
  if missing or unused or mismatched:
    raise PortError(f'{what}: checkpoint does not match the model '
                    f'({_describe_checkpoint(checkpoint_dir)})', missing=missing, unused=unused,
                    mismatched=mismatched)
  return traverse_util.unflatten_dict(flat_out)
