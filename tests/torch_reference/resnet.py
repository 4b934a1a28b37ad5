"""Plain torch.nn ResNet with torchvision's state_dict keys (torchvision is not installable here).

BasicBlock (depth 18/34) and Bottleneck v1.5 (50/101/152, stride on the 3x3 conv), with a width
multiplier on the base width 64. `forward` returns res2..res5 (NCHW); `fc` exists so that a
state_dict has every key of torchvision's (conv1.weight, bn1.running_mean,
layer1.0.downsample.0.weight, ..., fc.weight, fc.bias).
"""

from __future__ import annotations

import torch
from torch import nn

STAGES = {
  18: ('basic', (2, 2, 2, 2)),
  34: ('basic', (3, 4, 6, 3)),
  50: ('bottleneck', (3, 4, 6, 3)),
  101: ('bottleneck', (3, 4, 23, 3)),
  152: ('bottleneck', (3, 8, 36, 3)),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
  return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation,
                   bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None, dilation: int = 1):
    super().__init__()
    self.conv1 = conv3x3(inplanes, planes, stride, dilation)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes, dilation=dilation)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None, dilation: int = 1):
    super().__init__()
    self.conv1 = conv1x1(inplanes, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv3x3(planes, planes, stride, dilation)  # v1.5: the stride is here
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = conv1x1(planes, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class ResNet(nn.Module):

  def __init__(self, depth: int = 50, width_multiplier: float = 1.0, num_classes: int = 1000,
               replace_stride_with_dilation=(False, False, False), stem_pool: bool = True):
    super().__init__()
    self.stem_pool = stem_pool  # False: no max-pool after the stem (rvos_jax's option)
    self.dilation = 1
    block_name, layers = STAGES[depth]
    block = BasicBlock if block_name == 'basic' else Bottleneck
    width = int(round(64 * width_multiplier))
    self.inplanes = width
    self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, width, layers[0])
    dilate = replace_stride_with_dilation
    self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2, dilate=dilate[0])
    self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2, dilate=dilate[1])
    self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2, dilate=dilate[2])
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def _make_layer(self, block, planes: int, blocks: int, stride: int = 1,
                  dilate: bool = False) -> nn.Sequential:
    # torchvision's rule: a dilated layer's first block keeps the previous dilation.
    previous_dilation = self.dilation
    if dilate:
      self.dilation *= stride
      stride = 1
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                 nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample, dilation=previous_dilation)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = self.relu(self.bn1(self.conv1(x)))
    if self.stem_pool:
      x = self.maxpool(x)
    res2 = self.layer1(x)
    res3 = self.layer2(res2)
    res4 = self.layer3(res3)
    res5 = self.layer4(res4)
    return {'res2': res2, 'res3': res3, 'res4': res4, 'res5': res5}

  def classify(self, x: torch.Tensor) -> torch.Tensor:
    """torchvision's forward (ImageNet logits), for completeness."""
    return self.fc(torch.flatten(self.avgpool(self.forward(x)['res5']), 1))


def randomize_batch_norm_(model: nn.Module, generator: torch.Generator) -> nn.Module:
  """Random BN affine and statistics (var positive, not 1) and a non-zero step counter, so that a
  port which mixes up weight/bias/mean/var or drops a BN cannot pass a parity test."""
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
        m.bias.copy_(torch.randn(c, generator=generator) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
        m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))
  return model
