"""Training STCN (rvos_jax/models/stcn.py) for the propagation of §3.4, and its own evaluation
as a semi-supervised VOS model (first frame's true mask given).

  python main.py --config configs/propagation_refer_shapes.py --workdir W   # train + evaluate
  python main.py --config configs/propagation_refer_shapes.py --workdir W --mode eval

STCN's main-training recipe (its train.py / model.py; facts, our code), at a CPU size: a clip
of 3 frames (the input pipeline's training clips, config.data.num_frames = 3, time reversed
with probability 1/2); frame 0's true mask is encoded into the memory, frame 1 is segmented
from it, its soft mask encoded and added, and frame 2 is segmented from both; the loss is
the bootstrapped cross-entropy of frames 1 and 2 on the soft-aggregated logits (background,
object): the mean over the hardest fraction p of the pixels, p = 1 until
config.stcn_train.bootstrap_start, then falling linearly to top_p (0.15) at bootstrap_end
(STCN: 20k and 70k iterations). BatchNorm stays frozen, as in STCN. Unlike STCN we train one
object per clip (our propagation carries one referred object; STCN trains two, each with the
other's mask as its `others` channel), from scratch (no ImageNet or static-image pretraining
can be downloaded here), with Adam at config.stcn_train.learning_rate.

The result is exported to <workdir>/stcn in the layout of rvos_jax.port_stcn (what
config.inference.stcn_checkpoint reads), with results.json of the VOS evaluation.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from data_pipelines import builders, layouts, pipelines, ytvos_layout
from rvos_jax import metrics, porting, propagation
from rvos_jax.models import stcn
from rvos_jax.progress import ProgressLog

EXPORT_DIR = 'stcn'
ARCHITECTURE = ('key_depth', 'value_depth', 'width', 'key_dim', 'value_dim', 'decoder_dim',
                'stem_pool')


def export_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), EXPORT_DIR)


def build_stcn(config: ml_collections.ConfigDict) -> stcn.STCN:
  return stcn.STCN(**{f: config.stcn[f] for f in ARCHITECTURE})


def bootstrap_fraction(step, start: int, end: int, top_p: float):
  """STCN's BootstrappedCE schedule: 1 before `start`, linear down to top_p at `end`."""
  frac = jnp.clip((step - start) / max(end - start, 1), 0.0, 1.0)
  return jnp.where(step < start, 1.0, 1.0 - (1.0 - top_p) * frac)


def bootstrapped_cross_entropy(logits: jax.Array, target: jax.Array, fraction) -> jax.Array:
  """logits (B, 2, H, W) (background, object), target (B, H, W) {0, 1} -> the mean over the
  batch of each sample's mean cross-entropy over its hardest `fraction` of pixels."""
  logp = jax.nn.log_softmax(logits, axis=1)
  y = target.astype(jnp.int32)
  ce = -jnp.where(y == 1, logp[:, 1], logp[:, 0]).reshape(logits.shape[0], -1)
  n = ce.shape[1]
  k = jnp.maximum(1, jnp.floor(n * fraction)).astype(jnp.int32)
  ranked = -jnp.sort(-ce, axis=1)  # descending
  keep = jnp.arange(n)[None] < k
  return jnp.mean(jnp.sum(ranked * keep, 1) / k)


