"""Multi-level visual representation (§3.1): video-, frame- and object-level embeddings.

All features are channels-last, (B, T, h, w, d): P is the reduced res5 feature of every frame.

Position. Eq. 1-4 as printed give the self-attention no position: every pixel attends by
content alone, so the video-level embedding is permutation-equivariant over the T*h*w tokens.
Reversing a clip in time then reverses its embedding and nothing more: "moving to the left"
and "moving to the right" are the same set of features, and two look-alike objects pool each
other's pixels. The paper takes the module from DETR [3] and VisTR [51], which add the sine
encoding to the queries and keys (not the values). `position='sine'` does that: the 3-D
(t, y, x) encoding for the video-level attention, the 2-D (y, x) one for the frame-level
attention (the same encodings as POS^V of Eq. 9). `position='none'` is Eq. 1-4 as printed.

Motion. Even with positions on the queries and keys, the attention's output is a weighted mean
of content (the values): at a pixel of one of two look-alike objects, "the same object in the
other frames" pools the same colour and shape whichever way the object moves. What the
refer_shapes config adds for that is an RGB-difference stream before Eq. 1-3
(rvos_jax/models/motion.py); a 3 x 3 x 3 convolution on P here was tried first and did not help
the masks (docs/refer_shapes_experiments.md).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from rvos_jax.models import position_encoding

POSITIONS = ('none', 'sine')


def _check_position(position: str) -> None:
  if position not in POSITIONS:
    raise ValueError(f'model.embedding_position must be one of {POSITIONS}, got {position!r}')


class PixelSelfAttention(nn.Module):
  """Dot-product self-attention with the residual of Eq. 3 / Eq. 4.

  x: (..., L, d) -> softmax(Q K^T / sqrt(d)) V + x over the L tokens of each leading index.
  The paper's Eq. 1-4 have no output projection, no normalisation and one head; neither do we
  by default. heads > 1 (ours, as in DETR / VisTR) splits Q, K, V into `heads` groups of
  d / heads channels that attend separately (scale sqrt(d / heads)); their outputs are
  concatenated, still with no output projection, so heads=1 is Eq. 1-3 exactly. Why: one head
  takes one weighted mean per pixel, so it can look at one place in the other frames (where
  the object was, say, one frame ago to its right); telling several directions of motion apart
  needs several such looks.
  pos (L, d), optional: added to the queries' and keys' input only (DETR / VisTR), so the
  attention can depend on where tokens are while the values stay content.
  """

  heads: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, pos: jax.Array | None = None) -> jax.Array:
    d = x.shape[-1]
    if self.heads < 1 or d % self.heads:
      raise ValueError(f'model.embedding_heads must divide hidden_dim {d}, got {self.heads}')
    xp = x if pos is None else x + pos.astype(x.dtype)
    split = lambda y: y.reshape(*y.shape[:-1], self.heads, d // self.heads)
    q = split(nn.Dense(d, name='q')(xp))  # Eq. 1
    k = split(nn.Dense(d, name='k')(xp))
    v = split(nn.Dense(d, name='v')(x))
    scale = jnp.sqrt(jnp.asarray(d // self.heads, x.dtype))
    logits = jnp.einsum('...qhc,...khc->...hqk', q, k) / scale
    attn = jax.nn.softmax(logits, axis=-1)  # Eq. 2
    out = jnp.einsum('...hqk,...khc->...qhc', attn, v)
    return out.reshape(x.shape) + x  # Eq. 3


class VideoLevelEmbedding(nn.Module):
  """Eq. 1-3: one attention over all T*h*w pixels of the clip (long-temporal context).

  position: 'none' (as printed) or 'sine' (3-D (t, y, x) encoding on queries and keys).
  """

  position: str = 'none'
  heads: int = 1

  @nn.compact
  def __call__(self, p: jax.Array) -> jax.Array:
    chex.assert_rank(p, 5)
    _check_position(self.position)
    b, t, h, w, d = p.shape
    pos = None
    if self.position == 'sine':
      pos = jnp.asarray(position_encoding.sine_3d(t, h, w, d).reshape(t * h * w, d))
    out = PixelSelfAttention(self.heads, name='attn')(p.reshape(b, t * h * w, d), pos)
    return out.reshape(b, t, h, w, d)


class FrameLevelEmbedding(nn.Module):
  """Eq. 4: the same attention over each frame's h*w pixels separately.

  position: 'none' (as printed) or 'sine' (2-D (y, x) encoding on queries and keys).
  """

  position: str = 'none'
  heads: int = 1

  @nn.compact
  def __call__(self, p: jax.Array) -> jax.Array:
    chex.assert_rank(p, 5)
    _check_position(self.position)
    b, t, h, w, d = p.shape
    pos = None
    if self.position == 'sine':
      pos = jnp.asarray(position_encoding.sine_2d(h, w, d).reshape(h * w, d))
    out = PixelSelfAttention(self.heads, name='attn')(p.reshape(b, t, h * w, d), pos)
    return out.reshape(b, t, h, w, d)


def conv3x3(features: int, name: str) -> nn.Conv:
  # Explicit (1, 1) padding: identical to torch's padding=1 for every input size.
  return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name=name)


class ObjectEncoder(nn.Module):
  """F_enc of Eq. 5, the object encoder. Table 3 compares three variants:

  'video' (the paper's choice): a video-level encoder with its own weights, then a 3x3 conv;
  'frame': a frame-level encoder, then a 3x3 conv;
  'fcn':   a plain fully-convolutional encoder, 3x3 conv - ReLU - 3x3 conv.
  position: the encoders' query/key position ('none' or 'sine'; see the module docstring).
  heads: the encoders' attention heads (1 as printed; see PixelSelfAttention).
  """

  kind: str = 'video'
  position: str = 'none'
  heads: int = 1

  @nn.compact
  def __call__(self, p: jax.Array) -> jax.Array:
    chex.assert_rank(p, 5)
    _check_position(self.position)  # also for 'fcn', which has no attention to give it to
    d = p.shape[-1]
    if self.kind == 'video':
      x = conv3x3(d, 'conv')(VideoLevelEmbedding(self.position, self.heads, name='encoder')(p))
    elif self.kind == 'frame':
      x = conv3x3(d, 'conv')(FrameLevelEmbedding(self.position, self.heads, name='encoder')(p))
    elif self.kind == 'fcn':
      x = conv3x3(d, 'conv')(nn.relu(conv3x3(d, 'conv0')(p)))
    else:
      raise ValueError(f"model.object_encoder must be 'video', 'frame' or 'fcn', got {self.kind!r}")
    chex.assert_equal_shape([x, p])
    return x
