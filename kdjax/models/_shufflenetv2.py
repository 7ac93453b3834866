"""The CIFAR ShuffleNetV2 of the KD benchmarks (``shufflenetv2``: RepDistiller's ``ShuffleV2``).

Follows RepDistiller's ``models/ShuffleNetv2.py`` (github.com/HobbitLong/RepDistiller; after
Ma et al., "ShuffleNet V2", ECCV 2018, CIFAR variant, net size 1): a 1x1 stem conv to 24
channels, three stages (116, 232, 464 channels), each a down-sampling unit then 3, 7, 3 basic
units, a 1x1 conv to 1024 -> BN -> ReLU, average pooling and a linear classifier. A basic unit
splits the channels in halves ``(x1, x2)``, transforms ``x2`` (1x1 conv -> BN -> ReLU -> 3x3
depthwise -> BN -> 1x1 conv -> BN -> ReLU), concatenates ``[x1, f(x2)]`` and shuffles with 2
groups. A down-sampling unit concatenates a depthwise-stride-2 branch and a 1x1 ->
depthwise-stride-2 -> 1x1 branch, then shuffles.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models._layers import batch_norm, channel_shuffle, conv, global_avg_pool


class ShuffleV2Unit(nn.Module):
  """Basic unit; returns ``(shuffle([x1, relu(p)]), [x1, p])`` with ``p`` the branch before
  its last ReLU (RepDistiller's ``preact``, not shuffled)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    c = x.shape[-1] // 2
    x1, x2 = x[..., :c], x[..., c:]
    out = nn.relu(batch_norm(train, "bn1")(conv(c, 1, name="conv1")(x2)))
    out = batch_norm(train, "bn2")(conv(c, 3, padding=1, groups=c, name="conv2")(out))
    preact = batch_norm(train, "bn3")(conv(c, 1, name="conv3")(out))
    out = channel_shuffle(jnp.concatenate([x1, nn.relu(preact)], axis=-1), 2)
    return out, jnp.concatenate([x1, preact], axis=-1)


class ShuffleV2DownUnit(nn.Module):
  """Down-sampling unit (stride 2): ``shuffle([left(x), right(x)])``."""

  planes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c_in, mid = x.shape[-1], self.planes // 2
    left = batch_norm(train, "bn1")(conv(c_in, 3, stride=2, padding=1, groups=c_in, name="conv1")(x))
    left = nn.relu(batch_norm(train, "bn2")(conv(mid, 1, name="conv2")(left)))
    right = nn.relu(batch_norm(train, "bn3")(conv(mid, 1, name="conv3")(x)))
    right = batch_norm(train, "bn4")(conv(mid, 3, stride=2, padding=1, groups=mid, name="conv4")(right))
    right = nn.relu(batch_norm(train, "bn5")(conv(mid, 1, name="conv5")(right)))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """RepDistiller's CIFAR ShuffleNetV2.

  Features sown into ``"intermediates"`` (RepDistiller's ``forward(is_feat=True,
  preact=...)`` list, by name): ``"stem"`` (after the stem ReLU), ``"stage{k}"`` (stage
  ``k``'s output, shuffled) and ``"stage{k}_preact"`` (its last unit's ``[x1, p]`` before the
  ReLU and the shuffle, as RepDistiller returns it), for ``k = 1, 2, 3``; ``"penultimate"``
  (pooled, ``[B, 1024]``) and ``"logits"``.

  Attributes:
    out_channels: channels of the three stages and of the head conv.
    num_blocks: basic units per stage (after its down-sampling unit).
    num_classes: classifier outputs.
  """

  out_channels: Sequence[int] = (116, 232, 464, 1024)
  num_blocks: Sequence[int] = (3, 7, 3)
  num_classes: int = 100

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.relu(batch_norm(train, "bn1")(conv(24, 1, name="conv1")(x)))
    self.sow("intermediates", "stem", x)
    for stage, blocks in enumerate(self.num_blocks):
      x = ShuffleV2DownUnit(self.out_channels[stage], name=f"layer{stage + 1}_0")(x, train)
      preact = x
      for i in range(blocks):
        x, preact = ShuffleV2Unit(name=f"layer{stage + 1}_{i + 1}")(x, train)
      self.sow("intermediates", f"stage{stage + 1}", x)
      self.sow("intermediates", f"stage{stage + 1}_preact", preact)
    x = nn.relu(batch_norm(train, "bn2")(conv(self.out_channels[3], 1, name="conv2")(x)))
    x = global_avg_pool(x)
    self.sow("intermediates", "penultimate", x)
    logits = nn.Dense(self.num_classes, name="linear")(x)
    self.sow("intermediates", "logits", logits)
    return logits
