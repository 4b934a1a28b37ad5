"""STCN (Cheng, Tai, Tang, NeurIPS 2021, "Rethinking Space-Time Networks with Improved Memory
Coverage for Efficient Video Object Segmentation"): the mask propagation of our paper's §3.4 /
Table 4.

Written from STCN's paper and its public code (hkchengrex/STCN, model/eval_network.py,
modules.py, network.py; facts, our code). The module tree mirrors the names of the released
`stcn.pth` state_dict, so through the naming rule of rvos_jax.porting it ports key by key
(rvos_jax.port_stcn):

  key_encoder    torchvision ResNet-50 up to layer3 (its layer1 is named `res2`), frozen BN:
                 f16 (1024 ch, stride 16), f8 (512), f4 (256)
  key_proj       KeyProjection: 3x3 conv f16 -> C_k = 64 (key_proj.key_proj)
  key_comp       3x3 conv f16 -> 512, the query's half of the decoder input
  value_encoder  ResNet-18 up to layer3 with biased convs, input [image, mask, other objects]
                 (5 channels), then `fuser`: ResBlock(256 + 1024 -> 512), CBAM as a residual,
                 ResBlock(512): the memory value, C_v = 512
  decoder        compress ResBlock(1024 -> 512), up_16_8 and up_8_4 (a 3x3 skip conv, the
                 coarser map upsampled x2 bilinearly and added, a ResBlock), pred 3x3 -> 1 on
                 relu(x), bilinear x4 to the input size: one logit map per object

ResBlock is pre-activation (conv(relu(x)) twice, no norm) with a 3x3 conv shortcut where the
channels change. CBAM: a shared MLP (C -> C/16 -> C) over the average- and max-pooled
features, summed, as a sigmoid channel gate; then a 7x7 conv (with bias, no BN) over the
[max, mean] channel pool as a sigmoid spatial gate.

Memory read (`memory_readout`): the affinity of memory location i and query location j is
the negative squared L2 distance with the query-norm term dropped, (2 k_i.q_j - |k_i|^2) /
sqrt(C_k). Paper and code differ in form only: the paper writes -|k_i - q_j|^2 / sqrt(C_k);
the dropped -|q_j|^2 is constant over the memory axis, which the softmax runs over, so both
give the same weights (we follow the code). At inference only the top_k (20) affinities of each
query location enter the softmax, the rest weigh 0 (the released code exponentiates them
without subtracting the maximum; we subtract it: the same numbers in float32, and no overflow).
The readout (C_v) is concatenated with key_comp of the query (readout first) for the decoder.

Every tensor is channels-last (NHWC); masks are (B, O, H, W) probabilities for O objects.
Widths are options (`width`, `key_dim`, `value_dim`, `decoder_dim`) for CPU-sized training on
refer_shapes; the defaults are the released model's. Frames must be padded to a multiple of 16
(`pad_to_multiple`), as STCN's pad_divide_by does, with zeros after normalisation.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rvos_jax.models import resnet
from rvos_jax.models.segmentation import upsample_bilinear

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 16  # of the keys and values; frames are padded to a multiple of it


def normalize(frames: jax.Array) -> jax.Array:
  """RGB in [0, 1] -> ImageNet-normalised (STCN's input)."""
  mean = jnp.asarray(IMAGENET_MEAN, frames.dtype)
  std = jnp.asarray(IMAGENET_STD, frames.dtype)
  return (frames - mean) / std


def pad_amounts(size: int, multiple: int = STRIDE) -> tuple[int, int]:
  """STCN's pad_divide_by: the missing rows (columns) split floor-half before, the rest after."""
  missing = -size % multiple
  return missing // 2, missing - missing // 2


def pad_to_multiple(x: np.ndarray | jax.Array, multiple: int = STRIDE, axes=(-3, -2)):
  """Zero-pads the two spatial axes (default: NHWC's H, W) to multiples of `multiple`."""
  pads = [(0, 0)] * x.ndim
  for axis in axes:
    pads[axis] = pad_amounts(x.shape[axis], multiple)
  return jnp.pad(x, pads) if isinstance(x, jax.Array) else np.pad(x, pads)


def unpad(x, height: int, width: int, axes=(-2, -1)):
  """Inverse of pad_to_multiple for an (..., H', W') or given-axes array."""
  (top, _), (left, _) = pad_amounts(height), pad_amounts(width)
  index = [slice(None)] * x.ndim
  index[axes[0]] = slice(top, top + height)
  index[axes[1]] = slice(left, left + width)
  return x[tuple(index)]


def _conv3x3(features: int, name: str) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name=name)


