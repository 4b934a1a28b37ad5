"""Linguistic features (§3.2): word embedding then a Transformer encoder [44].

Three encoders with their own weights give S_video, S_frame, S_object; the word embedding
table is shared between them (one vocabulary; sharing halves the text parameters and the
paper gives no reason to triplicate it).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from rvos_jax.models import position_encoding

# Softmax logits of padded words: a large finite negative instead of -inf, so that a row with
# every word padded gives a uniform (finite) result rather than NaN.
MASK_VALUE = -1e9
LAYER_NORM_EPS = 1e-5  # torch's default; flax's is 1e-6


class MultiHeadSelfAttention(nn.Module):
  """Multi-head self-attention over words with the padded words masked out as keys."""

  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f'model.text_heads={self.num_heads} must divide model.hidden_dim={d}')
    hd = d // self.num_heads
    split = lambda y: y.reshape(b, n, self.num_heads, hd)
    q = split(nn.Dense(d, name='q')(x))
    k = split(nn.Dense(d, name='k')(x))
    v = split(nn.Dense(d, name='v')(x))
    logits = jnp.einsum('bqhc,bkhc->bhqk', q, k) / jnp.sqrt(jnp.asarray(hd, x.dtype))
    logits = jnp.where(mask[:, None, None, :], logits, MASK_VALUE)
    attn = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum('bhqk,bkhc->bqhc', attn, v).reshape(b, n, d)
    return nn.Dense(d, name='out')(out)


class TransformerEncoderLayer(nn.Module):
  """Post-norm layer as in [44] (torch.nn.TransformerEncoderLayer's default arrangement)."""

  num_heads: int
  ffn_dim: int
  dropout: float

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    d = x.shape[-1]
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    y = MultiHeadSelfAttention(self.num_heads, name='attn')(x, mask)
    x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, name='norm1')(x + drop(y))
    y = nn.Dense(d, name='ffn2')(drop(nn.relu(nn.Dense(self.ffn_dim, name='ffn1')(x))))
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, name='norm2')(x + drop(y))


class LanguageEncoder(nn.Module):
  """Embedded words (B, N, d) + 1-D sine position -> S (B, N, d)."""

  num_layers: int
  num_heads: int
  ffn_dim: int
  dropout: float = 0.1

  @nn.compact
  def __call__(self, words: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    chex.assert_rank(words, 3)
    chex.assert_shape(mask, words.shape[:2])
    _, n, d = words.shape
    # Word order matters ("left of the red one"); the Transformer gets it from the sine encoding.
    x = words + position_encoding.sine_1d(n, d).astype(words.dtype)
    for i in range(self.num_layers):
      x = TransformerEncoderLayer(
          self.num_heads, self.ffn_dim, self.dropout, name=f'layer{i}')(x, mask, train)
    return x
