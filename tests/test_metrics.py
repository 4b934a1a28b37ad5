"""J, F (official DAVIS 2017 rules) and prec@X, pinned by hand-made cases."""

import itertools

import numpy as np
import pytest

from rvos_jax import metrics


def _box(h, w, y0, y1, x0, x1):
  """Mask with rows y0..y1 and columns x0..x1 (inclusive) set."""
  m = np.zeros((h, w), bool)
  m[y0:y1 + 1, x0:x1 + 1] = True
  return m


def _pixel(h, w, y, x):
  return _box(h, w, y, y, x, x)


# ------------------------------------------------------------------------------------------------
# J
# ------------------------------------------------------------------------------------------------


def test_j_special_cases():
  empty = np.zeros((5, 7), bool)
  obj = _box(5, 7, 1, 2, 1, 3)
  assert metrics.region_similarity(empty, empty) == 1.0  # DAVIS: both empty -> 1.
  assert metrics.region_similarity(empty, obj) == 0.0
  assert metrics.region_similarity(obj, empty) == 0.0
  assert metrics.region_similarity(obj, obj) == 1.0


def test_j_known_overlap():
  # 3x3 squares, the prediction 2 columns to the right: overlap 3, union 9 + 9 - 3 = 15.
  gt = _box(10, 10, 2, 4, 2, 4)
  pred = _box(10, 10, 2, 4, 4, 6)
  assert metrics.region_similarity(pred, gt) == pytest.approx(3 / 15)
  # Nonzero values of any dtype are foreground.
  assert metrics.region_similarity(pred.astype(np.uint8) * 255, gt.astype(np.float32)) == (
      pytest.approx(0.2))


def test_j_frames_vectorised_and_void():
  gt = np.stack([_box(10, 10, 2, 4, 2, 4), np.zeros((10, 10), bool), _box(10, 10, 0, 9, 0, 4)])
  pred = np.stack([_box(10, 10, 2, 4, 4, 6), np.zeros((10, 10), bool), _box(10, 10, 0, 9, 0, 9)])
  np.testing.assert_allclose(metrics.region_similarity_frames(pred, gt), [0.2, 1.0, 0.5])
  # Void pixels (official `void_pixels`) are left out of intersection and union.
  void = np.zeros_like(gt)
  void[2, :, 5:] = True  # the half the prediction got wrong in frame 2.
  np.testing.assert_allclose(metrics.region_similarity_frames(pred, gt, void), [0.2, 1.0, 1.0])
  with pytest.raises(ValueError, match='shape'):
    metrics.region_similarity(np.zeros((4, 4)), np.zeros((4, 5)))


# ------------------------------------------------------------------------------------------------
# Boundary map, radius, disk
# ------------------------------------------------------------------------------------------------


def test_seg2bmap_interior_square_is_ring_offset_towards_origin():
  # Square rows/cols 2..4: boundary = ring of the 4x4 box rows/cols 1..4 (12 pixels), the
  # official half-pixel offset towards the origin.
  b = metrics.seg2bmap(_box(10, 10, 2, 4, 2, 4))
  ring = _box(10, 10, 1, 4, 1, 4) & ~_box(10, 10, 2, 3, 2, 3)
  np.testing.assert_array_equal(b, ring)
  assert b.sum() == 12


def test_seg2bmap_single_pixels():
  # Interior pixel: itself (east differs) and its west, north, north-west neighbours.
  np.testing.assert_array_equal(metrics.seg2bmap(_pixel(6, 6, 3, 3)), _box(6, 6, 2, 3, 2, 3))
  # Top-left corner: no neighbours up/left, only the pixel itself.
  np.testing.assert_array_equal(metrics.seg2bmap(_pixel(6, 6, 0, 0)), _pixel(6, 6, 0, 0))
  # Bottom-right corner: the pixel itself is forced to 0; its W (last row: east rule), N (last
  # column: south rule) and NW (south-east rule) neighbours are boundary.
  expected = _box(6, 6, 4, 5, 4, 5)
  expected[5, 5] = False
  np.testing.assert_array_equal(metrics.seg2bmap(_pixel(6, 6, 5, 5)), expected)


