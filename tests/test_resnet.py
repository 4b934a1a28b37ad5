"""ResNet backbone: layout, shapes, forward and gradient parity with a torchvision-layout model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from rvos_jax import porting
from rvos_jax.models import resnet
from tests import parity
from tests.torch_reference import resnet as torch_resnet


def _torch_model(depth: int, width_multiplier: float, seed: int = 0,
                 **kwargs) -> torch_resnet.ResNet:
  torch.manual_seed(seed)
  model = torch_resnet.ResNet(depth, width_multiplier, **kwargs)
  torch_resnet.randomize_batch_norm_(model, torch.Generator().manual_seed(seed + 1))
  return model.eval()


def _ignore(key: str) -> bool:
  return key.startswith('fc.') or porting.ignore_num_batches_tracked(key)


def _port(model: torch.nn.Module, flax_model: resnet.ResNet, shape) -> dict:
  target = jax.eval_shape(flax_model.init, jax.random.key(0), jnp.zeros(shape, jnp.float32))
  state_dict = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return porting.torch_to_flax(state_dict, target, ignore=_ignore)


def _inputs(shape, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _assert_close(name: str, got, ref, rel: float = 1e-4) -> float:
  got, ref = np.asarray(got), np.asarray(ref)
  assert got.shape == ref.shape, f'{name}: shape {got.shape} != torch {ref.shape}'
  return parity.assert_outputs_close(got, ref, name, rel)


def _torch_features(model: torch.nn.Module, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
  with torch.no_grad():
    out = model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2))
  return {k: v.permute(0, 2, 3, 1).numpy() for k, v in out.items()}


def _check_forward(model: torch.nn.Module, flax_model: resnet.ResNet, shape, label: str,
                   seed: int = 0):
  """Ports `model`, runs both on the same random input, compares res2..res5; returns the
  Flax variables and features."""
  variables = _port(model, flax_model, shape)
  x = _inputs(shape, seed)
  got = jax.jit(flax_model.apply)(variables, x)
  ref = _torch_features(model, x)
  for name in resnet.FEATURE_NAMES:
    _assert_close(f'{label} {name}', got[name], ref[name])
  return variables, got


def test_feature_channels_and_paper_shapes():
  assert resnet.feature_channels(50) == {'res2': 256, 'res3': 512, 'res4': 1024, 'res5': 2048}
  assert resnet.feature_channels(18, 0.25) == {'res2': 16, 'res3': 32, 'res4': 64, 'res5': 128}
  model = resnet.ResNet(depth=50)
  x = jax.ShapeDtypeStruct((1, 240, 432, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(model.apply, variables, x)
  assert {k: v.shape for k, v in out.items()} == {
    'res2': (1, 60, 108, 256), 'res3': (1, 30, 54, 512), 'res4': (1, 15, 27, 1024),
    'res5': (1, 8, 14, 2048)}
  assert {k: v.shape for k, v in out.items()} == resnet.feature_shapes(1, 240, 432, 50)


@pytest.mark.parametrize('output_stride,dilate', [(8, (False, False, True)),
                                                   (16, (False, False, False))])
def test_no_stem_pool_parity(output_stride, dilate):
  """stem_pool=False drops the 3x3/2 max-pool: res2..res5 at strides 2, 4, 8, 16, the last one
  dilated when output_stride is 8. Same parameter tree: ported weights load unchanged."""
  shape = (1, 67, 93, 3)
  assert resnet.feature_strides(output_stride, stem_pool=False) == {
      'res2': 2, 'res3': 4, 'res4': 8, 'res5': min(16, output_stride)}
  model = _torch_model(18, 0.25, replace_stride_with_dilation=dilate, stem_pool=False)
  variables, got = _check_forward(
      model, resnet.ResNet(18, 0.25, output_stride=output_stride, stem_pool=False), shape,
      f'ResNet-18 no stem pool OS{output_stride}')
  assert got['res2'].shape[1:3] == (34, 47)  # ceil(67 / 2), ceil(93 / 2)
  assert got['res5'].shape[1:3] == (-(-67 // output_stride), -(-93 // output_stride))
  plain = jax.eval_shape(resnet.ResNet(18, 0.25).init, jax.random.key(0), jnp.zeros(shape))
  assert jax.tree.structure(plain) == jax.tree.structure(variables)


@pytest.mark.parametrize('bad', [{'depth': 26}, {'width_multiplier': 0.3}])
def test_rejects_bad_config(bad):
  with pytest.raises(ValueError, match='depth|width_multiplier'):
    jax.eval_shape(resnet.ResNet(**bad).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize('depth,width_multiplier', [(18, 0.25), (50, 1.0)])
def test_variable_names_match_torchvision_keys(depth, width_multiplier):
  x = jnp.zeros((1, 32, 32, 3))
  torch_keys = {k for k in _torch_model(depth, width_multiplier).state_dict() if not _ignore(k)}
  for frozen_bn in (True, False):
    variables = jax.eval_shape(
      resnet.ResNet(depth, width_multiplier, frozen_bn).init, jax.random.key(0), x)
    assert set(porting.flax_to_torch(variables)) == torch_keys
    leaves = {coll: {k[-1] for k in traverse_util.flatten_dict(tree)}
              for coll, tree in variables.items()}
    # Frozen BN: nothing but conv kernels is trainable (no gradient, no optimizer state for BN).
    expected = ({'params': {'kernel'}, 'batch_stats': {'scale', 'bias', 'mean', 'var'}}
                if frozen_bn else
                {'params': {'kernel', 'scale', 'bias'}, 'batch_stats': {'mean', 'var'}})
    assert leaves == expected


@pytest.mark.parametrize('depth,width_multiplier', [(50, 1.0), (18, 0.25)])
def test_forward_parity(depth, width_multiplier):
  shape = (2, 67, 93, 3)  # not multiples of 32: exercises every padding / ceil
  _check_forward(_torch_model(depth, width_multiplier), resnet.ResNet(depth, width_multiplier),
                 shape, f'ResNet-{depth} x{width_multiplier}')


@pytest.mark.parametrize('depth,output_stride', [(18, 8), (50, 16), (50, 8)])
def test_dilated_output_stride_parity(depth, output_stride):
  """output_stride 16 / 8 = torchvision's replace_stride_with_dilation for layer4 / layer3+4."""
  shape = (1, 67, 93, 3)
  width = 0.25 if depth == 18 else 0.5
  dilate = (False, output_stride == 8, True)
  model = _torch_model(depth, width, replace_stride_with_dilation=dilate)
  variables, got = _check_forward(model, resnet.ResNet(depth, width, output_stride=output_stride),
                                  shape, f'ResNet-{depth} OS{output_stride}')
  assert got['res5'].shape[1:3] == (-(-67 // output_stride), -(-93 // output_stride))
  # Same parameter tree as the undilated network: ported weights load unchanged.
  plain = jax.eval_shape(resnet.ResNet(depth, width).init, jax.random.key(0), jnp.zeros(shape))
  assert jax.tree.structure(plain) == jax.tree.structure(variables)


def test_trainable_batch_norm_parity():
  """frozen_bn=False: running stats in eval mode, batch stats in train mode, like torch."""
  shape = (2, 35, 41, 3)
  model = _torch_model(18, 0.25, seed=3)
  flax_model = resnet.ResNet(18, 0.25, frozen_bn=False)
  variables = _port(model, flax_model, shape)
  x = _inputs(shape, seed=3)
  got = jax.jit(flax_model.apply)(variables, x)
  ref = _torch_features(model, x)
  for name in resnet.FEATURE_NAMES:
    _assert_close(f'eval {name}', got[name], ref[name])

  got, updates = flax_model.apply(variables, x, train=True, mutable=['batch_stats'])
  model.train()
  ref = _torch_features(model, x)
  for name in resnet.FEATURE_NAMES:
    _assert_close(f'train {name}', got[name], ref[name])
  # Running-mean update: Flax momentum 0.9 == torch momentum 0.1. (The variances differ by
  # design: torch tracks the unbiased batch variance, Flax the biased one.)
  new_mean = updates['batch_stats']['layer1']['0']['bn1']['mean']
  assert not np.allclose(new_mean, variables['batch_stats']['layer1']['0']['bn1']['mean'])
  _assert_close('running_mean update', new_mean, model.layer1[0].bn1.running_mean.numpy())


@pytest.mark.parametrize('depth,width_multiplier', [(18, 0.25), (50, 1.0)])
def test_gradient_parity_frozen_bn(depth, width_multiplier):
  shape = (2, 67, 93, 3) if depth == 18 else (1, 45, 53, 3)
  model = _torch_model(depth, width_multiplier, seed=5)
  flax_model = resnet.ResNet(depth, width_multiplier)
  variables = _port(model, flax_model, shape)
  x = _inputs(shape, seed=5)
  res5_shape = resnet.feature_shapes(*shape[:3], depth, width_multiplier)['res5']
  weight = _inputs(res5_shape, seed=6)

  def loss(params, x):
    out = flax_model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x)
    return jnp.sum(out['res5'] * weight)

  grad_params, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables['params'], x)

  x_t = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
  out = model(x_t)['res5']
  torch.sum(out * torch.from_numpy(weight).permute(0, 3, 1, 2)).backward()

  def check(name, g, ref):
    assert np.linalg.norm(ref) > 0, f'{name}: torch gradient is zero'
    parity.assert_grads_close(g, ref, name)

  check('d/dx', grad_x, x_t.grad.permute(0, 2, 3, 1).numpy())
  grads = porting.flax_to_torch({'params': grad_params})
  torch_params = dict(model.named_parameters())
  assert set(grads) == {f'{name}.weight' for name, m in model.named_modules()
                        if isinstance(m, torch.nn.Conv2d)}
  for key, g in grads.items():
    check(key, g, torch_params[key].grad.numpy())


@pytest.mark.slow
def test_forward_parity_resnet50_paper_size():
  shape = (1, 240, 432, 3)
  _check_forward(_torch_model(50, 1.0, seed=7), resnet.ResNet(50), shape, 'ResNet-50 240x432',
                 seed=7)
