"""PyTorch reference: RepDistiller's Wide ResNet (models/wrn.py), dropout 0.

Same modules, attribute names and forward as github.com/HobbitLong/RepDistiller
models/wrn.py; ``forward`` returns ``(logits, features)`` with kdjax's feature names
(``stage{k}_preact`` is RepDistiller's ``preact=True`` feature: the next BatchNorm applied
to the stage output).
"""

from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):

  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
    self.equalInOut = in_planes == out_planes
    self.convShortcut = (None if self.equalInOut else
                         nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False))

  def forward(self, x):
    if not self.equalInOut:
      x = F.relu(self.bn1(x))
      out = x
    else:
      out = F.relu(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(self.conv1(out))))
    return (x if self.equalInOut else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):

  def __init__(self, nb_layers, in_planes, out_planes, stride):
    super().__init__()
    self.layer = nn.Sequential(*[
        BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
        for i in range(nb_layers)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):

  def __init__(self, depth, widen_factor, num_classes=100):
    super().__init__()
    ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
    self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
    self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
    self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
    self.bn1 = nn.BatchNorm2d(ch[3])
    self.fc = nn.Linear(ch[3], num_classes)
    self.nChannels = ch[3]

  def forward(self, x):
    feats = {}
    out = self.conv1(x)
    feats["stem"] = out
    out = f1 = self.block1(out)
    out = f2 = self.block2(out)
    out = f3 = self.block3(out)
    out = F.relu(self.bn1(out))
    out = F.avg_pool2d(out, 8).view(-1, self.nChannels)
    feats["penultimate"] = out
    feats.update(stage1=f1, stage2=f2, stage3=f3,
                 stage1_preact=self.block2.layer[0].bn1(f1),
                 stage2_preact=self.block3.layer[0].bn1(f2), stage3_preact=self.bn1(f3))
    return self.fc(out), feats


CONFIGS = {"wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}


def build(name, num_classes):
  return WideResNet(*CONFIGS[name], num_classes)
