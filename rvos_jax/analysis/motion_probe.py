"""Does a trained network see motion? Two measurements on refer_shapes' motion expressions.

A motion expression names one of two look-alike objects (same colour, shape and size) by the
way it moves. J and `rvos_jax.analysis.distractors` say whether the mask picks it; this says
where on the way from pixels to mask the direction of motion is lost:

  decodable   Is the direction (left, right, up, down, still; read from the masks' centroids)
              linearly decodable, frame by frame, from each embedding at the object's cells?
              Per frame, the embedding averaged over the object's res5 cells (weighted by
              coverage); ridge regression, one-vs-rest, trained on half the objects and
              scored on the other half (2 folds). P (the reduced res5 feature of one frame)
              cannot know the direction; the video-level embedding can.
  margin      Does each map score the target above its twin? Per expression, the mean logit
              over the target's cells minus the mean over its twin's: each level's
              text-to-pixel map (model.text_pixel_head) and the final mask E.

Clips are what training sees: T frames `config.data.frame_stride` apart from the first frame.

  python -m rvos_jax.analysis.motion_probe --config configs/refer_shapes.py --workdir W \\
      [--split train] [--config.model.X=...]   # the run's config, as for --mode eval
"""

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import ytvos_layout

DIRECTIONS = ('left', 'right', 'up', 'down', 'still')
# Embeddings read at the object's cells: Flax module name -> row label.
EMBEDDINGS = {'reduce': 'P (one frame, Eq. 1 input)', 'video_embedding': 'video level (Eq. 1-3)',
              'frame_embedding': 'frame level (Eq. 4)', 'object_encoder': 'object level (Eq. 5)'}
LEVELS = ('video', 'frame', 'object')


def direction_of(ids: np.ndarray, obj: int, still_px: float = 1.0) -> int:
  """Index into DIRECTIONS of the object's motion: its mask centroid's displacement from the
  first to the last frame it is in (image y grows downwards); 'still' under still_px pixels."""
  present = [t for t in range(len(ids)) if (ids[t] == obj).any()]
  if not present:
    raise ValueError(f'object {obj} is in no frame')
  centre = lambda t: np.argwhere(ids[t] == obj).mean(0)  # (y, x)
  dy, dx = centre(present[-1]) - centre(present[0])
  if max(abs(dx), abs(dy)) < still_px:
    return DIRECTIONS.index('still')
  if abs(dx) >= abs(dy):
    return DIRECTIONS.index('left' if dx < 0 else 'right')
  return DIRECTIONS.index('up' if dy < 0 else 'down')