class ResBlock(nn.Module):
  """STCN's pre-activation residual block: conv2(relu(conv1(relu(x)))) + shortcut(x); the
  shortcut is a 3x3 conv (`downsample`) where the channels change, else the identity."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    r = _conv3x3(self.features, 'conv1')(nn.relu(x))
    r = _conv3x3(self.features, 'conv2')(nn.relu(r))
    if x.shape[-1] != self.features:
      x = _conv3x3(self.features, 'downsample')(x)
    return x + r


class _MLP(nn.Module):
  """CBAM's channel MLP; torch Sequential(Flatten, Linear, ReLU, Linear), hence '1' and '3'."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Dense(self.hidden, name='1')(x))
    return nn.Dense(self.out, name='3')(x)


class ChannelGate(nn.Module):
  reduction: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    mlp = _MLP(hidden=c // self.reduction, out=c, name='mlp')
    attention = mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2)))
    return x * jax.nn.sigmoid(attention)[:, None, None, :]


class _SpatialConv(nn.Module):
  """torch's BasicConv wrapper (`spatial.conv`): a 7x7 conv 2 -> 1 with bias, no BN or ReLU."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(1, (7, 7), padding=((3, 3), (3, 3)), name='conv')(x)


class SpatialGate(nn.Module):

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = jnp.concatenate([jnp.max(x, -1, keepdims=True), jnp.mean(x, -1, keepdims=True)],
                             -1)  # max first, as the released code
    return x * jax.nn.sigmoid(_SpatialConv(name='spatial')(pooled))


class CBAM(nn.Module):
  reduction: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return SpatialGate(name='SpatialGate')(ChannelGate(self.reduction, name='ChannelGate')(x))


class FeatureFusionBlock(nn.Module):
  """Value feature (first) and key feature f16 (second) -> the memory value."""
  features: int

  @nn.compact
  def __call__(self, value: jax.Array, f16: jax.Array) -> jax.Array:
    x = ResBlock(self.features, name='block1')(jnp.concatenate([value, f16], -1))
    x = x + CBAM(name='attention')(x)
    return ResBlock(self.features, name='block2')(x)


class KeyEncoder(nn.Module):
  """torchvision ResNet (v1.5) up to layer3; BN frozen (STCN trains with BN in eval mode)."""
  depth: int = 50
  width: float = 1.0
  stem_pool: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    block, blocks = resnet._stages(self.depth)
    w = resnet.base_width(self.width)
    x = resnet.conv(w, 7, 2, name='conv1')(x)
    x = nn.relu(resnet.FrozenBatchNorm(name='bn1')(x))
    if self.stem_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    f4 = resnet.ResLayer(block, blocks[0], w, 1, True, name='res2')(x, False)
    f8 = resnet.ResLayer(block, blocks[1], 2 * w, 2, True, name='layer2')(f4, False)
    f16 = resnet.ResLayer(block, blocks[2], 4 * w, 2, True, name='layer3')(f8, False)
    return f16, f8, f4


class ValueEncoder(nn.Module):
  """ResNet-18 (biased convs, frozen BN) up to layer3 over [image, mask, others], fused with
  the frame's f16."""
  depth: int = 18
  width: float = 1.0
  value_dim: int = 512
  stem_pool: bool = True

  @nn.compact
  def __call__(self, image: jax.Array, mask: jax.Array, others: jax.Array,
               f16: jax.Array) -> jax.Array:
    block, blocks = resnet._stages(self.depth)
    w = resnet.base_width(self.width)
    x = jnp.concatenate([image, mask[..., None], others[..., None]], -1)
    x = resnet.conv(w, 7, 2, name='conv1', use_bias=True)(x)
    x = nn.relu(resnet.FrozenBatchNorm(name='bn1')(x))
    if self.stem_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i in range(3):
      x = resnet.ResLayer(block, blocks[i], w * 2**i, 1 if i == 0 else 2, True,
                          conv_bias=True, name=f'layer{i + 1}')(x, False)
    return FeatureFusionBlock(self.value_dim, name='fuser')(x, f16)


