"""The CIFAR MobileNetV2 of the KD benchmarks (``mobilenetv2``: RepDistiller's ``mobile_half``).

Follows RepDistiller's ``models/mobilenetv2.py`` (github.com/HobbitLong/RepDistiller, from
"Knowledge Distillation via Route Constrained Optimization"; after Sandler et al. 2018):
expansion ``T = 6``, width multiplier 0.5, a stride-2 3x3 stem, inverted residual blocks
(1x1 expand -> BN -> ReLU -> 3x3 depthwise -> BN -> ReLU -> 1x1 project -> BN, identity
shortcut when stride 1 and widths match), a 1x1 conv to 1280 -> BN -> ReLU, average pooling
and a linear classifier. Plain ReLU (not ReLU6), as in RepDistiller.
"""

import flax.linen as nn
import jax

from kdjax.models._layers import batch_norm, conv, global_avg_pool

# (expansion or None for T, channels, blocks, first stride), RepDistiller's setting.
_SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
# Block groups after which RepDistiller takes the features f1 ... f4.
_STAGE_ENDS = {1: 1, 2: 2, 4: 3, 6: 4}


class InvertedResidual(nn.Module):
  """``x + project(dw(expand(x)))`` (or without ``x``); the output has no activation."""

  planes: int
  stride: int
  expansion: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    hidden = x.shape[-1] * self.expansion
    out = nn.relu(batch_norm(train, "expand_bn")(conv(hidden, 1, name="expand_conv")(x)))
    out = conv(hidden, 3, stride=self.stride, padding=1, groups=hidden, name="depthwise_conv")(out)
    out = nn.relu(batch_norm(train, "depthwise_bn")(out))
    out = batch_norm(train, "project_bn")(conv(self.planes, 1, name="project_conv")(out))
    if self.stride == 1 and x.shape[-1] == self.planes:
      return x + out
    return out


class MobileNetV2(nn.Module):
  """RepDistiller's CIFAR MobileNetV2 (``mobilenetv2_T_w``; ``mobile_half`` = T 6, width 0.5).

  Features sown into ``"intermediates"`` (RepDistiller's ``forward(is_feat=True)`` list, by
  name; RepDistiller gives the same list with ``preact=True``, so ``"stage{k}_preact"`` equals
  ``"stage{k}"``): ``"stem"`` (after the stem ReLU), ``"stage{k}"`` = ``"stage{k}_preact"``
  (outputs of block groups 1, 2, 4, 6: linear bottlenecks, no activation) for
  ``k = 1 ... 4``; ``"penultimate"`` (pooled, ``[B, 1280]``) and ``"logits"``.

  Attributes:
    expansion: ``T``, the expansion ratio of all groups but the first.
    width_mult: channel multiplier (``int(c * width_mult)`` channels).
    num_classes: classifier outputs.
  """

  expansion: int = 6
  width_mult: float = 0.5
  num_classes: int = 100

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = conv(int(32 * self.width_mult), 3, stride=2, padding=1, name="stem_conv")(x)
    x = nn.relu(batch_norm(train, "stem_bn")(x))
    self.sow("intermediates", "stem", x)
    for group, (t, c, n, s) in enumerate(_SETTING):
      for i in range(n):
        x = InvertedResidual(int(c * self.width_mult), s if i == 0 else 1,
                             self.expansion if t is None else t, name=f"blocks_{group}_{i}")(x, train)
      if group in _STAGE_ENDS:
        self.sow("intermediates", f"stage{_STAGE_ENDS[group]}", x)
        self.sow("intermediates", f"stage{_STAGE_ENDS[group]}_preact", x)
    last = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    x = nn.relu(batch_norm(train, "head_bn")(conv(last, 1, name="head_conv")(x)))
    x = global_avg_pool(x)
    self.sow("intermediates", "penultimate", x)
    logits = nn.Dense(self.num_classes, name="classifier")(x)
    self.sow("intermediates", "logits", logits)
    return logits