@pytest.mark.parametrize('name, mask, expected', [
    # Left half (cols 0..2 of 4x6): the column 2 edge in every row, the last row included
    # (last row compares with its east neighbour only).
    ('left', _box(4, 6, 0, 3, 0, 2), _box(4, 6, 0, 3, 2, 2)),
    # Right half (cols 3..5): boundary is the background column 2; the edge on the right image
    # border gives nothing (last column compares with its south neighbour only).
    ('right', _box(4, 6, 0, 3, 3, 5), _box(4, 6, 0, 3, 2, 2)),
    # Top half (rows 0..1): row 1 in every column, the last column included (south differs).
    ('top', _box(4, 6, 0, 1, 0, 5), _box(4, 6, 1, 1, 0, 5)),
    # Bottom half (rows 2..3): the background row 1, nothing on the bottom border.
    ('bottom', _box(4, 6, 2, 3, 0, 5), _box(4, 6, 1, 1, 0, 5)),
    # Whole image: no boundary at all.
    ('full', np.ones((4, 6), bool), np.zeros((4, 6), bool)),
    ('empty', np.zeros((4, 6), bool), np.zeros((4, 6), bool)),
])
def test_seg2bmap_border_handling(name, mask, expected):
  np.testing.assert_array_equal(metrics.seg2bmap(mask), expected, err_msg=name)


@pytest.mark.parametrize('h, w, radius', [
    (480, 854, 8),    # ceil(0.008 * 979.65) = ceil(7.84)
    (240, 432, 4),    # ceil(0.008 * 494.19) = ceil(3.95)
    (720, 1280, 12),  # ceil(0.008 * 1468.6) = ceil(11.75)
    (64, 64, 1),      # ceil(0.008 * 90.5) = ceil(0.72)
    (10, 10, 1),
])
def test_boundary_radius(h, w, radius):
  assert metrics.boundary_radius(h, w) == radius


