"""CIFAR VGGs with BatchNorm of the KD benchmarks (vgg8, vgg13).

Follows RepDistiller's ``models/vgg.py`` (github.com/HobbitLong/RepDistiller, ``vgg8_bn``,
``vgg13_bn``; after Simonyan & Zisserman 2015, "FC layers are removed"): five blocks of
3x3 conv (with bias) -> BN -> ReLU, the last ReLU of each block applied outside it, 2x2 max
pools after blocks 0, 1, 2 (and 3 only for 64x64 inputs), global average pooling and one
linear classifier on 512 features.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from kdjax.models._layers import batch_norm, conv, global_avg_pool, max_pool

VGG_CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


class VGG(nn.Module):
  """RepDistiller's CIFAR VGG with BatchNorm.

  Features sown into ``"intermediates"`` (RepDistiller's ``forward(is_feat=True,
  preact=...)`` list, by name): ``"stem"`` (block 0 after its ReLU), ``"stage{k}"`` (block
  ``k`` after its last ReLU) and ``"stage{k}_preact"`` (the same before that ReLU, i.e. the
  last BatchNorm's output), for ``k = 1 ... 4``; ``"penultimate"`` (``[B, 512]``) and
  ``"logits"``.

  Attributes:
    widths: conv widths per block (five blocks), e.g. ``VGG_CONFIGS["vgg13"]``.
    num_classes: classifier outputs.
    conv_impl: ``"auto"`` (default: oneDNN on one CPU device when it loads, else XLA;
      :func:`kdjax.ops.resolve_auto_impl`), ``"xla"`` or ``"onednn"``: which 2-D convolution runs
      (:func:`kdjax.ops.conv2d`).
  """

  widths: Sequence[Sequence[int]] = VGG_CONFIGS["vgg8"]
  num_classes: int = 100
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if len(self.widths) != 5:
      raise ValueError(f"VGG: widths must list 5 blocks, got {len(self.widths)}")
    height = x.shape[1]
    for block, widths in enumerate(self.widths):
      if block == 4 and height == 64:
        x = max_pool(x, 2, 2)
      for j, width in enumerate(widths):
        if j:
          x = nn.relu(x)
        x = conv(width, 3, padding=1, bias=True, impl=self.conv_impl,
                 name=f"block{block}_conv{j}")(x)
        x = batch_norm(train, f"block{block}_bn{j}")(x)
      if block:
        self.sow("intermediates", f"stage{block}_preact", x)
      x = nn.relu(x)
      self.sow("intermediates", f"stage{block}" if block else "stem", x)
      if block < 3:
        x = max_pool(x, 2, 2)
    x = global_avg_pool(x)
    self.sow("intermediates", "penultimate", x)
    logits = nn.Dense(self.num_classes, name="classifier")(x)
    self.sow("intermediates", "logits", logits)
    return logits
