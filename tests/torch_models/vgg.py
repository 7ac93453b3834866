"""PyTorch reference: RepDistiller's CIFAR VGG with BatchNorm (models/vgg.py, vgg8_bn/vgg13_bn).

Same modules, attribute names and forward as github.com/HobbitLong/RepDistiller
models/vgg.py; ``forward`` returns ``(logits, features)`` with kdjax's feature names.
"""

from torch import nn
from torch.nn import functional as F

CFG = {"vgg8": [[64], [128], [256], [512], [512]],
       "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]}


def _make_layers(cfg, in_channels):
  layers = []
  for v in cfg:
    layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
    in_channels = v
  return nn.Sequential(*layers[:-1])


class VGG(nn.Module):

  def __init__(self, cfg, num_classes=100):
    super().__init__()
    self.block0 = _make_layers(cfg[0], 3)
    self.block1 = _make_layers(cfg[1], cfg[0][-1])
    self.block2 = _make_layers(cfg[2], cfg[1][-1])
    self.block3 = _make_layers(cfg[3], cfg[2][-1])
    self.block4 = _make_layers(cfg[4], cfg[3][-1])
    self.pool = nn.MaxPool2d(2, 2)
    self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
    self.classifier = nn.Linear(512, num_classes)

  def forward(self, x):
    h = x.shape[2]
    feats = {}
    x = F.relu(self.block0(x))
    feats["stem"] = x
    x = self.pool(x)
    for k, block in enumerate([self.block1, self.block2, self.block3, self.block4], start=1):
      if k == 4 and h == 64:
        x = self.pool(x)
      x = block(x)
      feats[f"stage{k}_preact"] = x
      x = F.relu(x)
      feats[f"stage{k}"] = x
      if k < 3:
        x = self.pool(x)
    x = self.pool4(x).view(x.size(0), -1)
    feats["penultimate"] = x
    return self.classifier(x), feats


def build(name, num_classes):
  return VGG(CFG[name], num_classes)
