"""ResNet backbone (§3.1, §3.4 of the paper): res2..res5 features, torchvision layout.

The module tree mirrors torchvision's `ResNet` attribute names exactly (conv1, bn1, layer1 > 0 >
conv1/bn1/.../downsample > 0/1), so through the naming rule of notes/conventions.md a torchvision
`state_dict` ports key by key with `rvos_jax.porting.torch_to_flax`. Bottleneck is v1.5 (the stride
sits on the 3x3 conv), as in torchvision.

Layout is channels-last: x (N, H, W, 3) -> {'res2'..'res5'}: (N, ceil(H/s), ceil(W/s), C) with
s = 4, 8, 16, 32. The input is already normalised with the ImageNet mean/std by the caller.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision's `resnet{depth}`: (block type, blocks per stage).
_STAGES = {
  18: ('basic', (2, 2, 2, 2)),
  34: ('basic', (3, 4, 6, 3)),
  50: ('bottleneck', (3, 4, 6, 3)),
  101: ('bottleneck', (3, 4, 23, 3)),
  152: ('bottleneck', (3, 8, 36, 3)),
}
_EXPANSION = {'basic': 1, 'bottleneck': 4}
FEATURE_NAMES = ('res2', 'res3', 'res4', 'res5')
# Output stride of each feature w.r.t. the input; spatial size is ceil(H / stride) because every
# downsampling op (7x7/2 pad 3, maxpool 3x3/2 pad 1, 3x3/2 pad 1, 1x1/2 pad 0) maps n -> ceil(n/2).
FEATURE_STRIDES = {'res2': 4, 'res3': 8, 'res4': 16, 'res5': 32}
BN_EPSILON = 1e-5  # torch's default; Flax's nn.BatchNorm default is also 1e-5, stated for clarity.

# torchvision initialises convs with kaiming_normal_(mode='fan_out', nonlinearity='relu').
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def base_width(width_multiplier: float) -> int:
  """Channels of the stem and of layer1's 3x3 convs: 64 * width_multiplier (must be an integer)."""
  width = 64 * width_multiplier
  if width < 1 or abs(width - round(width)) > 1e-6:
    raise ValueError(
      f'width_multiplier={width_multiplier} must make 64 * width_multiplier a positive integer '
      f'(got {width}).')
  return int(round(width))


def _stages(depth: int) -> tuple[str, tuple[int, ...]]:
  if depth not in _STAGES:
    raise ValueError(f'ResNet depth must be one of {sorted(_STAGES)}, got {depth}.')
  return _STAGES[depth]


def feature_channels(depth: int = 50, width_multiplier: float = 1.0) -> dict[str, int]:
  """Channels of res2..res5, e.g. ResNet-50: {'res2': 256, 'res3': 512, 'res4': 1024, ...}."""
  block, _ = _stages(depth)
  width = base_width(width_multiplier)
  return {name: width * 2**i * _EXPANSION[block] for i, name in enumerate(FEATURE_NAMES)}


def feature_strides(output_stride: int = 32, stem_pool: bool = True) -> dict[str, int]:
  """Stride of each feature: res4/res5 stop downsampling when output_stride is 16 or 8.

  Without the stem's max-pool every feature is at half the stride (res2 at 2, ..., res5 at 16),
  and output_stride 8 dilates res5 only.
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f'ResNet output_stride must be 8, 16 or 32, got {output_stride}.')
  scale = 1 if stem_pool else 2
  return {name: min(s // scale, output_stride) for name, s in FEATURE_STRIDES.items()}


def feature_shapes(batch: int, height: int, width: int, depth: int = 50,
                   width_multiplier: float = 1.0, output_stride: int = 32, stem_pool: bool = True
                   ) -> dict[str, tuple[int, int, int, int]]:
  """NHWC shapes of res2..res5 for an (batch, height, width, 3) input."""
  channels = feature_channels(depth, width_multiplier)
  return {
    name: (batch, math.ceil(height / s), math.ceil(width / s), channels[name])
    for name, s in feature_strides(output_stride, stem_pool).items()
  }


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics and affine (batch 2 per device is too small to train BN).

  All four variables live in the non-trainable 'batch_stats' collection, so they receive no
  gradient and no optimizer state. Names match nn.BatchNorm (scale, bias, mean, var) so the same
  torch keys (weight, bias, running_mean, running_var) port onto either variant.
  """
  epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.variable('batch_stats', 'scale', jnp.ones, (c,), jnp.float32).value
    bias = self.variable('batch_stats', 'bias', jnp.zeros, (c,), jnp.float32).value
    mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32).value
    var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32).value
    # y = (x - mean) * scale / sqrt(var + eps) + bias, folded into one multiply-add over the
    # activation (as torchvision's FrozenBatchNorm2d does).
    mult = scale * jax.lax.rsqrt(var + self.epsilon)
    # Folded in float32, applied in the activation's dtype (bfloat16 under mixed precision).
    return x * mult.astype(x.dtype) + (bias - mean * mult).astype(x.dtype)


