"""The torch -> Flax converter, the torch-free checkpoint reader and the ResNet-50 port CLI."""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from absl import flags
from flax import traverse_util

from rvos_jax import port_resnet50, porting
from rvos_jax.models import resnet
from tests import parity
from tests.torch_reference import resnet as torch_resnet

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# read_torch_checkpoint


def _as_numpy(t: torch.Tensor) -> np.ndarray:
  t = t.detach()
  if t.dtype in (torch.float16, torch.bfloat16):
    t = t.float()
  return t.contiguous().numpy()


def _tensors() -> dict[str, torch.Tensor]:
  g = torch.Generator().manual_seed(0)
  base = torch.randn(5, 6, 7, generator=g)
  shared = torch.randn(4, 9, generator=g)
  return {
    'f32': torch.randn(3, 4, generator=g),
    'f64': torch.randn(2, 3, generator=g, dtype=torch.float64),
    'f16': torch.randn(3, 5, generator=g).half(),
    'bf16': torch.randn(4, 2, generator=g).bfloat16(),
    'i64': torch.randint(-2**40, 2**40, (6,), generator=g),
    'i32': torch.randint(-1000, 1000, (2, 2), generator=g, dtype=torch.int32),
    'u8': torch.randint(0, 255, (7,), generator=g, dtype=torch.uint8),
    'bool': torch.rand(3, 3, generator=g) > 0.5,
    'scalar': torch.tensor(3.5),
    'empty': torch.zeros(0, 3),
    'transposed': base.permute(2, 0, 1),  # non-contiguous
    'sliced': base[1:4, ::2, 3:],  # storage offset + strides
    'shared_a': shared[1],  # two views of one storage
    'shared_b': shared[:, 2:5].t(),
    'expanded': torch.randn(1, 3, generator=g).expand(4, 3),  # zero stride
    'param': torch.nn.Parameter(torch.randn(2, 2, generator=g)),
  }


def test_read_torch_checkpoint_dtypes_and_views(tmp_path):
  tensors = _tensors()
  path = tmp_path / 'tensors.pth'
  torch.save(tensors, path)
  got = porting.read_torch_checkpoint(path)
  assert set(got) == set(tensors)
  for key, t in tensors.items():
    ref = _as_numpy(t)
    assert got[key].shape == ref.shape, key
    assert got[key].dtype == ref.dtype, f'{key}: {got[key].dtype} != {ref.dtype}'
    np.testing.assert_array_equal(got[key], ref, err_msg=key)
  assert got['f16'].dtype == np.float32 and got['bf16'].dtype == np.float32
  assert got['i64'].dtype == np.int64 and got['bool'].dtype == np.bool_
  assert got['transposed'].flags['C_CONTIGUOUS']


def test_read_torch_checkpoint_does_not_import_torch(tmp_path, monkeypatch):
  path = tmp_path / 'sd.pth'
  model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
  torch.save(model.state_dict(), path)
  legacy = tmp_path / 'legacy.pth'
  torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
  monkeypatch.setitem(sys.modules, 'torch', None)  # any `import torch` now raises ImportError
  got = porting.read_torch_checkpoint(path)
  assert list(got) == list(model.state_dict())  # order kept (OrderedDict)
  for key, t in model.state_dict().items():
    np.testing.assert_array_equal(got[key], t.numpy(), err_msg=key)
  with pytest.raises(ValueError, match='legacy.*needs torch'):
    porting.read_torch_checkpoint(legacy)


def test_read_torch_checkpoint_legacy_format_with_torch(tmp_path):
  sd = {'a': torch.randn(3, 2).t(), 'b': torch.arange(5)}
  path = tmp_path / 'legacy.pth'
  torch.save(sd, path, _use_new_zipfile_serialization=False)
  got = porting.read_torch_checkpoint(path)
  for key, t in sd.items():
    np.testing.assert_array_equal(got[key], t.numpy(), err_msg=key)


@pytest.mark.parametrize('wrapper', ['state_dict', 'model'])
def test_read_torch_checkpoint_unwraps(tmp_path, wrapper):
  sd = collections.OrderedDict(w=torch.randn(2, 3), b=torch.randn(3))
  path = tmp_path / 'wrapped.pth'
  torch.save({wrapper: sd, 'epoch': 7, 'optimizer': {'lr': 0.1}}, path)
  got = porting.read_torch_checkpoint(path)
  assert list(got) == ['w', 'b']
  np.testing.assert_array_equal(got['w'], sd['w'].numpy())


