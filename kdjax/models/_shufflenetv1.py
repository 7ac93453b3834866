"""The CIFAR ShuffleNetV1 of the KD benchmarks (``shufflenetv1``: RepDistiller's ``ShuffleV1``).

Follows RepDistiller's ``models/ShuffleNetv1.py`` (github.com/HobbitLong/RepDistiller; after
Zhang et al., "ShuffleNet", CVPR 2018, CIFAR variant): a 1x1 stem conv to 24 channels, three
stages (240, 480, 960 channels; 4, 8, 4 units; 3 groups), each unit a grouped 1x1 conv ->
BN -> ReLU -> channel shuffle -> 3x3 depthwise conv -> BN -> ReLU -> grouped 1x1 conv -> BN,
joined to the input by addition (stride 1) or concatenated with a 3x3 average pool of it
(stride 2, first unit of a stage), then ReLU. The first unit's first conv is ungrouped (24
input channels), as in the paper. RepDistiller's depthwise conv is followed by BN -> ReLU.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models._layers import avg_pool, batch_norm, channel_shuffle, conv, global_avg_pool


class ShuffleV1Unit(nn.Module):
  """One ShuffleNetV1 unit; returns ``(relu(preact), preact)``."""

  planes: int  # output channels of the residual branch
  stride: int
  groups: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    mid = self.planes // 4
    g = 1 if x.shape[-1] == 24 else self.groups
    out = nn.relu(batch_norm(train, "bn1")(conv(mid, 1, groups=g, name="conv1")(x)))
    out = channel_shuffle(out, g)
    out = conv(mid, 3, stride=self.stride, padding=1, groups=mid, name="conv2")(out)
    out = nn.relu(batch_norm(train, "bn2")(out))
    out = batch_norm(train, "bn3")(conv(self.planes, 1, groups=self.groups, name="conv3")(out))
    if self.stride == 2:
      preact = jnp.concatenate([out, avg_pool(x, 3, 2, 1)], axis=-1)
    else:
      preact = out + x
    return nn.relu(preact), preact


class ShuffleNetV1(nn.Module):
  """RepDistiller's CIFAR ShuffleNetV1.

  Features sown into ``"intermediates"`` (RepDistiller's ``forward(is_feat=True,
  preact=...)`` list, by name): ``"stem"`` (after the stem ReLU), ``"stage{k}"`` (stage
  ``k``'s output) and ``"stage{k}_preact"`` (its last unit before the final ReLU), for
  ``k = 1, 2, 3``; ``"penultimate"`` (pooled, ``[B, 960]``) and ``"logits"``.

  Attributes:
    out_planes: output channels of the three stages.
    num_blocks: units per stage.
    groups: groups of the 1x1 convolutions.
    num_classes: classifier outputs.
  """

  out_planes: Sequence[int] = (240, 480, 960)
  num_blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3
  num_classes: int = 100

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.relu(batch_norm(train, "bn1")(conv(24, 1, name="conv1")(x)))
    self.sow("intermediates", "stem", x)
    for stage, (planes, blocks) in enumerate(zip(self.out_planes, self.num_blocks)):
      for i in range(blocks):
        residual_planes = planes - x.shape[-1] if i == 0 else planes
        x, preact = ShuffleV1Unit(residual_planes, 2 if i == 0 else 1, self.groups,
                                  name=f"layer{stage + 1}_{i}")(x, train)
      self.sow("intermediates", f"stage{stage + 1}", x)
      self.sow("intermediates", f"stage{stage + 1}_preact", preact)
    x = global_avg_pool(x)
    self.sow("intermediates", "penultimate", x)
    logits = nn.Dense(self.num_classes, name="linear")(x)
    self.sow("intermediates", "logits", logits)
    return logits
