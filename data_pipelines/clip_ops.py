"""TensorFlow ops on one clip, used inside tf.data maps (and eagerly in tests).

Clip layout: frames (T, H, W, 3) float32 in [0, 1]; masks (T, H, W) float32 {0, 1}; object ids
(T, H, W) uint8. Randomness is stateless (`seed` = int32/int64 (2,) tensor) so a pipeline with a
fixed seed gives the same batches on every run.
"""

import functools

import numpy as np
import tensorflow as tf

_RATIOS = (1, 2, 4, 8)


def sample_frame_indices(num_frames: tf.Tensor, clip_len: int, stride: int, jitter: int,
                         seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Training frame choice. Returns (indices (k,) int32 sorted, k = min(num_frames, clip_len)).

  T = clip_len frames `stride` apart from a uniformly drawn start, each moved by a uniform offset
  in [-jitter, jitter], then clipped and sorted. A video shorter than (T-1)*stride+1 frames uses
  the largest stride that fits; one shorter than T gives all its frames (the caller pads).
  """
  n = tf.cast(num_frames, tf.int32)
  k = tf.minimum(n, clip_len)
  s_fit = tf.maximum((n - 1) // tf.maximum(clip_len - 1, 1), 1)
  s = tf.minimum(stride, s_fit)
  span = (k - 1) * s + 1
  seeds = tf.random.experimental.stateless_split(seed, 2)
  start = tf.random.stateless_uniform([], seeds[0], 0, n - span + 1, dtype=tf.int32)
  idx = start + tf.range(k, dtype=tf.int32) * s
  if jitter > 0:
    idx += tf.random.stateless_uniform([k], seeds[1], -jitter, jitter + 1, dtype=tf.int32)
    idx = tf.sort(tf.clip_by_value(idx, 0, n - 1))
  return idx, k


def eval_windows(num_frames: tf.Tensor, clip_len: int, stride: int) -> tf.Tensor:
  """windows.eval_windows inside a tf.data map (num_frames a scalar tensor); the same rows."""
  n = tf.cast(num_frames, tf.int32)
  fit = tf.maximum((n - 1) // max(clip_len - 1, 1), 1)
  s = tf.maximum(1, tf.minimum(stride, fit))
  rows = []
  for r in range(stride):  # residues r >= s give no frames
    idx = tf.range(tf.minimum(r, n), n, s)
    idx = idx[:tf.where(r < s, tf.shape(idx)[0], 0)]
    pad = -tf.shape(idx)[0] % clip_len
    rows.append(tf.reshape(tf.concat([idx, tf.fill([pad], -1)], 0), [-1, clip_len]))
  return tf.concat(rows, 0)


def jpeg_ratio(orig_h: tf.Tensor, orig_w: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Index into (1, 2, 4, 8) of the largest DCT down-scaling that stays >= the target size.

  Decoding at 1/r scale inside libjpeg skips most of the inverse DCT work; the bilinear resize
  that follows then shrinks by less than 2x, where no antialiasing is needed.
  """
  ok = [tf.logical_and(orig_h // r >= height, orig_w // r >= width) for r in _RATIOS]
  # `ok` is monotone in r, so the count of True entries locates the last one.
  return tf.maximum(tf.reduce_sum(tf.cast(tf.stack(ok), tf.int32)) - 1, 0)


def _resize_if_needed(img, height, width, method, dtype):
  """tf.image.resize, skipped (it is not free) when the image already has the size."""
  same = tf.reduce_all(tf.equal(tf.shape(img)[:2], [height, width]))
  return tf.cond(same, lambda: tf.ensure_shape(tf.cast(img, dtype), [height, width, None]),
                 lambda: tf.cast(tf.image.resize(img, (height, width), method=method,
                                                 antialias=False), dtype))


def decode_frames(jpegs: tf.Tensor, ratio_index: tf.Tensor, height: int, width: int
                  ) -> tf.Tensor:
  """(k,) JPEG strings -> (k, height, width, 3) float32 in [0, 1] (bilinear, half-pixel)."""

  def decode_one(data):
    branches = [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r,
                                              dct_method='INTEGER_FAST')[None]
                for r in _RATIOS]
    img = tf.switch_case(ratio_index, branches)[0]
    img = _resize_if_needed(img, height, width, 'bilinear', tf.float32)
    return img / 255.0

  frames = tf.map_fn(decode_one, jpegs,
                     fn_output_signature=tf.TensorSpec((height, width, 3), tf.float32))
  return tf.clip_by_value(frames, 0.0, 1.0)


def decode_masks(pngs: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """(k,) grayscale PNG strings of object ids -> (k, height, width) uint8 (nearest)."""

  def decode_one(data):
    ids = tf.io.decode_png(data, channels=1)
    return _resize_if_needed(ids, height, width, 'nearest', tf.uint8)[..., 0]

  return tf.map_fn(decode_one, pngs,
                   fn_output_signature=tf.TensorSpec((height, width), tf.uint8))


def resize_clip(frames: tf.Tensor, masks: tf.Tensor, height: int, width: int
                ) -> tuple[tf.Tensor, tf.Tensor]:
  """Already-decoded clip: frames bilinear, masks (ids or {0,1}) nearest."""
  frames = tf.image.resize(frames, (height, width), method='bilinear', antialias=False)
  masks = tf.image.resize(masks[..., None], (height, width), method='nearest')[..., 0]
  return frames, masks


def word_swap_table(pairs) -> tf.lookup.StaticHashTable:
  """word -> its mirror word ('left' <-> 'right', ...); other words map to ''."""
  keys = [a for a, b in pairs] + [b for a, b in pairs]
  values = [b for a, b in pairs] + [a for a, b in pairs]
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values)),
      default_value='')