def test_read_torch_checkpoint_errors(tmp_path):
  path = tmp_path / 'other.pth'
  torch.save({'epoch': 3, 'weights': [torch.zeros(2)]}, path)
  with pytest.raises(ValueError, match=r'other\.pth.*top-level keys.*epoch'):
    porting.read_torch_checkpoint(path)
  path = tmp_path / 'module.pth'
  torch.save(torch.nn.Linear(2, 2), path)  # a pickled module, not a state_dict
  with pytest.raises(pickle.UnpicklingError, match='unsupported global torch.nn'):
    porting.read_torch_checkpoint(path)
  with pytest.raises(FileNotFoundError, match='missing.pth'):
    porting.read_torch_checkpoint(tmp_path / 'missing.pth')


# ------------------------------------------------------------------------------------------------
# torch_to_flax / flax_to_torch


def _small_target():
  rng = np.random.default_rng(0)
  return {
    'params': {
      'conv': {'kernel': rng.standard_normal((3, 3, 2, 4)).astype(np.float32)},
      'dense': {'kernel': rng.standard_normal((4, 5)).astype(np.float32),
                'bias': rng.standard_normal(5).astype(np.float32)},
      'norm': {'scale': rng.standard_normal(4).astype(np.float32),
               'bias': rng.standard_normal(4).astype(np.float32)},
      'embed': {'embedding': rng.standard_normal((10, 4)).astype(np.float32)},
      'conv1d': {'kernel': rng.standard_normal((5, 2, 3)).astype(np.float32)},
    },
    'batch_stats': {'norm': {'mean': rng.standard_normal(4).astype(np.float32),
                             'var': rng.random(4).astype(np.float32)}},
  }


def test_flax_to_torch_layouts_and_round_trip():
  variables = _small_target()
  sd = porting.flax_to_torch(variables)
  assert {k: v.shape for k, v in sd.items()} == {
    'conv.weight': (4, 2, 3, 3), 'dense.weight': (5, 4), 'dense.bias': (5,),
    'norm.weight': (4,), 'norm.bias': (4,), 'norm.running_mean': (4,), 'norm.running_var': (4,),
    'embed.weight': (10, 4), 'conv1d.weight': (3, 2, 5)}
  # The layouts are torch's: check against torch ops on the same weights.
  x = np.random.default_rng(1).standard_normal((1, 6, 6, 2)).astype(np.float32)
  y_flax = jax.lax.conv_general_dilated(x, variables['params']['conv']['kernel'], (1, 1), 'VALID',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y_torch = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                       torch.from_numpy(sd['conv.weight']))
  np.testing.assert_allclose(y_flax, y_torch.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
  back = porting.torch_to_flax(sd, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                                variables))
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, back, variables)))


def test_torch_to_flax_reports_every_problem_at_once():
  variables = _small_target()
  sd = porting.flax_to_torch(variables)
  sd['dense.weights'] = sd.pop('dense.weight')  # renamed
  del sd['norm.running_var']  # missing
  sd['conv.weight'] = sd['conv.weight'][:, :1]  # wrong shape
  sd['extra.weight'] = np.zeros(3, np.float32)  # unused
  sd['norm.num_batches_tracked'] = np.array(5)
  with pytest.raises(porting.PortError) as info:
    porting.torch_to_flax(sd, variables, ignore=porting.ignore_num_batches_tracked)
  msg = str(info.value)
  for name in ('dense.weight', 'norm.running_var', 'dense.weights', 'extra.weight',
               'conv.weight', '(4, 1, 3, 3)', '(3, 3, 2, 4)'):
    assert name in msg, f'{name!r} not in:\n{msg}'
  assert 'num_batches_tracked' not in msg
  assert info.value.missing and info.value.unused and info.value.mismatched


def test_torch_to_flax_prefix_ports_a_subtree():
  inner = _small_target()
  whole = {'params': {'backbone': inner['params'], 'head': {'kernel': np.ones((2, 2))}},
           'batch_stats': {'backbone': inner['batch_stats']}}
  sd = porting.flax_to_torch(inner)
  assert porting.flax_to_torch(whole, prefix='backbone').keys() == sd.keys()
  sd = {k: v + 1 for k, v in sd.items()}
  out = porting.torch_to_flax(sd, whole, prefix='backbone')
  np.testing.assert_array_equal(out['params']['head']['kernel'], np.ones((2, 2)))
  np.testing.assert_array_equal(out['params']['backbone']['dense']['bias'],
                                inner['params']['dense']['bias'] + 1)
  with pytest.raises(porting.PortError, match="no variables under prefix 'neck'"):
    porting.torch_to_flax(sd, whole, prefix='neck')


