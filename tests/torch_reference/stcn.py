"""Plain-PyTorch STCN with the state_dict names of the released `stcn.pth` (eval_network.STCN:
key_encoder, value_encoder, key_proj, key_comp, decoder), written from STCN's paper and public
code for the parity tests of rvos_jax/models/stcn.py. NCHW; masks (B, O, H, W).

The key encoder reuses this directory's torchvision-layout ResNet (its layer1 kept as `res2`);
the value encoder's ResNet-18 is written here because its convs carry biases (STCN's
mod_resnet), which torchvision's do not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference import resnet as tv


class ResBlock(nn.Module):
  def __init__(self, indim: int, outdim: int):
    super().__init__()
    self.conv1 = nn.Conv2d(indim, outdim, 3, padding=1)
    self.conv2 = nn.Conv2d(outdim, outdim, 3, padding=1)
    self.downsample = nn.Conv2d(indim, outdim, 3, padding=1) if indim != outdim else None

  def forward(self, x):
    r = self.conv2(F.relu(self.conv1(F.relu(x))))
    return (x if self.downsample is None else self.downsample(x)) + r


class ChannelGate(nn.Module):
  def __init__(self, channels: int, reduction: int = 16):
    super().__init__()
    self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                             nn.Linear(channels // reduction, channels))

  def forward(self, x):
    att = self.mlp(F.avg_pool2d(x, x.shape[2:])) + self.mlp(F.max_pool2d(x, x.shape[2:]))
    return x * torch.sigmoid(att)[:, :, None, None]


class BasicConv(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(2, 1, 7, padding=3)

  def forward(self, x):
    return self.conv(x)


class SpatialGate(nn.Module):
  def __init__(self):
    super().__init__()
    self.spatial = BasicConv()

  def forward(self, x):
    pooled = torch.cat([x.max(1, keepdim=True)[0], x.mean(1, keepdim=True)], 1)
    return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
  def __init__(self, channels: int, reduction: int = 16):
    super().__init__()
    self.ChannelGate = ChannelGate(channels, reduction)  # noqa: N815 -- the released names
    self.SpatialGate = SpatialGate()  # noqa: N815

  def forward(self, x):
    return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
  def __init__(self, indim: int, outdim: int):
    super().__init__()
    self.block1 = ResBlock(indim, outdim)
    self.attention = CBAM(outdim)
    self.block2 = ResBlock(outdim, outdim)

  def forward(self, x, f16):
    x = self.block1(torch.cat([x, f16], 1))
    return self.block2(x + self.attention(x))


class BiasedBasicBlock(nn.Module):
  def __init__(self, inplanes: int, planes: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride),
                                      nn.BatchNorm2d(planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class KeyEncoder(nn.Module):
  def __init__(self, depth: int = 50, width: float = 1.0, stem_pool: bool = True):
    super().__init__()
    net = tv.ResNet(depth, width, stem_pool=stem_pool)
    self.stem_pool = stem_pool
    self.conv1, self.bn1, self.maxpool = net.conv1, net.bn1, net.maxpool
    self.res2, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    if self.stem_pool:
      x = self.maxpool(x)
    f4 = self.res2(x)
    f8 = self.layer2(f4)
    return self.layer3(f8), f8, f4


class ValueEncoder(nn.Module):
  def __init__(self, width: float = 1.0, value_dim: int = 512, key_f16: int = 1024,
               stem_pool: bool = True):
    super().__init__()
    w = int(round(64 * width))
    self.stem_pool = stem_pool
    self.conv1 = nn.Conv2d(5, w, 7, stride=2, padding=3)
    self.bn1 = nn.BatchNorm2d(w)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = nn.Sequential(BiasedBasicBlock(w, w), BiasedBasicBlock(w, w))
    self.layer2 = nn.Sequential(BiasedBasicBlock(w, 2 * w, 2), BiasedBasicBlock(2 * w, 2 * w))
    self.layer3 = nn.Sequential(BiasedBasicBlock(2 * w, 4 * w, 2),
                                BiasedBasicBlock(4 * w, 4 * w))
    self.fuser = FeatureFusionBlock(4 * w + key_f16, value_dim)

  def forward(self, image, mask, other, f16):
    x = torch.cat([image, mask, other], 1)
    x = F.relu(self.bn1(self.conv1(x)))
    if self.stem_pool:
      x = self.maxpool(x)
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fuser(x, f16)


class KeyProjection(nn.Module):
  def __init__(self, indim: int, keydim: int):
    super().__init__()
    self.key_proj = nn.Conv2d(indim, keydim, 3, padding=1)

  def forward(self, x):
    return self.key_proj(x)


class UpsampleBlock(nn.Module):
  def __init__(self, skip_c: int, up_c: int, out_c: int):
    super().__init__()
    self.skip_conv = nn.Conv2d(skip_c, up_c, 3, padding=1)
    self.out_conv = ResBlock(up_c, out_c)

  def forward(self, skip_f, up_f):
    x = self.skip_conv(skip_f)
    x = x + F.interpolate(up_f, size=skip_f.shape[2:], mode='bilinear', align_corners=False)
    return self.out_conv(x)


class Decoder(nn.Module):
  def __init__(self, value_dim: int, f8: int, f4: int, decoder_dim: int):
    super().__init__()
    self.compress = ResBlock(2 * value_dim, value_dim)
    self.up_16_8 = UpsampleBlock(f8, value_dim, decoder_dim)
    self.up_8_4 = UpsampleBlock(f4, decoder_dim, decoder_dim)
    self.pred = nn.Conv2d(decoder_dim, 1, 3, padding=1)

  def forward(self, f16, f8, f4, scale: int):
    x = self.compress(f16)
    x = self.up_16_8(f8, x)
    x = self.up_8_4(f4, x)
    x = self.pred(F.relu(x))
    return F.interpolate(x, scale_factor=scale, mode='bilinear', align_corners=False)


def affinity(mk, qk):
  """mk (B, C_k, N), qk (B, C_k, M) -> (B, N, M) = (2 mk.qk - |mk|^2) / sqrt(C_k)."""
  a = mk.pow(2).sum(1).unsqueeze(2)
  b = 2 * (mk.transpose(1, 2) @ qk)
  return (b - a) / math.sqrt(mk.shape[1])


def softmax_top(s, top: int | None):
  """Softmax over the memory axis (1), of the `top` largest only when given (zeros elsewhere;
  all of them when the memory has fewer locations)."""
  if top is None or top >= s.shape[1]:
    return F.softmax(s, dim=1)
  values, index = torch.topk(s, k=top, dim=1)
  e = torch.exp(values - values.max(1, keepdim=True)[0])
  e = e / e.sum(1, keepdim=True)
  return torch.zeros_like(s).scatter_(1, index, e)


class STCN(nn.Module):
  def __init__(self, key_depth: int = 50, width: float = 1.0, key_dim: int = 64,
               value_dim: int = 512, decoder_dim: int = 256, stem_pool: bool = True):
    super().__init__()
    w = int(round(64 * width))
    f16, f8, f4 = 16 * w, 8 * w, 4 * w  # Bottleneck (x4) widths
    self.scale = 4 if stem_pool else 2
    self.key_encoder = KeyEncoder(key_depth, width, stem_pool)
    self.value_encoder = ValueEncoder(width, value_dim, f16, stem_pool)
    self.key_proj = KeyProjection(f16, key_dim)
    self.key_comp = nn.Conv2d(f16, value_dim, 3, padding=1)
    self.decoder = Decoder(value_dim, f8, f4, decoder_dim)

  def encode_key(self, frame):
    f16, f8, f4 = self.key_encoder(frame)
    return self.key_proj(f16), self.key_comp(f16), f16, f8, f4

  def encode_value(self, frame, f16, masks):
    """masks (B, O, H, W) -> (B, O, C_v, h, w)."""
    b, o = masks.shape[:2]
    values = []
    for i in range(o):
      others = masks.sum(1) - masks[:, i] if o > 1 else torch.zeros_like(masks[:, i])
      values.append(self.value_encoder(frame, masks[:, i:i + 1], others[:, None], f16))
    return torch.stack(values, 1)

  def segment(self, qk16, qv16, qf8, qf4, mk, mv, top: int | None = None):
    """qk16 (B, C_k, h, w); mk (B, C_k, N); mv (B, O, C_v, N) -> logits (B, O, H, W)."""
    b, _, h, w = qk16.shape
    weights = softmax_top(affinity(mk, qk16.flatten(2)), top)  # (B, N, hw)
    out = []
    for i in range(mv.shape[1]):
      read = (mv[:, i] @ weights).view(b, -1, h, w)
      x = torch.cat([read, qv16], 1)
      out.append(self.decoder(x, qf8, qf4, self.scale)[:, 0])
    return torch.stack(out, 1)

  def forward(self, first, first_masks, second, top: int | None = None):
    k1, _, f16, _, _ = self.encode_key(first)
    values = self.encode_value(first, f16, first_masks)
    k2, v2, _, f8, f4 = self.encode_key(second)
    return self.segment(k2, v2, f8, f4, k1.flatten(2), values.flatten(3), top)


def aggregate(prob, dim: int = 1):
  """STCN's soft aggregation -> logits with the background first."""
  new_prob = torch.cat([torch.prod(1 - prob, dim=dim, keepdim=True), prob], dim).clamp(1e-7,
                                                                                     1 - 1e-7)
  return torch.log(new_prob / (1 - new_prob))
