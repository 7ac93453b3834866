"""Pure train and eval steps. Teachers are inputs to the step, never state.

A *chunk* is ``K`` consecutive optimizer steps run inside one jitted ``lax.scan``: the
host sends ``[K, B, ...]`` batches once per chunk, which removes per-step dispatch cost
(MNIST-1D steps take tens of microseconds). Checkpoints and evaluations fall on chunk
boundaries.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from kdjax import losses
from kdjax.models import as_model, output_head
from kdjax.training._nonfinite import summarize_chunk
from kdjax.training._padding import mask_batch_norm
from kdjax.training._state import TrainState
from kdjax.training._tokens import is_token_batch, token_examples
from kdjax.training.teachers._apply import TeacherApply

Batch = dict[str, jax.Array]


def make_train_chunk(*, model: Any, objective: losses.Objective,
                     tx: optax.GradientTransformation,
                     teacher_apply: TeacherApply | None = None,
                     state_shardings: Any = None,
                     teacher_head: Callable | None = None) -> Callable:
  """Builds ``train_chunk(state, batches, teacher_variables) -> (state, metrics)``.

  Args:
    model: the student: a linen or NNX module, an ``apply_fn`` or a
      :class:`kdjax.models.Model`. It runs with ``train=True`` (BatchNorm normalises
      with the batch's statistics and updates ``state.model_state``; dropout draws from
      ``fold_in(state.rng, state.step)``). Its params are ``state.params["student"]``.
    objective: from :func:`kdjax.losses.make_objective`; its aux params are
      ``state.params["aux"]``.
    tx: the optimizer over all of ``state.params``.
    teacher_apply: ``(teacher_variables, x) -> (logits, features)`` for a teacher run
      inside the step (online), e.g. :func:`frozen_teacher_apply`. ``None`` when teacher
      logits come cached in ``batches["teacher_logits"]`` or no teacher is needed.
    teacher_head: ``teacher_params -> [D, V]`` for the fused terms (``objective.needs_heads``;
      the student's is :func:`kdjax.models.output_head` of ``model``).
    state_shardings: optional ``NamedSharding`` pytree of the state
      (:func:`kdjax.training._sharding.state_shardings`): every step's new state is
      constrained to it, so sharded params and optimizer state stay sharded (XLA's
      propagation alone may return them replicated).

  The returned function is jitted with the state donated. ``batches`` holds
  ``"x": [K, B, ...]`` and optionally ``"y": [K, B]``, ``"label_probs": [K, B, C]``
  (soft targets, e.g. mixup's; they replace one-hot labels in the terms that take them),
  ``"topk_log_probs"`` / ``"topk_indices"`` ``[K, B, T, k]`` (a stored top-k teacher),
  ``"teacher_logits": [K, B, C]`` and ``"mask": [K, B]`` (``False``: a padded row that
  counts nowhere, see :mod:`kdjax.training._padding`). Metrics are means over the K steps (over the finite
  ones, with health fields: :func:`kdjax.training._nonfinite.summarize_chunk`).

  Language models (logits ``[B, T, V]``, ``y [B, T]``): the batch is ``B * T`` token
  examples (:mod:`kdjax.training._tokens`), the tokens without a target (``y = -1``) masked.

  Under data parallelism (``batches`` sharded over a data mesh, the state
  replicated) ``jit`` computes BatchNorm's mean and variance over the *global* batch,
  as one device would: the statistics do not depend on the number of devices.
  """
  student = as_model(model)
  student_feature_paths = tuple(sorted(objective.student_features))
  student_head = output_head(model) if objective.needs_heads else None
  if objective.needs_heads and teacher_head is None and objective.needs_teacher:
    raise ValueError("the objective's fused terms need teacher_head (the teacher's output head)")

  def loss_fn(params, model_state, rng, batch: Batch, teacher_variables, step):
    mask = batch.get("mask")  # [B] real rows of a padded batch (kdjax.training._padding)
    with mask_batch_norm(mask):
      student_logits, student_features, new_state = student.apply(
          {"params": params["student"], **model_state}, batch["x"], train=True, rng=rng,
          features=student_feature_paths)
    teacher_logits = batch.get("teacher_logits")
    teacher_features = {}
    teacher_params = None
    if teacher_apply is not None:
      teacher_variables = jax.lax.stop_gradient(teacher_variables)
      teacher_logits, teacher_features = teacher_apply(teacher_variables, batch["x"])
      teacher_params = teacher_variables["params"]
    inputs = losses.LossInputs(
        student_logits=student_logits,
        labels=batch.get("y"),
        label_probs=batch.get("label_probs"),  # mixup's soft targets, [B, C]
        teacher_logits=teacher_logits,
        student_features=student_features,
        teacher_features=teacher_features,
        student_params=params["student"],
        teacher_params=teacher_params,
        student_head=None if student_head is None else student_head(params["student"]),
        teacher_head=(None if teacher_head is None or teacher_params is None
                      else teacher_head(teacher_params)),
        teacher_topk_log_probs=batch.get("topk_log_probs"),  # a stored top-k teacher
        teacher_topk_indices=batch.get("topk_indices"),
        where=mask,
    )
    if is_token_batch(student_logits):  # [B, T, V]: B * T token examples
      inputs = token_examples(inputs)
    loss, metrics = objective(params["aux"], inputs, step=step)  # step: weight schedules
    # Argmax metrics need the logits; with only fused terms jit never computes them.
    if objective.uses_logits or not objective.needs_heads:
      predicted = jnp.argmax(inputs.student_logits, -1)
      if inputs.labels is not None:
        metrics["accuracy"] = losses.masked_mean(predicted == inputs.labels, inputs.where)
      if inputs.teacher_logits is not None:
        metrics["teacher_agreement"] = losses.masked_mean(
            predicted == jnp.argmax(inputs.teacher_logits, -1), inputs.where)
    return loss, (metrics, new_state)

  def train_step(state: TrainState, batch: Batch, teacher_variables) -> tuple[TrainState, dict]:
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    (_, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, dropout_rng, batch, teacher_variables, state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(params)
    # A non-finite step never reaches the model state either (under on_nonfinite="skip"
    # the optimizer drops its update; BatchNorm statistics must be dropped with it).
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    model_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), model_state,
                               state.model_state)
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                          model_state=model_state)
    if state_shardings is not None:
      state = jax.lax.with_sharding_constraint(state, state_shardings)
    return state, metrics

  def train_chunk(state: TrainState, batches: Batch, teacher_variables=None):
    state, metrics = jax.lax.scan(lambda s, b: train_step(s, b, teacher_variables), state,
                                  batches)
    if state_shardings is not None:  # the chunk's output too, not only the scan's carry
      state = jax.lax.with_sharding_constraint(state, state_shardings)
    return state, summarize_chunk(metrics)  # means + health (kdjax.training._nonfinite)

  return jax.jit(train_chunk, donate_argnums=0)
