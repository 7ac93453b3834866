"""Per-family rules: PyTorch module names (RepDistiller / mdistiller / torchvision) -> Flax
module paths of kdjax's zoo. Each rule is ``(regex over the whole module name, template)``."""

import re

import flax.linen as nn

from kdjax.convert._mapping import Rule
from kdjax.models import (VGG, CifarResNet, ImageNetResNet, MobileNetV2, ShuffleNetV1,
                          ShuffleNetV2, WideResNet)

# RepDistiller models/resnet.py and torchvision models/resnet.py share their names.
RESNET: list[Rule] = [
    (r"(conv1|bn1|fc)", r"\1"),
    (r"layer(\d+)\.(\d+)\.((?:conv|bn)\d)", r"layer\1_\2/\3"),
    (r"layer(\d+)\.(\d+)\.downsample\.0", r"layer\1_\2/downsample_conv"),
    (r"layer(\d+)\.(\d+)\.downsample\.1", r"layer\1_\2/downsample_bn"),
]

# RepDistiller models/wrn.py: ``blockK.layer.i`` are the blocks of group K.
WRN: list[Rule] = [
    (r"(conv1|bn1|fc)", r"\1"),
    (r"block(\d)\.layer\.(\d+)\.(bn1|bn2|conv1|conv2|convShortcut)", r"block\1_\2/\3"),
]


def _vgg_layer(match: re.Match) -> str:
  # ``blockB`` is Sequential(conv, bn, relu, conv, bn, relu, ..., conv, bn).
  j, kind = divmod(int(match[2]), 3)
  return f"block{match[1]}_{('conv', 'bn', 'relu')[kind]}{j}"


# RepDistiller models/vgg.py.
VGG_RULES: list[Rule] = [(r"classifier", "classifier"), (r"block(\d)\.(\d+)", _vgg_layer)]

_MBV2_LAYERS = {"0": "expand_conv", "1": "expand_bn", "3": "depthwise_conv",
                "4": "depthwise_bn", "6": "project_conv", "7": "project_bn"}

# RepDistiller models/mobilenetv2.py: ``blocks.G.i.conv`` is Sequential(pw, bn, relu, dw, bn,
# relu, pw-linear, bn); ``conv1``/``conv2`` are Sequential(conv, bn, relu).
MOBILENETV2: list[Rule] = [
    (r"conv1\.0", "stem_conv"), (r"conv1\.1", "stem_bn"),
    (r"conv2\.0", "head_conv"), (r"conv2\.1", "head_bn"),
    (r"classifier\.0", "classifier"),
    (r"blocks\.(\d+)\.(\d+)\.conv\.([013467])",
     lambda m: f"blocks_{m[1]}_{m[2]}/{_MBV2_LAYERS[m[3]]}"),
]

# RepDistiller models/ShuffleNetv1.py and ShuffleNetv2.py.
SHUFFLENET: list[Rule] = [
    (r"(conv1|bn1|conv2|bn2|linear)", r"\1"),
    (r"layer(\d)\.(\d+)\.((?:conv|bn)\d)", r"layer\1_\2/\3"),
]

# Model class -> its rules; a model built by ``get_model`` converts if its class is here.
RULES: dict[type[nn.Module], list[Rule]] = {
    CifarResNet: RESNET,
    ImageNetResNet: RESNET,
    WideResNet: WRN,
    VGG: VGG_RULES,
    MobileNetV2: MOBILENETV2,
    ShuffleNetV1: SHUFFLENET,
    ShuffleNetV2: SHUFFLENET,
}
