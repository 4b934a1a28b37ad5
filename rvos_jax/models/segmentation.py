"""Pyramid heads and boundary-aware segmentation (§3.3, Eq. 12-13; §3.4 "Network")."""

from __future__ import annotations

from collections.abc import Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from rvos_jax.models.embeddings import conv3x3

GROUP_NORM_GROUPS = 8  # §3.4: "a group normalization (8 groups)"
GROUP_NORM_EPS = 1e-5  # torch's default; flax's is 1e-6
PYRAMID_LEVELS = ('res4', 'res3', 'res2')  # coarse to fine after res5


def decoder_levels(strides: Mapping[str, int], finest: int = 4) -> tuple[str, ...]:
  """The pyramid levels the heads read: those at stride >= `finest`, coarse to fine. With
  torchvision's stem and finest 4 that is res4, res3, res2 (the paper's F^[2,3,4,5]); without
  the stem pool res2 is at stride 2 and only `finest=2` keeps it (the heads' last block then
  runs at twice the resolution, four times its cost)."""
  if finest not in (2, 4, 8):
    raise ValueError(f'model.decoder_finest_stride must be 2, 4 or 8, got {finest}')
  return tuple(name for name in PYRAMID_LEVELS if strides[name] >= finest)


def upsample_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(N, h, w, C) -> (N, *size, C). Half-pixel centres, no antialiasing: the same numbers as
  torch's F.interpolate(mode='bilinear', align_corners=False) when upsampling."""
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, *size, c), method='bilinear', antialias=False)


def depth_to_space(x: jax.Array, r: int) -> jax.Array:
  """(N, h, w, r*r) -> (N, h*r, w*r): channel i*r + j fills row offset i, column offset j of
  each cell (torch's F.pixel_shuffle for one output channel)."""
  n, h, w, c = x.shape
  chex.assert_equal(c, r * r)
  return x.reshape(n, h, w, r, r).transpose(0, 1, 3, 2, 4).reshape(n, h * r, w * r)


class ConvNormReLU(nn.Module):
  """The mapping block between two pyramid levels: 3x3 conv, GroupNorm(8), ReLU."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = conv3x3(self.features, 'conv')(x)
    x = nn.GroupNorm(num_groups=GROUP_NORM_GROUPS, epsilon=GROUP_NORM_EPS, name='norm')(x)
    return nn.relu(x)


class PyramidHead(nn.Module):
  """FPN-like coarse-to-fine head over res5..res2 (the pyramid decoder of URVOS [43]).

  x (N, h5, w5, C_in) at res5's resolution and the backbone features {'res2'..'res5'};
  returns (N, h2, w2, out_channels) at res2's resolution (stride 4). Each level: bilinear
  upsampling to the next backbone level's size, plus a 1x1 lateral of that level, then the
  mapping block. Used as F_dec (Eq. 6), F_bdry (Eq. 12) and F_seg (Eq. 13).

  levels: the backbone features read after res5, coarse to fine; the output is at the last
  one's resolution (MLRLSA leaves out res2 when the backbone has no stem pool, see
  `decoder_levels`, so the heads still end at stride 4).
  """

  features: int
  out_channels: int
  levels: tuple[str, ...] = PYRAMID_LEVELS

  @nn.compact
  def __call__(self, x: jax.Array, feats: Mapping[str, jax.Array]) -> jax.Array:
    chex.assert_rank(x, 4)
    chex.assert_equal_shape_prefix([x, feats['res5']], 3)
    lateral = lambda name: nn.Conv(self.features, (1, 1), name=f'lateral_{name}')(feats[name])
    x = nn.Conv(self.features, (1, 1), name='in_proj')(x) + lateral('res5')
    x = ConvNormReLU(self.features, name='block_res5')(x)
    for name in self.levels:
      x = upsample_bilinear(x, feats[name].shape[1:3]) + lateral(name)
      x = ConvNormReLU(self.features, name=f'block_{name}')(x)
    return conv3x3(self.out_channels, 'out')(x)


class BoundaryAwareSegmentation(nn.Module):
  """BAS (§3.3). M (N, h, w, C) and backbone features -> (E, B) logits, each (N, H, W).

  B = F_bdry(M, F^[2,3,4,5])                      (Eq. 12)
  E = F_cnn(B, F_seg(M, F^[2,3,4,5]))             (Eq. 13), F_cnn one 3x3 conv to 1 channel.
  Both heads work at stride 4; F_cnn too (a 3x3 conv at full resolution would cost 16x more
  for the same receptive field on upsampled maps), then E and B are upsampled to H x W:
  bilinearly (subpixel=1, the usual reading of the paper), or, with subpixel=r (ours, r = the
  heads' stride), the boundary head's last conv and F_cnn output r*r channels per cell that
  depth_to_space lays out as an r x r patch of full-resolution logits (ESPCN's sub-pixel
  convolution), cropped to H x W. Bilinear upsampling of stride-4 logits cannot draw a shape
  finer than about 4 pixels: on refer_shapes (objects of ~100 pixels) even the best stride-4
  logit map, fitted to each ground-truth mask, upsamples to J 0.91 (docs/model_choices.md).
  """

  features: int
  levels: tuple[str, ...] = PYRAMID_LEVELS
  subpixel: int = 1

  @nn.compact
  def __call__(self, m: jax.Array, feats: Mapping[str, jax.Array], size: tuple[int, int]):
    r = self.subpixel
    b = PyramidHead(self.features, r * r, self.levels, name='boundary_head')(m, feats)
    seg = PyramidHead(self.features, self.features, self.levels, name='seg_head')(m, feats)
    e = conv3x3(r * r, 'fcnn')(jnp.concatenate([b, seg], axis=-1))
    if r == 1:
      return upsample_bilinear(e, size)[..., 0], upsample_bilinear(b, size)[..., 0]
    if e.shape[1] * r < size[0] or e.shape[2] * r < size[1]:
      raise ValueError(f'subpixel={r}: {e.shape[1:3]} x {r} does not cover {size}')
    return (depth_to_space(e, r)[:, :size[0], :size[1]],
            depth_to_space(b, r)[:, :size[0], :size[1]])


class ConfidenceHead(nn.Module):
  """F_conf (§3.4): global average pooling of M and three 1x1 convs (dense layers on the
  pooled vector), one score logit per frame. M (N, h, w, C) -> (N,)."""

  features: int

  @nn.compact
  def __call__(self, m: jax.Array) -> jax.Array:
    chex.assert_rank(m, 4)
    x = m.mean(axis=(1, 2))
    x = nn.relu(nn.Dense(self.features, name='fc1')(x))
    x = nn.relu(nn.Dense(self.features, name='fc2')(x))
    return nn.Dense(1, name='fc3')(x)[..., 0]
