"""Wide ResNets of the KD benchmarks (wrn_16_2, wrn_40_1, wrn_40_2).

Follows RepDistiller's ``models/wrn.py`` (github.com/HobbitLong/RepDistiller, by Wei Yang;
mdistiller's ``mdistiller/models/cifar/wrn.py`` is the same), after Zagoruyko & Komodakis,
"Wide Residual Networks", BMVC 2016: pre-activation blocks (BN -> ReLU -> conv), depth
``6 n + 4``, widths ``16, 16 k, 32 k, 64 k``, a 1x1 conv shortcut (no BN) where the width
changes, a final BN -> ReLU, global average pooling and a linear classifier. Dropout 0 (the
benchmarks' setting), so the network has no stochastic layer.
"""

import flax.linen as nn
import jax

from kdjax.models._layers import batch_norm, conv, global_avg_pool


class WideBasicBlock(nn.Module):
  """Pre-activation block; returns ``(out, bn1(x))``.

  Equal widths: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``. Changing widths (RepDistiller
  shares the pre-activation with the shortcut): ``a = relu(bn1(x))``,
  ``convShortcut(a) + conv2(relu(bn2(conv1(a))))``. The second output, ``bn1(x)`` before its
  ReLU, is RepDistiller's ``preact`` feature of the previous stage.
  """

  planes: int
  stride: int = 1
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    preact = batch_norm(train, "bn1")(x)
    act = nn.relu(preact)
    out = conv(self.planes, 3, stride=self.stride, padding=1, impl=self.conv_impl,
               name="conv1")(act)
    out = nn.relu(batch_norm(train, "bn2")(out))
    out = conv(self.planes, 3, padding=1, impl=self.conv_impl, name="conv2")(out)
    if x.shape[-1] == self.planes:
      if self.stride != 1:
        raise ValueError("WideBasicBlock: a strided block must change the width (as in WRN)")
      return x + out, preact
    return conv(self.planes, 1, stride=self.stride, impl=self.conv_impl,
                name="convShortcut")(act) + out, preact


class WideResNet(nn.Module):
  """RepDistiller's Wide ResNet WRN-``depth``-``widen_factor`` (dropout 0).

  ``[B, 32, 32, 3] -> conv3x3(16) -> 3 groups of n pre-activation blocks (widths 16k, 32k,
  64k; strides 1, 2, 2) -> BN -> relu -> global average pool -> Dense(num_classes)``.

  Features sown into ``"intermediates"`` (RepDistiller's ``forward(is_feat=True, preact=...)``
  list, by name): ``"stem"`` (the first conv's output, no activation), ``"stage{k}"`` (group
  ``k``'s output: the residual stream, before any BN/ReLU, RepDistiller's ``preact=False``
  feature), ``"stage{k}_preact"`` (the next BatchNorm applied to it, before the ReLU:
  RepDistiller's ``preact=True`` feature; for ``k = 3`` the final ``bn1``), for
  ``k = 1, 2, 3``; ``"penultimate"`` (pooled, ``[B, 64k]``) and ``"logits"``.

  Attributes:
    depth: ``6 n + 4`` (16, 40 in the benchmarks).
    widen_factor: ``k``.
    num_classes: classifier outputs.
    conv_impl: ``"auto"`` (default: oneDNN on one CPU device when it loads, else XLA;
      :func:`kdjax.ops.resolve_auto_impl`), ``"xla"`` or ``"onednn"``: which 2-D convolution runs
      (:func:`kdjax.ops.conv2d`).
  """

  depth: int = 40
  widen_factor: int = 2
  num_classes: int = 100
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 4) % 6 or self.depth < 10:
      raise ValueError(f"WideResNet: depth must be 6n+4 with n >= 1, got {self.depth}")
    n = (self.depth - 4) // 6
    widths = [16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor]
    x = conv(16, 3, padding=1, impl=self.conv_impl, name="conv1")(x)
    self.sow("intermediates", "stem", x)
    for group in range(3):
      for i in range(n):
        stride = 2 if group > 0 and i == 0 else 1
        x, preact = WideBasicBlock(widths[group], stride, self.conv_impl,
                                   name=f"block{group + 1}_{i}")(x, train)
        if group > 0 and i == 0:  # bn1 of this block, applied to the previous group's output
          self.sow("intermediates", f"stage{group}_preact", preact)
      self.sow("intermediates", f"stage{group + 1}", x)
    preact = batch_norm(train, "bn1")(x)
    self.sow("intermediates", "stage3_preact", preact)
    x = global_avg_pool(nn.relu(preact))
    self.sow("intermediates", "penultimate", x)
    logits = nn.Dense(self.num_classes, name="fc")(x)
    self.sow("intermediates", "logits", logits)
    return logits