def cell_coverage(mask: np.ndarray, h: int, w: int) -> np.ndarray:
  """(T, H, W) binary -> (T, h, w) share of each feature cell covered (H, W multiples of h, w)."""
  t, big_h, big_w = mask.shape
  if big_h % h or big_w % w:
    raise ValueError(f'masks of {big_h}x{big_w} do not tile the {h}x{w} feature grid')
  return mask.reshape(t, h, big_h // h, w, big_w // w).mean((2, 4))


def object_features(features: np.ndarray, coverage: np.ndarray) -> np.ndarray:
  """(T, h, w, d), (T, h, w) -> (k, d): the coverage-weighted mean feature of each of the k
  frames the object is in."""
  mass = coverage.sum((1, 2))
  keep = mass > 0
  return np.einsum('thw,thwd->td', coverage[keep], features[keep]) / mass[keep, None]


def decodability(samples: Sequence[np.ndarray], labels: Sequence[int], *, folds: int = 2,
                 ridge: float = 10.0, seed: int = 0, num_classes: int = len(DIRECTIONS)) -> dict:
  """Held-out accuracy of a ridge one-vs-rest classifier of `labels` from per-frame features.

  samples[i] (k_i, d): object i's features in each frame; every frame is a sample with the
  object's label, and the folds split objects (never frames of one object). chance: the
  accuracy of always answering the majority label of the training folds.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if n < folds:
    raise ValueError(f'{n} objects are too few for {folds} folds')
  order = np.random.default_rng(seed).permutation(n)
  correct = total = majority = 0
  for f in range(folds):
    test = order[f::folds]
    train = np.setdiff1d(order, test)
    x = np.concatenate([samples[i] for i in train])
    y = np.concatenate([np.full(len(samples[i]), labels[i]) for i in train])
    mean, std = x.mean(0), x.std(0) + 1e-6
    a = (x - mean) / std
    targets = np.eye(num_classes)[y]
    weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ targets)
    xt = np.concatenate([samples[i] for i in test])
    yt = np.concatenate([np.full(len(samples[i]), labels[i]) for i in test])
    correct += int((((xt - mean) / std @ weights).argmax(1) == yt).sum())
    majority += int((yt == np.bincount(y, minlength=num_classes).argmax()).sum())
    total += len(yt)
  return {'accuracy': correct / total, 'chance': majority / total, 'objects': n,
          'frames': total}


def margin(logits: np.ndarray, target: np.ndarray, twin: np.ndarray) -> float:
  """Mean logit over the target minus over its twin (weights: coverage or binary masks)."""
  mean = lambda m: float((logits * m).sum() / max(m.sum(), 1e-9))
  return mean(target) - mean(twin)


def clip_frames(names: Sequence[str], num_frames: int, stride: int) -> list[str]:
  """The frames training samples from the first one: T frames `stride` apart, the largest
  stride that fits for a short video, every frame of one shorter than T (pipelines'
  sample_frame_indices without jitter)."""
  names = sorted(names)
  fit = max((len(names) - 1) // max(num_frames - 1, 1), 1)
  return names[::max(1, min(stride, fit))][:num_frames]


def resize_nearest(ids: np.ndarray, height: int, width: int) -> np.ndarray:
  rows = ((np.arange(height) + 0.5) * ids.shape[1] / height).astype(int)
  cols = ((np.arange(width) + 0.5) * ids.shape[2] / width).astype(int)
  return ids[:, rows][:, :, cols]


def read_clip(root: str, split: str, video: str, names: Sequence[str]):
  from rvos_jax import predict  # noqa: PLC0415 -- keeps the measurements above JAX-free
  frames, ids = [], []
  for name in names:
    frames.append(predict.read_frame(os.path.join(root, split, 'JPEGImages', video,
                                                  name + '.jpg')))
    mpath = os.path.join(root, split, 'Annotations', video, name + '.png')
    with open(mpath, 'rb') as f:
      ids.append(ytvos_layout.decode_mask(f.read(), f'video {video!r} mask {mpath}'))
  return np.stack(frames), np.stack(ids)


class ProbeSetup(NamedTuple):
  """What both probes read: the split's expressions and kinds, the vocabulary, and a forward
  pass of the restored model."""
  meta_path: str
  meta: dict
  kinds: dict
  vocab: Any
  forward: Callable  # (frames, tokens, token_mask) -> (ModelOutputs, {embedding: array})


def setup_probe(config: ml_collections.ConfigDict, workdir: str, split: str,
                needs: str) -> ProbeSetup:
  """The split's meta_expressions and expression kinds (refer_shapes: an error naming the
  file and what the probe `needs` otherwise), the latest checkpoint, and a jitted forward
  pass that also returns the EMBEDDINGS' outputs."""
  from rvos_jax import inference  # noqa: PLC0415 -- JAX model code only when probing

  meta_path = ytvos_layout.meta_expressions_path(config.data.root, split)
  meta = ytvos_layout.read_meta_expressions(meta_path)
  kinds = ytvos_layout.read_expression_kinds(meta_path)
  if kinds is None:
    raise ValueError(f'{meta_path}: no {ytvos_layout.EXPRESSION_KINDS} beside it: the probe '
                     f'needs refer_shapes ({needs})')
  model, variables, vocab = inference.restore_for_inference(config, workdir)

  @jax.jit
  def forward(frames, tokens, token_mask):
    outputs, state = model.apply(variables, frames, tokens, token_mask, train=False,
                                 capture_intermediates=lambda m, _: m.name in EMBEDDINGS,
                                 mutable=['intermediates'])
    inter = state['intermediates']
    return outputs, {k: inter[k]['__call__'][0] for k in EMBEDDINGS if k in inter}

  return ProbeSetup(meta_path, meta, kinds, vocab, forward)


def probe_clip(data: ml_collections.ConfigDict, split: str, video: str, entry: dict,
               meta_path: str) -> tuple[np.ndarray, np.ndarray, int]:
  """The probed window of a video (clip_frames): the model input (1, T, H, W, 3) (a short
  video padded with blank frames, as in training), the object ids (n, H, W) and n."""
  from rvos_jax import predict  # noqa: PLC0415

  if not entry.get('frames'):
    raise ValueError(f'{meta_path}: video {video!r} lists no frames')
  T, H, W = data.num_frames, data.height, data.width
  names = clip_frames(entry['frames'], T, data.frame_stride)
  frames, ids = read_clip(data.root, split, video, names)
  n = len(names)
  clip = np.zeros((1, T, H, W, 3), np.float32)
  clip[0, :n] = predict.resize_frames(frames, H, W)
  return clip, resize_nearest(ids, H, W), n