def batch_norm(frozen: bool, train: bool, name: str):
  """The backbone's norm layer; call inside a compact method (the caller becomes the parent)."""
  if frozen:
    return FrozenBatchNorm(name=name)
  bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON, name=name)
  # Statistics and affine stay float32; the output keeps the activation's dtype (bfloat16 under
  # rvos_jax.precision), or the next convolution would be promoted back to float32.
  return lambda x: bn(x).astype(x.dtype)


def conv(features: int, kernel: int, stride: int, name: str, dilation: int = 1,
         use_bias: bool = False) -> nn.Conv:
  """Conv (bias-free, as torchvision's ResNets; use_bias for STCN's value encoder, whose ResNet
  convs have biases) with torch's symmetric padding dilation * (k // 2) (never 'SAME': it
  pads asymmetrically)."""
  pad = dilation * (kernel // 2)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
                 use_bias=use_bias, kernel_init=_conv_init, name=name)


class Downsample(nn.Module):
  """Projection shortcut: torch `nn.Sequential(conv1x1, BatchNorm2d)`, hence the names '0', '1'."""
  features: int
  stride: int
  frozen_bn: bool
  conv_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv(self.features, 1, self.stride, name='0', use_bias=self.conv_bias)(x)
    return batch_norm(self.frozen_bn, train, name='1')(x)


class BasicBlock(nn.Module):
  """ResNet-18/34 block: two 3x3 convs."""
  planes: int
  stride: int
  frozen_bn: bool
  dilation: int = 1  # torchvision refuses dilation in BasicBlock; we allow it (both 3x3 convs)
  conv_bias: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b = self.conv_bias
    out = conv(self.planes, 3, self.stride, name='conv1', dilation=self.dilation, use_bias=b)(x)
    out = nn.relu(batch_norm(self.frozen_bn, train, name='bn1')(out))
    out = conv(self.planes, 3, 1, name='conv2', dilation=self.dilation, use_bias=b)(out)
    out = batch_norm(self.frozen_bn, train, name='bn2')(out)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = Downsample(self.planes, self.stride, self.frozen_bn, conv_bias=b,
                     name='downsample')(x, train)
    return nn.relu(out + x)


class Bottleneck(nn.Module):
  """ResNet-50/101/152 block, v1.5: 1x1 -> 3x3 (carries the stride) -> 1x1 (x4 channels)."""
  planes: int
  stride: int
  frozen_bn: bool
  dilation: int = 1
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out_features = self.planes * self.expansion
    out = conv(self.planes, 1, 1, name='conv1')(x)
    out = nn.relu(batch_norm(self.frozen_bn, train, name='bn1')(out))
    out = conv(self.planes, 3, self.stride, name='conv2', dilation=self.dilation)(out)
    out = nn.relu(batch_norm(self.frozen_bn, train, name='bn2')(out))
    out = conv(out_features, 1, 1, name='conv3')(out)
    out = batch_norm(self.frozen_bn, train, name='bn3')(out)
    if self.stride != 1 or x.shape[-1] != out_features:
      x = Downsample(out_features, self.stride, self.frozen_bn, name='downsample')(x, train)
    return nn.relu(out + x)