class KeyProjection(nn.Module):
  key_dim: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # STCN initialises it orthogonally with a zero bias (matters only from scratch).
    return nn.Conv(self.key_dim, (3, 3), padding=((1, 1), (1, 1)),
                   kernel_init=nn.initializers.orthogonal(), name='key_proj')(x)


class UpsampleBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, skip: jax.Array, up: jax.Array) -> jax.Array:
    x = _conv3x3(up.shape[-1], 'skip_conv')(skip)
    x = x + upsample_bilinear(up, skip.shape[1:3])
    return ResBlock(self.features, name='out_conv')(x)


class Decoder(nn.Module):
  value_dim: int = 512
  decoder_dim: int = 256

  @nn.compact
  def __call__(self, x: jax.Array, f8: jax.Array, f4: jax.Array,
               size: tuple[int, int]) -> jax.Array:
    x = ResBlock(self.value_dim, name='compress')(x)
    x = UpsampleBlock(self.decoder_dim, name='up_16_8')(f8, x)
    x = UpsampleBlock(self.decoder_dim, name='up_8_4')(f4, x)
    x = _conv3x3(1, 'pred')(nn.relu(x))
    return upsample_bilinear(x, size)[..., 0]


def affinity(memory_keys: jax.Array, query_keys: jax.Array) -> jax.Array:
  """(B, N, C_k) memory keys, (B, M, C_k) query keys -> (B, M, N): (2 k.q - |k|^2) / sqrt(C_k)
  (the negative squared L2 distance without the query's own norm; module docstring)."""
  ck = memory_keys.shape[-1]
  dot = jnp.einsum('bmc,bnc->bmn', query_keys, memory_keys)
  norm = jnp.sum(memory_keys * memory_keys, -1)[:, None, :]
  return (2 * dot - norm) / math.sqrt(ck)


def memory_readout(memory_keys: jax.Array, memory_values: jax.Array, query_keys: jax.Array,
                   *, top_k: int | None = None, valid: jax.Array | None = None) -> jax.Array:
  """Softmax over the memory locations of each query location's affinities, then the weighted
  sum of the memory values. memory_keys (B, N, C_k), memory_values (B, O, N, C_v) for O
  objects (one affinity for all of them, as STCN), query_keys (B, M, C_k); valid (B, N) bool
  marks the used slots of a fixed-size memory bank. top_k: only the k largest affinities.
  Returns (B, O, M, C_v)."""
  s = affinity(memory_keys, query_keys)  # (B, M, N)
  if valid is not None:
    s = jnp.where(valid[:, None, :], s, -jnp.inf)
  if top_k is None or top_k >= s.shape[-1]:
    weights = jax.nn.softmax(s, axis=-1)
    return jnp.einsum('bmn,bonc->bomc', weights, memory_values)
  values, index = jax.lax.top_k(s, top_k)  # (B, M, k)
  weights = jax.nn.softmax(values, axis=-1)
  picked = jax.vmap(lambda v, i: v[:, i])(memory_values, index)  # (B, O, M, k, C_v)
  return jnp.einsum('bmk,bomkc->bomc', weights, picked)


def aggregate(probs: jax.Array, axis: int = 1) -> jax.Array:
  """STCN's soft aggregation: O object probabilities -> O + 1 logits (background first):
  background = prod(1 - p), every probability clamped to [1e-7, 1 - 1e-7], logit(p)."""
  background = jnp.prod(1 - probs, axis=axis, keepdims=True)
  q = jnp.clip(jnp.concatenate([background, probs], axis), 1e-7, 1 - 1e-7)
  return jnp.log(q / (1 - q))


