"""Layers shared by the CNN zoo: PyTorch-equivalent conv, BatchNorm, pooling, channel shuffle.

Every zoo model takes NHWC inputs. These helpers pin the few places where Flax and
PyTorch defaults differ, so a converted PyTorch ``state_dict`` gives the same outputs:

- convolution padding is explicit and symmetric (PyTorch ``padding=p``), never ``"SAME"``;
- BatchNorm uses PyTorch's ``eps=1e-5`` and Flax ``momentum=0.9`` (PyTorch ``momentum=0.1``:
  ``running = 0.9 * running + 0.1 * batch``). In training Flax updates the running variance
  with the biased batch variance, PyTorch with the unbiased one (a factor ``n / (n - 1)``,
  ``n = B * H * W``); evaluation is identical.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.ops import conv_general_dilated


def conv(features: int, kernel: int, *, stride: int = 1, padding: int = 0, groups: int = 1,
         bias: bool = False, impl: str = "xla", name: str | None = None) -> nn.Conv:
  """``nn.Conv`` equal to ``torch.nn.Conv2d(C, features, kernel, stride, padding, groups=groups,
  bias=bias)`` on NHWC inputs (kernel layout ``[k, k, C / groups, features]``, HWIO).

  ``impl`` picks the convolution: ``"xla"`` (``lax.conv_general_dilated``), ``"onednn"`` or
  ``"auto"`` (see :func:`kdjax.ops.conv2d`; grouped convolutions always use XLA's). The
  parameters are the same for every ``impl``."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                 use_bias=bias, conv_general_dilated=conv_general_dilated(impl), name=name)


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """``nn.BatchNorm`` equal to ``torch.nn.BatchNorm2d`` at its defaults (see module docstring):
  batch statistics and a running-average update when ``train``, running averages otherwise."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """``[B, H, W, C] -> [B, C]``: mean over the spatial axes.

  The CIFAR references pool with a fixed window (``AvgPool2d(8)`` etc.) equal to the last
  feature map at 32x32 inputs, so this is their pooling there (and still defined at other
  sizes, where theirs breaks the classifier's input size)."""
  return jnp.mean(x, axis=(1, 2))


def avg_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
  """``torch.nn.AvgPool2d(window, stride, padding)`` (zeros in the padding count, as in
  PyTorch's default ``count_include_pad=True``)."""
  return nn.avg_pool(x, (window, window), (stride, stride),
                     padding=((padding, padding), (padding, padding)), count_include_pad=True)


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """``torch.nn.MaxPool2d(window, stride, padding)`` (padding never wins the max)."""
  return nn.max_pool(x, (window, window), (stride, stride),
                     padding=((padding, padding), (padding, padding)))


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle on NHWC: channel ``g * (C / groups) + j`` moves to
  ``j * groups + g``, as PyTorch's ``view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4)`` on NCHW.

  Args:
    x: ``[B, H, W, C]`` with ``C`` divisible by ``groups``.
    groups: number of groups.

  Returns:
    ``[B, H, W, C]``, the channels interleaved across groups.
  """
  b, h, w, c = x.shape
  if c % groups:
    raise ValueError(f"channel_shuffle: {c} channels are not divisible by groups={groups}")
  return x.reshape(b, h, w, groups, c // groups).swapaxes(3, 4).reshape(b, h, w, c)
