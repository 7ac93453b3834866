"""PyTorch reference models for the zoo tests (tests only; torch is not a kdjax dependency).

``build(name, num_classes)`` returns the reference ``torch.nn.Module`` of a kdjax zoo name;
its ``forward`` returns ``(logits, features)`` keyed like kdjax's sown features.
"""

from . import mobilenetv2, resnet_cifar, resnet_imagenet, shufflenet, vgg, wrn

_FAMILIES = {
    **{name: resnet_cifar for name in resnet_cifar.DEPTHS},
    **{name: wrn for name in wrn.CONFIGS},
    "vgg8": vgg, "vgg13": vgg, "mobilenetv2": mobilenetv2,
    "shufflenetv1": shufflenet, "shufflenetv2": shufflenet,
    **{name: resnet_imagenet for name in resnet_imagenet.CONFIGS},
}
NAMES = tuple(_FAMILIES)


def build(name, num_classes):
  return _FAMILIES[name].build(name, num_classes)