# ------------------------------------------------------------------------------------------------
# ResNet-50 port: torch.save -> CLI -> Orbax -> load_backbone_checkpoint -> same features.


@pytest.fixture(scope='module')
def resnet50(tmp_path_factory):
  """A random-weight torchvision-layout ResNet-50 (random BN stats), saved with torch.save."""
  torch.manual_seed(0)
  model = torch_resnet.ResNet(50)
  torch_resnet.randomize_batch_norm_(model, torch.Generator().manual_seed(1))
  model.eval()
  path = tmp_path_factory.mktemp('torch') / 'resnet50.pth'
  torch.save(model.state_dict(), path)
  return model, path


@pytest.fixture(scope='module')
def ported(resnet50, tmp_path_factory):
  """Runs the CLI's main() on the saved file; returns the output dir."""
  _, path = resnet50
  out = tmp_path_factory.mktemp('port') / 'resnet50_flax'
  argv = ['port_resnet50', f'--torch_checkpoint={path}', f'--output_dir={out}']
  flags.FLAGS(argv)
  try:
    port_resnet50.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  return out


def _abstract_variables(model: resnet.ResNet):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_port_metadata_lists_dropped_keys(resnet50, ported):
  model, path = resnet50
  metadata = json.loads((ported / porting.METADATA_FILE).read_text())
  nbt = sorted(k for k in model.state_dict() if k.endswith('num_batches_tracked'))
  assert len(nbt) == 53
  assert metadata['dropped_keys'] == sorted(['fc.bias', 'fc.weight', *nbt])
  assert metadata['depth'] == 50
  assert metadata['source'] == str(path)
  assert metadata['sha256'] == porting.sha256(str(path))
  assert metadata['num_ported_arrays'] == 53 + 53 * 4  # 53 convs, 53 BNs x 4
  assert metadata['num_parameters'] == sum(
    v.numel() for k, v in model.state_dict().items() if not port_resnet50.is_dropped_key(k))


def test_ported_resnet50_matches_torch(resnet50, ported):
  model, _ = resnet50
  flax_model = resnet.ResNet(50)
  variables = porting.load_backbone_checkpoint(_abstract_variables(flax_model), ported, subtree='')
  # 67 x 93: odd at every stride (34x47, 17x24, 9x12, 5x6, 3x3), so the stem's strided conv and
  # max-pool and each stage's strided conv / downsample pad as torch does or the test fails.
  x = np.random.default_rng(0).standard_normal((1, 67, 93, 3)).astype(np.float32)
  got = jax.jit(flax_model.apply)(variables, x)
  with torch.no_grad():
    ref = model(torch.from_numpy(x).permute(0, 3, 1, 2))
  assert got['res5'].shape == (1, 3, 3, 2048)
  for name in resnet.FEATURE_NAMES:
    parity.assert_outputs_close(got[name], ref[name].permute(0, 2, 3, 1).numpy(),
                                f'ported ResNet-50 {name}')


def test_load_places_leaves_in_either_collection_and_subtree(ported):
  trainable = _abstract_variables(resnet.ResNet(50, frozen_bn=False))
  whole = {'params': {'backbone': trainable['params'], 'head': {'kernel': np.ones(3)}},
           'batch_stats': {'backbone': trainable['batch_stats']}}
  out = porting.load_backbone_checkpoint(whole, ported)  # subtree='backbone'
  stored = porting.read_backbone_checkpoint(ported)
  np.testing.assert_array_equal(out['params']['backbone']['bn1']['scale'], stored['bn1']['scale'])
  np.testing.assert_array_equal(out['batch_stats']['backbone']['bn1']['var'],
                                stored['bn1']['var'])
  np.testing.assert_array_equal(out['params']['head']['kernel'], np.ones(3))
  frozen = porting.load_backbone_checkpoint(_abstract_variables(resnet.ResNet(50)), ported,
                                            subtree='')
  np.testing.assert_array_equal(frozen['batch_stats']['bn1']['scale'], stored['bn1']['scale'])
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(frozen))