def test_boundary_radius_in_pixels_and_disk():
  assert metrics.boundary_radius(480, 854, bound_th=3) == 3  # >= 1: pixels, as official.
  with pytest.raises(ValueError, match='integer'):
    metrics.boundary_radius(480, 854, bound_th=2.5)
  np.testing.assert_array_equal(metrics.disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
  # skimage disk(2): x^2 + y^2 <= 4 -> 13 points, corners of the 5x5 excluded.
  d2 = metrics.disk(2)
  assert d2.shape == (5, 5) and d2.sum() == 13 and not d2[0, 1] and d2[0, 2]
  assert metrics.disk(8).sum() == 197  # Gauss circle count N(8).


# ------------------------------------------------------------------------------------------------
# F
# ------------------------------------------------------------------------------------------------


def test_f_special_cases():
  empty = np.zeros((20, 20), bool)
  obj = _box(20, 20, 5, 9, 5, 9)
  assert metrics.boundary_f_measure(empty, empty) == 1.0  # both boundaries empty.
  assert metrics.boundary_f_measure(empty, obj) == 0.0  # P=1, R=0.
  assert metrics.boundary_f_measure(obj, empty) == 0.0  # P=0, R=1.
  assert metrics.boundary_precision_recall(empty, obj) == (1.0, 0.0)
  assert metrics.boundary_precision_recall(obj, empty) == (0.0, 1.0)
  assert metrics.boundary_f_measure(obj, obj) == 1.0


def test_f_hand_counted_shifted_square():
  # 10x10 -> radius ceil(0.008 * 14.1) = 1: disk = the pixel and its 4-neighbours.
  # gt 3x3 square rows/cols 2..4 -> boundary ring of box [1..4]x[1..4] (12 px).
  # pred shifted right by 2 -> ring of box [1..4]x[3..6] (12 px).
  # Pred ring pixels within the plus-shaped disk of the gt ring: all but (1,6), (4,6), (2,6),
  # (3,6) -> precision 8/12. Symmetrically gt ring pixels (1,1), (4,1), (2,1), (3,1) are
  # unmatched -> recall 8/12. F = 2/3.
  gt = _box(10, 10, 2, 4, 2, 4)
  pred = _box(10, 10, 2, 4, 4, 6)
  p, r = metrics.boundary_precision_recall(pred, gt)
  assert (p, r) == (pytest.approx(8 / 12), pytest.approx(8 / 12))
  assert metrics.boundary_f_measure(pred, gt) == pytest.approx(2 / 3)
  # A shift of 1 = the radius: every boundary pixel has a partner within the disk.
  assert metrics.boundary_f_measure(_box(10, 10, 2, 4, 3, 5), gt) == 1.0


def test_f_one_pixel_objects():
  # 64x64 -> radius 1. A lone pixel at (y, x) has the 2x2 boundary block {y-1, y} x {x-1, x}.
  h = w = 64
  gt = _pixel(h, w, 30, 30)
  assert metrics.boundary_f_measure(_pixel(h, w, 30, 30), gt) == 1.0
  # Adjacent (east): blocks share a column, the others are 1 apart -> all matched.
  assert metrics.boundary_f_measure(_pixel(h, w, 30, 31), gt) == 1.0
  # Diagonal neighbour: each block has one pixel sqrt(2) > 1 away from the other block
  # (a square 3x3 kernel would match it; the disk does not) -> P = R = 3/4.
  assert metrics.boundary_f_measure(_pixel(h, w, 31, 31), gt) == pytest.approx(0.75)
  # Two columns apart: two of four pixels within 1 on each side -> P = R = F = 1/2.
  assert metrics.boundary_f_measure(_pixel(h, w, 30, 32), gt) == pytest.approx(0.5)
  # Far apart: P = R = 0 -> F = 0 (the P + R == 0 rule).
  assert metrics.boundary_precision_recall(_pixel(h, w, 5, 5), gt) == (0.0, 0.0)
  assert metrics.boundary_f_measure(_pixel(h, w, 5, 5), gt) == 0.0


def test_f_masks_touching_the_border():
  # A mask filling the image has no boundary: full vs full -> 1; full vs half -> P=1, R=0 -> 0.
  full = np.ones((16, 16), bool)
  right = _box(16, 16, 0, 15, 8, 15)
  assert metrics.boundary_f_measure(full, full) == 1.0
  assert metrics.boundary_f_measure(full, right) == 0.0
  # 16x16 -> radius 1. Right half (cols 8..15) vs cols 7..15: boundaries are the background
  # columns 6 and 7 (16 px each), one column apart -> F = 1. Cols 6..15 vs cols 8..15: two
  # columns apart -> no match -> F = 0.
  assert metrics.boundary_f_measure(_box(16, 16, 0, 15, 7, 15), right) == 1.0
  assert metrics.boundary_f_measure(_box(16, 16, 0, 15, 6, 15), right) == 0.0
  # Corner pixel at (0, 0) (boundary: itself) vs (0, 1) (boundary: (0, 0), (0, 1)):
  # P = 2/2, R = 1/1 -> F = 1.
  assert metrics.boundary_f_measure(_pixel(16, 16, 0, 1), _pixel(16, 16, 0, 0)) == 1.0


@pytest.mark.parametrize('h, w, radius', [(240, 432, 4), (480, 854, 8)])
def test_f_shifted_square_against_the_radius(h, w, radius):
  gt = _box(h, w, 60, 99, 100, 139)

  def shifted(dy, dx):
    return _box(h, w, 60 + dy, 99 + dy, 100 + dx, 139 + dx)

  assert metrics.boundary_f_measure(gt, gt) == 1.0
  assert metrics.boundary_f_measure(shifted(0, radius), gt) == 1.0
  assert metrics.boundary_f_measure(shifted(radius, 0), gt) == 1.0
  assert metrics.boundary_f_measure(shifted(0, radius + 1), gt) < 1.0
  assert metrics.boundary_f_measure(shifted(radius + 1, 0), gt) < 1.0
  # bound_th in pixels (>= 1) overrides the diagonal rule.
  assert metrics.boundary_f_measure(shifted(0, radius + 1), gt, bound_th=radius + 1) == 1.0


def _brute_force_f(pred, gt, radius):
  """Independent, slow F: boundary pixels by the rule's text, matches by explicit distances.

  Checks the vectorised seg2bmap, the cropped scipy dilation and the disk semantics at once.
  """
  def bmap(seg):
    h, w = seg.shape

    def at(yy, xx):  # outside the image counts as background.
      return seg[yy, xx] if yy < h and xx < w else False

    b = np.zeros_like(seg)
    for y, x in itertools.product(range(h), range(w)):
      if y == h - 1 and x == w - 1:
        b[y, x] = False
      elif y == h - 1:
        b[y, x] = seg[y, x] != at(y, x + 1)
      elif x == w - 1:
        b[y, x] = seg[y, x] != at(y + 1, x)
      else:
        b[y, x] = any(seg[y, x] != at(y + dy, x + dx) for dy, dx in ((0, 1), (1, 0), (1, 1)))
    return b

  bp, bg = np.argwhere(bmap(pred)), np.argwhere(bmap(gt))
  if len(bp) == 0 or len(bg) == 0:
    return 1.0 if len(bp) == len(bg) else 0.0
  d2 = ((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1)
  p = np.mean(d2.min(1) <= radius ** 2)
  r = np.mean(d2.min(0) <= radius ** 2)
  return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_f_matches_brute_force_on_random_masks():
  # Random rectangles, the prediction jittered by up to 3 px, borders touched at times.
  rng = np.random.default_rng(0)
  checked = 0
  for (h, w), bound_th in itertools.product([(9, 13), (24, 17), (40, 40)], (1, 2)):
    for _ in range(3):
      gt, pred = np.zeros((h, w), bool), np.zeros((h, w), bool)
      for _ in range(3):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = y0 + rng.integers(1, h // 2), x0 + rng.integers(1, w // 2)
        gt[y0:y1, x0:x1] = True
        dy, dx = rng.integers(-3, 4, size=2)
        pred[max(y0 + dy, 0):y1 + dy, max(x0 + dx, 0):x1 + dx] = True
      got = metrics.boundary_f_measure(pred, gt, bound_th=bound_th)
      want = _brute_force_f(pred, gt, bound_th)
      assert got == pytest.approx(want, abs=1e-12), (h, w, bound_th)
      checked += 0 < want < 1  # cases that can tell rules apart.
  assert checked >= 12


def test_f_frames_and_void():
  gt = np.stack([_box(10, 10, 2, 4, 2, 4)] * 2)
  pred = np.stack([_box(10, 10, 2, 4, 2, 4), _box(10, 10, 2, 4, 4, 6)])
  np.testing.assert_allclose(metrics.boundary_f_measure_frames(pred, gt), [1.0, 2 / 3])
  # Official: masks are multiplied by not(void) before the boundary maps; voiding everything
  # leaves two empty boundaries -> 1.
  np.testing.assert_allclose(
      metrics.boundary_f_measure_frames(pred, gt, void=np.ones_like(gt)), [1.0, 1.0])


# ------------------------------------------------------------------------------------------------
# prec@ and aggregation
# ------------------------------------------------------------------------------------------------


def test_prec_at_is_strictly_above():
  j = [0.5, 0.55, 0.6, 0.75, 0.95, 0.2, 0.9, 0.8]
  # > 0.5: 6 of 8 (0.5 itself does not count); > 0.6: 4; > 0.7: 4; > 0.8: 2; > 0.9: 1.
  assert metrics.prec_at(j) == {
      'prec@0.5': 0.75, 'prec@0.6': 0.5, 'prec@0.7': 0.5, 'prec@0.8': 0.25, 'prec@0.9': 0.125}
  assert metrics.prec_at([0.3], thresholds=(0.25,)) == {'prec@0.25': 1.0}


def test_summarize_and_aggregate():
  s = metrics.summarize([1.0, 0.5], [0.5, 0.0])
  assert (s['J'], s['F'], s['J&F'], s['num_expressions']) == (0.75, 0.25, 0.5, 2)
  assert s['prec@0.5'] == 0.5 and s['prec@0.9'] == 0.5
  e = metrics.expression_scores([1.0, 0.2], [1.0, 2 / 3])
  assert e['J'] == pytest.approx(0.6) and e['F'] == pytest.approx(5 / 6)
  assert e['J&F'] == pytest.approx((0.6 + 5 / 6) / 2) and e['num_frames'] == 2
  a = metrics.aggregate({'x': e, 'y': metrics.expression_scores([0.0], [1.0])})
  assert a['J'] == pytest.approx(0.3) and a['F'] == pytest.approx(11 / 12)
  assert np.isnan(metrics.summarize([], [])['J'])
