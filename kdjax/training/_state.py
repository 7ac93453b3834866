"""The train state: a pytree of step, trainable params and optimizer state."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """What a checkpoint holds. Teachers are never part of it.

  Attributes:
    step: number of optimizer updates applied so far (int32 scalar).
    params: ``{"student": student params, "aux": objective params (e.g. hint projectors)}``.
    opt_state: the optax state of ``params``.
  """

  step: jax.Array
  params: Any
  opt_state: Any