def probe(config: ml_collections.ConfigDict, workdir: str, split: str = 'train',
          max_videos: int | None = None) -> dict:
  """Both measurements for the latest checkpoint in workdir (see the module docstring)."""
  from rvos_jax import predict  # noqa: PLC0415 -- JAX model code only when probing

  data = config.data
  ps = setup_probe(config, workdir, split, 'motion expressions and their look-alike twins')
  meta, kinds, vocab, forward = ps.meta, ps.kinds, ps.vocab, ps.forward
  levels = [lvl for lvl in LEVELS if config.model[f'use_{lvl}_level']]
  T = data.num_frames

  features = {k: [] for k in EMBEDDINGS}
  labels, margins = [], {}
  videos = [v for v in sorted(meta) if list(kinds.get(v, {}).values()).count('motion') == 2]
  for video in videos[:max_videos]:
    entry = meta[video]
    clip, ids, n = probe_clip(data, split, video, entry, ps.meta_path)
    motion = [e for e, kind in kinds[video].items() if kind == 'motion']
    obj = {e: int(entry['expressions'][e]['obj_id']) for e in motion}
    for e in motion:
      target, twin = obj[e], next(obj[x] for x in motion if x != e)
      tokens, token_mask = predict.encode_expression(entry['expressions'][e]['exp'], vocab,
                                                     data.max_words)
      outputs, inter = forward(clip, tokens[None], token_mask[None])
      if e == motion[0]:  # the embeddings do not depend on the words: once per video
        for o in obj.values():
          for k, f in inter.items():
            f = np.asarray(f)
            f = f.reshape(T, *f.shape[-3:])[:n]
            features[k].append(object_features(f, cell_coverage(ids == o, *f.shape[1:3])))
          labels.append(direction_of(ids, o))
      rows = {'final mask E': (np.asarray(outputs.mask_logits[0, :n]), ids == target,
                               ids == twin)}
      if outputs.text_pixel_logits is not None:
        tp = np.asarray(outputs.text_pixel_logits[0, :n])
        cover_target, cover_twin = (cell_coverage(ids == o, *tp.shape[1:3]) for o in (target, twin))
        for i, lvl in enumerate(levels):
          rows[f'{lvl} text-to-pixel'] = (tp[..., i], cover_target, cover_twin)
      for name, (logits, a, b) in rows.items():
        margins.setdefault(name, []).append(margin(logits, a, b))
  if len(labels) < 4:
    raise ValueError(f'{split}: {len(labels)} motion objects, too few to probe')
  return {
      'split': split, 'expressions': len(next(iter(margins.values()))),
      'decodable': {EMBEDDINGS[k]: decodability(v, labels) for k, v in features.items() if v},
      'margin': {k: {'mean': float(np.mean(v)), 'target_above_twin': float(np.mean(
          np.asarray(v) > 0))} for k, v in margins.items()},
  }


def format_table(result: dict) -> str:
  lines = [f"{result['split']}: {result['expressions']} motion expressions",
           'direction decodable from the embedding at the object (held-out accuracy, 2 folds)',
           f"{'embedding':32s} {'accuracy':>9s} {'chance':>7s}"]
  for name, r in result['decodable'].items():
    lines.append(f"{name:32s} {r['accuracy']:9.2f} {r['chance']:7.2f}")
  lines += ['target vs twin: mean logit difference, share of expressions with target > twin',
            f"{'map':32s} {'margin':>9s} {'share':>7s}"]
  for name, r in result['margin'].items():
    lines.append(f"{name:32s} {r['mean']:+9.3f} {r['target_above_twin']:7.2f}")
  return '\n'.join(lines)


def run_tool(name: str, probe_fn, format_fn, what: str) -> None:
  """The command line of a probe (this one, rvos_jax.analysis.appearance_probe): flags, the probe of
  the latest checkpoint, its table on stdout and `<workdir>/<name>_<split>.json`. Flags are
  defined here, not at import, so the probes can import each other."""
  config_flags.DEFINE_config_file('config', None, 'The run\'s configuration file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'The run\'s workdir (latest checkpoint, vocab.txt).')
  flags.DEFINE_enum('split', 'train', ['train', 'valid'], f'Which split\'s {what}.')
  flags.DEFINE_integer('max_videos', None, f'Probe only the first N videos with {what}.')
  flags.DEFINE_string('output_json', None, f'Default: <workdir>/{name}_<split>.json.')
  flags.mark_flags_as_required(['config', 'workdir'])
  args = flags.FLAGS

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    result = probe_fn(args.config, args.workdir, args.split, args.max_videos)
    print(format_fn(result))
    path = args.output_json or os.path.join(args.workdir, f'{name}_{args.split}.json')
    with open(path, 'w') as f:
      json.dump(result, f, indent=1)
    logging.info('wrote %s', path)

  app.run(main)


if __name__ == '__main__':
  run_tool('motion_probe', probe, format_table, 'motion expressions')
