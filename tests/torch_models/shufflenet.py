"""PyTorch reference: RepDistiller's CIFAR ShuffleNetV1 (models/ShuffleNetv1.py, ``ShuffleV1``:
groups 3, widths 240/480/960) and ShuffleNetV2 (models/ShuffleNetv2.py, ``ShuffleV2``: net
size 1, widths 116/232/464, head 1024).

Same modules, attribute names and forward as github.com/HobbitLong/RepDistiller;
``forward`` returns ``(logits, features)`` with kdjax's feature names.
"""

import torch
from torch import nn
from torch.nn import functional as F


def shuffle(x, g):
  n, c, h, w = x.size()
  return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class V1Bottleneck(nn.Module):

  def __init__(self, in_planes, out_planes, stride, groups):
    super().__init__()
    self.stride = stride
    mid = int(out_planes / 4)
    self.g = 1 if in_planes == 24 else groups
    self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.g, bias=False)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
    self.bn3 = nn.BatchNorm2d(out_planes)
    self.shortcut = nn.Sequential(nn.AvgPool2d(3, 2, 1)) if stride == 2 else nn.Sequential()

  def forward(self, x):
    out = shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    res = self.shortcut(x)
    preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
    return F.relu(preact), preact


class ShuffleNetV1(nn.Module):

  def __init__(self, num_classes=100, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups=3):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    self.in_planes = 24
    self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
    self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
    self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
    self.linear = nn.Linear(out_planes[2], num_classes)

  def _make_layer(self, out_planes, num_blocks, groups):
    layers = []
    for i in range(num_blocks):
      cat_planes = self.in_planes if i == 0 else 0
      layers.append(V1Bottleneck(self.in_planes, out_planes - cat_planes, 2 if i == 0 else 1, groups))
      self.in_planes = out_planes
    return nn.Sequential(*layers)

  def forward(self, x):
    feats = {}
    out = F.relu(self.bn1(self.conv1(x)))
    feats["stem"] = out
    for k, layer in enumerate([self.layer1, self.layer2, self.layer3], start=1):
      for block in layer:
        out, preact = block(out)
      feats[f"stage{k}"], feats[f"stage{k}_preact"] = out, preact
    out = F.avg_pool2d(out, 4).view(out.size(0), -1)
    feats["penultimate"] = out
    return self.linear(out), feats


class V2BasicBlock(nn.Module):

  def __init__(self, in_channels):
    super().__init__()
    c = in_channels // 2
    self.conv1 = nn.Conv2d(c, c, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(c)
    self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
    self.bn2 = nn.BatchNorm2d(c)
    self.conv3 = nn.Conv2d(c, c, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(c)

  def forward(self, x):
    c = x.size(1) // 2
    x1, x2 = x[:, :c], x[:, c:]
    out = F.relu(self.bn1(self.conv1(x2)))
    out = self.bn2(self.conv2(out))
    preact = self.bn3(self.conv3(out))
    out = shuffle(torch.cat([x1, F.relu(preact)], 1), 2)
    return out, torch.cat([x1, preact], 1)


class V2DownBlock(nn.Module):

  def __init__(self, in_channels, out_channels):
    super().__init__()
    mid = out_channels // 2
    self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
    self.bn1 = nn.BatchNorm2d(in_channels)
    self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(mid)
    self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
    self.bn4 = nn.BatchNorm2d(mid)
    self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
    self.bn5 = nn.BatchNorm2d(mid)

  def forward(self, x):
    out1 = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    out2 = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
    out2 = F.relu(self.bn5(self.conv5(out2)))
    return shuffle(torch.cat([out1, out2], 1), 2)


class ShuffleNetV2(nn.Module):

  def __init__(self, num_classes=100, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    self.in_channels = 24
    self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
    self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
    self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
    self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, 1, 0, bias=False)
    self.bn2 = nn.BatchNorm2d(out_channels[3])
    self.linear = nn.Linear(out_channels[3], num_classes)

  def _make_layer(self, out_channels, num_blocks):
    layers = [V2DownBlock(self.in_channels, out_channels)]
    layers += [V2BasicBlock(out_channels) for _ in range(num_blocks)]
    self.in_channels = out_channels
    return nn.Sequential(*layers)

  def forward(self, x):
    feats = {}
    out = F.relu(self.bn1(self.conv1(x)))
    feats["stem"] = out
    for k, layer in enumerate([self.layer1, self.layer2, self.layer3], start=1):
      out = layer[0](out)
      for block in layer[1:]:
        out, preact = block(out)
      feats[f"stage{k}"], feats[f"stage{k}_preact"] = out, preact
    out = F.relu(self.bn2(self.conv2(out)))
    out = F.avg_pool2d(out, 4).view(out.size(0), -1)
    feats["penultimate"] = out
    return self.linear(out), feats


def build(name, num_classes):
  return {"shufflenetv1": ShuffleNetV1, "shufflenetv2": ShuffleNetV2}[name](num_classes)
