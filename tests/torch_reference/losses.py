"""Plain-PyTorch reference of the MLRL-SA losses (rvos_jax/losses.py), written independently.

Same (B, T, H, W) layout as the JAX side (the losses are layout-agnostic per pixel); `weights`
(B, T) float, frame_valid as float. Per-frame quantities are computed frame by frame in Python
loops (tiny test shapes), with torch's own BCE-with-logits and max-pool, so that the JAX
vectorised code is checked against a different formulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _frame_mean(per_frame: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
  n_valid = weights.sum()
  if n_valid.item() == 0:
    return (per_frame * weights).sum()  # 0, still connected to the graph
  return (per_frame * weights).sum() / n_valid


def dice_loss(logits, targets, weights, smooth=1.0):
  b, t = logits.shape[:2]
  per_frame = []
  for i in range(b):
    for j in range(t):
      p = torch.sigmoid(logits[i, j]).flatten()
      y = targets[i, j].flatten()
      per_frame.append(1 - (2 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth))
  return _frame_mean(torch.stack(per_frame).view(b, t), weights)


def sigmoid_focal_loss(logits, targets, weights, alpha=0.25, gamma=2.0):
  # torchvision.ops.sigmoid_focal_loss, reduced over the pixels of the valid frames.
  p = torch.sigmoid(logits)
  ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = ce * ((1 - p_t) ** gamma)
  if alpha >= 0:
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
  pix_w = weights[:, :, None, None].expand_as(loss)
  n = pix_w.sum()
  if n.item() == 0:
    return (loss * pix_w).sum()
  return (loss * pix_w).sum() / n


def mask_loss(logits, targets, weights, focal_alpha=0.25, focal_gamma=2.0):
  return dice_loss(logits, targets, weights) + sigmoid_focal_loss(
      logits, targets, weights, focal_alpha, focal_gamma)


def generate_edge(label: torch.Tensor, edge_width: int = 3) -> torch.Tensor:
  """CE2P's dataset/target_generation.py generate_edge, transcribed to torch for one (H, W) map.

  cv2.dilate with a (w, w) rectangle is a w x w max filter (anchor w // 2).
  """
  h, w = label.shape
  edge = torch.zeros(h, w)
  edge[1:h, :][label[1:h, :] != label[:h - 1, :]] = 1  # CE2P "right" (pixel vs the one above)
  edge[:, :w - 1][label[:, :w - 1] != label[:, 1:w]] = 1  # CE2P "up" (pixel vs its right)
  edge[:h - 1, :w - 1][label[:h - 1, :w - 1] != label[1:h, 1:w]] = 1  # "upright"
  edge[:h - 1, 1:w][label[:h - 1, 1:w] != label[1:h, :w - 1]] = 1  # "bottomright"
  if edge_width > 1:
    before, after = edge_width // 2, edge_width - 1 - edge_width // 2
    padded = F.pad(edge[None, None], (before, after, before, after), value=0.0)
    edge = F.max_pool2d(padded, kernel_size=edge_width, stride=1)[0, 0]
  return edge


def boundary_target(masks: torch.Tensor, edge_width: int = 3) -> torch.Tensor:
  label = (masks > 0.5).to(torch.int64)
  flat = label.reshape(-1, *label.shape[-2:])
  out = torch.stack([generate_edge(m, edge_width) for m in flat])
  return out.reshape(masks.shape)


def boundary_loss(logits, boundary_targets, weights):
  b, t = logits.shape[:2]
  per_frame = []
  for i in range(b):
    for j in range(t):
      x, y = logits[i, j], boundary_targets[i, j]
      pos = (y == 1).sum().float()
      neg = (y == 0).sum().float()
      if pos.item() == 0 or neg.item() == 0:
        per_frame.append(F.binary_cross_entropy_with_logits(x, y))
        continue
      # CE2P: weights = [pos / N, neg / N] for classes [0, 1], torch weighted-mean reduction.
      w = torch.where(y == 1, neg / (pos + neg), pos / (pos + neg))
      per_frame.append(
          F.binary_cross_entropy_with_logits(x, y, weight=w, reduction="sum") / w.sum())
  return _frame_mean(torch.stack(per_frame).view(b, t), weights)


def mask_iou(mask_logits, targets):
  with torch.no_grad():
    pred = torch.sigmoid(mask_logits) > 0.5
    gt = targets > 0.5
    inter = (pred & gt).flatten(2).sum(-1).float()
    union = (pred | gt).flatten(2).sum(-1).float()
    iou = torch.ones_like(inter)
    nz = union > 0
    iou[nz] = inter[nz] / union[nz]
  return iou


def confidence_loss(confidence_logits, mask_logits, targets, weights):
  iou = mask_iou(mask_logits, targets)
  per_frame = (torch.sigmoid(confidence_logits) - iou) ** 2
  return _frame_mean(per_frame, weights)


def bce_loss(logits, targets, weights):
  ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
  return _frame_mean(ce.flatten(2).mean(-1), weights)


def text_pixel_loss(logits, targets, weights):  # logits (B, T, h, w, L)
  b, t, h, w, levels = logits.shape
  up = F.interpolate(logits.permute(0, 4, 1, 2, 3).reshape(b * levels * t, 1, h, w),
                     size=targets.shape[-2:], mode="bilinear", align_corners=False)
  up = up.reshape(b, levels, t, *targets.shape[-2:])
  total = sum(dice_loss(up[:, i], targets, weights) + bce_loss(up[:, i], targets, weights)
              for i in range(levels))
  return total / levels


def velocity_loss(velocity, target, valid, weights):  # velocity (B, T, h, w, 2)
  b, t, h, w, _ = velocity.shape
  height, width = target.shape[2:4]
  up = F.interpolate(velocity.permute(0, 1, 4, 2, 3).reshape(b * t, 2, h, w),
                     size=(height, width), mode="bilinear", align_corners=False)
  up = up.reshape(b, t, 2, height, width).permute(0, 1, 3, 4, 2)
  cell = torch.tensor([width / w, height / h])
  err = (up - target / cell).abs().sum(-1)
  m = valid * weights[:, :, None, None]
  return (err * m).sum() / m.sum().clamp(min=1.0)


def expected_motion_loss(expected, target, valid, masks, weights, cell, scale, rows=None):
  m = masks * valid * weights[:, :, None, None]
  n = m.sum((1, 2, 3))
  mean = (target * m[..., None]).sum((1, 2, 3)) / n.clamp(min=1.0)[:, None] / cell
  err = (expected - scale * mean).abs().sum(-1)
  has = (n > 0).float()
  if rows is not None:
    has = has * rows.float()
  return (err * has).sum() / has.sum().clamp(min=1.0)


def total_loss(mask_logits, boundary_logits, object_logits, confidence, batch, *,
               alpha=0.2, beta=0.1, focal_alpha=0.25, focal_gamma=2.0,
               text_pixel_logits=None, text_pixel_weight=0.0, velocity=None,
               velocity_weight=0.0, expected_velocity=None, expected_motion_weight=0.0,
               expected_motion_scale=4.0):
  """Eq. 16 with the erratum pairing of Eq. 14 (mask loss on E, boundary loss on B)."""
  weights = batch["frame_valid"].float()
  dice = dice_loss(mask_logits, batch["masks"], weights)
  focal = sigmoid_focal_loss(mask_logits, batch["masks"], weights, focal_alpha, focal_gamma)
  bdry = boundary_loss(boundary_logits, batch["boundary"], weights)
  if object_logits is None:
    obj = torch.zeros(())
  else:
    obj = mask_loss(object_logits, batch["object_masks"], weights, focal_alpha, focal_gamma)
  conf = confidence_loss(confidence, mask_logits, batch["masks"], weights)
  total = obj + dice + focal + alpha * bdry + beta * conf
  text_pixel = torch.zeros(())
  if text_pixel_logits is not None and text_pixel_weight:
    text_pixel = text_pixel_loss(text_pixel_logits, batch["masks"], weights)
    total = total + text_pixel_weight * text_pixel
  vel = torch.zeros(())
  if velocity is not None and velocity_weight:
    vel = velocity_loss(velocity, batch["object_velocity"], batch["velocity_valid"], weights)
    total = total + velocity_weight * vel
  em = torch.zeros(())
  if expected_velocity is not None and expected_motion_weight:
    h, w = velocity.shape[2:4]
    cell = torch.tensor([mask_logits.shape[3] / w, mask_logits.shape[2] / h])
    em = expected_motion_loss(expected_velocity, batch["object_velocity"],
                              batch["velocity_valid"].float(), batch["masks"].float(), weights,
                              cell, expected_motion_scale, batch.get("names_motion"))
    total = total + expected_motion_weight * em
  parts = {"object": obj, "mask": dice + focal, "dice": dice, "focal": focal,
           "boundary": bdry, "confidence": conf, "text_pixel": text_pixel, "velocity": vel,
           "expected_motion": em, "total": total}
  return total, parts
