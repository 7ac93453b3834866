"""PyTorch reference: torchvision's ImageNet ResNet (torchvision/models/resnet.py; ResNet v1.5,
the stride on the bottleneck's 3x3 conv), resnet18/34/50, written out since torchvision is
not installed here.

Same modules, attribute names and forward as torchvision; ``forward`` returns
``(logits, features)`` with kdjax's feature names (mdistiller's
``mdistiller/models/imagenet/resnet.py`` definition: ``stem`` after the first ReLU, before the
max pool; ``stage{k}_preact`` the residual sum of the stage's last block before its ReLU).
"""

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    preact = out + (x if self.downsample is None else self.downsample(x))
    return F.relu(preact), preact


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    preact = out + (x if self.downsample is None else self.downsample(x))
    return F.relu(preact), preact


class ResNet(nn.Module):

  def __init__(self, block, layers, num_classes=1000):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], 2)
    self.layer3 = self._make_layer(block, 256, layers[2], 2)
    self.layer4 = self._make_layer(block, 512, layers[3], 2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    feats = {}
    x = self.bn1(self.conv1(x))
    feats["stem_preact"] = x
    x = F.relu(x)
    feats["stem"] = x
    x = self.maxpool(x)
    for k, layer in enumerate([self.layer1, self.layer2, self.layer3, self.layer4], start=1):
      for block in layer:
        x, preact = block(x)
      feats[f"stage{k}"], feats[f"stage{k}_preact"] = x, preact
    x = torch.flatten(self.avgpool(x), 1)
    feats["penultimate"] = x
    return self.fc(x), feats


CONFIGS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
           "resnet50": (Bottleneck, [3, 4, 6, 3])}


def build(name, num_classes):
  return ResNet(*CONFIGS[name], num_classes)
