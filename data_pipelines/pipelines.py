"""tf.data input pipelines: training clips and evaluation / prediction windows.

Both read the TFDS records of `builders.prepare(config)`, each JAX process (host) only its own
disjoint share of the videos (`tfds.split_for_jax_process`), and yield numpy batch dicts with the
keys of notes/conventions.md:

  frames (B,T,H,W,3) float32 [0,1]   tokens (B,N) int32        token_mask (B,N) bool
  masks (B,T,H,W) float32 (target)   object_masks (B,T,H,W) (union of all objects, Eq. 7)
  boundary (B,T,H,W) (CE2P target of masks, Eq. 14)            frame_valid (B,T) bool
  frame_index (B,T) int32 (frame number in the video, -1 on padding)
  video (B,) bytes, exp_id (B,) bytes, obj_id (B,) int32

The target of an expression is its object's mask (Refer-YouTube-VOS layout), or for MeViS-layout
records the union of its objects' masks, empty for an expression with no target
(mevis_layout; obj_id there: the one object, -1 for several, 0 for none).

Evaluation adds frame_name (B,T) bytes,
orig_size (B,2) int32 (masks are written back at that size) and example_valid (B,) bool
(False for the filler examples that complete the last batch).

Training is deterministic for a given config.seed: every random draw is stateless, seeded by
(seed, position in the stream), and all parallel stages keep their order.
"""

import os
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from data_pipelines import builders, clip_ops, layouts, ytvos_layout
from data_pipelines.vocabulary import (
  Vocabulary,
  encode_tf,
  encode_words_tf,
  tokenize_many,
  tokenize_tf,
)

AUTOTUNE = tf.data.AUTOTUNE


def _process_shard(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # noqa: PLC0415 -- only where the caller did not say which host this is
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  return process_index, process_count


def read_records(builder, split: str, *, process_index=None, process_count=None,
                 shuffle_files=False, seed=0) -> tf.data.Dataset:
  """This host's disjoint share of the split's video records."""
  index, count = _process_shard(process_index, process_count)
  sub = tfds.split_for_jax_process(split, process_index=index, process_count=count)
  read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False,
                                interleave_cycle_length=4)
  return builder.as_dataset(split=sub, shuffle_files=shuffle_files, read_config=read_config)


def build_vocabulary(builder, split: str = 'train') -> Vocabulary:
  """From the training expressions, read from the records' metadata (no frame decoded)."""
  exps = builders.expressions_of(builder, split)
  return Vocabulary.build(e for v in sorted(exps) for _, e in sorted(exps[v].items()))


def _excluded_expressions(config, builder, split) -> list[str]:
  """Applies config.long_expressions; returns 'video/exp_id' keys to drop."""
  exps = builders.expressions_of(builder, split)
  keys = [(v, e) for v in sorted(exps) for e in sorted(exps[v])]
  lengths = [len(ws) for ws in tokenize_many([exps[v][e] for v, e in keys])]
  long = [(v, e, n) for (v, e), n in zip(keys, lengths, strict=True) if n > config.max_words]
  if not long:
    return []
  shown = ', '.join(f'video {v!r} expression {e!r} ({n} words)' for v, e, n in long[:3])
  if config.long_expressions == 'truncate':
    logging.info('%s/%s: %d of %d expressions are longer than max_words=%d and are truncated '
                 '(e.g. %s)', builder.name, split, len(long), len(keys), config.max_words, shown)
    return []
  if config.long_expressions != 'error':
    raise ValueError(f"config.data.long_expressions={config.long_expressions!r}; expected "
                     f"'truncate' or 'error'")
  if not config.skip_bad_samples:
    raise ValueError(f'{builder.name}/{split}: {len(long)} expressions are longer than '
                     f'max_words={config.max_words}: {shown}')
  logging.warning('%s/%s: skipping %d of %d expressions longer than max_words=%d (e.g. %s)',
                  builder.name, split, len(long), len(keys), config.max_words, shown)
  return [f'{v}/{e}' for v, e, _ in long]


