"""The train state: a pytree of step, trainable params, optimizer state, model state
and the dropout key."""

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
    model_state: the student's non-``params`` collections, e.g. ``{"batch_stats": ...}``
      (``{}`` for a stateless model). Updated by every train step, not by the optimizer.
    rng: ``uint32[2]`` base key of the student's dropout; step ``t`` uses
      ``jax.random.fold_in(rng, t)``, so a resumed run draws the same masks.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  rng: jax.Array

  def student_variables(self) -> dict[str, Any]:
    """``{"params": student params, **model_state}``, what the student's ``apply`` takes."""
    return {"params": self.params["student"], **self.model_state}
