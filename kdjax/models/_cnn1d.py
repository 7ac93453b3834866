"""The MNIST-1D paper's 1-D convolutional network, with an im2col convolution."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def im2col_1d(x: jax.Array, kernel_size: int, *, stride: int, padding: int) -> jax.Array:
  """``[B, L, C] -> [B, L_out, k * C]``: each output position's window of ``k`` inputs
  (zero-padded by ``padding`` on both ends), flattened in the ``[k, C]`` order of a
  ``[k, C_in, C_out]`` kernel."""
  k = kernel_size
  x = jnp.pad(x, ((0, 0), (padding, padding), (0, 0)))
  length_out = (x.shape[1] - k) // stride + 1
  span = stride * (length_out - 1) + 1
  # [B, L_out, k, C_in]: window j of every output position, gathered with strided slices.
  patches = jnp.stack([x[:, j:j + span:stride, :] for j in range(k)], axis=2)
  return patches.reshape(x.shape[0], length_out, k * x.shape[-1])


def conv1d_im2col(x: jax.Array, kernel: jax.Array, *, stride: int, padding: int) -> jax.Array:
  """1-D convolution as strided slices + one matmul (im2col).

  .. math::
    y[b, l, o] = \\sum_{j<k} \\sum_c x_{pad}[b, l \\cdot s + j, c] \\, W[j, c, o]

  Same result as ``lax.conv_general_dilated`` with NWC/WIO layouts. On XLA:CPU a CNN1D
  train step inside ``lax.scan`` (how ``kdjax train`` runs) is faster in this form; a lone
  jitted step is a tie (``benchmarks/conv1d_speed.py``, results in ``benchmarks/results/``).

  Args:
    x: ``[B, L, C_in]`` inputs.
    kernel: ``[k, C_in, C_out]`` weights (Flax ``nn.Conv`` layout).
    stride: step between windows.
    padding: zeros added on both ends of the length axis.

  Returns:
    ``[B, L_out, C_out]`` with ``L_out = (L + 2 * padding - k) // stride + 1``.
  """
  k, c_in, c_out = kernel.shape
  if x.ndim != 3 or x.shape[-1] != c_in:
    raise ValueError(f"conv1d_im2col: x must be [B, L, {c_in}], got shape {x.shape}")
  patches = im2col_1d(x, k, stride=stride, padding=padding)
  return patches @ kernel.reshape(k * c_in, c_out).astype(patches.dtype)


class Conv1D(nn.Module):
  """1-D convolution layer with a selectable implementation.

  ``implementation="im2col"`` (default) uses :func:`conv1d_im2col`;
  ``"xla"`` uses ``lax.conv_general_dilated``. Both share the parameter layout of
  ``flax.linen.Conv`` (``kernel: [k, C_in, C_out]``, ``bias: [C_out]``), so
  checkpoints move freely between them.
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  implementation: str = "im2col"
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    if self.dtype is not None:
      x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    if self.implementation == "im2col":
      y = conv1d_im2col(x, kernel, stride=self.stride, padding=self.padding)
    elif self.implementation == "xla":
      y = jax.lax.conv_general_dilated(
          x, kernel.astype(x.dtype), window_strides=(self.stride,),
          padding=[(self.padding, self.padding)], dimension_numbers=("NWC", "WIO", "NWC"))
    else:
      raise ValueError(
          f"Conv1D: unknown implementation {self.implementation!r}; known: 'im2col', 'xla'")
    return y + bias[None, None, :]  # [B, L, C_out] + [1, 1, C_out], ranks explicit


class CNN1D(nn.Module):
  """ConvBase from the MNIST-1D paper (Greydanus 2020): 5,210 parameters at defaults.

  ``[B, 40] -> conv(25, k5, s2, p1) -> relu -> conv(25, k3, s2, p1) -> relu
  -> conv(25, k3, s2, p1) -> relu -> flatten [B, 125] -> Dense(num_classes)``.

  Features sown into ``"intermediates"``: ``"block_{i}"`` (``[B, L_i, C]`` after each
  ReLU), ``"penultimate"`` (the flattened last conv features) and ``"logits"``.
  """

  channels: Sequence[int] = (25, 25, 25)
  kernel_sizes: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  padding: int = 1
  num_classes: int = 10
  conv_implementation: str = "im2col"
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    if x.ndim == 2:  # [B, L] -> [B, L, 1]
      x = x[..., None]
    if not len(self.channels) == len(self.kernel_sizes) == len(self.strides):
      raise ValueError("CNN1D: channels, kernel_sizes and strides must have equal lengths, got "
                       f"{self.channels}, {self.kernel_sizes}, {self.strides}")
    for i, (c, k, s) in enumerate(zip(self.channels, self.kernel_sizes, self.strides)):
      x = nn.relu(Conv1D(c, k, stride=s, padding=self.padding,
                         implementation=self.conv_implementation, dtype=self.dtype,
                         name=f"conv_{i}")(x))
      self.sow("intermediates", f"block_{i}", x)
    x = x.reshape((x.shape[0], -1))
    self.sow("intermediates", "penultimate", x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    self.sow("intermediates", "logits", logits)
    return logits
