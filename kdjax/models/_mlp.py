"""Multi-layer perceptron with named hidden features."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
  """ReLU MLP: ``x -> [Dense(w) -> relu] * len(hidden) -> Dense(num_classes)``.

  The MNIST-1D paper's MLP is ``MLP(hidden=(100, 100))`` on 40 inputs
  (40-100-100-10); Hinton et al.'s are ``(1200, 1200)`` and ``(800, 800)`` on 784.
  Inputs of any trailing shape are flattened.

  Features sown into the ``"intermediates"`` collection (see
  :func:`kdjax.models.apply_with_features`): ``"hidden_{i}"`` after each ReLU,
  ``"penultimate"`` (the last hidden layer) and ``"logits"``.
  """

  hidden: Sequence[int] = (100, 100)
  num_classes: int = 10
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout or batch norm
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"dense_{i}")(x))
      self.sow("intermediates", f"hidden_{i}", x)
    if self.hidden:
      self.sow("intermediates", "penultimate", x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    self.sow("intermediates", "logits", logits)
    return logits
