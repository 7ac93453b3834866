"""PyTorch reference: RepDistiller's CIFAR ResNet (models/resnet.py), basic blocks only.

Same modules, attribute names (hence ``state_dict`` keys) and forward as
github.com/HobbitLong/RepDistiller models/resnet.py; ``forward`` returns
``(logits, features)`` with kdjax's feature names.
"""

from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x if self.downsample is None else self.downsample(x)
    preact = out + residual
    return F.relu(preact), preact


class ResNet(nn.Module):

  def __init__(self, depth, num_filters, num_classes=100):
    super().__init__()
    n = (depth - 2) // 6
    self.inplanes = num_filters[0]
    self.conv1 = nn.Conv2d(3, num_filters[0], 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(num_filters[0])
    self.layer1 = self._make_layer(num_filters[1], n)
    self.layer2 = self._make_layer(num_filters[2], n, stride=2)
    self.layer3 = self._make_layer(num_filters[3], n, stride=2)
    self.avgpool = nn.AvgPool2d(8)
    self.fc = nn.Linear(num_filters[3], num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes))
    layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    feats = {}
    x = F.relu(self.bn1(self.conv1(x)))
    feats["stem"] = x
    for k, layer in enumerate([self.layer1, self.layer2, self.layer3], start=1):
      for block in layer:
        x, preact = block(x)
      feats[f"stage{k}"], feats[f"stage{k}_preact"] = x, preact
    x = self.avgpool(x).view(x.size(0), -1)
    feats["penultimate"] = x
    return self.fc(x), feats


DEPTHS = {"resnet8": 8, "resnet14": 14, "resnet20": 20, "resnet32": 32, "resnet44": 44,
          "resnet56": 56, "resnet110": 110, "resnet8x4": 8, "resnet32x4": 32}


def build(name, num_classes):
  widths = [32, 64, 128, 256] if name.endswith("x4") else [16, 16, 32, 64]
  return ResNet(DEPTHS[name], widths, num_classes)