class ResLayer(nn.Module):
  """torchvision's `layerN`: a sequence of blocks named '0', '1', ...; the first one strides.

  With `dilate` (torchvision's replace_stride_with_dilation) the layer keeps the resolution: the
  stride becomes a dilation of the later blocks' 3x3 convs; the first block keeps the previous
  dilation, as in torchvision.
  """
  block: str
  num_blocks: int
  planes: int
  stride: int
  frozen_bn: bool
  previous_dilation: int = 1
  dilate: bool = False
  conv_bias: bool = False  # BasicBlock only (STCN's value encoder)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    stride, dilation = self.stride, self.previous_dilation
    if self.dilate:
      stride, dilation = 1, self.previous_dilation * self.stride
    for i in range(self.num_blocks):
      kwargs = dict(dilation=self.previous_dilation if i == 0 else dilation, name=str(i))
      if self.block == 'basic':
        x = BasicBlock(self.planes, stride if i == 0 else 1, self.frozen_bn,
                       conv_bias=self.conv_bias, **kwargs)(x, train)
      else:
        if self.conv_bias:
          raise ValueError('conv_bias is only implemented for BasicBlock layers')
        x = Bottleneck(self.planes, stride if i == 0 else 1, self.frozen_bn, **kwargs)(x, train)
    return x


class ResNet(nn.Module):
  """torchvision-layout ResNet returning the res2..res5 feature maps (NHWC).

  Attributes:
    depth: 18, 34 (BasicBlock) or 50, 101, 152 (Bottleneck v1.5).
    width_multiplier: scales the base width 64 (e.g. 0.25 -> 16) for CPU-sized configs.
    frozen_bn: FrozenBatchNorm (stats and affine in 'batch_stats') if True, else nn.BatchNorm
      (affine in 'params', stats in 'batch_stats'; pass mutable=['batch_stats'] when train=True).
    output_stride: 32 (the paper); 16 or 8 replace the stride of layer4 (and layer3) by a
      dilation (torchvision's replace_stride_with_dilation), for small CPU-sized inputs where
      res5 at stride 32 would be a 2x3 map. The weights are the same; they port unchanged.
    stem_pool: torchvision's stem max-pool (3x3/2). False (ours, for small frames) drops it, so
      res2..res5 sit at strides 2, 4, 8, 16 (output_stride 8 then dilates res5 only): on 64x96
      frames a 12-pixel object is 3 pixels wide at res2 with the pool, 6 without, and shape
      (a circle against a diamond) is what the pool loses. No parameter changes.
  """
  depth: int = 50
  width_multiplier: float = 1.0
  frozen_bn: bool = True
  output_stride: int = 32
  stem_pool: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    chex.assert_rank(x, 4)
    chex.assert_axis_dimension(x, -1, 3)
    block, blocks_per_stage = _stages(self.depth)
    width = base_width(self.width_multiplier)
    n, h, w, _ = x.shape

    # Stem: conv 7x7/2 pad 3, BN, ReLU, max-pool 3x3/2 pad 1. Flax's max_pool pads with -inf,
    # like torch, so padding never wins the max.
    x = conv(width, 7, 2, name='conv1')(x)
    x = nn.relu(batch_norm(self.frozen_bn, train, name='bn1')(x))
    if self.stem_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    features = {}
    strides = feature_strides(self.output_stride, self.stem_pool)
    dilation, previous = 1, strides['res2']
    for i, (name, num_blocks) in enumerate(zip(FEATURE_NAMES, blocks_per_stage, strict=True)):
      dilate = i > 0 and strides[name] == previous
      x = ResLayer(block, num_blocks, width * 2**i, 1 if i == 0 else 2, self.frozen_bn,
                   previous_dilation=dilation, dilate=dilate, name=f'layer{i + 1}')(x, train)
      if dilate:
        dilation *= 2
      previous = strides[name]
      features[name] = x

    expected = feature_shapes(n, h, w, self.depth, self.width_multiplier, self.output_stride,
                              self.stem_pool)
    for name in FEATURE_NAMES:
      chex.assert_shape(features[name], expected[name])
    return features
