"""Training pieces: the optimizer's two learning rates, the step, the NaN check, and the
backbone initialisation from a ported checkpoint (config.model.backbone_init)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import refer_shapes
from rvos_jax import losses, porting, sharding, train
from rvos_jax.models import mlrl_sa, resnet


def tiny_config():
  # The previous default's smoke: one expression per row, no velocity targets in make_batch.
  config = refer_shapes.get_previous_smoke_config()
  config.data.height, config.data.width, config.data.num_frames, config.data.max_words = (
      32, 48, 2, 5)
  config.model.hidden_dim, config.model.decoder_dim = 24, 8
  config.model.text_ffn_dim = 16
  config.model.backbone_width = 0.125
  config.optim.backbone_learning_rate, config.optim.learning_rate = 1e-3, 1e-2
  config.optim.warmup_steps = 2
  config.train.num_steps = 10
  return config


def make_batch(config, b=2, seed=0):
  d = config.data
  rng = np.random.default_rng(seed)
  masks = np.zeros((b, d.num_frames, d.height, d.width), np.float32)
  masks[:, :, 8:20, 10:30] = 1.0
  batch = dict(
      frames=rng.uniform(size=(b, d.num_frames, d.height, d.width, 3)).astype(np.float32),
      tokens=rng.integers(2, 20, size=(b, d.max_words)).astype(np.int32),
      token_mask=np.ones((b, d.max_words), bool), masks=masks, object_masks=masks,
      frame_valid=np.ones((b, d.num_frames), bool))
  batch['boundary'] = np.asarray(losses.boundary_target(jnp.asarray(masks)))
  return batch


@pytest.fixture(scope='module')
def setup():
  config = tiny_config()
  config.model.frozen_bn = True  # the paper's default
  model = mlrl_sa.build_model(config.model, vocab_size=20)
  tx = train.make_optimizer(config)
  mesh = sharding.make_mesh(config)
  state, shardings = train.create_train_state(config, model, tx, mesh, jax.random.PRNGKey(0))
  return config, model, tx, mesh, state


def test_learning_rate_schedule():
  config = tiny_config()
  sched = train.learning_rate_schedule(1.0, config)
  assert float(sched(0)) == 0.0 and float(sched(2)) == pytest.approx(1.0)
  assert float(sched(10)) == pytest.approx(config.optim.final_lr_fraction)
  config.optim.schedule = 'step'
  with pytest.raises(ValueError, match='schedule'):
    train.learning_rate_schedule(1.0, config)


def test_two_learning_rates_and_decay_mask(setup):
  """The backbone moves with backbone_learning_rate, the rest with learning_rate: with Adam's
  first step the update of every weight is ~lr (normalised), so the ratio shows the group."""
  config, model, tx, mesh, state = setup
  grads = jax.tree.map(jnp.ones_like, state.params)
  update = jax.jit(tx.update)  # one program instead of thousands of dispatched ops
  opt_state = jax.jit(tx.init)(state.params)
  for _ in range(3):  # past the 2 warmup steps
    updates, opt_state = update(grads, opt_state, state.params)
  bb = np.abs(np.asarray(updates['backbone']['conv1']['kernel'])).mean()
  rest = np.abs(np.asarray(updates['reduce']['kernel'])).mean()
  assert rest / bb == pytest.approx(10.0, rel=0.05), (bb, rest)
  # Weight decay only on kernels: with zero gradients, biases do not move and kernels decay.
  zero = jax.tree.map(jnp.zeros_like, state.params)
  opt_state = jax.jit(tx.init)(state.params)
  for _ in range(3):
    updates, opt_state = update(zero, opt_state, state.params)
  assert np.abs(np.asarray(updates['reduce']['bias'])).max() == 0.0
  assert np.abs(np.asarray(updates['reduce']['kernel'])).max() > 0.0
  assert train.parameter_group(('backbone', 'conv1', 'kernel')) == 'backbone'
  assert train.parameter_group(('reduce', 'kernel')) == 'rest'


def test_velocity_query_learning_rate_group(setup):
  """optim.velocity_query_lr_multiplier: the velocity query's word embeddings and linear map
  move at that multiple of learning_rate, the rest of the text-to-pixel head at learning_rate;
  at 1 the optimizer keeps its two groups (the checkpoints of other configs stay loadable)."""
  config = setup[0].copy_and_resolve_references()
  ones = lambda *shape: jnp.ones(shape, jnp.float32)
  params = {'backbone': {'conv1': {'kernel': ones(3, 3, 3, 4)}},
            'reduce': {'kernel': ones(4, 4)},
            'velocity_query_embedding': {'embedding': ones(7, 4)},
            'video_text_pixel': {'velocity_query': {'kernel': ones(4, 3), 'bias': ones(3)},
                                 'pixels': {'kernel': ones(4, 4)}}}
  assert set(train.learning_rates(config)) == {'backbone', 'rest'}
  assert set(train.make_optimizer(config).init(params)[1].inner_states) == {'backbone', 'rest'}
  config.optim.velocity_query_lr_multiplier = 10.0
  assert train.learning_rates(config)['velocity_query'] == 10.0 * config.optim.learning_rate
  tx = train.make_optimizer(config)
  opt_state = tx.init(params)
  for _ in range(3):  # past the 2 warmup steps
    updates, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
  mean = lambda x: float(np.abs(np.asarray(x)).mean())
  rest = mean(updates['reduce']['kernel'])
  assert mean(updates['video_text_pixel']['pixels']['kernel']) == pytest.approx(rest, rel=1e-6)
  for x in (updates['velocity_query_embedding']['embedding'],
            updates['video_text_pixel']['velocity_query']['kernel']):
    assert mean(x) / rest == pytest.approx(10.0, rel=0.05)
  assert train.parameter_group(('video_text_pixel', 'velocity_query', 'kernel')) == 'rest'
  assert train.parameter_group(('video_text_pixel', 'velocity_query', 'kernel'),
                               True) == 'velocity_query'


def test_train_step_fits_a_batch(setup):
  config, model, tx, mesh, state0 = setup
  batch = sharding.global_batch(make_batch(config), mesh)
  step = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx, config=config))
  losses, state = [], state0
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss/total']))
  assert int(state.step) == 8
  # Frozen BatchNorm: no gradient, no optimizer state, statistics unchanged by training.
  assert 'bn1' not in state.params['backbone'] and 'bn1' in state.batch_stats['backbone']
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats, state0.batch_stats)
  assert losses[-1] < 0.8 * losses[0], losses
  assert set(metrics) >= {'loss/total', 'loss/object', 'loss/boundary', 'loss/confidence',
                          'grad_norm', 'lr/backbone', 'lr/rest'}
  parts = train.eval_step(state, batch, model=model, config=config)
  assert 0.0 <= float(parts['iou']) <= 1.0


def test_nan_check_names_the_step():
  train.check_finite(3, {'loss/total': 1.0})
  with pytest.raises(FloatingPointError, match=r'step 7.*loss/total'):
    train.check_finite(7, {'loss/total': float('nan'), 'grad_norm': 1.0})


def test_backbone_init_from_config(tmp_path, monkeypatch):
  """config.model.backbone_init loads a ported backbone strictly into the train state."""
  init_fn = train._init_fn
  config = tiny_config()
  config.model.frozen_bn = True
  depth, width = config.model.backbone_depth, config.model.backbone_width
  bare = resnet.ResNet(depth, width)
  x = jnp.zeros((1, 32, 32, 3))
  # Shapes only (compiling a real init costs ~25 s on CPU), then random values.
  shapes = jax.eval_shape(bare.init, jax.random.PRNGKey(1), x)
  variables = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(2), a.shape), shapes)
  porting.save_backbone_checkpoint(porting.merge_collections(variables), tmp_path / 'ported',
                                   {'depth': depth})
  config.model.backbone_init = str(tmp_path / 'ported')
  model = mlrl_sa.build_model(config.model, vocab_size=20)
  tx = train.make_optimizer(config)
  mesh = sharding.make_mesh(config)
  state, _ = train.create_train_state(config, model, tx, mesh, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(state.params['backbone']['conv1']['kernel'],
                                variables['params']['conv1']['kernel'])
  np.testing.assert_array_equal(state.batch_stats['backbone']['layer1']['0']['bn1']['var'],
                                variables['batch_stats']['layer1']['0']['bn1']['var'])
  # A checkpoint of another backbone is refused, naming a leaf and both shapes, before the
  # init is compiled (only the abstract init ran).
  config.model.backbone_width = 0.25
  model = mlrl_sa.build_model(config.model, vocab_size=20)
  inits = []
  monkeypatch.setattr(train, '_init_fn', lambda *a: inits.append(a) or init_fn(*a))
  with pytest.raises(porting.PortError, match=r'conv1\.kernel.*\(7, 7, 3, 8\).*\(7, 7, 3, 16\)'):
    train.create_train_state(config, model, train.make_optimizer(config), mesh,
                             jax.random.PRNGKey(0))
  assert len(inits) == 1, 'the real init ran before the checkpoint was checked'


def test_optimizer_state_is_sharded_like_params(setup):
  config, model, tx, mesh, state = setup
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_equivalent_to(sharding.replicated(mesh), leaf.ndim)
  assert isinstance(state.opt_state, tuple) and optax.tree.norm(state.params) > 0


def test_expressions_per_clip_reads_each_clip_once():
  """data.expressions_per_clip=K: the step hands the model each clip once (train.model_inputs)
  and the model runs backbone, embeddings and object decoder once per clip for its K
  expressions. Outputs, BatchNorm updates, loss and gradients equal those of the same batch
  with every clip repeated K times (float32; only the order of sums differs), and the shared
  step needs fewer FLOPs (XLA's count)."""
  config = tiny_config()  # BatchNorm trained, text-to-pixel maps into the decoder: every path
  model = mlrl_sa.build_model(config.model, vocab_size=20)
  tx = train.make_optimizer(config)
  mesh = sharding.make_mesh(config)
  state, _ = train.create_train_state(config, model, tx, mesh, jax.random.PRNGKey(0))
  batch = make_batch(config, b=4, seed=3)
  for a in (0, 2):  # rows (0, 1) and (2, 3) are one clip each, with different targets
    batch['frames'][a + 1] = batch['frames'][a]
  batch['masks'] = batch['masks'].copy()
  batch['masks'][1::2] = 0.0
  batch['masks'][1::2, :, 4:12, 30:44] = 1.0
  batch['object_masks'] = np.maximum(batch['masks'], batch['masks'][[1, 0, 3, 2]])
  batch['boundary'] = np.asarray(losses.boundary_target(jnp.asarray(batch['masks'])))
  batch['token_mask'][1, 3:] = False  # padded words too
  rng = jax.random.PRNGKey(7)

  def loss_and_grads(k):
    def loss_fn(params):
      outputs, updates = train._apply(model, state, params, batch, train=True, rng=rng,
                                      expressions_per_clip=k)
      loss, _ = losses.total_loss(outputs, batch, **train.loss_kwargs(config))
      return loss, (outputs, updates)
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

  (loss_shared, (out_shared, upd_shared)), g_shared = loss_and_grads(2)(state.params)
  (loss_dup, (out_dup, upd_dup)), g_dup = loss_and_grads(1)(state.params)
  assert float(loss_shared) == pytest.approx(float(loss_dup), rel=1e-5)
  for name, x, y in (('outputs', out_shared, out_dup), ('batch_stats', upd_shared, upd_dup)):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(x), jax.tree.leaves(y),
                            strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b)) + 1),
                                 err_msg=f'{name}{jax.tree_util.keystr(path)}')
  # Norm-wise per leaf (measured: <= 5e-6 relative). Two leaves have a zero gradient in exact
  # arithmetic (biases that shift every word's or pixel's attention logit alike, which the
  # softmax cancels) and hold only rounding noise (~1e-8): hence the absolute term, 1e-7 of the
  # whole gradient's norm.
  floor = 1e-7 * float(optax.tree.norm(g_dup))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_shared), jax.tree.leaves(g_dup),
                          strict=True):
    diff, ref = float(jnp.linalg.norm(a - b)), float(jnp.linalg.norm(b))
    assert diff < 1e-4 * ref + floor, (
        f'gradient {jax.tree_util.keystr(path)}: |difference| {diff:.1e}, |gradient| {ref:.1e}')

  def flops(k):  # the forward pass, from the lowered program (no compilation)
    apply = lambda v, *x: model.apply(v, *x, train=False)
    lowered = jax.jit(apply).lower(state.variables(), *train.model_inputs(batch, k))
    return lowered.cost_analysis()['flops']

  assert flops(2) < 0.8 * flops(1)