class STCN(nn.Module):
  """The network; call its methods through apply(..., method=...):

    encode_key(frames (B,H,W,3) normalised) -> (key (B,h,w,C_k), query value (B,h,w,C_v),
                                               f16, f8, f4)
    encode_value(frames, f16, masks (B,O,H,W)) -> memory values (B,O,h,w,C_v); each object's
                                               `others` channel is the sum of the other masks
    segment(key, query value, f8, f4, memory_keys (B,N,C_k), memory_values (B,O,N,C_v),
            top_k=, valid=) -> logits (B,O,H,W)
  __call__ runs all three on a first frame's mask and a second frame (for init and tests).
  """
  key_depth: int = 50
  value_depth: int = 18
  width: float = 1.0
  key_dim: int = 64
  value_dim: int = 512
  decoder_dim: int = 256
  stem_pool: bool = True

  def setup(self):
    self.key_encoder = KeyEncoder(self.key_depth, self.width, self.stem_pool)
    self.key_proj = KeyProjection(self.key_dim)
    self.key_comp = nn.Conv(self.value_dim, (3, 3), padding=((1, 1), (1, 1)))
    self.value_encoder = ValueEncoder(self.value_depth, self.width, self.value_dim,
                                      self.stem_pool)
    self.decoder = Decoder(self.value_dim, self.decoder_dim)

  def _check_frames(self, frames):
    chex.assert_rank(frames, 4)
    if frames.shape[1] % STRIDE or frames.shape[2] % STRIDE:
      raise ValueError(f'STCN frames must be padded to multiples of {STRIDE} '
                       f'(pad_to_multiple); got {frames.shape[1]}x{frames.shape[2]}')

  def encode_key(self, frames: jax.Array):
    self._check_frames(frames)
    f16, f8, f4 = self.key_encoder(frames)
    return self.key_proj(f16), self.key_comp(f16), f16, f8, f4

  def encode_value(self, frames: jax.Array, f16: jax.Array, masks: jax.Array) -> jax.Array:
    self._check_frames(frames)
    b, o, h, w = masks.shape
    chex.assert_shape(frames, (b, h, w, 3))
    others = jnp.sum(masks, 1, keepdims=True) - masks if o > 1 else jnp.zeros_like(masks)
    rep = lambda x: jnp.repeat(x, o, axis=0)
    values = self.value_encoder(rep(frames), masks.reshape(b * o, h, w),
                                others.reshape(b * o, h, w), rep(f16))
    return values.reshape(b, o, *values.shape[1:])

  def segment(self, key, query_value, f8, f4, memory_keys, memory_values, *,
              top_k: int | None = None, valid: jax.Array | None = None) -> jax.Array:
    b, h, w, _ = key.shape
    o = memory_values.shape[1]
    chex.assert_shape(memory_keys, (b, None, key.shape[-1]))
    chex.assert_shape(memory_values, (b, o, memory_keys.shape[1], self.value_dim))
    read = memory_readout(memory_keys, memory_values, key.reshape(b, h * w, -1), top_k=top_k,
                          valid=valid).reshape(b * o, h, w, -1)
    x = jnp.concatenate([read, jnp.repeat(query_value, o, axis=0)], -1)
    rep = lambda x: jnp.repeat(x, o, axis=0)
    size = (f4.shape[1] * 4, f4.shape[2] * 4) if self.stem_pool else (f4.shape[1] * 2,
                                                                       f4.shape[2] * 2)
    logits = self.decoder(x, rep(f8), rep(f4), size)
    return logits.reshape(b, o, *size)

  def __call__(self, first: jax.Array, first_masks: jax.Array, second: jax.Array,
               top_k: int | None = None) -> jax.Array:
    k1, _, f16, _, _ = self.encode_key(first)
    values = self.encode_value(first, f16, first_masks)
    k2, v2, _, f8, f4 = self.encode_key(second)
    b, h, w, ck = k1.shape
    mem_values = values.reshape(b, values.shape[1], h * w, -1)
    return self.segment(k2, v2, f8, f4, k1.reshape(b, h * w, ck), mem_values, top_k=top_k)
