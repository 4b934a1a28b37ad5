"""Training losses of MLRL-SA (Eq. 7, 14, 15, 16), pure jnp and jit-able.

Layout: every per-pixel array is (B, T, H, W) float32 and holds LOGITS (the sigmoid is applied
here). `weights` is (B, T) float, `frame_valid` as float: a padded frame (weight 0) contributes
nothing to any loss and receives an exactly-zero gradient, and every reduction divides by the
number of valid frames (sum of weights), returning 0 (not NaN) when there is none.

Pairing of Eq. 14 (ERRATUM, see DESIGN.md "Losses"): the paper prints
  L_instance = L_mask(B, Y) + alpha * L_bdry(E, Y_bdry),
i.e. the mask loss on the boundary map B and the boundary loss on the mask E, while its own text
defines B as the boundary map (Eq. 12) and E as the final mask (Eq. 13). We implement the sensible
pairing L_instance = L_mask(E, Y) + alpha * L_bdry(B, Y_bdry).
"""

from __future__ import annotations

from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp

from rvos_jax.models.outputs import ModelOutputs
from rvos_jax.models.segmentation import upsample_bilinear


def _check_pixelwise(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Checks (B,T,H,W) logits/targets and (B,T) weights; returns the weights as float32."""
  chex.assert_rank(logits, 4)
  chex.assert_equal_shape([logits, targets])
  chex.assert_shape(weights, logits.shape[:2])
  return jnp.asarray(weights, jnp.float32)


def _mean_over_valid_frames(per_frame: jax.Array, weights: jax.Array) -> jax.Array:
  """sum_f w_f * l_f / sum_f w_f, and 0 when no frame is valid (no NaN, finite gradients)."""
  num = jnp.sum(per_frame * weights)
  den = jnp.sum(weights)
  # The `where` keeps the division finite; num is 0 anyway when every weight is 0.
  return num / jnp.where(den > 0, den, 1.0)


def sigmoid_cross_entropy(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-pixel binary cross-entropy of logits x against targets y, from log-sigmoid (not
  log(sigmoid(x)), which underflows to log(0) for large |x|)."""
  return -(y * jax.nn.log_sigmoid(x) + (1.0 - y) * jax.nn.log_sigmoid(-x))


def dice_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, smooth: float = 1.0
) -> jax.Array:
  """Dice loss [35], one Dice per frame, averaged over valid frames (part of L_mask, Eq. 7/14).

  Per frame: 1 - (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth), p = sigmoid(logits).
  Why per frame rather than per clip: the referred object's size varies a lot along a clip (and
  it may leave the frame); a clip-level Dice is dominated by the frames where it is large, while
  the metric J is a per-frame IoU. Per-frame Dice weights every frame equally, lets padded frames
  drop out by their weight, and with `smooth` an empty-target frame still has a well-defined
  loss that pushes its prediction to zero.
  """
  weights = _check_pixelwise(logits, targets, weights)
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  y = targets.astype(jnp.float32)
  inter = jnp.sum(p * y, axis=(-2, -1))
  denom = jnp.sum(p, axis=(-2, -1)) + jnp.sum(y, axis=(-2, -1))
  per_frame = 1.0 - (2.0 * inter + smooth) / (denom + smooth)  # (B, T)
  return _mean_over_valid_frames(per_frame, weights)


