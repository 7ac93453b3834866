"""The train state: a pytree of step, trainable params, optimizer state, model state
and the dropout key."""

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from kdjax.models import as_model, split_variables


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


def run_once(fn: Callable, *args) -> Any:
  """``fn(*args)`` as one jitted XLA program, compiled for this single call.

  For a run's initialisation (``model.init``, the objective's aux params, ``tx.init``).
  Eagerly, every initializer compiles its own program per weight shape and the forward
  pass that traces the shapes runs op by op. Jitted, the forward pass is dead code
  (initial params do not depend on its values) and XLA drops it, leaving the random-number
  program. On the CPU that program is compiled with LLVM's optimisation off
  (``xla_backend_optimization_level=0``): it runs once, so its compile time is what counts.
  """
  lowered = jax.jit(fn).lower(*args)
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return lowered.compile(compiler_options=options)(*args)


def create_train_state(model: Any, tx: optax.GradientTransformation, sample_x: jax.Array, *,
                       rng: jax.Array, aux_params: Any = None) -> TrainState:
  """A fresh :class:`TrainState` for ``model`` (linen, NNX, ``apply_fn`` or a
  :class:`kdjax.models.Model`): its params and model state from ``init(rng, sample_x)``,
  the optimizer state of ``{"student": params, "aux": aux_params}`` and a dropout key
  folded from ``rng``.

  Args:
    model: the student.
    tx: the optimizer (``make_train_chunk`` must get the same one).
    sample_x: ``[B, ...]`` inputs to trace the model's shapes.
    rng: a ``jax.random.key``.
    aux_params: the objective's params (``objective.init``; ``{}`` when it has none).
  """
  params, model_state = split_variables(run_once(as_model(model).init, rng, sample_x))
  params = {"student": params, "aux": {} if aux_params is None else aux_params}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=run_once(tx.init, params),
                    model_state=model_state,
                    rng=jax.random.key_data(jax.random.fold_in(rng, 0xD50)))
