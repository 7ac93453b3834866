"""Multi-layer perceptron with named hidden features."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
  """ReLU MLP: ``x -> [Dense(w) -> relu -> dropout] * len(hidden) -> Dense(num_classes)``.

  The MNIST-1D paper's MLP is ``MLP(hidden=(100, 100))`` on 40 inputs
  (40-100-100-10); Hinton et al.'s are ``(1200, 1200)`` and ``(800, 800)`` on 784, the
  teacher with dropout (Srivastava et al. 2014: ``dropout_rate=0.5`` on the hidden
  layers, ``input_dropout_rate=0.2`` on the inputs). Inputs of any trailing shape are
  flattened.

  Dropout (``flax.linen.Dropout``: zero with probability ``rate``, scale the kept units
  by ``1 / (1 - rate)``) runs only with ``train=True`` and draws from the ``"dropout"``
  rng stream (the trainer passes ``fold_in(state.rng, state.step)``); eval
  (``train=False``) is deterministic.

  Features sown into the ``"intermediates"`` collection (see
  :func:`kdjax.models.apply_with_features`): ``"hidden_{i}"`` after each ReLU (before
  dropout), ``"penultimate"`` (the last hidden layer) and ``"logits"``.
  """

  hidden: Sequence[int] = (100, 100)
  num_classes: int = 10
  dtype: jnp.dtype | None = None
  dropout_rate: float = 0.0
  input_dropout_rate: float = 0.0

  def _dropout(self, x: jax.Array, field: str, train: bool, name: str) -> jax.Array:
    rate = getattr(self, field)
    if not 0 <= rate < 1:
      raise ValueError(f"MLP: {field} must be in [0, 1), got {rate!r}")
    return nn.Dropout(rate, deterministic=not train, name=name)(x) if rate else x

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    x = self._dropout(x, "input_dropout_rate", train, "input_dropout")
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"dense_{i}")(x))
      self.sow("intermediates", f"hidden_{i}", x)
      if i == len(self.hidden) - 1:
        self.sow("intermediates", "penultimate", x)
      x = self._dropout(x, "dropout_rate", train, f"dropout_{i}")
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    self.sow("intermediates", "logits", logits)
    return logits