def flip_words(words: tf.Tensor, swap: tf.lookup.StaticHashTable, flip: tf.Tensor) -> tf.Tensor:
  """Swaps mirror words of a (tokenised, lower-case) expression when `flip`. Done on words,
  not ids, so a mirror word missing from the vocabulary correctly becomes <unk>."""
  mirrored = swap.lookup(words)
  mirrored = tf.where(tf.equal(mirrored, ''), words, mirrored)
  return tf.where(flip, mirrored, words)


def flip_clip(frames: tf.Tensor, masks: tuple[tf.Tensor, ...], flip: tf.Tensor):
  """Mirrors frames (T,H,W,3) and every mask (T,H,W) left-right when `flip` (bool scalar).
  The expression must be flipped with it (`flip_words`) so it still names the same object."""
  # tf.cond, not tf.where: the mirror is only computed for the clips that are flipped.
  return tf.cond(flip,
                 lambda: (tf.reverse(frames, axis=[2]),
                          tuple(tf.reverse(m, axis=[2]) for m in masks)),
                 lambda: (tf.identity(frames), tuple(tf.identity(m) for m in masks)))


_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def photometric_jitter(frames: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast, saturation, hue, drawn once per clip (the video stays coherent).

  All four are linear in RGB, so they are folded into one 3x3 colour matrix and an offset
  (one pass over the pixels; an HSV round trip cost 4x the whole rest of the pipeline):
  hue = rotation of the chroma plane in YIQ, saturation = blend with the luma, contrast =
  scaling about the clip's mean colour, brightness = offset.
  """
  if strength <= 0:
    return frames
  s = tf.random.experimental.stateless_split(seed, 4)
  brightness = tf.random.stateless_uniform([], s[0], -0.2 * strength, 0.2 * strength)
  contrast = tf.random.stateless_uniform([], s[1], 1 - 0.4 * strength, 1 + 0.4 * strength)
  saturation = tf.random.stateless_uniform([], s[2], 1 - 0.4 * strength, 1 + 0.4 * strength)
  hue = tf.random.stateless_uniform([], s[3], -0.05 * strength, 0.05 * strength)
  return colour_transform(frames, brightness, contrast, saturation, hue)


def colour_transform(frames, brightness, contrast, saturation, hue) -> tf.Tensor:
  """(..., 3) in [0, 1] -> same; hue in turns, the rest as tf.image.adjust_* (contrast about
  the mean over all pixels given, saturation as a blend with the luma)."""
  # Row-vector convention: pixel' = pixel @ M.
  yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
  c, n = tf.cos(2 * np.pi * hue), tf.sin(2 * np.pi * hue)
  rot = tf.stack([tf.stack([1.0, 0.0, 0.0]), tf.stack([0.0, c, -n]), tf.stack([0.0, n, c])])
  m_hue = tf.transpose(tf.linalg.inv(yiq) @ rot @ yiq)
  luma = tf.constant(_LUMA, tf.float32)
  m_sat = saturation * tf.eye(3) + (1 - saturation) * luma[:, None] * tf.ones([1, 3])
  m = m_sat @ m_hue
  mean = tf.reduce_mean(tf.reshape(frames, [-1, 3]), axis=0)
  offset = (1 - contrast) * (mean[None] @ m)[0] + brightness
  out = tf.tensordot(frames, contrast * m, axes=[[-1], [0]]) + offset
  return tf.clip_by_value(out, 0.0, 1.0)


def boundary_target(masks: tf.Tensor, edge_width: int = 3) -> tf.Tensor:
  """CE2P boundary ground truth (ref. [42], `generate_edge`) of label maps (..., H, W).

  As CE2P: a pixel is marked where its label differs from the pixel below it (marked on the
  lower one), to its right (marked on the left one), and along both diagonals (marked on the
  upper one); the edge map is then dilated by an edge_width x edge_width square (cv2.dilate,
  nothing outside the image). Returns float32 {0, 1} of the input's shape.
  """
  m = tf.convert_to_tensor(masks)
  shape = tf.shape(m)
  x = tf.reshape(m, tf.concat([[-1], shape[-2:]], 0))  # (B, H, W)
  differ = lambda a, b, pads: tf.pad(tf.not_equal(a, b), [[0, 0], *pads])
  edge = tf.logical_or(
      tf.logical_or(differ(x[:, 1:, :], x[:, :-1, :], [[1, 0], [0, 0]]),
                    differ(x[:, :, :-1], x[:, :, 1:], [[0, 0], [0, 1]])),
      tf.logical_or(differ(x[:, :-1, :-1], x[:, 1:, 1:], [[0, 1], [0, 1]]),
                    differ(x[:, :-1, 1:], x[:, 1:, :-1], [[0, 1], [1, 0]])))
  if edge_width > 1:
    # OpenCV's anchor: edge_width // 2 pixels before, the rest after (differs from TF 'SAME'
    # for even widths); nothing outside the image. A square max is separable: rows, then
    # columns, each an OR of shifted slices (5x cheaper on CPU than max_pool2d on 1 channel,
    # which cost most of the training pipeline).
    before, after = edge_width // 2, edge_width - 1 - edge_width // 2
    h, w = tf.shape(edge)[1], tf.shape(edge)[2]
    rows = tf.pad(edge, [[0, 0], [before, after], [0, 0]])
    edge = functools.reduce(tf.logical_or, [rows[:, i:i + h] for i in range(edge_width)])
    cols = tf.pad(edge, [[0, 0], [0, 0], [before, after]])
    edge = functools.reduce(tf.logical_or, [cols[:, :, i:i + w] for i in range(edge_width)])
  return tf.reshape(tf.cast(edge, tf.float32), shape)


def object_velocity(ids: tf.Tensor, frame_valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Per-pixel velocity of the object under each pixel, from instance masks (ours, for the
  velocity loss; rvos_jax/losses.py).

  ids (T, H, W) uint8 object ids (0 = background), frame_valid (T,) bool. Each object's
  centroid c_t (pixels, (x, y)) in every frame; its velocity at frame t is
  (c_{t+1} - c_{t-1}) / 2 (c_{t+1} - c_t or c_t - c_{t-1} at the clip's ends), in pixels per
  clip frame. Returns (velocity (T, H, W, 2) float32, zero off objects; valid (T, H, W) float32:
  1 where the pixel is on an object that is present, in a valid frame, in every frame its
  velocity reads).
  """
  ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
  shape = tf.shape(ids)
  t, h, w = shape[0], shape[1], shape[2]
  n = 256 * t
  seg = ids + 256 * tf.range(t)[:, None, None]  # (frame, id) -> one segment
  xx = tf.broadcast_to(tf.cast(tf.range(w), tf.float32)[None, None, :], shape)
  yy = tf.broadcast_to(tf.cast(tf.range(h), tf.float32)[None, :, None], shape)
  count = tf.reshape(tf.math.unsorted_segment_sum(tf.ones_like(xx), seg, n), [t, 256])
  cx = tf.reshape(tf.math.unsorted_segment_sum(xx, seg, n), [t, 256])
  cy = tf.reshape(tf.math.unsorted_segment_sum(yy, seg, n), [t, 256])
  centre = tf.stack([cx, cy], -1) / tf.maximum(count, 1.0)[..., None]  # (T, 256, 2)
  present = (count > 0) & tf.reshape(tf.cast(frame_valid, tf.bool), [-1, 1])
  prev_i = tf.maximum(tf.range(t) - 1, 0)
  next_i = tf.minimum(tf.range(t) + 1, t - 1)
  steps = tf.cast(next_i - prev_i, tf.float32)  # 2 inside, 1 at the ends, 0 if T = 1
  velocity = (tf.gather(centre, next_i) - tf.gather(centre, prev_i)) / tf.maximum(
      steps, 1.0)[:, None, None]
  ok = present & tf.gather(present, next_i) & tf.gather(present, prev_i) & (steps > 0)[:, None]
  ok &= tf.range(256)[None, :] > 0
  frame_of = tf.broadcast_to(tf.range(t)[:, None, None], shape)
  index = tf.stack([frame_of, ids], -1)
  valid = tf.cast(tf.gather_nd(ok, index), tf.float32)
  return tf.gather_nd(velocity, index) * valid[..., None], valid
