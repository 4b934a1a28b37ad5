"""Training: the train state, the optimizer, the jitted step and the loop (`train_and_evaluate`).

As in Flax's examples: small functions (`create_train_state`, `train_step`, `eval_step`) that
tests call directly, and a loop that wires them to the data, checkpoints, metrics and evaluation.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from data_pipelines import builders, pipelines
from data_pipelines.vocabulary import Vocabulary
from rvos_jax import checkpointing, evaluation, losses, porting, precision, predict, sharding
from rvos_jax.models import mlrl_sa

BACKBONE = 'backbone'
MODEL_INPUTS = ('frames', 'tokens', 'token_mask')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any  # the backbone's BatchNorm statistics (and affine, when frozen)
  opt_state: Any
  rng: jax.Array  # raw uint32 key: dropout noise is fold_in(rng, step), so resuming repeats it

  def variables(self, params=None) -> dict:
    return {'params': self.params if params is None else params,
            'batch_stats': self.batch_stats}


def learning_rate_schedule(base: float, config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to `base`, then cosine decay to base * optim.final_lr_fraction (or constant)."""
  o = config.optim
  total, warmup = config.train.num_steps, min(o.warmup_steps, config.train.num_steps)
  if o.schedule == 'constant':
    decay = optax.constant_schedule(base)
  elif o.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(base, max(total - warmup, 1), alpha=o.final_lr_fraction)
  else:
    raise ValueError(f"config.optim.schedule must be 'cosine' or 'constant', got {o.schedule!r}")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), decay], [warmup])


# The velocity match's query (ours; model.velocity_query_words): its own word embeddings and
# its linear map, the parameters optim.velocity_query_lr_multiplier speeds up.
VELOCITY_QUERY = (('velocity_query_embedding',), ('video_text_pixel', 'velocity_query'))


def parameter_group(path: tuple[str, ...], velocity_query_group: bool = False) -> str:
  if path[0] == BACKBONE:
    return 'backbone'
  if velocity_query_group and any(path[:len(p)] == p for p in VELOCITY_QUERY):
    return 'velocity_query'
  return 'rest'


def learning_rates(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Base learning rate of each parameter group. 'velocity_query' exists only when
  optim.velocity_query_lr_multiplier != 1, so that the optimizer state (and the checkpoints)
  of every other config keep their two groups."""
  o = config.optim
  rates = {'backbone': o.backbone_learning_rate, 'rest': o.learning_rate}
  multiplier = o.get('velocity_query_lr_multiplier', 1.0)
  if multiplier != 1.0:
    rates['velocity_query'] = multiplier * o.learning_rate
  return rates


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with one learning rate for the backbone and one for the rest (DESIGN.md: backbone
  1e-5, rest 1e-4 by default; ours: optionally a third for the velocity query,
  `learning_rates`), global-norm gradient clipping, no weight decay on biases and
  normalisation scales."""
  o = config.optim

  def adamw(lr):
    return optax.adamw(learning_rate_schedule(lr, config), b1=o.b1, b2=o.b2,
                       eps=o.get('eps', 1e-8), weight_decay=o.weight_decay,
                       mask=lambda params: jax.tree.map(lambda x: x.ndim > 1, params))

  rates = learning_rates(config)
  labels = lambda params: flax.traverse_util.path_aware_map(
      lambda path, _: parameter_group(path, 'velocity_query' in rates), params)
  tx = optax.multi_transform({group: adamw(lr) for group, lr in rates.items()}, labels)
  if o.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
  return tx


def _init_fn(config: ml_collections.ConfigDict, model: mlrl_sa.MLRLSA,
             tx: optax.GradientTransformation, state_rng: jax.Array):
  def init(rng):
    inputs = mlrl_sa.dummy_inputs(config.data.num_frames, config.data.height,
                                  config.data.width, config.data.max_words)
    variables = model.init({'params': rng}, *inputs)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                      rng=state_rng)
  return init


