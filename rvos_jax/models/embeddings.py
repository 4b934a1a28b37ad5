"""Multi-level visual representation (§3.1): video-, frame- and object-level embeddings.

All features are channels-last, (B, T, h, w, d): P is the reduced res5 feature of every frame.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp


class PixelSelfAttention(nn.Module):
  """Single-head dot-product self-attention with the residual of Eq. 3 / Eq. 4.

  x: (..., L, d) -> softmax(Q K^T / sqrt(d)) V + x over the L tokens of each leading index.
  The paper's Eq. 1-4 have no output projection, no normalisation and one head; neither do we.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    q = nn.Dense(d, name='q')(x)  # Eq. 1
    k = nn.Dense(d, name='k')(x)
    v = nn.Dense(d, name='v')(x)
    logits = jnp.einsum('...qc,...kc->...qk', q, k) / jnp.sqrt(jnp.asarray(d, x.dtype))
    attn = jax.nn.softmax(logits, axis=-1)  # Eq. 2
    return jnp.einsum('...qk,...kc->...qc', attn, v) + x  # Eq. 3


class VideoLevelEmbedding(nn.Module):
  """Eq. 1-3: one attention over all T*h*w pixels of the clip (long-temporal context)."""

  @nn.compact
  def __call__(self, p: jax.Array) -> jax.Array:
    chex.assert_rank(p, 5)
    b, t, h, w, d = p.shape
    out = PixelSelfAttention(name='attn')(p.reshape(b, t * h * w, d))
    return out.reshape(b, t, h, w, d)


class FrameLevelEmbedding(nn.Module):
  """Eq. 4: the same attention over each frame's h*w pixels separately."""

  @nn.compact
  def __call__(self, p: jax.Array) -> jax.Array:
    chex.assert_rank(p, 5)
    b, t, h, w, d = p.shape
    out = PixelSelfAttention(name='attn')(p.reshape(b, t, h * w, d))
    return out.reshape(b, t, h, w, d)


def conv3x3(features: int, name: str) -> nn.Conv:
  # Explicit (1, 1) padding: identical to torch's padding=1 for every input size.
  return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name=name)


class ObjectEncoder(nn.Module):
  """F_enc of Eq. 5, the object encoder. Table 3 compares three variants:

  'video' (the paper's choice): a video-level encoder with its own weights, then a 3x3 conv;
  'frame': a frame-level encoder, then a 3x3 conv;
  'fcn':   a plain fully-convolutional encoder, 3x3 conv - ReLU - 3x3 conv.
  """

  kind: str = 'video'

  @nn.compact
  def __call__(self, p: jax.Array) -> jax.Array:
    chex.assert_rank(p, 5)
    d = p.shape[-1]
    if self.kind == 'video':
      x = conv3x3(d, 'conv')(VideoLevelEmbedding(name='encoder')(p))
    elif self.kind == 'frame':
      x = conv3x3(d, 'conv')(FrameLevelEmbedding(name='encoder')(p))
    elif self.kind == 'fcn':
      x = conv3x3(d, 'conv')(nn.relu(conv3x3(d, 'conv0')(p)))
    else:
      raise ValueError(f"model.object_encoder must be 'video', 'frame' or 'fcn', got {self.kind!r}")
    chex.assert_equal_shape([x, p])
    return x