def _split_kinds(config, split: str, option: str, asked) -> dict[str, dict[str, str]]:
  """{video: {exp_id: kind}} of the split (expression_kinds.json, refer_shapes), for
  config.<option>, which names the kinds `asked`: an error naming the folder when the split has
  no kinds file, or naming a kind no expression has."""
  meta = layouts.meta_expressions_path(config.root, split, layouts.layout_of(config.name))
  kinds = ytvos_layout.read_expression_kinds(meta)
  if kinds is None:
    raise ValueError(f'config.data.{option}={asked} needs the expression kinds of {split}, and '
                     f'{os.path.dirname(meta)} has no {ytvos_layout.EXPRESSION_KINDS} (only '
                     f'refer_shapes writes one)')
  known = sorted({kind for v in kinds.values() for kind in v.values()})
  for kind in asked:
    if kind not in known:
      raise ValueError(f'config.data.{option}: no {split} expression is of kind {kind!r} '
                       f'(kinds: {known})')
  return kinds


def _expression_repeats(config, builder, split: str) -> dict[str, int]:
  """'video/exp_id' -> how often the expression enters one pass over the split, for those not
  entered exactly once: 0 for over-long ones dropped (config.long_expressions), and
  config.kind_repeats[kind] for the kinds of expression_kinds.json (refer_shapes)."""
  repeats = dict.fromkeys(_excluded_expressions(config, builder, split), 0)
  kind_repeats = dict(config.get('kind_repeats') or {})
  for kind, n in kind_repeats.items():
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
      raise ValueError(f'config.data.kind_repeats[{kind!r}] must be an integer >= 0, got {n!r}')
  kind_repeats = {kind: n for kind, n in kind_repeats.items() if n != 1}
  if not kind_repeats:  # every kind once: the plain stream (no kinds file needed)
    return repeats
  kinds = _split_kinds(config, split, 'kind_repeats', kind_repeats)
  exps = builders.expressions_of(builder, split)
  counts = dict.fromkeys(kind_repeats, 0)
  for v in sorted(exps):
    for e in sorted(exps[v]):
      kind = kinds.get(v, {}).get(e)
      if kind in kind_repeats and repeats.get(f'{v}/{e}', 1):
        repeats[f'{v}/{e}'] = kind_repeats[kind]
        counts[kind] += 1
  logging.info('%s/%s: kind_repeats %s', builder.name, split, ', '.join(
      f'{kind} x{n} ({counts[kind]} expressions)' for kind, n in kind_repeats.items()))
  return repeats


def _motion_table(config, split: str) -> tf.lookup.StaticHashTable | None:
  """'video/exp_id' -> 1.0 where the expression's kind (expression_kinds.json) is one of
  config.motion_kinds, else 0.0; None without motion_kinds."""
  motion_kinds = tuple(config.get('motion_kinds') or ())
  if not motion_kinds:
    return None
  kinds = _split_kinds(config, split, 'motion_kinds', motion_kinds)
  pairs = sorted((v, e) for v in kinds for e in kinds[v])
  return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
      tf.constant([f'{v}/{e}' for v, e in pairs]),
      tf.constant([float(kinds[v][e] in motion_kinds) for v, e in pairs], tf.float32)),
      default_value=0.0)


def _repeat_table(repeats: dict[str, int]) -> tf.lookup.StaticHashTable | None:
  """'video/exp_id' -> repeats (default 1), or None when every expression enters once."""
  if not repeats:
    return None
  keys = sorted(repeats)
  return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
      tf.constant(keys), tf.constant([repeats[x] for x in keys], tf.int64)), default_value=1)


# Per-expression fields of a record; 'members' only in MeViS-layout records (builders).
_PER_EXPRESSION = ('exp_id', 'exp', 'obj_id', 'members')


def _expand_expressions(record, repeats: tf.lookup.StaticHashTable | None):
  """Video record -> one element per (video, expression), each `repeats` times (default 1;
  0 drops it)."""
  e = record['expressions']
  per_exp = {key: e[key] for key in _PER_EXPRESSION if key in e}
  shared = {k: record[k] for k in ('video', 'frames', 'masks', 'frame_names', 'height',
                                   'width')}
  ds = tf.data.Dataset.from_tensor_slices(per_exp)
  ds = ds.map(lambda x: {**shared, **x})
  if repeats is not None:
    ds = ds.flat_map(lambda x: tf.data.Dataset.from_tensors(x).repeat(
        repeats.lookup(tf.strings.join([x['video'], x['exp_id']], '/'))))
  return ds