def test_load_into_wrong_architecture_names_leaf_and_shapes(ported):
  small = _abstract_variables(resnet.ResNet(18, 0.25))
  with pytest.raises(porting.PortError) as info:
    porting.load_backbone_checkpoint(small, ported, subtree='')
  msg = str(info.value)
  assert 'conv1.kernel: checkpoint shape (7, 7, 3, 64), model params.conv1.kernel shape ' \
         '(7, 7, 3, 16)' in msg, msg
  assert 'layer1.0.conv3.kernel' in msg  # a Bottleneck-only leaf: unused by ResNet-18
  assert 'layer1.0.downsample' in msg


def test_port_names_renamed_and_missing_keys(resnet50):
  model, _ = resnet50
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  renamed = dict(sd)
  renamed['layer2.1.bn2.weights'] = renamed.pop('layer2.1.bn2.weight')
  with pytest.raises(porting.PortError) as info:
    port_resnet50.port_state_dict(renamed)
  assert 'layer2.1.bn2.weight ' in str(info.value)  # missing
  assert 'layer2.1.bn2.weights' in str(info.value)  # unused
  missing = dict(sd)
  del missing['layer3.0.downsample.0.weight']
  with pytest.raises(porting.PortError, match=r'layer3\.0\.downsample\.0\.weight'):
    port_resnet50.port_state_dict(missing)


def _run_cli(*flag_args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(REPO), *filter(None, [os.environ.get('PYTHONPATH')])]))
  return subprocess.run([sys.executable, '-m', 'rvos_jax.port_resnet50', *flag_args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def test_port_cli_entry_point(resnet50, ported, tmp_path):
  _, path = resnet50
  out = tmp_path / 'cli'
  result = _run_cli(f'--torch_checkpoint={path}', f'--output_dir={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Dropped 55 keys (2 fc.*, 53 *.num_batches_tracked)' in result.stderr
  a = traverse_util.flatten_dict(porting.read_backbone_checkpoint(out))
  b = traverse_util.flatten_dict(porting.read_backbone_checkpoint(ported))
  assert a.keys() == b.keys()
  assert all(np.array_equal(a[k], b[k]) for k in a)


def test_port_refuses_to_overwrite(resnet50, ported):
  _, path = resnet50
  with pytest.raises(FileExistsError, match='already holds a checkpoint'):
    port_resnet50.port_checkpoint(str(path), str(ported))


@pytest.fixture(scope='module')
def bad_resnet18_files(tmp_path_factory):
  """torchvision-layout ResNet-18 state_dicts (--depth 18: a quarter of ResNet-50's bytes) with
  one key renamed and with one key missing; fc.* and num_batches_tracked kept, as in a real
  file, so the CLI's drop rule is not what rejects them."""
  state_dict = torch_resnet.ResNet(18).state_dict()
  directory = tmp_path_factory.mktemp('bad_torch')
  renamed = dict(state_dict)
  renamed['layer2.1.bn2.weights'] = renamed.pop('layer2.1.bn2.weight')
  missing = dict(state_dict)
  del missing['layer3.0.downsample.0.weight']
  files = {}
  for name, sd in (('renamed', renamed), ('missing', missing)):
    files[name] = directory / f'{name}.pth'
    torch.save(sd, files[name])
  return files


@pytest.mark.parametrize('case,names', [
    ('renamed', [r'^\s+layer2\.1\.bn2\.weight\b', r'^\s+layer2\.1\.bn2\.weights\b']),
    ('missing', [r'^\s+layer3\.0\.downsample\.0\.weight\b'])], ids=['renamed', 'missing'])
def test_port_cli_rejects_unmatched_keys(bad_resnet18_files, tmp_path, case, names):
  """Strict through the CLI: non-zero exit, stderr names the key (a renamed key as both the
  missing name and the unused one), and nothing is written to --output_dir."""
  out = tmp_path / 'out'
  result = _run_cli(f'--torch_checkpoint={bad_resnet18_files[case]}', f'--output_dir={out}',
                    '--depth=18')
  assert result.returncode != 0, result.stderr[-3000:]
  assert 'PortError' in result.stderr, result.stderr[-3000:]
  for pattern in names:
    assert re.search(pattern, result.stderr, re.MULTILINE), (pattern, result.stderr[-3000:])
  assert not out.exists(), sorted(p.name for p in out.rglob('*'))
