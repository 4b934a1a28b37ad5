"""rvos_jax.analysis.motion_probe's measurements on inputs whose answer is known (the end-to-end
run on a trained checkpoint is in tests/test_main.py)."""

import numpy as np
import pytest

from rvos_jax.analysis import motion_probe


def _moving_square(dy, dx, frames=4, size=24):
  ids = np.zeros((frames, size, size), np.uint8)
  for t in range(frames):
    y, x = 8 + t * dy, 8 + t * dx
    ids[t, y:y + 4, x:x + 4] = 3
  return ids


@pytest.mark.parametrize('dy,dx,want', [(0, -2, 'left'), (0, 2, 'right'), (-2, 0, 'up'),
                                        (2, 0, 'down'), (0, 0, 'still'), (1, 2, 'right'),
                                        (-2, 1, 'up')])
def test_direction_from_the_centroids(dy, dx, want):
  assert motion_probe.DIRECTIONS[motion_probe.direction_of(_moving_square(dy, dx), 3)] == want


def test_direction_of_an_absent_object_is_an_error():
  with pytest.raises(ValueError, match='object 5'):
    motion_probe.direction_of(_moving_square(0, 1), 5)


def test_cell_coverage_and_object_features():
  mask = np.zeros((2, 8, 12), bool)
  mask[0, :4, :3] = True  # frame 0: cell (0, 0) full; frame 1: empty
  cov = motion_probe.cell_coverage(mask, 2, 4)
  assert cov.shape == (2, 2, 4) and cov[0, 0, 0] == 1 and cov.sum() == 1
  feats = np.random.default_rng(0).normal(size=(2, 2, 4, 5))
  got = motion_probe.object_features(feats, cov)
  np.testing.assert_allclose(got, feats[0, 0, 0][None])  # one row: frame 1 is left out
  with pytest.raises(ValueError, match='do not tile'):
    motion_probe.cell_coverage(mask, 3, 4)


def test_decodability_finds_a_planted_direction_and_not_noise():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 5, size=60)
  noise = [rng.normal(size=(4, 16)) for _ in labels]
  planted = [x + 3 * np.eye(16)[label][None] for x, label in zip(noise, labels, strict=True)]
  good = motion_probe.decodability(planted, labels)
  bad = motion_probe.decodability(noise, labels)
  assert good['accuracy'] > 0.9 and good['frames'] == 240 and good['objects'] == 60
  assert bad['accuracy'] < good['chance'] + 0.2, bad
  with pytest.raises(ValueError, match='too few'):
    motion_probe.decodability(noise[:1], labels[:1])


def test_margin_is_target_minus_twin():
  logits = np.array([[2.0, -1.0, 0.0]])
  assert motion_probe.margin(logits, np.array([[1, 0, 0]]), np.array([[0, 1, 0]])) == 3.0
  assert motion_probe.margin(logits, np.array([[0, 1, 0]]), np.array([[1, 0, 0]])) == -3.0


def test_clip_frames_follow_the_training_sampler():
  names = [f'{5 * i:05d}' for i in range(12)]
  assert motion_probe.clip_frames(names, 6, 2) == names[::2]
  assert motion_probe.clip_frames(names, 6, 3) == names[::2]  # the largest stride that fits
  assert motion_probe.clip_frames(names[:4], 6, 2) == names[:4]