def clip_loss(model: stcn.STCN, params, batch_stats, frames: jax.Array, masks: jax.Array,
              fraction, dice_weight: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """frames (B, 3, H, W, 3) normalised, masks (B, 3, H, W): STCN's 3-frame training pass.
  dice_weight > 0 adds a Dice loss (not STCN's) of each propagated frame's soft mask."""
  v = {'params': params, 'batch_stats': batch_stats}
  b, t, h, w, _ = frames.shape
  key, qv, f16, f8, f4 = model.apply(v, frames.reshape(b * t, h, w, 3),
                                     method=stcn.STCN.encode_key)
  per = lambda x: x.reshape(b, t, *x.shape[1:])
  key, qv, f16, f8, f4 = map(per, (key, qv, f16, f8, f4))
  hw = key.shape[2] * key.shape[3]
  flat_key = lambda i: key[:, i].reshape(b, hw, -1)
  value0 = model.apply(v, frames[:, 0], f16[:, 0], masks[:, :1], method=stcn.STCN.encode_value)
  mem_keys, mem_values = flat_key(0), value0.reshape(b, 1, hw, -1)
  total, ious = 0.0, []
  for i in (1, 2):
    logits = model.apply(v, key[:, i], qv[:, i], f8[:, i], f4[:, i], mem_keys, mem_values,
                         method=stcn.STCN.segment)
    # STCN's soft aggregation of one object with the background is softmax([-x, x]) of the
    # decoder's logit x (= sigmoid(2x)), up to its clamp of the probabilities to [1e-7,
    # 1 - 1e-7]; the clamp has no gradient, and a network trained from scratch that saturates
    # below 1e-7 on the object (1.4% of the pixels here) never recovers: the loss takes the
    # unclamped form.
    agg = jnp.concatenate([-logits, logits], 1)  # (B, 2, H, W)
    total = total + bootstrapped_cross_entropy(agg, masks[:, i], fraction)
    prob = jax.nn.sigmoid(2 * logits[:, 0])
    if dice_weight:
      inter = jnp.sum(prob * masks[:, i], (1, 2))
      dice = 1 - (2 * inter + 1) / (jnp.sum(prob, (1, 2)) + jnp.sum(masks[:, i], (1, 2)) + 1)
      total = total + dice_weight * jnp.mean(dice)
    pred, gt = prob > 0.5, masks[:, i] > 0.5
    inter = jnp.sum(pred & gt, (1, 2))
    union = jnp.sum(pred | gt, (1, 2))
    ious.append(jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0))
    if i == 1:
      value1 = model.apply(v, frames[:, 1], f16[:, 1], prob[:, None],
                           method=stcn.STCN.encode_value)
      mem_keys = jnp.concatenate([mem_keys, flat_key(1)], 1)
      mem_values = jnp.concatenate([mem_values, value1.reshape(b, 1, hw, -1)], 2)
  return total, {'loss': total, 'iou/frame1': ious[0].mean(), 'iou/frame2': ious[1].mean()}


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, c.warmup_steps,
                                                max(c.num_steps, c.warmup_steps + 1),
                                                c.learning_rate * 0.1)
  return optax.chain(optax.clip_by_global_norm(c.grad_clip_norm),
                     optax.adam(schedule))


def _batches(config, builder, vocab, start_batch: int):
  ds = pipelines.make_train_dataset(config.data, builder, vocab, process_index=0,
                                    process_count=1, start_batch=start_batch)
  rng = np.random.default_rng([config.seed, start_batch])
  for batch in pipelines.as_numpy(ds):
    frames, masks = batch['frames'], batch['masks']
    reverse = rng.random(len(frames)) < 0.5  # STCN reverses time half of the time
    frames = np.where(reverse[:, None, None, None, None], frames[:, ::-1], frames)
    masks = np.where(reverse[:, None, None, None], masks[:, ::-1], masks)
    yield frames, masks


