"""Fixed sine position encodings: POS^V (3-D for the video branch, 2-D for frame/object) and POS^L.

The paper adds "the position embedding, as proposed in [44, 51]" (Eq. 9): [44] is the 1-D sine
encoding of the Transformer, [51] (VisTR) the 3-D (t, y, x) extension of DETR's normalised 2-D
sine encoding. They are constants of the shapes, so they are computed with numpy at trace time.
"""

from __future__ import annotations

import math

import numpy as np

_TEMPERATURE = 10000.0


def _sine_features(positions: np.ndarray, num_feats: int) -> np.ndarray:
  """positions (...,) -> (..., num_feats), sin on even and cos on odd features (DETR order)."""
  i = np.arange(num_feats, dtype=np.float64)
  dim_t = _TEMPERATURE ** (2 * (i // 2) / num_feats)
  x = positions[..., None] / dim_t
  return np.where(i % 2 == 0, np.sin(x), np.cos(x))


def _normalised_grid(n: int) -> np.ndarray:
  # DETR normalises the cumulative position 1..n to (0, 2*pi]; eps as in DETR.
  return np.arange(1, n + 1, dtype=np.float64) / (n + 1e-6) * 2 * math.pi


def sine_1d(n: int, dim: int) -> np.ndarray:
  """POS^L: the Transformer's sine encoding of word positions 0..n-1. Returns (n, dim) float32."""
  return _sine_features(np.arange(n, dtype=np.float64), dim).astype(np.float32)


def sine_2d(h: int, w: int, dim: int) -> np.ndarray:
  """2-D POS^V for the frame and object branches: [pos_y, pos_x], dim/2 each. (h, w, dim)."""
  if dim % 2:
    raise ValueError(f'2-D sine encoding needs an even dim, got {dim}')
  f = dim // 2
  pos_y = _sine_features(_normalised_grid(h), f)[:, None, :].repeat(w, axis=1)
  pos_x = _sine_features(_normalised_grid(w), f)[None, :, :].repeat(h, axis=0)
  return np.concatenate([pos_y, pos_x], axis=-1).astype(np.float32)


def sine_3d(t: int, h: int, w: int, dim: int) -> np.ndarray:
  """3-D POS^V for the video branch (VisTR): [pos_t, pos_y, pos_x], dim/3 each. (t, h, w, dim)."""
  if dim % 6:
    raise ValueError(f'3-D sine encoding needs dim divisible by 6, got {dim}')
  f = dim // 3
  shape = (t, h, w, f)
  pos_t = np.broadcast_to(_sine_features(_normalised_grid(t), f)[:, None, None, :], shape)
  pos_y = np.broadcast_to(_sine_features(_normalised_grid(h), f)[None, :, None, :], shape)
  pos_x = np.broadcast_to(_sine_features(_normalised_grid(w), f)[None, None, :, :], shape)
  return np.concatenate([pos_t, pos_y, pos_x], axis=-1).astype(np.float32)
