"""Mixed precision (rvos_jax/precision.py): float32 is the identity, bfloat16 really computes in
bfloat16 (every convolution and matmul of the jaxpr), keeps float32 parameters, gradients and
losses, and stays within its own tolerance of float32.

Tolerances, measured on the CPU-sized network of tests/test_model_parity.py (random weights,
2 clips x 2 frames of 48x80): bfloat16 has an 8-bit mantissa (relative rounding 2^-9 = 0.2%);
through ~30 layers the mask logits differ from float32 by a few percent of their range. We allow
5% of max|ref| for the output maps (measured 1.1-1.2%), 0.01 for the confidence
score sigmoid(C), 2% for the loss and a gradient direction with cosine >= 0.98.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rvos_jax import losses, precision
from rvos_jax.models import mlrl_sa
from tests.test_model_parity import SMALL, make_inputs

OUT_TOL, SCORE_TOL, LOSS_TOL, GRAD_COS = 5e-2, 1e-2, 2e-2, 0.98


@pytest.fixture(scope='module')
def setup():
  inputs = make_inputs(2, 2, 48, 80, 7, SMALL['vocab_size'], lengths=(7, 3))
  args = (jnp.asarray(inputs['frames']), jnp.asarray(inputs['tokens']),
          jnp.asarray(inputs['token_mask']))
  f32 = mlrl_sa.MLRLSA(**SMALL, text_dropout=0.0)
  variables = jax.jit(f32.init)(jax.random.key(0), *args)
  return inputs, args, variables, f32, f32.clone(compute_dtype='bfloat16')


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _eqns(inner)


def test_float32_is_the_plain_apply(setup):
  _, args, variables, f32, _ = setup
  a = jax.jit(lambda v, *x: precision.apply(f32, v, *x))(variables, *args)
  b = jax.jit(lambda v, *x: f32.apply(v, *x))(variables, *args)
  np.testing.assert_array_equal(a.mask_logits, b.mask_logits)


def test_bfloat16_computes_every_conv_and_matmul_in_bfloat16(setup):
  _, args, variables, _, bf16 = setup
  jaxpr = jax.make_jaxpr(lambda v, *a: precision.apply(bf16, v, *a))(variables, *args)
  ops = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name in ('conv_general_dilated',
                                                               'dot_general')]
  assert len(ops) > 50
  f32_ops = [(e.primitive.name, [str(v.aval) for v in e.invars]) for e in ops
             if any(v.aval.dtype != jnp.bfloat16 for v in e.invars)]
  assert not f32_ops, f32_ops[:5]


def test_bfloat16_outputs_loss_and_gradients_near_float32(setup):
  inputs, args, variables, f32, bf16 = setup
  ref = jax.jit(lambda v, *a: precision.apply(f32, v, *a))(variables, *args)
  out = jax.jit(lambda v, *a: precision.apply(bf16, v, *a))(variables, *args)
  for name in ('mask_logits', 'boundary_logits', 'object_logits'):
    a, r = getattr(out, name), getattr(ref, name)
    assert a.dtype == jnp.float32  # losses see float32
    rel = float(jnp.abs(a - r).max() / jnp.abs(r).max())
    print(f'{name}: max|bf16 - f32| = {rel:.2e} * max|f32|')
    assert rel <= OUT_TOL, (name, rel)
  # The confidence is 4 logits near 0 here, so a ratio to their max is noise: compare the scores.
  diff = float(jnp.abs(jax.nn.sigmoid(out.confidence) - jax.nn.sigmoid(ref.confidence)).max())
  print(f'confidence score: max|bf16 - f32| = {diff:.1e}')
  assert diff <= SCORE_TOL

  batch = {k: jnp.asarray(v) for k, v in inputs.items()}

  def loss(model, params):
    o = precision.apply(model, {**variables, 'params': params}, *args)
    return losses.total_loss(o, batch)[0]

  l32, g32 = jax.jit(jax.value_and_grad(lambda p: loss(f32, p)))(variables['params'])
  l16, g16 = jax.jit(jax.value_and_grad(lambda p: loss(bf16, p)))(variables['params'])
  assert abs(float(l16 - l32)) <= LOSS_TOL * abs(float(l32)), (float(l16), float(l32))
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))  # float32 updates
  v32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g32)])
  v16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g16)])
  cos = float(v16 @ v32 / np.linalg.norm(v16) / np.linalg.norm(v32))
  print(f'loss {float(l16):.5f} vs {float(l32):.5f}; gradient cosine {cos:.4f}')
  assert cos >= GRAD_COS


def test_trained_batchnorm_statistics_stay_float32(setup):
  _, args, _, f32, _ = setup
  model = f32.clone(frozen_bn=False, compute_dtype='bfloat16')
  variables = jax.jit(model.init)(jax.random.key(1), *args)
  _, updates = jax.jit(lambda v, *a: precision.apply(model, v, *a, train=True,
                                                      mutable=['batch_stats']))(variables, *args)
  leaves = jax.tree.leaves(updates['batch_stats'])
  assert leaves and all(x.dtype == jnp.float32 for x in leaves)


def test_unknown_dtype_is_refused():
  with pytest.raises(ValueError, match='compute_dtype'):
    precision.compute_dtype('int8')