def export(model: stcn.STCN, params, batch_stats, directory: str, **metadata) -> str:
  """Writes the variables in rvos_jax.port_stcn's layout (load_stcn reads it)."""
  if os.path.isdir(directory):
    import shutil  # noqa: PLC0415
    shutil.rmtree(directory)
  tree = porting.merge_collections({'params': params, 'batch_stats': batch_stats})
  porting.save_backbone_checkpoint(tree, directory, {
      'format': 'rvos_jax STCN: module path -> kernel/scale/bias/mean/var',
      'architecture': {f: getattr(model, f) for f in ARCHITECTURE}, **metadata})
  return directory


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains STCN on config.data's training clips (resuming), exports it, evaluates it."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  c = config.stcn_train
  builder = builders.prepare(config.data)
  vocab = pipelines.build_vocabulary(builder, config.data.train_split)  # unused words, required
  model = build_stcn(config)
  h, w = config.data.height, config.data.width
  variables = model.init(jax.random.key(config.seed), jnp.zeros((1, h, w, 3)),
                         jnp.zeros((1, 1, h, w)), jnp.zeros((1, h, w, 3)))
  params, batch_stats = variables['params'], variables['batch_stats']
  tx = make_optimizer(c)
  state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=2))
  if manager.latest_step() is not None:
    state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(state))
    logging.info('resumed STCN training at step %d', int(state['step']))

  @jax.jit
  def train_step(state, frames, masks):
    fraction = bootstrap_fraction(state['step'], c.bootstrap_start, c.bootstrap_end, c.top_p)
    frames = stcn.normalize(frames)
    (_, aux), grads = jax.value_and_grad(
        lambda p: clip_loss(model, p, batch_stats, frames, masks, fraction,
                            c.get('dice_weight', 0.0)), has_aux=True)(
        state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new = {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
           'opt_state': opt_state}
    return new, {**aux, 'bootstrap_fraction': fraction}

  start = int(state['step'])
  t0, logged = time.time(), start
  for frames, masks in _batches(config, builder, vocab, start):
    step = int(state['step'])
    if step >= c.num_steps:
      break
    state, aux = train_step(state, frames, masks)
    if (step + 1) % c.log_every == 0 or step + 1 == c.num_steps:
      aux = {k: float(v) for k, v in aux.items()}
      if not all(np.isfinite(list(aux.values()))):
        raise FloatingPointError(f'non-finite STCN training metrics at step {step + 1}: {aux}')
      rate = (step + 1 - logged) / (time.time() - t0)
      t0, logged = time.time(), step + 1
      logging.info('stcn step %d/%d  loss %.4f  iou %.3f / %.3f  p %.2f  %.2f steps/s',
                   step + 1, c.num_steps, aux['loss'], aux['iou/frame1'], aux['iou/frame2'],
                   aux['bootstrap_fraction'], rate)
    if (step + 1) % c.checkpoint_every == 0 or step + 1 == c.num_steps:
      manager.save(step + 1, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  directory = export(model, state['params'], batch_stats, export_dir(workdir),
                     steps=int(state['step']))
  logging.info('STCN exported to %s (config.inference.stcn_checkpoint)', directory)
  return evaluate_vos(config, directory, os.path.join(workdir, 'eval'))


def evaluate_vos(config: ml_collections.ConfigDict, checkpoint: str, output_dir: str
                 ) -> dict[str, Any]:
  """STCN alone as a semi-supervised VOS model on config.data.eval_split: every object of
  every video (the objects its expressions refer to), its true mask in frame 0 given, the
  rest propagated; J, F (averaged over frames 1..n-1 of each object) and J&F over objects.
  Refer-YouTube-VOS layout (refer_shapes)."""
  from rvos_jax import port_stcn, predict  # noqa: PLC0415

  model, variables = port_stcn.load_stcn(checkpoint)
  prop = propagation.Propagator(model, variables, propagation.settings_from_config(config))
  root = os.path.abspath(os.path.expanduser(config.data.root))
  split = config.data.eval_split
  if layouts.layout_of(config.data.name) != layouts.YTVOS:
    raise ValueError('evaluate_vos reads the Refer-YouTube-VOS layout (refer_shapes)')
  meta = ytvos_layout.read_meta_expressions(ytvos_layout.meta_expressions_path(root, split))
  per_object, skipped = {}, 0
  progress = ProgressLog(f'stcn vos {split}', len(meta), 'videos')
  t0, frames_done = time.time(), 0
  for i, video in enumerate(sorted(meta)):
    names = sorted(meta[video].get('frames') or [])
    frames = np.stack([predict.read_frame(os.path.join(root, split, 'JPEGImages', video,
                                                       n + '.jpg')) for n in names])
    ids = np.stack([ytvos_layout.decode_mask(open(os.path.join(
        root, split, 'Annotations', video, n + '.png'), 'rb').read(), n) for n in names])
    for obj in sorted({int(e['obj_id']) for e in meta[video]['expressions'].values()}):
      gt = ids == obj
      if not gt[0].any():  # semi-supervised VOS needs the object in the first frame
        skipped += 1
        continue
      pred = prop.propagate(frames, 0, gt[0]) > 0.5
      j = metrics.region_similarity_frames(pred[1:], gt[1:])
      f = metrics.boundary_f_measure_frames(pred[1:], gt[1:])
      per_object[f'{video}/{obj}'] = metrics.expression_scores(j, f)
      frames_done += len(names)
    progress.update(i + 1)
  elapsed = time.time() - t0
  js = [s['J'] for s in per_object.values()]
  fs = [s['F'] for s in per_object.values()]
  results = {'J': float(np.mean(js)), 'F': float(np.mean(fs)),
             'J&F': float((np.mean(js) + np.mean(fs)) / 2), 'num_objects': len(per_object),
             'skipped_absent_in_first_frame': skipped,
             'frames_per_second': frames_done / max(elapsed, 1e-9),
             'split': split, 'checkpoint': checkpoint, 'per_object': per_object}
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, 'vos_results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  logging.info('STCN semi-supervised VOS on %s: J %.1f F %.1f J&F %.1f over %d objects '
               '(%.1f frames/s)', split, 100 * results['J'], 100 * results['F'],
               100 * results['J&F'], len(per_object), results['frames_per_second'])
  print(f'STCN semi-supervised VOS ({split}, first frame given): J {100 * results["J"]:.1f}  '
        f'F {100 * results["F"]:.1f}  J&F {100 * results["J&F"]:.1f}  over {len(per_object)} '
        f'objects')
  return results