def expression_similarity(exps: tf.Tensor) -> tf.Tensor:
  """(n,) expressions -> (n, n) Jaccard similarity of their sets of words (lower-cased).

  "the green square moving to the left" and "the green square moving up": 4 / 7 (the, green,
  square, moving of 7 distinct words); the first and "the red triangle": 1 / 8."""
  words = tf.strings.split(tf.strings.lower(exps)).to_tensor('')  # (n, L), '' pads
  real = words != ''
  # Distinct words: a word counts once, at its first occurrence in its sentence.
  same = tf.equal(words[:, :, None], words[:, None, :])  # (n, L, L)
  earlier = tf.linalg.band_part(tf.ones_like(same[0], tf.int32), -1, 0) - tf.eye(
      tf.shape(words)[1], dtype=tf.int32)  # [a, b] = 1 where b < a
  first = real & ~tf.reduce_any(same & tf.cast(tf.transpose(earlier), tf.bool)[None], -1)
  count = tf.reduce_sum(tf.cast(first, tf.float32), -1)  # (n,)
  # [i, j]: distinct words of i that occur in j.
  shared = tf.reduce_any(tf.equal(words[:, None, :, None], words[None, :, None, :]), -1)
  common = tf.reduce_sum(tf.cast(shared & first[:, None, :], tf.float32), -1)  # (n, n)
  union = count[:, None] + count[None, :] - common
  return tf.math.divide_no_nan(common, union)


def _expression_group(record, index, repeats, k: int, config):
  """Video record -> k (video, expression) elements sharing one window of frames: k distinct
  expressions (with repeats only when the video has fewer than k). config.expression_pairing
  'random' draws them at random; 'similar' draws the first at random and adds the k - 1 whose
  words are most like its words (expression_similarity; ties at random): in refer_shapes a
  motion expression then comes with its look-alike twin's, the same frames and words but for
  the motion, two targets."""
  record = _select_training_frames(record, index, config)
  e = record['expressions']
  keep = tf.ones_like(e['exp_id'], tf.bool)
  if repeats is not None:  # only 0 (dropped) or 1 here: make_train_dataset refuses more
    keys = tf.strings.join([tf.fill(tf.shape(e['exp_id']), record['video']), e['exp_id']], '/')
    keep = repeats.lookup(keys) > 0
  kept = tf.boolean_mask(tf.range(tf.shape(keep)[0]), keep)  # indices of kept expressions
  n = tf.shape(kept)[0]
  order = tf.argsort(tf.random.stateless_uniform(
      [n], tf.stack([tf.cast(config.seed, tf.int64) + 104729, index])))
  # With nothing kept, gather expression 0 (every video has one) and drop the group below:
  # gathering from an empty tensor is an error even when nothing is taken.
  pairing = config.get('expression_pairing', 'random')
  if pairing not in ('random', 'similar'):
    raise ValueError(f"config.data.expression_pairing must be 'random' or 'similar', got "
                     f'{pairing!r}')

  def random_pick():
    return tf.gather(kept, tf.gather(order, tf.range(k) % tf.maximum(n, 1)))

  def similar_pick():
    first = order[0]
    sim = tf.gather(tf.gather(expression_similarity(tf.gather(e['exp'], kept)), first), order)
    # order is a random permutation: a stable sort of it by similarity breaks ties at random.
    sim = tf.tensor_scatter_nd_update(sim, [[0]], [-1.0])  # the first is not its own partner
    rest = tf.gather(order, tf.argsort(-sim, stable=True))[:k - 1]
    return tf.gather(kept, tf.concat([first[None], rest], 0))

  if pairing == 'similar' and k > 1:
    pick = tf.cond(n >= k, similar_pick, lambda: tf.cond(n > 0, random_pick,
                                                          lambda: tf.zeros([k], tf.int32)))
  else:
    pick = tf.cond(n > 0, random_pick, lambda: tf.zeros([k], tf.int32))
  shared = {key: record[key] for key in ('video', 'frames', 'masks', 'frame_names', 'height',
                                         'width', 'frame_index')}
  ds = tf.data.Dataset.from_tensor_slices(
      {key: tf.gather(e[key], pick) for key in _PER_EXPRESSION if key in e})
  ds = ds.map(lambda x: {**shared, **x})
  # A video whose expressions were all excluded yields nothing.
  return ds.take(tf.cast(tf.minimum(n, 1), tf.int64) * k)


