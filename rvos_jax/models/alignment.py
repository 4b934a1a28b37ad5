"""Dynamic semantic alignment (§3.2, Eq. 8-11) and the 'w/o alignment' ablation of Table 3."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from rvos_jax.models import position_encoding
from rvos_jax.models.language import MASK_VALUE


def visual_position(kind: str, t: int, h: int, w: int, d: int) -> jax.Array:
  """POS^V as (t, h, w, d): '3d' for F_video, '2d' (the same map for every frame) for F_frame."""
  if kind == '3d':
    return jnp.asarray(position_encoding.sine_3d(t, h, w, d))
  if kind == '2d':
    return jnp.broadcast_to(position_encoding.sine_2d(h, w, d), (t, h, w, d))
  raise ValueError(f"position kind must be '3d' or '2d', got {kind!r}")


class SemanticAlignment(nn.Module):
  """F_video / F_frame of Eq. 8. P (B, T, h, w, d), S (B, N, d), word mask (B, N) -> M.

  Every location attends over the words only, so F_video and F_frame differ only in POS^V
  ('3d': VisTR's (t, y, x) encoding for F_video; '2d': (y, x) for F_frame).

  Eq. 11 as printed: M = Linear(S_hat + P). (A product term S_hat * P, a dynamic 1x1 filter
  as in DMN, was tried and changed nothing on refer_shapes: docs/refer_shapes_experiments.md.)
  """

  position: str = '3d'

  @nn.compact
  def __call__(self, p: jax.Array, s: jax.Array, word_mask: jax.Array) -> jax.Array:
    chex.assert_rank([p, s, word_mask], [5, 3, 2])
    b, t, h, w, d = p.shape
    chex.assert_shape(s, (b, None, d))
    n = s.shape[1]
    pos_v = visual_position(self.position, t, h, w, d).astype(p.dtype)
    p_prime = nn.Dense(d, name='visual')(p + pos_v)  # Eq. 9
    s_prime = nn.Dense(d, name='language')(s + position_encoding.sine_1d(n, d).astype(s.dtype))
    logits = jnp.einsum('bthwc,bnc->bthwn', p_prime, s_prime) / jnp.sqrt(jnp.asarray(d, p.dtype))
    logits = jnp.where(word_mask[:, None, None, None, :], logits, MASK_VALUE)
    a_lang = jax.nn.softmax(logits, axis=-1)  # Eq. 10, padded words masked out
    # Eq. 11: A^lang multiplies the raw S (not S').
    s_hat = jnp.einsum('bthwn,bnc->bthwc', a_lang, s)
    return nn.Dense(d, name='out')(s_hat + p)


def mean_of_words(s: jax.Array, word_mask: jax.Array) -> jax.Array:
  """(B, N, d) word features, (B, N) mask -> (B, d) mean over the valid words (0 if none)."""
  m = word_mask.astype(s.dtype)[..., None]
  return (s * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


class SentenceFusion(nn.Module):
  """'w/o alignment' (Table 3): the paper does not say what replaces DSA. Ours keeps the
  language in but removes the per-location word attention: the mean of the valid words'
  features is projected and added to every location, M = Linear(P + Linear(mean_n S))."""

  @nn.compact
  def __call__(self, p: jax.Array, s: jax.Array, word_mask: jax.Array) -> jax.Array:
    chex.assert_rank([p, s, word_mask], [5, 3, 2])
    d = p.shape[-1]
    sentence = nn.Dense(d, name='sentence')(mean_of_words(s, word_mask))
    return nn.Dense(d, name='out')(p + sentence[:, None, None, None, :])


class TextPixelHead(nn.Module):
  """Text-to-pixel logits for the auxiliary contrastive loss of CRIS (Wang et al., CVPR 2022).

  Not in the paper. P (B, T, h, w, d), S (B, N, d), word mask (B, N) -> logits (B, T, h, w):
  <Linear(P), Linear(mean_n S)> / sqrt(d) + b. Trained with Dice + cross-entropy against the
  referred mask, upsampled to H x W (rvos_jax.losses.text_pixel_loss), it pulls the sentence
  towards the referred object's pixels and away from every other pixel, at the level the
  alignment reads.
  """

  @nn.compact
  def __call__(self, p: jax.Array, s: jax.Array, word_mask: jax.Array,
               velocity: jax.Array | None = None, with_query: bool = False,
               query_s: jax.Array | None = None, query_words: jax.Array | None = None):
    """velocity (B, T, h, w, 2), optional (ours, model.velocity_match): adds
    <Linear(mean_n S), [v_x, v_y, |v|]> per location, the sentence's expected motion against
    the velocity the video level reads at each cell (motion.py, "Velocity match").
    with_query (needs velocity): returns (logits, that expected motion (B, 3)), read from
    query_s (B, N, d) instead of s when given (the same weights). query_words (B, N, d'),
    optional: the query reads these word features instead of s, in the logits and the
    returned query alike (model.velocity_query_words='own')."""
    chex.assert_rank([p, s, word_mask], [5, 3, 2])
    d = p.shape[-1]
    words = mean_of_words(s, word_mask)
    sentence = nn.Dense(d, name='sentence')(words)
    pixels = nn.Dense(d, name='pixels')(p)
    bias = self.param('bias', nn.initializers.zeros, (), p.dtype)
    logits = jnp.einsum('bthwc,bc->bthw', pixels, sentence) / jnp.sqrt(jnp.asarray(d, p.dtype))
    query = None
    if velocity is not None:
      chex.assert_shape(velocity, (*p.shape[:4], 2))
      speed = jnp.sqrt(jnp.sum(velocity * velocity, -1, keepdims=True) + 1e-6)
      motion = jnp.concatenate([velocity, speed], -1)
      dense = nn.Dense(3, name='velocity_query')
      if query_words is not None:
        if query_s is not None:
          raise ValueError('TextPixelHead: query_words and query_s are exclusive')
        query = dense(mean_of_words(query_words, word_mask))
      else:
        query = dense(words)
      logits += jnp.einsum('bthwc,bc->bthw', motion, query)
      if query_s is not None:
        query = dense(mean_of_words(query_s, word_mask))
    if with_query:
      if query is None:
        raise ValueError('TextPixelHead: with_query needs a velocity')
      return logits + bias, query
    return logits + bias