def abstract_train_state(config, model, tx, mesh):
  """The train state's shapes, dtypes and shardings, without computing anything."""
  init = _init_fn(config, model, tx, jax.random.PRNGKey(0))
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = sharding.state_shardings(abstract, mesh, config)
  return jax.tree.map(lambda a, s: a.update(sharding=s), abstract, shardings), shardings


def create_train_state(config: ml_collections.ConfigDict, model: mlrl_sa.MLRLSA,
                       tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                       rng: jax.Array) -> tuple[TrainState, Any]:
  """Abstract init (jax.eval_shape), shardings from the mesh, then a jitted init that writes
  every leaf straight into its sharding. The backbone comes from `config.model.backbone_init`
  when set. Returns (state, state_shardings)."""
  init_rng, state_rng = jax.random.split(rng)
  abstract, shardings = abstract_train_state(config, model, tx, mesh)
  loaded = None
  if config.model.backbone_init:
    # Strict: a missing/extra leaf or a shape mismatch raises porting.PortError. Loaded against
    # the abstract state, so a wrong checkpoint fails before the init compiles (minutes at the
    # paper's size); its leaves arrive in their shardings, the others stay abstract.
    loaded = porting.load_backbone_checkpoint(abstract.variables(), config.model.backbone_init,
                                              subtree=BACKBONE)
  state = jax.jit(_init_fn(config, model, tx, state_rng), out_shardings=shardings)(init_rng)
  if loaded is not None:
    variables = jax.tree.map(lambda new, init: init if isinstance(new, jax.ShapeDtypeStruct)
                             else new, loaded, state.variables())
    state = state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
    # Adam's moments are zeros of the same shapes: no need to re-initialise them.
  return state, shardings


def model_inputs(batch: Mapping[str, jax.Array], expressions_per_clip: int = 1):
  """(frames, tokens, token_mask) for the model. With K = expressions_per_clip > 1 each run of
  K rows of the batch shows one clip (the training pipeline's groups): the model gets each clip
  once and runs its text-independent part once for the K expressions (mlrl_sa.MLRLSA)."""
  frames, tokens, token_mask = (batch[k] for k in MODEL_INPUTS)
  if expressions_per_clip > 1:
    # A reshape, not a strided slice: with the batch split over devices in whole groups, each
    # device keeps its own clips.
    frames = frames.reshape(-1, expressions_per_clip, *frames.shape[1:])[:, 0]
  return frames, tokens, token_mask


def _apply(model, state: TrainState, params, batch, train: bool, rng=None,
           expressions_per_clip: int = 1):
  mutable = ['batch_stats'] if (train and not model.frozen_bn) else False
  rngs = {'dropout': rng} if rng is not None else None
  # Mixed precision (config.model.compute_dtype): computed in it, outputs and updates float32.
  out = precision.apply(model, state.variables(params),
                        *model_inputs(batch, expressions_per_clip),
                        train=train, rngs=rngs, mutable=mutable)
  return out if mutable else (out, {})


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model: mlrl_sa.MLRLSA,
               tx: optax.GradientTransformation, config: ml_collections.ConfigDict
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on a (global) batch; returns the new state and scalar metrics."""
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    outputs, updates = _apply(model, state, params, batch, train=True, rng=rng,
                              expressions_per_clip=config.data.get('expressions_per_clip', 1))
    loss, parts = losses.total_loss(outputs, batch, **loss_kwargs(config))
    return loss, (parts, updates)

  (_, (parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, param_updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            batch_stats=updates.get('batch_stats', state.batch_stats))
  metrics = {f'loss/{k}': v for k, v in parts.items()}
  metrics['grad_norm'] = optax.tree.norm(grads)
  metrics['param_norm'] = optax.tree.norm(params)
  for group, base in learning_rates(config).items():
    metrics[f'lr/{group}'] = learning_rate_schedule(base, config)(state.step)
  return new_state, metrics


def jit_train_step(model: mlrl_sa.MLRLSA, tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, state_shardings,
                   *, donate: bool = True):
  """`train_step` compiled for the mesh: the state keeps its shardings (parameters and Adam
  moments sharded over 'model' stay sharded; XLA all-gathers them inside the step), the batch
  is split over every device, the metrics come back replicated. donate: the old state's buffers
  are reused for the new one (the caller must not touch the old state afterwards)."""
  return jax.jit(functools.partial(train_step, model=model, tx=tx, config=config),
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


def eval_step(state: TrainState, batch: Mapping[str, jax.Array], *, model: mlrl_sa.MLRLSA,
              config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Loss parts and mean IoU on a batch, no update (a cheap check; J&F come from evaluation)."""
  outputs, _ = _apply(model, state, state.params, batch, train=False)
  _, parts = losses.total_loss(outputs, batch, **loss_kwargs(config))
  iou = losses.mask_iou(outputs.mask_logits, batch['masks'])
  w = batch['frame_valid'].astype(jnp.float32)
  parts['iou'] = (iou * w).sum() / jnp.maximum(w.sum(), 1.0)
  return parts


