"""Tests of rvos_jax/losses.py: parity with the PyTorch reference, CE2P boundary targets on
hand-made masks, padded frames, the object-level switch, the Eq. 14 erratum pairing, L_conf."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rvos_jax import losses
from rvos_jax.models.outputs import ModelOutputs
from tests.torch_reference import losses as ref

B, T, H, W = 2, 3, 31, 45  # odd H, W on purpose
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-3


# ---------------------------------------------------------------------------------------------
# Data.


def _blobs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """Binary masks made of 1-3 random ellipses per frame, never all zeros or all ones."""
  h, w = shape[-2:]
  yy, xx = np.mgrid[:h, :w]
  out = np.zeros(shape, np.float32)
  for idx in np.ndindex(*shape[:-2]):
    while True:
      m = np.zeros((h, w), bool)
      for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(2, h / 3), rng.uniform(2, w / 3)
        m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
      if 0 < m.sum() < h * w:
        break
    out[idx] = m
  return out


def _make_case(seed: int, empty_frame: bool = False):
  """Random logits (normal, scale 3) and blob targets; frame (1, T-1) is padding.

  With empty_frame, the target of valid frame (0, 1) is empty: it exercises the all-negative
  boundary frame, the empty-target Dice and an IoU with an empty target.
  """
  rng = np.random.default_rng(seed)
  shape = (B, T, H, W)
  masks = _blobs(rng, shape)
  if empty_frame:
    masks[0, 1] = 0
  object_masks = np.maximum(masks, _blobs(rng, shape))
  arrays = {
      "mask_logits": 3 * rng.standard_normal(shape).astype(np.float32),
      "boundary_logits": 3 * rng.standard_normal(shape).astype(np.float32),
      "object_logits": 3 * rng.standard_normal(shape).astype(np.float32),
      "confidence": 3 * rng.standard_normal((B, T)).astype(np.float32),
  }
  frame_valid = np.ones((B, T), bool)
  frame_valid[1, T - 1] = False
  boundary = np.asarray(losses.boundary_target(masks))
  batch = {"masks": masks, "object_masks": object_masks, "boundary": boundary,
           "frame_valid": frame_valid}
  return arrays, batch


def _jax_outputs(arrays, object_level=True) -> ModelOutputs:
  return ModelOutputs(
      mask_logits=jnp.asarray(arrays["mask_logits"]),
      boundary_logits=jnp.asarray(arrays["boundary_logits"]),
      object_logits=jnp.asarray(arrays["object_logits"]) if object_level else None,
      confidence=jnp.asarray(arrays["confidence"]),
  )


def _jax_batch(batch):
  return {k: jnp.asarray(v) for k, v in batch.items()}


def _torch(x, grad=False):
  return torch.tensor(np.asarray(x), requires_grad=grad)


def _rel(a, b) -> float:
  a, b = float(a), float(b)
  return abs(a - b) / max(abs(b), 1e-30)


# ---------------------------------------------------------------------------------------------
# Parity with the torch reference.


@pytest.mark.parametrize("edge_width", [1, 2, 3, 5])
def test_boundary_target_parity(edge_width):
  masks = _blobs(np.random.default_rng(edge_width), (B, T, H, W))
  got = np.asarray(losses.boundary_target(jnp.asarray(masks), edge_width))
  want = ref.boundary_target(torch.tensor(masks), edge_width).numpy()
  assert got.dtype == np.float32 and got.shape == masks.shape
  assert set(np.unique(got)) <= {0.0, 1.0}
  n_diff = int((got != want).sum())
  assert n_diff == 0, f"boundary_target(edge_width={edge_width}): {n_diff} pixels differ"
  assert 0 < got.mean() < 1


@pytest.mark.parametrize("empty_frame", [False, True])
def test_loss_parity(empty_frame):
  arrays, batch = _make_case(seed=1 if empty_frame else 0, empty_frame=empty_frame)
  # The torch boundary target must agree with the JAX one the batch was built with.
  np.testing.assert_array_equal(ref.boundary_target(torch.tensor(batch["masks"])).numpy(),
                                batch["boundary"])
  jb = _jax_batch(batch)
  tb = {k: torch.tensor(v) for k, v in batch.items()}
  w_j = jb["frame_valid"].astype(jnp.float32)
  w_t = tb["frame_valid"].float()
  e_j, bd_j, ob_j = (jnp.asarray(arrays[k]) for k in
                     ("mask_logits", "boundary_logits", "object_logits"))
  e_t, bd_t, ob_t = (_torch(arrays[k]) for k in
                     ("mask_logits", "boundary_logits", "object_logits"))
  c_j, c_t = jnp.asarray(arrays["confidence"]), _torch(arrays["confidence"])

  pairs = {
      "dice": (losses.dice_loss(e_j, jb["masks"], w_j), ref.dice_loss(e_t, tb["masks"], w_t)),
      "focal": (losses.sigmoid_focal_loss(e_j, jb["masks"], w_j),
                ref.sigmoid_focal_loss(e_t, tb["masks"], w_t)),
      "mask(object)": (losses.mask_loss(ob_j, jb["object_masks"], w_j),
                       ref.mask_loss(ob_t, tb["object_masks"], w_t)),
      "boundary": (losses.boundary_loss(bd_j, jb["boundary"], w_j),
                   ref.boundary_loss(bd_t, tb["boundary"], w_t)),
      "confidence": (losses.confidence_loss(c_j, e_j, jb["masks"], w_j),
                     ref.confidence_loss(c_t, e_t, tb["masks"], w_t)),
      "iou": (losses.mask_iou(e_j, jb["masks"]), ref.mask_iou(e_t, tb["masks"])),
  }
  for name, (got, want) in pairs.items():
    got, want = np.asarray(got), want.detach().numpy()
    err = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)))
    assert err <= LOSS_RTOL, f"{name}: jax {got} torch {want}, relative error {err:.2e}"

  # Total (Eq. 16) and its gradients wrt every logits tensor.
  def jax_total(outputs):
    return losses.total_loss(outputs, jb)

  (total_j, parts_j), grads_j = jax.value_and_grad(jax_total, has_aux=True)(
      _jax_outputs(arrays))
  leaves = {k: _torch(arrays[k], grad=True) for k in arrays}
  total_t, parts_t = ref.total_loss(leaves["mask_logits"], leaves["boundary_logits"],
                                    leaves["object_logits"], leaves["confidence"], tb)
  total_t.backward()
  assert set(parts_j) == set(parts_t)
  for name in parts_t:
    err = _rel(parts_j[name], parts_t[name].item())
    assert err <= LOSS_RTOL, (
        f"parts[{name!r}]: jax {float(parts_j[name])} torch {parts_t[name].item()}, "
        f"relative error {err:.2e}")
  assert _rel(total_j, total_t.item()) <= LOSS_RTOL
  for name, leaf in leaves.items():
    g_t = leaf.grad.numpy()
    g_j = np.asarray(getattr(grads_j, name))
    err = np.linalg.norm(g_j - g_t) / np.linalg.norm(g_t)
    assert np.linalg.norm(g_t) > 0, name
    assert err <= GRAD_RTOL, f"grad wrt {name}: ||g_jax - g_torch|| / ||g_torch|| = {err:.2e}"


# ---------------------------------------------------------------------------------------------
# Boundary targets on hand-made masks (CE2P convention, see losses.boundary_target).


def _picture(rows: str) -> np.ndarray:
  return np.array([[c == "X" for c in r] for r in rows.split()], np.float32)


def _square(size: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
  m = np.zeros((size, size), np.float32)
  m[r0:r1 + 1, c0:c1 + 1] = 1
  return m


# A 5x5 square (rows/cols 3..7) in an 11x11 frame. Undilated CE2P edges: the 1-pixel inner ring
# plus the outer ring, minus outer pixels near the bottom corners (only the "top" and "right"
# comparisons mark the outer pixel of a straight side; the diagonals mark both sides).
SQUARE_EDGE_1 = _picture("""
...........
...........
..XXXXXXX..
..XXXXXXX..
..XX...XX..
..XX...XX..
..XX...XX..
..XXXXXX...
...XXXXX...
...........
...........
""")
# The same after the 3x3 dilation: 2 pixels on each side of the boundary.
SQUARE_EDGE_3 = _picture("""
...........
.XXXXXXXXX.
.XXXXXXXXX.
.XXXXXXXXX.
.XXXXXXXXX.
.XXXX.XXXX.
.XXXXXXXXX.
.XXXXXXXXX.
.XXXXXXXX..
..XXXXXXX..
...........
""")


@pytest.mark.parametrize("edge_width,want", [(1, SQUARE_EDGE_1), (3, SQUARE_EDGE_3)])
def test_boundary_target_square(edge_width, want):
  got = np.asarray(losses.boundary_target(_square(11, 3, 7, 3, 7), edge_width))
  np.testing.assert_array_equal(got, want)


def test_boundary_target_square_larger_ring():
  """A 9x9 square in 15x15: a ring 2 px outside + 2 px inside, 5x5 interior hole untouched."""
  got = np.asarray(losses.boundary_target(_square(15, 3, 11, 3, 11)))
  assert got[5:10, 5:10].sum() == 0  # more than 2 px inside the boundary: no edge
  assert got[3:5, 3:12].all() and got[10:12, 3:12].all()  # 2 inner rows at top and bottom
  assert got[3:12, 3:5].all() and got[3:12, 10:12].all()  # 2 inner columns left and right
  assert got[1:3, 1:14].all() and got[3:12, 1:3].all() and got[3:12, 12:14].all()  # 2 outer
  assert got[12, 2:13].all() and got[13, 3:12].all()  # bottom outer rows, CE2P corners
  assert got[0].sum() == 0 and got[14].sum() == 0 and got[:, 0].sum() == 0
  assert got[:, 14].sum() == 0


def test_boundary_target_empty_and_full():
  masks = np.stack([np.zeros((9, 13), np.float32), np.ones((9, 13), np.float32)])
  got = np.asarray(losses.boundary_target(masks))
  assert got.sum() == 0


def test_boundary_target_touching_the_border():
  """A 4x4 square in the top-left corner of an 8x8 frame: the image border is not an edge."""
  want_1 = _picture("""
  ...XX...
  ...XX...
  ...XX...
  XXXX....
  XXXX....
  ........
  ........
  ........
  """)
  want_3 = _picture("""
  ..XXXX..
  ..XXXX..
  XXXXXX..
  XXXXXX..
  XXXXX...
  XXXXX...
  ........
  ........
  """)
  mask = _square(8, 0, 3, 0, 3)
  np.testing.assert_array_equal(np.asarray(losses.boundary_target(mask, 1)), want_1)
  np.testing.assert_array_equal(np.asarray(losses.boundary_target(mask, 3)), want_3)
  assert losses.boundary_target(mask)[0, 0] == 0  # a zero-padded version would mark it


@pytest.mark.parametrize("edge_width", [1, 2, 3, 4, 5, 7])
def test_boundary_target_dilation_width(edge_width):
  """A straight boundary gives a band of edge_width + 1 rows (CE2P marks both sides)."""
  h, w, top = 20, 9, 10  # mask = rows 0..9
  mask = np.zeros((h, w), np.float32)
  mask[:top] = 1
  got = np.asarray(losses.boundary_target(mask, edge_width))
  before, after = edge_width // 2, edge_width - 1 - edge_width // 2
  want = np.zeros((h, w), np.float32)
  want[top - 1 - after:top + 1 + before] = 1
  np.testing.assert_array_equal(got, want)
  assert got.sum() == (edge_width + 1) * w
  if edge_width >= 3:  # vertical boundary: same width (for width 1 the bottom pixel is open)
    got_v = np.asarray(losses.boundary_target(mask.T.copy(), edge_width))
    np.testing.assert_array_equal(got_v, want.T)


def test_boundary_target_soft_masks_binarised_and_batched():
  mask = _square(11, 3, 7, 3, 7)
  soft = 0.2 + 0.6 * mask  # 0.2 / 0.8: same labels after thresholding at 0.5
  batched = np.stack([np.stack([soft, mask])] * 2)  # (2, 2, 11, 11)
  got = np.asarray(losses.boundary_target(batched))
  for idx in np.ndindex(2, 2):
    np.testing.assert_array_equal(got[idx], SQUARE_EDGE_3)
  jitted = jax.jit(losses.boundary_target, static_argnums=1)(jnp.asarray(batched), 3)
  np.testing.assert_array_equal(np.asarray(jitted), got)


# ---------------------------------------------------------------------------------------------
# Padded frames.


def _total(arrays, batch, object_level=True):
  return losses.total_loss(_jax_outputs(arrays, object_level), _jax_batch(batch))


def test_padded_frame_changes_nothing_and_gets_zero_gradient():
  arrays, batch = _make_case(seed=2)
  loss0, parts0 = _total(arrays, batch)
  arrays2 = {k: v.copy() for k, v in arrays.items()}
  batch2 = {k: v.copy() for k, v in batch.items()}
  rng = np.random.default_rng(3)
  for k in ("mask_logits", "boundary_logits", "object_logits"):
    arrays2[k][1, T - 1] = 10 * rng.standard_normal((H, W))
  arrays2["confidence"][1, T - 1] = 50.0
  for k in ("masks", "object_masks", "boundary"):
    batch2[k][1, T - 1] = 1 - batch2[k][1, T - 1]
  loss1, parts1 = _total(arrays2, batch2)
  for name in parts0:
    assert float(parts1[name]) == float(parts0[name]), name

  grads = jax.grad(lambda o: losses.total_loss(o, _jax_batch(batch))[0])(_jax_outputs(arrays))
  for name in ("mask_logits", "boundary_logits", "object_logits", "confidence"):
    g = np.asarray(getattr(grads, name))
    assert np.all(g[1, T - 1] == 0), f"{name}: padded frame gets gradient {np.abs(g[1, -1]).max()}"
    assert np.abs(g[0]).sum() > 0, name


def test_all_frames_padded_gives_zero():
  arrays, batch = _make_case(seed=4)
  batch["frame_valid"][:] = False
  (loss, parts), grads = jax.value_and_grad(
      lambda o: losses.total_loss(o, _jax_batch(batch)), has_aux=True)(_jax_outputs(arrays))
  assert float(loss) == 0.0
  for name, v in parts.items():
    assert np.isfinite(float(v)) and float(v) == 0.0, name
  for g in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(g)) and np.all(g == 0)


# ---------------------------------------------------------------------------------------------
# Object-level switch and the Eq. 14 erratum pairing.


def test_object_level_off():
  arrays, batch = _make_case(seed=5)
  loss_on, parts_on = _total(arrays, batch, object_level=True)
  del batch["object_masks"]  # not needed when the object level is off
  loss_off, parts_off = _total(arrays, batch, object_level=False)
  assert float(parts_on["object"]) > 0
  assert float(parts_off["object"]) == 0.0
  np.testing.assert_allclose(float(loss_on) - float(loss_off), float(parts_on["object"]),
                             rtol=1e-5)
  for name in ("mask", "dice", "focal", "boundary", "confidence"):
    assert float(parts_on[name]) == float(parts_off[name]), name


def test_erratum_pairing_via_gradients():
  """Boundary term depends only on B (boundary_logits), the mask term only on E (mask_logits)."""
  arrays, batch = _make_case(seed=6)
  jb = _jax_batch(batch)
  outputs = _jax_outputs(arrays)

  def part(name):
    return lambda o: losses.total_loss(o, jb)[1][name]

  g_bdry = jax.grad(part("boundary"))(outputs)
  g_mask = jax.grad(part("mask"))(outputs)
  assert np.abs(np.asarray(g_bdry.boundary_logits)).sum() > 0
  assert np.all(np.asarray(g_bdry.mask_logits) == 0)
  assert np.abs(np.asarray(g_mask.mask_logits)).sum() > 0
  assert np.all(np.asarray(g_mask.boundary_logits) == 0)
  # And the boundary term uses the CE2P boundary target, the mask term the masks.
  w = jb["frame_valid"].astype(jnp.float32)
  np.testing.assert_allclose(
      float(part("boundary")(outputs)),
      float(losses.boundary_loss(outputs.boundary_logits, jb["boundary"], w)), rtol=1e-6)
  np.testing.assert_allclose(
      float(part("mask")(outputs)),
      float(losses.mask_loss(outputs.mask_logits, jb["masks"], w)), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Confidence (Eq. 16) and the boundary loss's single-class frames.


def test_confidence_iou_target_has_no_gradient():
  arrays, batch = _make_case(seed=7)
  jb = _jax_batch(batch)
  w = jb["frame_valid"].astype(jnp.float32)
  g_e, g_c = jax.grad(losses.confidence_loss, argnums=(1, 0))(
      jnp.asarray(arrays["confidence"]), jnp.asarray(arrays["mask_logits"]), jb["masks"], w)
  assert np.all(np.asarray(g_e) == 0)
  assert np.abs(np.asarray(g_c)).sum() > 0


def test_confidence_targets():
  y = np.zeros((1, 3, 7, 9), np.float32)
  y[0, 0, 2:5, 3:7] = 1  # frame 0: perfect prediction -> IoU 1
  y[0, 2, 2:5, 3:7] = 1  # frame 2: half overlap -> IoU 1/3 (pred 12 px, gt 12 px, inter 6)
  logits = np.where(y > 0, 5.0, -5.0).astype(np.float32)  # frame 1: empty vs empty -> 1
  logits[0, 2] = -5.0
  logits[0, 2, 2:5, 5:9] = 5.0
  iou = np.asarray(losses.mask_iou(jnp.asarray(logits), jnp.asarray(y)))
  np.testing.assert_allclose(iou, [[1.0, 1.0, 6 / 18]], rtol=1e-6)
  w = jnp.ones((1, 3))
  big = jnp.full((1, 3), 30.0)  # sigmoid(30) == 1 in float32
  loss = losses.confidence_loss(big, jnp.asarray(logits), jnp.asarray(y), w)
  np.testing.assert_allclose(float(loss), (1 - 6 / 18) ** 2 / 3, rtol=1e-6)


def test_boundary_loss_frame_without_boundary_is_plain_bce():
  rng = np.random.default_rng(8)
  x = jnp.asarray(3 * rng.standard_normal((1, 2, 7, 9)).astype(np.float32))
  y = np.zeros((1, 2, 7, 9), np.float32)
  y[0, 1, 3, :] = 1  # frame 1 has a boundary, frame 0 none
  w_frame0 = jnp.asarray([[1.0, 0.0]])
  got = losses.boundary_loss(x, jnp.asarray(y), w_frame0)
  bce = np.asarray(jax.nn.softplus(x[0, 0]))  # -log(1 - sigmoid(x)) for y = 0
  np.testing.assert_allclose(float(got), bce.mean(), rtol=1e-5)
  # With both classes: the mean of the per-class mean BCEs (CE2P's weighted-mean reduction).
  got1 = losses.boundary_loss(x, jnp.asarray(y), jnp.asarray([[0.0, 1.0]]))
  xp = np.asarray(x[0, 1])
  bce1 = np.where(y[0, 1] > 0, np.logaddexp(0, -xp), np.logaddexp(0, xp))
  want1 = 0.5 * (bce1[y[0, 1] > 0].mean() + bce1[y[0, 1] == 0].mean())
  np.testing.assert_allclose(float(got1), want1, rtol=1e-5)
  g = jax.grad(losses.boundary_loss)(x, jnp.asarray(y), w_frame0)
  assert np.all(np.isfinite(g)) and np.abs(np.asarray(g[0, 0])).sum() > 0


def test_focal_loss_is_stable_for_large_logits():
  x = jnp.asarray([[[[200.0, -200.0], [200.0, -200.0]]]])
  y = jnp.asarray([[[[0.0, 1.0], [1.0, 0.0]]]])
  loss, g = jax.value_and_grad(losses.sigmoid_focal_loss)(x, y, jnp.ones((1, 1)))
  # Two pixels are confidently wrong (CE = 200): alpha_t * 1 * 200 each, over 4 pixels.
  np.testing.assert_allclose(float(loss), (0.75 * 200 + 0.25 * 200) / 4, rtol=1e-5)
  assert np.all(np.isfinite(g))


# ---------------------------------------------------------------------------------------------
# jit and input errors.


def test_total_loss_jit_matches_eager():
  arrays, batch = _make_case(seed=9)
  outputs, jb = _jax_outputs(arrays), _jax_batch(batch)
  eager_loss, eager_parts = losses.total_loss(outputs, jb)
  jit_loss, jit_parts = jax.jit(losses.total_loss)(outputs, jb)
  np.testing.assert_allclose(float(jit_loss), float(eager_loss), rtol=1e-6)
  for name in eager_parts:
    np.testing.assert_allclose(float(jit_parts[name]), float(eager_parts[name]), rtol=1e-6,
                               err_msg=name)


def test_bad_batch_names_the_key():
  arrays, batch = _make_case(seed=10)
  outputs = _jax_outputs(arrays)
  jb = _jax_batch(batch)
  del jb["boundary"]
  with pytest.raises(KeyError, match="'boundary'"):
    losses.total_loss(outputs, jb)
  jb = _jax_batch(batch)
  jb["masks"] = jb["masks"][:, :, :-1]
  with pytest.raises(ValueError, match=r"batch\['masks'\]"):
    losses.total_loss(outputs, jb)


# ---------------------------------------------------------------------------------------------
# The auxiliary text-to-pixel loss (CRIS; not in the paper).


def _text_pixel_case(seed=0):
  arrays, batch = _make_case(seed)
  rng = np.random.default_rng(seed + 10)
  # Low-resolution maps (h, w not dividing H, W) for 3 levels, upsampled inside the loss.
  arrays["text_pixel_logits"] = 3 * rng.standard_normal((B, T, 7, 11, 3)).astype(np.float32)
  return arrays, batch


def _assert_loss_and_gradient_match(jax_loss, torch_loss, x, jax_args, torch_args):
  """jax_loss(x, *jax_args) against torch_loss(x, *torch_args): value and gradient in x."""
  got, grad = jax.value_and_grad(jax_loss)(jnp.asarray(x), *jax_args)
  leaf = _torch(x, grad=True)
  want = torch_loss(leaf, *torch_args)
  want.backward()
  assert _rel(got, want.item()) <= LOSS_RTOL, (float(got), want.item())
  err = np.linalg.norm(np.asarray(grad) - leaf.grad.numpy()) / np.linalg.norm(leaf.grad.numpy())
  assert err <= GRAD_RTOL, f"gradient rel diff {err:.2e}"
  return got


def test_text_pixel_loss_parity():
  arrays, batch = _text_pixel_case()
  jb, tb = _jax_batch(batch), {k: torch.tensor(v) for k, v in batch.items()}
  w_j, w_t = jb["frame_valid"].astype(jnp.float32), tb["frame_valid"].float()
  logits = arrays["text_pixel_logits"]
  got = _assert_loss_and_gradient_match(losses.text_pixel_loss, ref.text_pixel_loss, logits,
                                        (jb["masks"], w_j), (tb["masks"], w_t))
  # In total_loss, with a weight: the same term, scaled, on top of Eq. 16.
  outputs = _jax_outputs(arrays).replace(text_pixel_logits=jnp.asarray(logits))
  paper, paper_parts = losses.total_loss(_jax_outputs(arrays), jb)
  total, parts = losses.total_loss(outputs, jb, text_pixel_weight=0.5)
  assert _rel(parts["text_pixel"], float(got)) <= LOSS_RTOL
  assert _rel(total, float(paper) + 0.5 * float(got)) <= LOSS_RTOL
  # Weight 0 (the paper's objective) ignores the heads' output entirely.
  zero, zero_parts = losses.total_loss(outputs, jb, text_pixel_weight=0.0)
  assert float(zero) == float(paper) and float(zero_parts["text_pixel"]) == 0.0
  assert float(paper_parts["text_pixel"]) == 0.0


def test_text_pixel_loss_padded_frame_and_twin():
  arrays, batch = _text_pixel_case(seed=3)
  jb = _jax_batch(batch)
  w = jb["frame_valid"].astype(jnp.float32)
  logits = jnp.asarray(arrays["text_pixel_logits"])
  # The padded frame (1, T-1) neither changes the loss nor gets a gradient.
  base, grad = jax.value_and_grad(losses.text_pixel_loss)(logits, jb["masks"], w)
  noisy = logits.at[1, T - 1].set(100.0)
  assert float(losses.text_pixel_loss(noisy, jb["masks"], w)) == pytest.approx(float(base))
  assert float(jnp.abs(grad[1, T - 1]).max()) == 0.0
  # Every non-target pixel is a negative: a map on the target alone beats one that also covers
  # a look-alike twin (the hedge the motion expressions invite).
  target = np.zeros((1, 1, 16, 16), np.float32)
  target[..., 2:6, 2:6] = 1
  twin = np.zeros_like(target)
  twin[..., 10:14, 10:14] = 1
  ones = jnp.ones((1, 1))
  as_logits = lambda m: jnp.asarray((m * 16 - 8)[..., None])  # full-resolution maps, 1 level
  alone = losses.text_pixel_loss(as_logits(target), jnp.asarray(target), ones)
  hedge = losses.text_pixel_loss(as_logits(target + twin), jnp.asarray(target), ones)
  assert float(alone) < 0.05 < 0.3 < float(hedge)


def _velocity_case(seed=0):
  arrays, batch = _make_case(seed)
  rng = np.random.default_rng(seed + 20)
  # The head's map at the embedding's size (7 x 11, not dividing H x W); targets in pixels per
  # frame on about half the pixels.
  arrays["velocity"] = rng.standard_normal((B, T, 7, 11, 2)).astype(np.float32)
  batch["object_velocity"] = 4 * rng.standard_normal((B, T, H, W, 2)).astype(np.float32)
  batch["velocity_valid"] = (rng.uniform(size=(B, T, H, W)) < 0.5).astype(np.float32)
  return arrays, batch


def test_velocity_loss_parity_and_total():
  arrays, batch = _velocity_case()
  jb, tb = _jax_batch(batch), {k: torch.tensor(v) for k, v in batch.items()}
  w_j, w_t = jb["frame_valid"].astype(jnp.float32), tb["frame_valid"].float()
  vel = arrays["velocity"]
  got = _assert_loss_and_gradient_match(
      losses.velocity_loss, ref.velocity_loss, vel,
      (jb["object_velocity"], jb["velocity_valid"], w_j),
      (tb["object_velocity"], tb["velocity_valid"], w_t))
  outputs = _jax_outputs(arrays).replace(velocity=jnp.asarray(vel))
  paper, _ = losses.total_loss(_jax_outputs(arrays), jb)
  total, parts = losses.total_loss(outputs, jb, velocity_weight=0.5)
  assert _rel(parts["velocity"], float(got)) <= LOSS_RTOL
  assert _rel(total, float(paper) + 0.5 * float(got)) <= LOSS_RTOL
  t_total, _ = ref.total_loss(*[_torch(arrays[k]) for k in (
      "mask_logits", "boundary_logits", "object_logits", "confidence")], tb,
      velocity=_torch(vel), velocity_weight=0.5)
  assert _rel(total, t_total.item()) <= LOSS_RTOL
  zero, zero_parts = losses.total_loss(outputs, jb, velocity_weight=0.0)
  assert float(zero) == float(paper) and float(zero_parts["velocity"]) == 0.0
  with pytest.raises(KeyError, match="object_velocity"):
    losses.total_loss(outputs, {k: v for k, v in jb.items() if k != "object_velocity"},
                      velocity_weight=0.5)


def test_velocity_loss_by_hand_and_masked_pixels():
  """A 2 x 2 map upsampled to 4 x 4 (cells of 2 x 2 pixels): a uniform prediction of (1, 0)
  cells per frame against targets of (2, 0) pixels per frame is exact; a target of (4, 2)
  pixels per frame is (2, 1) cells, |1 - 2| + |0 - 1| = 2 off. Invalid pixels and padded frames
  count for nothing, and the loss is 0 with no valid pixel."""
  vel = jnp.zeros((1, 2, 2, 2, 2)).at[..., 0].set(1.0)
  target = np.zeros((1, 2, 4, 4, 2), np.float32)
  target[..., 0] = 2.0
  valid = np.ones((1, 2, 4, 4), np.float32)
  frames = jnp.ones((1, 2))
  assert float(losses.velocity_loss(vel, target, valid, frames)) == pytest.approx(0.0, abs=1e-6)
  target[0, 1] = (4.0, 2.0)
  assert float(losses.velocity_loss(vel, target, valid, frames)) == pytest.approx(1.0)  # mean
  assert float(losses.velocity_loss(vel, target, valid, jnp.asarray([[1.0, 0.0]]))) == (
      pytest.approx(0.0, abs=1e-6))
  valid[0, 1, :2] = 0  # half of frame 1 unknown: 16 exact pixels + 8 pixels 2 off
  assert float(losses.velocity_loss(vel, target, valid, frames)) == pytest.approx(16 / 24)
  assert float(losses.velocity_loss(vel, target, 0 * valid, frames)) == 0.0


def test_expected_motion_loss_by_hand_and_parity():
  """Two rows: the first's target moves (4, -2) pixels per frame on 2 x 2-pixel cells, i.e.
  (2, -1) cells, so with scale 3 an expected motion of (6, -3) is exact and (5, -3) is 1 off;
  the second row has no target pixel and counts for nothing. The torch reference agrees, value
  and gradient."""
  t, h, w = 2, 4, 4
  target = np.zeros((2, t, h, w, 2), np.float32)
  target[0, :, :2, :2] = (4.0, -2.0)
  target[0, :, 2:, 2:] = (-8.0, 0.0)  # another object: not the referred one
  masks = np.zeros((2, t, h, w), np.float32)
  masks[0, :, :2, :2] = 1.0
  valid = np.ones((2, t, h, w), np.float32)
  weights = np.ones((2, t), np.float32)
  cell = np.asarray([2.0, 2.0], np.float32)
  exact = np.asarray([[6.0, -3.0], [7.0, 7.0]], np.float32)
  args = (target, valid, masks, weights, cell, 3.0)
  assert float(losses.expected_motion_loss(jnp.asarray(exact), *args)) == pytest.approx(0.0)
  off = exact.copy()
  off[0, 0] = 5.0
  assert float(losses.expected_motion_loss(jnp.asarray(off), *args)) == pytest.approx(1.0)
  # A padded frame's pixels do not count: with frame 1 padded and its target moved, still 0.
  moved = target.copy()
  moved[0, 1, :2, :2] = (40.0, 40.0)
  pad = weights.copy()
  pad[:, 1] = 0.0
  assert float(losses.expected_motion_loss(jnp.asarray(exact), moved, valid, masks, pad, cell,
                                           3.0)) == pytest.approx(0.0)
  rng = np.random.default_rng(3)
  guess = rng.standard_normal((2, 2)).astype(np.float32)
  want = ref.expected_motion_loss(torch.tensor(guess), *[torch.tensor(a) for a in args[:5]], 3.0)
  got, grad = jax.value_and_grad(losses.expected_motion_loss)(jnp.asarray(guess), *args)
  tg = torch.tensor(guess, requires_grad=True)
  ref.expected_motion_loss(tg, *[torch.tensor(a) for a in args[:5]], 3.0).backward()
  assert _rel(got, want.item()) <= LOSS_RTOL
  np.testing.assert_allclose(np.asarray(grad), tg.grad.numpy(), rtol=1e-5, atol=1e-6)
  # rows (batch['names_motion']): a row marked 0 counts for nothing, the mean is over the
  # others; with both rows having a target, marking the exact one 0 leaves the other's error.
  both = masks.copy()
  both[1, :, 2:, 2:] = 1.0  # row 1 refers to the other object: (-4, 0) cells, x3 = (-12, 0)
  two = np.asarray([[6.0, -3.0], [-10.0, 1.0]], np.float32)  # row 1 off by 2 + 1
  target2 = target.copy()
  target2[1] = target[0]  # the same clip: the same objects' velocities
  rows_args = (target2, valid, both, weights, cell, 3.0)
  assert float(losses.expected_motion_loss(jnp.asarray(two), *rows_args)) == pytest.approx(1.5)
  for rows, want_value in (([1.0, 0.0], 0.0), ([0.0, 1.0], 3.0), ([0.0, 0.0], 0.0)):
    rows = np.asarray(rows, np.float32)
    got = losses.expected_motion_loss(jnp.asarray(two), *rows_args, jnp.asarray(rows))
    assert float(got) == pytest.approx(want_value)
    want = ref.expected_motion_loss(torch.tensor(two), *[torch.tensor(a) for a in rows_args[:5]],
                                    3.0, torch.tensor(rows))
    assert float(want) == pytest.approx(want_value)
