"""CIFAR ResNets of the KD benchmarks (resnet8 ... resnet110, resnet8x4, resnet32x4).

Follows RepDistiller's ``models/resnet.py`` (github.com/HobbitLong/RepDistiller; mdistiller's
``mdistiller/models/cifar/resnet.py`` is the same network), itself after He et al. 2016:
a 3x3 stem conv, three stages of ``n = (depth - 2) / 6`` basic blocks at strides 1, 2, 2,
global average pooling and a linear classifier. Convolutions have no bias; a block whose
stride or width changes has a 1x1 conv + BatchNorm shortcut (option B), others the identity.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from kdjax.models._layers import batch_norm, conv, global_avg_pool


class BasicBlock(nn.Module):
  """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; returns ``(out, preact)``,
  ``preact`` being the sum before the last ReLU."""

  planes: int
  stride: int = 1
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    out = conv(self.planes, 3, stride=self.stride, padding=1, impl=self.conv_impl, name="conv1")(x)
    out = nn.relu(batch_norm(train, "bn1")(out))
    out = conv(self.planes, 3, padding=1, impl=self.conv_impl, name="conv2")(out)
    out = batch_norm(train, "bn2")(out)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = conv(self.planes, 1, stride=self.stride, impl=self.conv_impl,
               name="downsample_conv")(x)
      x = batch_norm(train, "downsample_bn")(x)
    preact = out + x
    return nn.relu(preact), preact


class CifarResNet(nn.Module):
  """RepDistiller's CIFAR ResNet with basic blocks; ``depth = 6 n + 2``.

  ``[B, 32, 32, 3] -> conv3x3(w0) -> BN -> relu -> 3 stages of n blocks (widths w1, w2, w3;
  strides 1, 2, 2) -> global average pool -> Dense(num_classes)``.

  Features sown into ``"intermediates"`` (RepDistiller's ``forward(is_feat=True,
  preact=...)`` list, by name): ``"stem"`` (after the stem ReLU), ``"stage{k}"`` (output of
  stage ``k``, after its last ReLU), ``"stage{k}_preact"`` (the same before that ReLU, i.e.
  RepDistiller's ``preact=True`` feature), for ``k = 1, 2, 3``; ``"penultimate"`` (pooled,
  ``[B, w3]``) and ``"logits"``.

  Attributes:
    depth: ``6 n + 2`` (8, 14, 20, 32, 44, 56, 110 in the benchmarks).
    widths: ``(w0, w1, w2, w3)``: stem and stage widths; ``(16, 16, 32, 64)`` for resnetN,
      ``(32, 64, 128, 256)`` for the x4 variants.
    num_classes: classifier outputs.
    conv_impl: ``"auto"`` (default: oneDNN on one CPU device when it loads, else XLA;
      :func:`kdjax.ops.resolve_auto_impl`), ``"xla"`` or ``"onednn"``: which 2-D convolution runs
      (:func:`kdjax.ops.conv2d`); same parameters and, to float32 rounding, same outputs.
  """

  depth: int = 20
  widths: Sequence[int] = (16, 16, 32, 64)
  num_classes: int = 100
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 2) % 6 or self.depth < 8:
      raise ValueError(f"CifarResNet: depth must be 6n+2 with n >= 1, got {self.depth}")
    if len(self.widths) != 4:
      raise ValueError(f"CifarResNet: widths must have 4 entries, got {tuple(self.widths)}")
    n = (self.depth - 2) // 6
    x = conv(self.widths[0], 3, padding=1, impl=self.conv_impl, name="conv1")(x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    self.sow("intermediates", "stem", x)
    for stage in range(3):
      for i in range(n):
        stride = 2 if stage > 0 and i == 0 else 1
        x, preact = BasicBlock(self.widths[stage + 1], stride, self.conv_impl,
                                 name=f"layer{stage + 1}_{i}")(x, train)
      self.sow("intermediates", f"stage{stage + 1}", x)
      self.sow("intermediates", f"stage{stage + 1}_preact", preact)
    x = global_avg_pool(x)
    self.sow("intermediates", "penultimate", x)
    logits = nn.Dense(self.num_classes, name="fc")(x)
    self.sow("intermediates", "logits", logits)
    return logits
