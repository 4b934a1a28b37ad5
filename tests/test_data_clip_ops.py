"""Clip ops (flip, resize, boundary, frame sampling), eagerly and inside tf.data."""

import importlib.util

import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import clip_ops, windows


def ce2p_generate_edge(label, edge_width=3):
  """CE2P's `generate_edge` (numpy + a cv2.dilate equivalent), the reference."""
  h, w = label.shape
  edge = np.zeros(label.shape, np.float32)
  edge[1:h, :][label[1:h, :] != label[:h - 1, :]] = 1
  edge[:, :w - 1][label[:, :w - 1] != label[:, 1:w]] = 1
  edge[:h - 1, :w - 1][label[:h - 1, :w - 1] != label[1:h, 1:w]] = 1
  edge[:h - 1, 1:w][label[:h - 1, 1:w] != label[1:h, :w - 1]] = 1
  r = edge_width // 2
  padded = np.pad(edge, r)
  out = np.zeros_like(edge)
  for dy in range(edge_width):
    for dx in range(edge_width):
      out = np.maximum(out, padded[dy:dy + h, dx:dx + w])
  return out


def _random_masks(rng, shape):
  """Blobby {0,1} masks (random noise would be edge everywhere)."""
  small = (rng.random((*shape[:-2], shape[-2] // 4 + 1, shape[-1] // 4 + 1)) > 0.6)
  big = np.repeat(np.repeat(small, 4, axis=-2), 4, axis=-1)[..., :shape[-2], :shape[-1]]
  return big.astype(np.float32)


def test_boundary_matches_ce2p_eager():
  rng = np.random.default_rng(0)
  masks = _random_masks(rng, (2, 3, 17, 23))
  got = clip_ops.boundary_target(tf.constant(masks)).numpy()
  ref = np.stack([[ce2p_generate_edge(m) for m in clip] for clip in masks])
  np.testing.assert_array_equal(got, ref)
  assert got.shape == masks.shape and set(np.unique(got)) <= {0.0, 1.0}
  assert got.sum() > 0
  ones = clip_ops.boundary_target(tf.ones((5, 6))).numpy()
  assert ones.sum() == 0  # no edge where the label never changes, not even at the border


def test_boundary_inside_tf_data():
  rng = np.random.default_rng(1)
  masks = _random_masks(rng, (4, 16, 16))
  ds = tf.data.Dataset.from_tensor_slices(masks).map(clip_ops.boundary_target)
  for m, got in zip(masks, ds.as_numpy_iterator(), strict=True):
    np.testing.assert_array_equal(got, ce2p_generate_edge(m))


@pytest.mark.skipif(importlib.util.find_spec('rvos_jax.losses') is None,
                    reason='rvos_jax/losses.py (boundary_target) not written yet')
def test_boundary_matches_jax_losses():
  from rvos_jax import losses
  rng = np.random.default_rng(2)
  masks = _random_masks(rng, (2, 3, 24, 40))
  for width in (1, 3, 4, 5):
    got = clip_ops.boundary_target(tf.constant(masks), width).numpy()
    ref = np.asarray(losses.boundary_target(masks, edge_width=width))
    np.testing.assert_array_equal(got, ref, err_msg=f'edge_width={width}')


def _flip_case():
  rng = np.random.default_rng(3)
  frames = rng.random((2, 5, 7, 3)).astype(np.float32)
  masks = _random_masks(rng, (2, 5, 7))
  words = tf.constant(['the', 'dog', 'on', 'the', 'left', 'of', 'the', 'rightmost', 'car'])
  swap = clip_ops.word_swap_table([('left', 'right'), ('leftmost', 'rightmost')])
  flipped = [b'the', b'dog', b'on', b'the', b'right', b'of', b'the', b'leftmost', b'car']
  return frames, masks, words, swap, flipped


def test_flip_eager():
  frames, masks, words, swap, flipped = _flip_case()
  f, (m,) = clip_ops.flip_clip(frames, (masks,), tf.constant(True))
  np.testing.assert_array_equal(f.numpy(), frames[:, :, ::-1])
  np.testing.assert_array_equal(m.numpy(), masks[:, :, ::-1])
  assert clip_ops.flip_words(words, swap, tf.constant(True)).numpy().tolist() == flipped
  f, (m,) = clip_ops.flip_clip(frames, (masks,), tf.constant(False))
  np.testing.assert_array_equal(f.numpy(), frames)
  np.testing.assert_array_equal(clip_ops.flip_words(words, swap, tf.constant(False)), words)


def test_flip_inside_tf_data():
  frames, masks, words, swap, flipped = _flip_case()
  ds = tf.data.Dataset.from_tensors((frames, masks, words)).map(
      lambda f, m, w: (*clip_ops.flip_clip(f, (m,), tf.constant(True)),
                       clip_ops.flip_words(w, swap, tf.constant(True))))
  f, (m,), w = next(ds.as_numpy_iterator())
  np.testing.assert_array_equal(f, frames[:, :, ::-1])
  np.testing.assert_array_equal(m, masks[:, :, ::-1])
  assert w.tolist() == flipped


def test_resize_nearest_keeps_labels_eager_and_in_tf_data():
  rng = np.random.default_rng(4)
  frames = rng.random((2, 8, 12, 3)).astype(np.float32)
  ids = rng.integers(0, 4, (2, 8, 12)).astype(np.uint8)
  f, m = clip_ops.resize_clip(frames, ids, 16, 24)
  assert f.shape == (2, 16, 24, 3) and m.dtype == tf.uint8
  np.testing.assert_array_equal(m.numpy(), np.repeat(np.repeat(ids, 2, 1), 2, 2))
  f1, m1 = clip_ops.resize_clip(frames, ids, 8, 12)  # same size: identity
  np.testing.assert_allclose(f1.numpy(), frames, atol=1e-6)
  ds = tf.data.Dataset.from_tensors((frames, ids)).map(
      lambda a, b: clip_ops.resize_clip(a, b, 16, 24))
  _, m2 = next(ds.as_numpy_iterator())
  np.testing.assert_array_equal(m2, m.numpy())


def test_decode_frames_reduced_scale_jpeg():
  img = np.zeros((64, 96, 3), np.uint8)
  img[:, 48:] = 200
  data = tf.io.encode_jpeg(img, quality=95)
  ratio = clip_ops.jpeg_ratio(tf.constant(64), tf.constant(96), 16, 24)
  assert int(ratio) == 2  # 1/4 DCT scale gives exactly 16x24
  got = clip_ops.decode_frames(tf.stack([data]), ratio, 16, 24).numpy()
  assert got.shape == (1, 16, 24, 3)
  assert abs(got[0, :, :10].mean()) < 0.02 and abs(got[0, :, 14:].mean() - 200 / 255) < 0.02
  assert int(clip_ops.jpeg_ratio(tf.constant(10), tf.constant(10), 16, 24)) == 0


@pytest.mark.parametrize('n,stride,jitter', [(20, 2, 0), (20, 3, 1), (6, 4, 0), (3, 1, 0)])
def test_sample_frame_indices(n, stride, jitter):
  for s in range(5):
    idx, k = clip_ops.sample_frame_indices(tf.constant(n), 4, stride, jitter,
                                           tf.constant([0, s], tf.int64))
    idx = idx.numpy()
    assert int(k) == min(n, 4) == len(idx)
    assert (np.diff(idx) >= 0).all() and idx.min() >= 0 and idx.max() < n
    if jitter == 0 and n >= 4:
      assert len(set(np.diff(idx).tolist())) == 1  # evenly spaced
  a = clip_ops.sample_frame_indices(tf.constant(n), 4, stride, jitter, tf.constant([1, 2]))[0]
  b = clip_ops.sample_frame_indices(tf.constant(n), 4, stride, jitter, tf.constant([1, 2]))[0]
  np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_eval_windows_by_hand():
  np.testing.assert_array_equal(windows.eval_windows(12, 6, 2),
                                [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]])
  np.testing.assert_array_equal(windows.eval_windows(13, 6, 2), [
      [0, 2, 4, 6, 8, 10], [12, -1, -1, -1, -1, -1], [1, 3, 5, 7, 9, 11]])
  np.testing.assert_array_equal(windows.eval_windows(8, 3, 1),
                                [[0, 1, 2], [3, 4, 5], [6, 7, -1]])
  # At most T frames (or too few for the stride): consecutive, as training's sampling does.
  np.testing.assert_array_equal(windows.eval_windows(6, 6, 2), [[0, 1, 2, 3, 4, 5]])
  np.testing.assert_array_equal(windows.eval_windows(7, 6, 3), [[0, 1, 2, 3, 4, 5],
                                                               [6, -1, -1, -1, -1, -1]])


@pytest.mark.parametrize('stride', [1, 2, 3])
def test_eval_windows_every_frame_once_eager_and_in_tf_data(stride):
  cases = [(n, t) for n in (1, 2, 5, 6, 7, 12, 13, 25) for t in (1, 4, 6)]
  for n, t in cases:
    want = windows.eval_windows(n, t, stride)
    valid = want[want >= 0]
    np.testing.assert_array_equal(np.sort(valid), np.arange(n), err_msg=f'{n} {t} {stride}')
    s = windows.eval_stride(n, t, stride)
    for row in want:  # each window: frames s apart, padding only at its end
      k = int((row >= 0).sum())
      assert (row[:k] >= 0).all() and (np.diff(row[:k]) == s).all(), (n, t, stride, row)
    np.testing.assert_array_equal(clip_ops.eval_windows(tf.constant(n), t, stride), want)
  ds = tf.data.Dataset.from_tensor_slices([n for n, _ in cases if _ == 4]).map(
      lambda n: clip_ops.eval_windows(n, 4, stride))
  for n, got in zip([n for n, t in cases if t == 4], ds.as_numpy_iterator(), strict=True):
    np.testing.assert_array_equal(got, windows.eval_windows(n, 4, stride))


def test_photometric_jitter_range_and_determinism():
  rng = np.random.default_rng(5)
  frames = tf.constant(rng.random((3, 6, 6, 3)).astype(np.float32))
  a = clip_ops.photometric_jitter(frames, 1.0, tf.constant([0, 1]))
  b = clip_ops.photometric_jitter(frames, 1.0, tf.constant([0, 1]))
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 1.0
  assert not np.allclose(a.numpy(), frames.numpy())
  np.testing.assert_array_equal(clip_ops.photometric_jitter(frames, 0.0, tf.constant([0, 1])),
                                frames)


def test_colour_transform_components():
  rng = np.random.default_rng(6)
  x = tf.constant(rng.uniform(0.2, 0.8, (2, 4, 5, 3)).astype(np.float32))
  same = clip_ops.colour_transform(x, 0.0, 1.0, 1.0, 0.0)
  np.testing.assert_allclose(same.numpy(), x.numpy(), atol=1e-5)
  np.testing.assert_allclose(clip_ops.colour_transform(x, 0.1, 1.0, 1.0, 0.0).numpy(),
                             x.numpy() + 0.1, atol=1e-5)
  gray = clip_ops.colour_transform(x, 0.0, 1.0, 0.0, 0.0).numpy()
  np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-5)
  np.testing.assert_allclose(gray[..., 0], x.numpy() @ np.array([0.299, 0.587, 0.114]),
                             atol=1e-4)
  flat = clip_ops.colour_transform(x, 0.0, 0.0, 1.0, 0.0).numpy()
  np.testing.assert_allclose(flat, np.broadcast_to(x.numpy().reshape(-1, 3).mean(0), x.shape),
                             atol=1e-5)
  full_turn = clip_ops.colour_transform(x, 0.0, 1.0, 1.0, 1.0).numpy()  # hue is periodic
  np.testing.assert_allclose(full_turn, x.numpy(), atol=1e-4)
  rotated = clip_ops.colour_transform(x, 0.0, 1.0, 1.0, 0.05).numpy()
  luma = np.array([0.299, 0.587, 0.114])
  np.testing.assert_allclose(rotated @ luma, x.numpy() @ luma, atol=1e-4)  # hue keeps luma
  assert not np.allclose(rotated, x.numpy(), atol=1e-3)


def _moving_objects(t=5, h=12, w=16):
  """Object 1: a 2x3 block moving right 2 px a frame; object 3: a still 2x2 block, absent in
  the last frame; frame 2 invalid (padding) in the second case."""
  ids = np.zeros((t, h, w), np.uint8)
  for i in range(t):
    ids[i, 1:3, 1 + 2 * i:4 + 2 * i] = 1
    if i < t - 1:
      ids[i, 8:10, 12:14] = 3
  return ids


def _velocity_by_hand(ids, valid):
  """Centroids per (frame, id) with numpy; the rule of clip_ops.object_velocity."""
  t = ids.shape[0]
  vel = np.zeros((*ids.shape, 2), np.float32)
  ok = np.zeros(ids.shape, np.float32)
  for obj in np.unique(ids[ids > 0]):
    c = [np.argwhere(ids[i] == obj)[:, ::-1].mean(0) if valid[i] and (ids[i] == obj).any()
         else None for i in range(t)]
    for i in range(t):
      p, n = max(i - 1, 0), min(i + 1, t - 1)
      if c[i] is None or c[p] is None or c[n] is None or n == p:
        continue
      on = ids[i] == obj
      vel[i][on] = (c[n] - c[p]) / (n - p)
      ok[i][on] = 1
  return vel, ok


@pytest.mark.parametrize('valid', [(1, 1, 1, 1, 1), (1, 1, 0, 1, 1)])
def test_object_velocity_eager_and_in_tf_data(valid):
  ids, valid = _moving_objects(), np.asarray(valid, bool)
  want_v, want_ok = _velocity_by_hand(ids, valid)
  vel, ok = clip_ops.object_velocity(tf.constant(ids), tf.constant(valid))
  np.testing.assert_allclose(vel.numpy(), want_v, atol=1e-5)
  np.testing.assert_array_equal(ok.numpy(), want_ok)
  if valid.all():  # the numbers themselves: 2 px/frame to the right; the still block at 0,
    assert np.allclose(vel.numpy()[:, 1, :][ids[:, 1, :] == 1], [2.0, 0.0])  # valid until
    np.testing.assert_array_equal(ok.numpy()[:, 8, 12], [1, 1, 1, 0, 0])  # it disappears
  ds = tf.data.Dataset.from_tensors((ids, valid)).map(clip_ops.object_velocity)
  (v2, ok2), = list(ds.as_numpy_iterator())
  np.testing.assert_allclose(v2, want_v, atol=1e-5)
  np.testing.assert_array_equal(ok2, want_ok)
  # Flipping the clip (as the training pipeline does before computing it) negates x only.
  vf, okf = clip_ops.object_velocity(tf.constant(ids[:, :, ::-1].copy()), tf.constant(valid))
  np.testing.assert_allclose(vf.numpy()[..., 0], -want_v[:, :, ::-1, 0], atol=1e-5)
  np.testing.assert_array_equal(okf.numpy(), want_ok[:, :, ::-1])
  one, ok1 = clip_ops.object_velocity(tf.constant(ids[:1]), tf.constant(valid[:1]))
  assert not one.numpy().any() and not ok1.numpy().any()  # one frame: no velocity
