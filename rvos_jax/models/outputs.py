"""What the MLRL-SA network returns: every tensor the losses (Eq. 7, 14, 16) need."""

from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class ModelOutputs:
  """Outputs of `MLRLSA.__call__`. All maps are logits; sigmoid is applied by losses and inference.

  Shapes (B clips, T frames, H x W input size):
    mask_logits:     E, the final referred-object mask (Eq. 13),      (B, T, H, W)
    boundary_logits: B, the boundary map of the boundary head (Eq. 12), (B, T, H, W)
    object_logits:   Y_object, the salient-object map (Eq. 6),          (B, T, H, W);
                     None when the object level is switched off.
    confidence:      C, one score logit per frame (Eq. 16); the score is sigmoid(C), (B, T)
    text_pixel_logits: not in the paper: one text-to-pixel logit map per level at the
                     embeddings' size, (B, T, h, w, levels); None unless model.text_pixel_head
    velocity:        not in the paper: the velocity of the object at each cell read linearly
                     from the video-level embedding, (x, y) in cells per frame, (B, T, h, w, 2);
                     None unless model.velocity_head
    expected_velocity: not in the paper: the (x, y) part of the sentence's expected motion that
                     the velocity match scores against `velocity` (alignment.TextPixelHead's
                     velocity_query), (B, 2); None unless model.velocity_match
  """

  mask_logits: jax.Array
  boundary_logits: jax.Array
  object_logits: jax.Array | None
  confidence: jax.Array
  text_pixel_logits: jax.Array | None = None
  velocity: jax.Array | None = None
  expected_velocity: jax.Array | None = None