def loss_kwargs(config: ml_collections.ConfigDict) -> dict[str, float]:
  c = config.loss
  return dict(alpha=c.alpha, beta=c.beta, focal_alpha=c.focal_alpha, focal_gamma=c.focal_gamma,
              text_pixel_weight=c.get('text_pixel_weight', 0.0),
              velocity_weight=c.get('velocity_weight', 0.0),
              expected_motion_weight=c.get('expected_motion_weight', 0.0),
              expected_motion_scale=c.get('expected_motion_scale', 4.0))


def check_finite(step: int, scalars: Mapping[str, float]) -> None:
  """NaN/Inf check at log time (big_vision): stop with the step and the culprits named."""
  bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
  if bad:
    raise FloatingPointError(f'non-finite training metrics at step {step}: {bad}')


# ------------------------------------------------------------------------------ the loop
def prepare_data(config: ml_collections.ConfigDict):
  """`builders.prepare` (generate refer_shapes if absent, write the TFDS records once), on
  process 0 first: several processes writing the same files of a shared directory would race.
  The others then find the records ready (or, without a shared filesystem, build their own)."""
  if jax.process_count() == 1:
    return builders.prepare(config.data)
  builder = builders.prepare(config.data) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('rvos_jax.train.prepare_data')
  return builder if builder is not None else builders.prepare(config.data)