def sigmoid_focal_loss(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> jax.Array:
  """RetinaNet focal loss [26] (part of L_mask), mean over the pixels of the valid frames.

  FL = alpha_t (1 - p_t)^gamma CE, with CE from log-sigmoid (not log(sigmoid(x)), which
  underflows to log(0) for large |x|). alpha < 0 disables the alpha weighting (torchvision).
  """
  weights = _check_pixelwise(logits, targets, weights)
  x = logits.astype(jnp.float32)
  y = targets.astype(jnp.float32)
  p = jax.nn.sigmoid(x)
  ce = sigmoid_cross_entropy(x, y)
  p_t = p * y + (1.0 - p) * (1.0 - y)
  loss = ce * (1.0 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
  h, w = x.shape[-2:]
  per_frame = jnp.sum(loss, axis=(-2, -1)) / (h * w)  # mean over the pixels of each frame
  # Equal pixel counts per frame, so the frame-weighted mean of per-frame means is the mean
  # over all pixels of the valid frames.
  return _mean_over_valid_frames(per_frame, weights)


def mask_loss(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> jax.Array:
  """L_mask = L_dice + L_focal (§3.1, used by Eq. 7 and Eq. 14)."""
  return dice_loss(logits, targets, weights) + sigmoid_focal_loss(
      logits, targets, weights, alpha=focal_alpha, gamma=focal_gamma
  )


def boundary_target(masks: jax.Array, edge_width: int = 3) -> jax.Array:
  """Boundary ground truth Y_bdry of Eq. 14, as CE2P's `generate_edge` [42] builds it.

  masks: (..., H, W), binarised at 0.5. Returns float32 {0, 1} of the same shape.

  CE2P visits each of the four neighbour orientations once and marks ONE pixel of every pair
  whose labels differ: pixel (i, j) is an edge when its label differs from its
    top (i-1, j), right (i, j+1), bottom-right (i+1, j+1) or bottom-left (i+1, j-1) neighbour.
  Because both diagonals are checked, both sides of a straight boundary get marked (a 2-pixel
  line), so after the dilation the band is symmetric: for an odd width, edge_width // 2 + 1
  pixels on each side of the boundary (2 + 2 for edge_width 3). The asymmetry left is a few
  unmarked pixels at corners, e.g. the outer bottom-left / bottom-right corner pixels of a
  square (pinned by hand-made pictures in tests/test_losses.py).
  Pixels are compared only with neighbours inside the image: the image border itself is never an
  edge. The lines are then dilated with an edge_width x edge_width square (CE2P:
  cv2.dilate(edge, getStructuringElement(MORPH_RECT, (w, w))); for an even width the window
  spans w // 2 pixels before and w - 1 - w // 2 after, OpenCV's default anchor).
  CE2P's ignore label 255 does not occur in binary masks and is not handled.
  """
  if edge_width < 1:
    raise ValueError(f"boundary_target: edge_width must be >= 1, got {edge_width}")
  if masks.ndim < 2:
    raise ValueError(f"boundary_target: masks must be (..., H, W), got shape {masks.shape}")
  y = jnp.asarray(masks) > 0.5
  nd = y.ndim
  lead = [(0, 0)] * (nd - 2)

  def pad(a, rows, cols):
    # Pairs exist only inside the image: the missing row/column is "no edge".
    return jnp.pad(a, lead + [rows, cols], constant_values=False)

  top = pad(y[..., 1:, :] != y[..., :-1, :], (1, 0), (0, 0))
  right = pad(y[..., :, :-1] != y[..., :, 1:], (0, 0), (0, 1))
  bottom_right = pad(y[..., :-1, :-1] != y[..., 1:, 1:], (0, 1), (0, 1))
  bottom_left = pad(y[..., :-1, 1:] != y[..., 1:, :-1], (0, 1), (1, 0))
  edge = (top | right | bottom_right | bottom_left).astype(jnp.float32)
  if edge_width == 1:
    return edge
  before, after = edge_width // 2, edge_width - 1 - edge_width // 2
  return jax.lax.reduce_window(
      edge,
      0.0,  # edges are >= 0, so 0 is the identity of max here
      jax.lax.max,
      window_dimensions=(1,) * (nd - 2) + (edge_width, edge_width),
      window_strides=(1,) * nd,
      padding=lead + [(before, after), (before, after)],
  )


def boundary_loss(
    logits: jax.Array, boundary_targets: jax.Array, weights: jax.Array
) -> jax.Array:
  """L_bdry of Eq. 14: CE2P's class-balanced binary cross-entropy [42], per frame.

  Per frame, with n_pos / n_neg boundary / non-boundary pixels and N = n_pos + n_neg:
  positives weigh n_neg / N and negatives n_pos / N (from the targets, no gradient), and the
  weighted sum is divided by the sum of the weights, as torch's weighted cross-entropy (CE2P's
  F.cross_entropy(weight=...)) does: this equals (mean BCE over positives + mean BCE over
  negatives) / 2. CE2P pools the counts over the batch; we count per frame.
  Frames with a single class (no boundary at all, e.g. the referred object is absent; or all
  boundary) would get all weights 0 (0/0): for them we use the plain mean BCE, so the head is
  still taught to predict "no boundary" there rather than receiving no signal.
  Mean over valid frames.
  """
  weights = _check_pixelwise(logits, boundary_targets, weights)
  x = logits.astype(jnp.float32)
  y = jax.lax.stop_gradient(boundary_targets.astype(jnp.float32))
  bce = sigmoid_cross_entropy(x, y)
  n = x.shape[-2] * x.shape[-1]
  n_pos = jnp.sum(y, axis=(-2, -1), keepdims=True)
  n_neg = n - n_pos
  pixel_w = y * (n_neg / n) + (1.0 - y) * (n_pos / n)
  has_both = (n_pos > 0) & (n_neg > 0)  # (B, T, 1, 1)
  pixel_w = jax.lax.stop_gradient(jnp.where(has_both, pixel_w, 1.0))
  per_frame = jnp.sum(pixel_w * bce, axis=(-2, -1)) / jnp.sum(pixel_w, axis=(-2, -1))
  return _mean_over_valid_frames(per_frame, weights)


def mask_iou(mask_logits: jax.Array, targets: jax.Array) -> jax.Array:
  """IoU(sigmoid(E) > 0.5, Y) per frame, (B, T); empty prediction vs empty target = 1."""
  pred = jax.nn.sigmoid(mask_logits.astype(jnp.float32)) > 0.5
  gt = targets > 0.5
  inter = jnp.sum(pred & gt, axis=(-2, -1)).astype(jnp.float32)
  union = jnp.sum(pred | gt, axis=(-2, -1)).astype(jnp.float32)
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 1.0)


def confidence_loss(
    confidence_logits: jax.Array,
    mask_logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
) -> jax.Array:
  """L_conf of Eq. 16: squared error between sigmoid(C) and IoU(E > 0.5, Y), per valid frame.

  The IoU is a target: it is taken under stop_gradient, so L_conf trains only the confidence
  head and never the mask (the threshold has no useful gradient anyway).
  """
  weights = _check_pixelwise(mask_logits, targets, weights)
  chex.assert_shape(confidence_logits, mask_logits.shape[:2])
  iou = jax.lax.stop_gradient(mask_iou(mask_logits, targets))
  score = jax.nn.sigmoid(confidence_logits.astype(jnp.float32))
  return _mean_over_valid_frames((score - iou) ** 2, weights)


def binary_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Plain sigmoid cross-entropy, mean over the pixels of the valid frames."""
  weights = _check_pixelwise(logits, targets, weights)
  x = logits.astype(jnp.float32)
  y = targets.astype(jnp.float32)
  ce = sigmoid_cross_entropy(x, y)
  return _mean_over_valid_frames(jnp.mean(ce, axis=(-2, -1)), weights)


def text_pixel_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Auxiliary text-to-pixel loss (CRIS, Wang et al. CVPR 2022; not in the paper).

  logits (B, T, h, w, L): one map per level (ModelOutputs.text_pixel_logits), upsampled
  bilinearly to the masks' (B, T, H, W) like every other head; Dice + cross-entropy against the
  referred mask, averaged over the L levels. Every pixel that is not the referred object,
  the look-alike twin included, is a negative.
  """
  chex.assert_rank(logits, 5)
  b, t, h, w, levels = logits.shape
  height, width = targets.shape[-2:]
  up = upsample_bilinear(jnp.moveaxis(logits, -1, 1).reshape(b * levels * t, h, w, 1),
                         (height, width)).reshape(b, levels, t, height, width)
  total = jnp.zeros((), jnp.float32)
  for level in range(levels):
    total += dice_loss(up[:, level], targets, weights)
    total += binary_cross_entropy(up[:, level], targets, weights)
  return total / levels


def velocity_loss(velocity: jax.Array, target: jax.Array, valid: jax.Array,
                  weights: jax.Array) -> jax.Array:
  """Ours (rvos_jax/models/motion.py, "Velocity"): L1 between the predicted velocity of the
  object at each pixel and the velocity of its centroid in the masks.

  velocity (B, T, h, w, 2) in embedding cells per frame, upsampled bilinearly to (H, W);
  target (B, T, H, W, 2) in pixels per frame (data_pipelines.clip_ops.object_velocity), divided
  by the cell size (W / w, H / h); valid (B, T, H, W) the pixels whose velocity is known.
  Mean over valid pixels of valid frames of |dx| + |dy|; 0 when there are none.
  """
  chex.assert_rank([velocity, target, valid, weights], [5, 5, 4, 2])
  b, t, h, w, _ = velocity.shape
  height, width = target.shape[2:4]
  up = upsample_bilinear(velocity.reshape(b * t, h, w, 2), (height, width)).reshape(
      b, t, height, width, 2)
  cell = jnp.asarray([width / w, height / h], jnp.float32)
  err = jnp.abs(up - target / cell).sum(-1)
  m = valid * weights[:, :, None, None]
  return (err * m).sum() / jnp.maximum(m.sum(), 1.0)


def expected_motion_loss(expected: jax.Array, target: jax.Array, valid: jax.Array,
                         masks: jax.Array, weights: jax.Array, cell: jax.Array,
                         scale: float, rows: jax.Array | None = None) -> jax.Array:
  """Ours: L1 between the sentence's expected motion (outputs.expected_velocity, the x, y of
  the velocity match's query) and `scale` times the referred object's mean velocity.

  The velocity match scores <query, [v_x, v_y, |v|]> at every cell; trained only through the
  masks, the words bind to the velocity after ~1000 steps (docs/motion.md). This term tells
  the language directly which motion each sentence names ("moving to the left": (-scale |v|,
  0); a still object: 0) from the first step.
  expected (B, 2); target (B, T, H, W, 2) object velocities in pixels per frame; valid
  (B, T, H, W) where they are known; masks (B, T, H, W) the referred object; weights (B, T);
  cell (2,) the embedding cell in pixels (x, y). Rows without a known target pixel add 0.
  rows (B,), optional: 1 for the rows to supervise, 0 for the others (batch['names_motion'],
  data.motion_kinds: the sentences that name a motion; for the others the words do not say
  which way the target moves, and the L1 to a random direction only adds noise).
  """
  chex.assert_rank([expected, target, valid, masks, weights], [2, 5, 4, 4, 2])
  m = masks * valid * weights[:, :, None, None]
  n = m.sum((1, 2, 3))
  mean = (target * m[..., None]).sum((1, 2, 3)) / jnp.maximum(n, 1.0)[:, None] / cell
  err = jnp.abs(expected - scale * mean).sum(-1)
  has = (n > 0).astype(jnp.float32)
  if rows is not None:
    chex.assert_shape(rows, (expected.shape[0],))
    has = has * rows.astype(jnp.float32)
  return (err * has).sum() / jnp.maximum(has.sum(), 1.0)


def _batch_array(batch: Mapping[str, jax.Array], key: str, shape: tuple[int, ...], what: str):
  """batch[key], checked against the shape of the model output it supervises."""
  if key not in batch:
    hint = " (compute it with rvos_jax.losses.boundary_target(masks))" if key == "boundary" else ""
    raise KeyError(f"total_loss: batch has no key {key!r}{hint}; keys: {sorted(batch)}")
  value = batch[key]
  if tuple(value.shape) != tuple(shape):
    raise ValueError(
        f"total_loss: batch[{key!r}] has shape {tuple(value.shape)} but {what} is {tuple(shape)}"
    )
  return value


def total_loss(
    outputs: ModelOutputs,
    batch: Mapping[str, jax.Array],
    *,
    alpha: float = 0.2,
    beta: float = 0.1,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    text_pixel_weight: float = 0.0,
    velocity_weight: float = 0.0,
    expected_motion_weight: float = 0.0,
    expected_motion_scale: float = 4.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The overall objective of Eq. 16: L = L_object + L_instance + beta * L_conf.

    L_object   = L_mask(Y_object, batch['object_masks'])                       (Eq. 7)
    L_instance = L_mask(E, batch['masks']) + alpha * L_bdry(B, batch['boundary'])  (Eq. 14)
    L_conf     = |sigmoid(C) - IoU(E > 0.5, batch['masks'])|^2, IoU without gradient  (Eq. 16)

  ERRATUM: Eq. 14 as printed pairs L_mask with the boundary map B and L_bdry with the mask E; we
  implement the sensible pairing (mask loss on E = outputs.mask_logits, boundary loss on
  B = outputs.boundary_logits), as DESIGN.md says.
  When outputs.object_logits is None (object level switched off) L_object is skipped: it adds 0
  and parts['object'] is 0 ('object_masks' is then not needed in the batch).
  Frames with batch['frame_valid'] False contribute nothing.

  Returns (loss, parts) with parts = {object, mask (dice + focal on E), dice, focal, boundary
  (unscaled L_bdry), confidence (unscaled L_conf), total}, float32 scalars for logging.
  """
  e = outputs.mask_logits
  chex.assert_rank(e, 4)
  valid = _batch_array(batch, "frame_valid", e.shape[:2], "(B, T) of outputs.mask_logits")
  weights = jnp.asarray(valid).astype(jnp.float32)
  masks = _batch_array(batch, "masks", e.shape, "outputs.mask_logits")
  boundary = _batch_array(batch, "boundary", outputs.boundary_logits.shape,
                          "outputs.boundary_logits")

  # L_instance (Eq. 14, erratum pairing).
  dice = dice_loss(e, masks, weights)
  focal = sigmoid_focal_loss(e, masks, weights, alpha=focal_alpha, gamma=focal_gamma)
  bdry = boundary_loss(outputs.boundary_logits, boundary, weights)
  instance = dice + focal + alpha * bdry

  # L_object (Eq. 7), only when the object level is on.
  if outputs.object_logits is not None:
    object_masks = _batch_array(batch, "object_masks", outputs.object_logits.shape,
                                "outputs.object_logits")
    obj = mask_loss(outputs.object_logits, object_masks, weights,
                    focal_alpha=focal_alpha, focal_gamma=focal_gamma)
  else:
    obj = jnp.zeros((), jnp.float32)

  conf = confidence_loss(outputs.confidence, e, masks, weights)
  total = obj + instance + beta * conf  # Eq. 16
  text_pixel = jnp.zeros((), jnp.float32)
  if outputs.text_pixel_logits is not None and text_pixel_weight:
    text_pixel = text_pixel_loss(outputs.text_pixel_logits, masks, weights)
    total = total + text_pixel_weight * text_pixel
  velocity = jnp.zeros((), jnp.float32)
  if outputs.velocity is not None and velocity_weight:
    target = _batch_array(batch, "object_velocity", (*e.shape, 2),
                          "(B, T, H, W, 2) of outputs.mask_logits")
    known = _batch_array(batch, "velocity_valid", e.shape, "outputs.mask_logits")
    velocity = velocity_loss(outputs.velocity, target, known, weights)
    total = total + velocity_weight * velocity
  expected_motion = jnp.zeros((), jnp.float32)
  if outputs.expected_velocity is not None and expected_motion_weight:
    if outputs.velocity is None:
      raise ValueError('loss.expected_motion_weight needs model.velocity_head and velocity_match')
    target = _batch_array(batch, "object_velocity", (*e.shape, 2),
                          "(B, T, H, W, 2) of outputs.mask_logits")
    known = _batch_array(batch, "velocity_valid", e.shape, "outputs.mask_logits")
    h, w = outputs.velocity.shape[2:4]
    cell = jnp.asarray([e.shape[3] / w, e.shape[2] / h], jnp.float32)
    expected_motion = expected_motion_loss(outputs.expected_velocity, target, known, masks,
                                           weights, cell, expected_motion_scale,
                                           batch.get("names_motion"))
    total = total + expected_motion_weight * expected_motion
  parts = {
      "object": obj,
      "mask": dice + focal,
      "dice": dice,
      "focal": focal,
      "boundary": bdry,
      "confidence": conf,
      "text_pixel": text_pixel,
      "velocity": velocity,
      "expected_motion": expected_motion,
      "total": total,
  }
  return total, parts