def _select_training_frames(ex, index, config):
  """Keeps only the T sampled frames' bytes (so the shuffle buffer holds clips, not videos).
  `ex` is a (video, expression) element or a whole video record."""
  seed = tf.stack([tf.cast(config.seed, tf.int64), index])
  num = tf.shape(ex['frames'])[0]
  idx, _ = clip_ops.sample_frame_indices(num, config.num_frames, config.frame_stride,
                                         config.frame_jitter, seed)
  out = dict(ex)
  out['frames'] = tf.gather(ex['frames'], idx)
  out['frame_names'] = tf.gather(ex['frame_names'], idx)
  out['frame_index'] = idx
  has_masks = tf.shape(ex['masks'])[0] > 0
  out['masks'] = tf.cond(has_masks, lambda: tf.gather(ex['masks'], idx),
                         lambda: tf.zeros([0], tf.string))
  return out


def _decode_window(ex, config):
  """One window of frames decoded, resized and padded to T: frames (T,H,W,3) float32, object
  ids (T,H,W) uint8 (0: background; all zero where the split has no masks), frame_valid (T,)."""
  T, H, W = config.num_frames, config.height, config.width
  n = tf.shape(ex['frames'])[0]
  ratio = clip_ops.jpeg_ratio(ex['height'], ex['width'], H, W)
  frames = clip_ops.decode_frames(ex['frames'], ratio, H, W)
  has_masks = tf.shape(ex['masks'])[0] > 0
  ids = tf.cond(has_masks, lambda: clip_ops.decode_masks(ex['masks'], H, W),
                lambda: tf.zeros([n, H, W], tf.uint8))
  frames = tf.pad(frames, [[0, T - n], [0, 0], [0, 0], [0, 0]])
  ids = tf.pad(ids, [[0, T - n], [0, 0], [0, 0]])
  return frames, ids, tf.range(T) < n


def _target_masks(ids, obj_id, members=None):
  """Object ids (T,H,W) -> the target mask and the union of all objects (T,H,W, Eq. 7), both
  float32. The target: with `members` (MeViS-layout records, whose ids are label maps;
  (256,) bool, or (k, 256) for k targets), the pixels whose label is a member: the union of
  the expression's objects, empty for an expression with no target. Without: the mask of
  obj_id (a scalar, or (k,) for k masks: (k,T,H,W)), empty where obj_id <= 0."""
  objects = tf.cast(ids > 0, tf.float32)
  if members is not None:
    return tf.gather(tf.cast(members, tf.float32), tf.cast(ids, tf.int32),
                     axis=members.shape.rank - 1), objects
  obj_id = obj_id[..., None, None, None]
  target = tf.cast(tf.equal(ids, tf.cast(obj_id, tf.uint8)), tf.float32)
  target *= tf.cast(obj_id > 0, tf.float32)
  return target, objects


def _finish(ex, frames, target, objects, frame_valid, tokens, token_mask, config):
  boundary = clip_ops.boundary_target(target, config.boundary_width)
  T, H, W, N = config.num_frames, config.height, config.width, config.max_words
  return {
      'frames': tf.ensure_shape(frames, [T, H, W, 3]),
      'tokens': tf.ensure_shape(tokens, [N]),
      'token_mask': tf.ensure_shape(token_mask, [N]),
      'masks': tf.ensure_shape(target, [T, H, W]),
      'object_masks': tf.ensure_shape(objects, [T, H, W]),
      'boundary': tf.ensure_shape(boundary, [T, H, W]),
      'frame_valid': tf.ensure_shape(frame_valid, [T]),
      # Index of each frame in the video (-1 on padding), for bookkeeping and writing back.
      'frame_index': tf.pad(ex['frame_index'], [[0, T - tf.shape(ex['frame_index'])[0]]],
                            constant_values=-1),
      'video': ex['video'],
      'exp_id': ex['exp_id'],
      'obj_id': ex['obj_id'],
  }