def load_or_build_vocabulary(workdir: str, builder, config):
  """The vocabulary lives beside the checkpoints: built from the training expressions on the
  first run, then read back (and checked against the data) on every resume, eval or predict."""
  path = config.data.get('vocab_path') or os.path.join(workdir, 'vocab.txt')
  built = pipelines.build_vocabulary(builder, config.data.train_split)
  if os.path.exists(path):
    saved = Vocabulary.load(path)
    built.check_same(saved, what=f'vocabulary saved at {path}')
    return saved
  if jax.process_index() == 0:
    built.save(path)
  return built


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the latest checkpoint in workdir), evaluates periodically and at the
  end, and returns the final evaluation results."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  builder = prepare_data(config)
  vocab = load_or_build_vocabulary(workdir, builder, config)
  model = mlrl_sa.build_model(config.model, len(vocab))
  tx = make_optimizer(config)
  mesh = sharding.make_mesh(config)
  state, state_shardings = create_train_state(config, model, tx, mesh,
                                              jax.random.PRNGKey(config.seed))

  manager = checkpointing.make_manager(workdir, max_to_keep=config.train.max_to_keep,
                                       save_interval_steps=config.train.checkpoint_every)
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = checkpointing.restore_latest(manager, abstract_state, config=config)
  if restored is not None:
    state, meta = restored
    checkpointing.check_vocabulary(meta, vocab.fingerprint, len(vocab))
    logging.info('resumed from step %d', int(state.step))
  elif config.train.init_from:
    state = init_from_checkpoint(state, abstract_state, config, vocab)
  start_step = int(state.step)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(flatten_config(config))
  total = config.train.num_steps
  progress = periodic_actions.ReportProgress(num_train_steps=total, writer=writer)

  step_fn = jit_train_step(model, tx, config, mesh, state_shardings)
  predict_fn = predict.make_predict_fn(model)
  train_ds = pipelines.make_train_dataset(config.data, builder, vocab,
                                          start_batch=start_step)
  train_iter = pipelines.as_numpy(train_ds)

  config_dict = config.to_dict()

  def meta(step):
    # Built from the Python step: reading state.step would wait for the device every step.
    return {'config': config_dict, 'vocab_sha256': vocab.fingerprint,
            'vocab_size': len(vocab),
            # The data order is a function of (seed, step): resuming skips `step` batches.
            'data': {'seed': config.data.seed, 'batches_per_process': step,
                     'batch_size': config.data.batch_size}}

  def run_eval(step):
    out_dir = os.path.join(workdir, 'eval', f'step_{step}')
    results = evaluation.evaluate_or_predict(predict_fn, state.variables(), config, builder,
                                             vocab, out_dir)
    if not results:
      return results
    overall = results['overall']
    writer.write_scalars(step, {f'eval/{k}': v for k, v in overall.items()
                                if isinstance(v, (int, float))})
    logging.info('step %d evaluation:\n%s', step, evaluation.format_table(results))
    return results

  results = {}
  history = []
  t0, s0 = time.time(), start_step
  with checkpointing.PreemptionGuard() as guard:
    for step in range(start_step + 1, total + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = sharding.global_batch(next(train_iter), mesh)
        state, metrics = step_fn(state, batch)
      progress(step)
      history.append(metrics)
      if step % config.train.log_every == 0 or step == total:
        scalars = {k: float(np.mean([m[k] for m in jax.device_get(history)])) for k in metrics}
        history = []
        check_finite(step, scalars)
        writer.write_scalars(step, scalars)
        rate = (step - s0) / max(time.time() - t0, 1e-9)
        logging.info('step %d/%d  loss %.4f  %.2f steps/s  ETA %s', step, total,
                     scalars['loss/total'], rate,
                     time.strftime('%H:%M:%S', time.gmtime((total - step) / max(rate, 1e-9))))
      checkpointing.save(manager, step, state, meta(step))
      stop = checkpointing.should_stop(guard)
      if stop or step == total:
        checkpointing.save(manager, step, state, meta(step), force=True)
      if stop:
        logging.warning('preemption requested: saved step %d, exiting', step)
        manager.wait_until_finished()
        return {}
      if config.train.eval_every and step % config.train.eval_every == 0 and step != total:
        run_eval(step)
  manager.wait_until_finished()
  if total > 0 and config.train.final_eval:
    results = run_eval(total)
    if jax.process_index() == 0:
      predict.write_example_overlays(predict_fn, state.variables(), config, vocab,
                             os.path.join(workdir, 'overlays'))
  writer.flush()
  return results


def init_from_checkpoint(state: TrainState, abstract_state, config, vocab) -> TrainState:
  """Fine-tuning (e.g. Refer-DAVIS17 from Refer-YouTube-VOS): parameters and BatchNorm
  statistics from another run's latest checkpoint; step, optimizer state and rng start fresh."""
  path = config.train.init_from
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.dirname(os.path.join(path, 'checkpoints', ''))
  source = checkpointing.make_manager(os.path.dirname(os.path.abspath(path)), max_to_keep=1,
                                      save_interval_steps=1)
  restored = checkpointing.restore_latest(source, abstract_state, config=config)
  if restored is None:
    raise FileNotFoundError(f'config.train.init_from={config.train.init_from}: no checkpoint')
  other, meta = restored
  checkpointing.check_vocabulary(meta, vocab.fingerprint, len(vocab))
  logging.info('initialised from %s (step %d)', path, int(other.step))
  return state.replace(params=other.params, batch_stats=other.batch_stats)


def flatten_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = flax.traverse_util.flatten_dict(config.to_dict(), sep='.')
  return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}
