"""ImageNet ResNets (resnet18, resnet34, resnet50) as torchvision builds them.

Follows torchvision's ``torchvision/models/resnet.py`` (He et al., "Deep Residual Learning for
Image Recognition", CVPR 2016; ResNet v1.5: the bottleneck's stride sits on its 3x3 conv): a
7x7 stride-2 conv -> BN -> ReLU -> 3x3 stride-2 max pool, four stages (64, 128, 256, 512
planes; strides 1, 2, 2, 2) of basic (expansion 1) or bottleneck (expansion 4) blocks,
a 1x1 conv + BN shortcut where the stride or width changes, global average pooling and a
linear classifier. No conv has a bias.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from kdjax.models._layers import batch_norm, conv, global_avg_pool, max_pool


class ResidualBlock(nn.Module):
  """torchvision's ``BasicBlock`` (``bottleneck=False``) or ``Bottleneck``; returns
  ``(relu(preact), preact)`` with ``preact`` the residual sum."""

  planes: int
  stride: int = 1
  bottleneck: bool = False
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    conv_ = functools.partial(conv, impl=self.conv_impl)
    if self.bottleneck:
      out = nn.relu(batch_norm(train, "bn1")(conv_(self.planes, 1, name="conv1")(x)))
      out = conv_(self.planes, 3, stride=self.stride, padding=1, name="conv2")(out)
      out = nn.relu(batch_norm(train, "bn2")(out))
      out = batch_norm(train, "bn3")(conv_(4 * self.planes, 1, name="conv3")(out))
    else:
      out = conv_(self.planes, 3, stride=self.stride, padding=1, name="conv1")(x)
      out = nn.relu(batch_norm(train, "bn1")(out))
      out = batch_norm(train, "bn2")(conv_(self.planes, 3, padding=1, name="conv2")(out))
    if self.stride != 1 or x.shape[-1] != out.shape[-1]:
      x = conv_(out.shape[-1], 1, stride=self.stride, name="downsample_conv")(x)
      x = batch_norm(train, "downsample_bn")(x)
    preact = out + x
    return nn.relu(preact), preact


class ImageNetResNet(nn.Module):
  """torchvision's ResNet.

  Features sown into ``"intermediates"`` (mdistiller's ``mdistiller/models/imagenet/resnet.py``
  definitions): ``"stem_preact"`` (first BN's output), ``"stem"`` (after its ReLU, before the
  max pool), ``"stage{k}"`` (stage ``k``'s output, after its last ReLU) and
  ``"stage{k}_preact"`` (the residual sum before that ReLU) for ``k = 1 ... 4``;
  ``"penultimate"`` (pooled, ``[B, 512 * expansion]``) and ``"logits"``.

  Attributes:
    stage_sizes: blocks per stage, ``(2, 2, 2, 2)`` for resnet18, ``(3, 4, 6, 3)`` for 34/50.
    bottleneck: bottleneck blocks (resnet50) instead of basic ones.
    num_classes: classifier outputs.
    conv_impl: ``"auto"`` (default: oneDNN on one CPU device when it loads, else XLA;
      :func:`kdjax.ops.resolve_auto_impl`), ``"xla"`` or ``"onednn"``: which 2-D convolution runs
      (:func:`kdjax.ops.conv2d`).
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False
  num_classes: int = 1000
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = batch_norm(train, "bn1")(conv(64, 7, stride=2, padding=3, impl=self.conv_impl,
                                       name="conv1")(x))
    self.sow("intermediates", "stem_preact", x)
    x = nn.relu(x)
    self.sow("intermediates", "stem", x)
    x = max_pool(x, 3, 2, 1)
    for stage, blocks in enumerate(self.stage_sizes):
      for i in range(blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        x, preact = ResidualBlock(64 * 2**stage, stride, self.bottleneck, self.conv_impl,
                                  name=f"layer{stage + 1}_{i}")(x, train)
      self.sow("intermediates", f"stage{stage + 1}", x)
      self.sow("intermediates", f"stage{stage + 1}_preact", preact)
    x = global_avg_pool(x)
    self.sow("intermediates", "penultimate", x)
    logits = nn.Dense(self.num_classes, name="fc")(x)
    self.sow("intermediates", "logits", logits)
    return logits