def _check_config(config):
  for f in ('num_frames', 'height', 'width', 'max_words', 'batch_size'):
    if int(config[f]) <= 0:
      raise ValueError(f'config.data.{f} must be positive, got {config[f]}')
  k = int(config.get('expressions_per_clip', 1))
  if k < 1 or config.batch_size % k:
    raise ValueError(f'config.data.expressions_per_clip={k} must be >= 1 and divide '
                     f'config.data.batch_size={config.batch_size}')


def make_train_dataset(config: ml_collections.ConfigDict, builder, vocab: Vocabulary, *,
                       process_index: int | None = None, process_count: int | None = None,
                       split: str | None = None, augment: bool = True,
                       repeat: bool = True, start_batch: int = 0) -> tf.data.Dataset:
  """Infinite (repeat=True) stream of augmented training batches for this host.

  The stream is a function of config.seed alone; `start_batch` (the number of batches this
  host already consumed, i.e. the resumed step) makes it continue exactly where an
  uninterrupted run would be. Skipping happens before any frame is decoded."""
  _check_config(config)
  split = split or config.train_split
  repeats = _expression_repeats(config, builder, split)
  k = int(config.get('expressions_per_clip', 1))
  if k > 1 and any(n > 1 for n in repeats.values()):
    raise ValueError(f'config.data.kind_repeats needs expressions_per_clip=1, got {k}')
  repeat_table = _repeat_table(repeats)
  motion_table = _motion_table(config, split)
  table = vocab.lookup_table()
  swap = clip_ops.word_swap_table(config.flip_word_pairs)

  ds = read_records(builder, split, process_index=process_index, process_count=process_count,
                    shuffle_files=True, seed=config.seed)
  if repeat:
    ds = ds.repeat()
  # Whole videos are large: shuffle them in a small buffer, cut each expression's clip down to
  # its T frames, then shuffle those clips in the big buffer.
  ds = ds.shuffle(max(1, config.shuffle_buffer // 8), seed=config.seed)
  if k == 1:
    ds = ds.flat_map(lambda r: _expand_expressions(r, repeat_table))
    ds = ds.enumerate().map(lambda i, ex: _select_training_frames(ex, i, config),
                            num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.shuffle(config.shuffle_buffer, seed=config.seed + 1).batch(1)
  else:
    ds = ds.enumerate().flat_map(lambda i, r: _expression_group(r, i, repeat_table, k, config))
    ds = ds.batch(k).shuffle(max(1, config.shuffle_buffer // k), seed=config.seed + 1)
  # From here on one element is one window and its k expressions (shuffled as a unit).

  def process(index, group):
    # The window is decoded and augmented once for its k expressions (they see the same
    # frames, so the model runs its text-independent part once per clip; train.model_inputs).
    seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.cast(config.seed, tf.int64) + 7919, index]), 3)
    frames, ids, frame_valid = _decode_window(
        {key: group[key][0] for key in ('frames', 'masks', 'height', 'width')}, config)
    words = [tokenize_tf(group['exp'][j]) for j in range(k)]
    if augment:
      frames = clip_ops.photometric_jitter(frames, config.photometric_strength, seeds[0])
      frames = tf.cond(  # padding frames stay blank
          tf.reduce_all(frame_valid), lambda: frames,
          lambda: frames * tf.cast(frame_valid, tf.float32)[:, None, None, None])
      flip = tf.random.stateless_uniform([], seeds[1]) < config.flip_prob
      frames, (ids,) = clip_ops.flip_clip(frames, (ids,), flip)
      words = [clip_ops.flip_words(w, swap, flip) for w in words]
    targets, objects = _target_masks(ids, group['obj_id'], group.get('members'))
    extra = {}
    if config.get('object_velocity', False):  # after the flip: the velocity flips with it
      extra['object_velocity'], extra['velocity_valid'] = clip_ops.object_velocity(
          ids, frame_valid)
    rows = []
    for j in range(k):
      tokens, token_mask, _ = encode_words_tf(words[j], table, config.max_words)
      row = {**_finish({key: v[j] for key, v in group.items()}, frames, targets[j],
                       objects, frame_valid, tokens, token_mask, config), **extra}
      if motion_table is not None:
        row['names_motion'] = motion_table.lookup(
            tf.strings.join([group['video'][j], group['exp_id'][j]], '/'))
      rows.append(row)
    return {key: tf.stack([row[key] for row in rows]) for key in rows[0]}

  ds = ds.enumerate()  # the index seeds each window's augmentation: enumerate before skipping
  if start_batch:
    ds = ds.skip(start_batch * config.batch_size // k)
  ds = ds.map(process, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch()
  ds = ds.batch(config.batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  # Parallelism comes from running clips concurrently; ops that also split themselves over the
  # same few cores only add switching.
  options.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(options)
  return ds.prefetch(config.get('prefetch', 2))


def make_eval_dataset(config: ml_collections.ConfigDict, builder, vocab: Vocabulary, *,
                      split: str | None = None, process_index: int | None = None,
                      process_count: int | None = None) -> tf.data.Dataset:
  """Every frame of every (video, expression) of this host's videos, once, in windows of T
  frames (config.eval_frame_stride apart, clip_ops.eval_windows; a short last window padded,
  frame_valid False), no augmentation, in a fixed order. The last
  batch is completed with filler examples (example_valid False) so shapes never change.

  Expressions longer than max_words follow config.long_expressions as in training: 'truncate'
  keeps the first max_words words; 'error' raises naming the video and exp_id, or with
  skip_bad_samples leaves them out (a warning with the count), so they get no prediction."""
  _check_config(config)
  split = split or config.eval_split
  T, B = config.num_frames, config.eval_batch_size
  table = vocab.lookup_table()
  excluded = _repeat_table(dict.fromkeys(_excluded_expressions(config, builder, split), 0))
  ds = read_records(builder, split, process_index=process_index, process_count=process_count)
  ds = ds.flat_map(lambda r: _expand_expressions(r, excluded))

  stride = int(config.get('eval_frame_stride', 1))
  if stride < 1:
    raise ValueError(f'config.data.eval_frame_stride must be >= 1, got {stride}')

  def windows(ex):
    rows = clip_ops.eval_windows(tf.shape(ex['frames'])[0], T, stride)
    return tf.data.Dataset.from_tensor_slices(rows).map(lambda r: {**ex, 'window': r})

  def cut(ex):
    idx = tf.boolean_mask(ex['window'], ex['window'] >= 0)
    out = dict(ex)
    out['frames'] = tf.gather(ex['frames'], idx)
    out['frame_names'] = tf.gather(ex['frame_names'], idx)
    out['masks'] = tf.cond(tf.shape(ex['masks'])[0] > 0, lambda: tf.gather(ex['masks'], idx),
                           lambda: tf.zeros([0], tf.string))
    out['frame_index'] = idx
    return out

  def process(ex):
    frames, ids, frame_valid = _decode_window(ex, config)
    target, objects = _target_masks(ids, ex['obj_id'], ex.get('members'))
    tokens, token_mask, _ = encode_tf(ex['exp'], table, config.max_words)
    out = _finish(ex, frames, target, objects, frame_valid, tokens, token_mask, config)
    k = tf.shape(ex['frame_index'])[0]
    out['frame_name'] = tf.pad(ex['frame_names'], [[0, T - k]])
    out['orig_size'] = tf.stack([ex['height'], ex['width']])
    out['example_valid'] = tf.constant(True)
    return out

  ds = ds.flat_map(windows).map(cut).map(process, num_parallel_calls=AUTOTUNE,
                                         deterministic=True)
  filler = ds.take(1).map(lambda x: {**x, 'example_valid': tf.constant(False)}).repeat(B - 1)
  ds = ds.concatenate(filler).batch(B, drop_remainder=True)
  return ds.prefetch(config.get('prefetch', 2))


def as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches (what the training loop hands to jax.device_put)."""
  return ds.as_numpy_iterator()
