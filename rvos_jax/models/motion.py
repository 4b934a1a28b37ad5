"""Ours, not the paper's: an RGB-difference stream into the video-level embedding.

Why. Eq. 1-3 pool content: at a pixel of one of two look-alike objects, the attention's output
is a weighted mean of the same colour and shape whichever way the object moves, so the
direction lives in the attention weights only (embeddings.py). On refer_shapes neither the
printed module, nor sine positions, nor four heads, nor a 3x3x3 convolution on the stride-8
embedding made the final mask tell the twins apart (docs/refer_shapes_experiments.md, "Motion,
level by level"): at
stride 8 an object is 1.5 cells wide and moves 0.2-0.9 of a cell between sampled frames.

What. As TSN's RGB-difference modality (Wang et al., ECCV 2016) and the two-stream networks
before it: for every frame t, the frame x_t and the difference x_{t+1} - x_{t-1} of its
neighbours in the clip (one-sided at the clip's ends) go through a small strided CNN down to the
embeddings' stride, and the result is added to P before the video-level embedding (Eq. 1).
Where the background is still, the difference is zero except at a moving object's leading edge
(its colour appears) and trailing edge (it disappears), at full resolution; the CNN turns that
into which way the object at each cell moves. The frame and object levels do not get it, so
"w/o video level" in Table 3 still removes every motion cue but the object encoder's.

The last convolution starts at zero: at initialisation the network is the paper's.
Limitation: the model does not see which frames are padding (a clip shorter than T is padded
with blank frames, which the losses ignore), so the last real frame of a padded clip reads a
difference against a blank frame. refer_shapes' clips are never padded; an evaluation window
at the end of a longer video can be.

Velocity. The stream alone did not give the video-level embedding a direction: trained only by
the referring losses, 1000 steps on refer_shapes left the direction of motion as undecodable
from it as from one frame (rvos_jax.analysis.motion_probe: 0.22, chance 0.20), because the only
gradient towards direction features comes from the few motion expressions, through a binding
of words to features that do not exist yet. `model.velocity_head` (a linear map from the
video-level embedding to (dx, dy) per cell) with `loss.velocity_weight` supervises them
directly: the target is the velocity of each object's centroid in the instance masks
(data_pipelines.clip_ops.object_velocity), which every dataset with per-object masks has
(Refer-YouTube-VOS and DAVIS annotate every object, not only the referred one), the way video
models learn motion from optical flow. Linear, so that the text-to-pixel head, a bilinear form
of sentence and embedding, can read "moving to the left" off it.

Velocity match. With the direction in the embedding (0.82), the words still did not bind to it
in 1000 steps (the video text-to-pixel map ranked the target above its twin on 52% of the
motion expressions): a bilinear form has to grow a sentence direction and a pixel direction
from small weights at once. `model.velocity_match` adds to the video level's text-to-pixel
logit a 3-number query from the sentence against [v_x, v_y, |v|] at each cell
(alignment.TextPixelHead). With it, `configs/refer_shapes.py:motion` (2000 steps) ranks the
target first on 93% of the training motion expressions and reaches motion J 0.627 on valid
(docs/refer_shapes_experiments.md, "Motion with the direction in the embedding").
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

MOTIONS = ('none', 'rgb_diff')


def check_motion(motion: str) -> None:
  if motion not in MOTIONS:
    raise ValueError(f'model.video_motion must be one of {MOTIONS}, got {motion!r}')


def frame_differences(x: jax.Array) -> jax.Array:
  """x (B, T, H, W, C) -> x_{t+1} - x_{t-1} (central; x_1 - x_0 and x_{T-1} - x_{T-2} at the
  ends; zeros when T = 1)."""
  chex.assert_rank(x, 5)
  nxt = jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)
  prv = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
  return nxt - prv


class RGBDifferenceStream(nn.Module):
  """frames (B, T, H, W, 3), normalised as the backbone's input -> (B, T, h, w, features) at
  `stride` (a power of 2): [x_t, x_{t+1} - x_{t-1}] through log2(stride) 3x3 stride-2
  convolutions (width, 2 width, ... capped at `features`), ReLU after each, then a 3x3 conv to
  `features`, zero-initialised. Padding (1, 1) as torch's padding=1: h = ceil(H / stride), the
  backbone's sizes."""

  features: int
  stride: int
  width: int = 16

  @nn.compact
  def __call__(self, frames: jax.Array) -> jax.Array:
    chex.assert_rank(frames, 5)
    n = int(round(math.log2(self.stride)))
    if 2 ** n != self.stride or n < 1:
      raise ValueError(f'RGBDifferenceStream: stride must be a power of 2 >= 2, got {self.stride}')
    b, t, height, width, c = frames.shape
    y = jnp.concatenate([frames, frame_differences(frames)], axis=-1)
    y = y.reshape(b * t, height, width, 2 * c)
    for i in range(n):
      ch = min(self.width * 2 ** i, self.features)
      y = nn.relu(nn.Conv(ch, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                          name=f'conv{i}')(y))
    y = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=nn.initializers.zeros,
                name='out')(y)
    return y.reshape(b, t, *y.shape[1:])
