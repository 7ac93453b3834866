"""PyTorch reference: RepDistiller's CIFAR MobileNetV2 (models/mobilenetv2.py, ``mobile_half``:
expansion T=6, width 0.5).

Same modules, attribute names and forward as github.com/HobbitLong/RepDistiller
models/mobilenetv2.py; ``forward`` returns ``(logits, features)`` with kdjax's feature names
(RepDistiller returns the same list with and without ``preact``).
"""

from torch import nn


def conv_bn(inp, oup, kernel, stride):
  return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
                       nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):

  def __init__(self, inp, oup, stride, expand_ratio):
    super().__init__()
    self.use_res_connect = stride == 1 and inp == oup
    hid = inp * expand_ratio
    self.conv = nn.Sequential(
        nn.Conv2d(inp, hid, 1, 1, 0, bias=False), nn.BatchNorm2d(hid), nn.ReLU(inplace=True),
        nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid),
        nn.ReLU(inplace=True),
        nn.Conv2d(hid, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup))

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):

  def __init__(self, T=6, num_classes=100, width_mult=0.5, input_size=32):
    super().__init__()
    setting = [[1, 16, 1, 1], [T, 24, 2, 1], [T, 32, 3, 2], [T, 64, 4, 2], [T, 96, 3, 1],
               [T, 160, 3, 2], [T, 320, 1, 1]]
    input_channel = int(32 * width_mult)
    self.conv1 = conv_bn(3, input_channel, 3, 2)
    self.blocks = nn.ModuleList([])
    for t, c, n, s in setting:
      output_channel = int(c * width_mult)
      layers = []
      for stride in [s] + [1] * (n - 1):
        layers.append(InvertedResidual(input_channel, output_channel, stride, t))
        input_channel = output_channel
      self.blocks.append(nn.Sequential(*layers))
    self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
    self.conv2 = conv_bn(input_channel, self.last_channel, 1, 1)
    self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
    self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)

  def forward(self, x):
    feats = {}
    out = self.conv1(x)
    feats["stem"] = out
    stage_ends = {1: 1, 2: 2, 4: 3, 6: 4}
    for i, block in enumerate(self.blocks):
      out = block(out)
      if i in stage_ends:
        k = stage_ends[i]
        feats[f"stage{k}"] = feats[f"stage{k}_preact"] = out
    out = self.avgpool(self.conv2(out)).view(out.size(0), -1)
    feats["penultimate"] = out
    return self.classifier(out), feats


def build(name, num_classes):
  assert name == "mobilenetv2"
  return MobileNetV2(6, num_classes, 0.5)
