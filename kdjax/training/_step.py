"""Pure train and eval steps. Teachers are inputs to the step, never state.

A *chunk* is ``K`` consecutive optimizer steps run inside one jitted ``lax.scan``: the
host sends ``[K, B, ...]`` batches once per chunk, which removes per-step dispatch cost
(MNIST-1D steps take tens of microseconds). Checkpoints and evaluations fall on chunk
boundaries.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import losses
from kdjax.data import shard_batch
from kdjax.models import apply_with_features
from kdjax.training._nonfinite import summarize_chunk
from kdjax.training._state import TrainState

Batch = dict[str, jax.Array]
TeacherApply = Callable[[Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def make_train_chunk(*, model: nn.Module, objective: losses.Objective,
                     tx: optax.GradientTransformation,
                     teacher_apply: TeacherApply | None = None) -> Callable:
  """Builds ``train_chunk(state, batches, teacher_params) -> (state, metrics)``.

  Args:
    model: the student (a linen module whose params are ``state.params["student"]``).
    objective: from :func:`kdjax.losses.make_objective`; its aux params are
      ``state.params["aux"]``.
    tx: the optimizer over all of ``state.params``.
    teacher_apply: ``(teacher_params, x) -> (logits, features)`` for a teacher run
      inside the step (online). ``None`` when teacher logits come cached in
      ``batches["teacher_logits"]`` or no teacher is needed.

  The returned function is jitted with the state donated. ``batches`` holds
  ``"x": [K, B, ...]`` and optionally ``"y": [K, B]`` and
  ``"teacher_logits": [K, B, C]``. Metrics are means over the K steps (over the finite
  ones, with health fields: :func:`kdjax.training._nonfinite.summarize_chunk`).
  """

  def loss_fn(params, batch: Batch, teacher_params):
    student_logits, student_features = apply_with_features(model, params["student"], batch["x"])
    teacher_logits = batch.get("teacher_logits")
    teacher_features = {}
    if teacher_apply is not None:
      teacher_logits, teacher_features = jax.lax.stop_gradient(
          teacher_apply(teacher_params, batch["x"]))
    inputs = losses.LossInputs(
        student_logits=student_logits,
        labels=batch.get("y"),
        teacher_logits=teacher_logits,
        student_features=student_features,
        teacher_features=teacher_features,
        student_params=params["student"],
        teacher_params=jax.lax.stop_gradient(teacher_params),
    )
    loss, metrics = objective(params["aux"], inputs)
    if "y" in batch:
      metrics["accuracy"] = jnp.mean(jnp.argmax(student_logits, -1) == batch["y"])
    if teacher_logits is not None:
      metrics["teacher_agreement"] = jnp.mean(
          jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1))
    return loss, metrics

  def train_step(state: TrainState, batch: Batch, teacher_params) -> tuple[TrainState, dict]:
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, teacher_params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(params)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def train_chunk(state: TrainState, batches: Batch, teacher_params=None):
    state, metrics = jax.lax.scan(lambda s, b: train_step(s, b, teacher_params), state, batches)
    return state, summarize_chunk(metrics)  # means + health (kdjax.training._nonfinite)

  return jax.jit(train_chunk, donate_argnums=0)


def make_predict(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
  """Jitted ``(params, x) -> logits``."""
  return jax.jit(lambda params, x: model.apply({"params": params}, x))


def predict_in_batches(predict: Callable, params: Any, x, *, batch_size: int, mesh=None):
  """Logits for all of ``x`` (NumPy), in batches sharded over ``mesh``'s data axis.

  The last batch is padded to ``batch_size`` (so one program serves every batch)
  and the padding is dropped.
  """
  outputs = []
  for start in range(0, len(x), batch_size):
    xb = np.asarray(x[start:start + batch_size])
    n = len(xb)
    if n < batch_size:
      xb = np.concatenate([xb, np.zeros((batch_size - n, *xb.shape[1:]), xb.dtype)])
    if mesh is not None:
      xb = shard_batch(xb, mesh)
    outputs.append(np.asarray(predict(params, xb))[:n])
  return np.concatenate(outputs)
