"""Output-space fusion of member predictions: (weighted) averages in three spaces."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SPACES = ("prob", "logit", "log_prob")


def _check_space(space: str, fn: str) -> None:
  if space not in SPACES:
    raise ValueError(f"{fn}: unknown space {space!r}; known spaces: {list(SPACES)}")


def _check_member_logits(member_logits: jax.Array, fn: str) -> jax.Array:
  member_logits = jnp.asarray(member_logits)
  if member_logits.ndim < 2:
    raise ValueError(f"{fn}: member_logits must be [M, ..., C], got shape {member_logits.shape}")
  if not jnp.issubdtype(member_logits.dtype, jnp.floating):
    raise ValueError(f"{fn}: member_logits must be floating, got {member_logits.dtype}")
  # Low-precision members (bf16/fp16) are fused in float32, as the losses compute.
  return member_logits.astype(jnp.result_type(jnp.float32, member_logits.dtype))


def check_weights(weights, num_members: int, *, fn: str = "weighted", atol: float = 1e-4):
  """Checks that ``weights`` is ``[M]``; on concrete values also >= 0 and summing to 1.

  The value checks are skipped under tracing (``jit``, ``grad``), where values are unknown.

  Raises:
    ValueError: naming the problem (shape, negative entries, sum).
  """
  weights = jnp.asarray(weights)
  if weights.shape != (num_members,):
    raise ValueError(f"{fn}: weights must have shape [M] = ({num_members},), "
                     f"got {weights.shape}")
  if isinstance(weights, jax.core.Tracer):
    return weights
  w = np.asarray(weights, dtype=np.float64)
  if not np.all(np.isfinite(w)):
    raise ValueError(f"{fn}: weights must be finite, got {w}")
  if np.any(w < 0):
    raise ValueError(f"{fn}: weights must be non-negative, got {w}")
  if abs(w.sum() - 1.0) > atol:
    raise ValueError(f"{fn}: weights must sum to 1 (tol {atol}), got sum {w.sum():.6g}")
  return weights


def _combine(member_logits, log_weights, weights, space):
  """The one combine function of kdjax (average, weighted, fitted weights, DeepFusion):
  fused log-probabilities ``[..., C]`` of ``member_logits [M, ..., C]`` in ``space``;
  ``weights [M]`` (and their logs) broadcast over the member axis."""
  shape = (-1,) + (1,) * (member_logits.ndim - 1)
  if space == "prob":
    member_log_probs = jax.nn.log_softmax(member_logits, axis=-1)
    return jax.nn.logsumexp(member_log_probs + log_weights.reshape(shape), axis=0)
  if space == "logit":
    return jax.nn.log_softmax(jnp.sum(weights.reshape(shape) * member_logits, axis=0), axis=-1)
  member_log_probs = jax.nn.log_softmax(member_logits, axis=-1)
  return jax.nn.log_softmax(jnp.sum(weights.reshape(shape) * member_log_probs, axis=0), axis=-1)


def average(member_logits: jax.Array, *, space: str = "prob") -> jax.Array:
  """Fuses ``M`` members' logits by an unweighted average in ``space``.

  .. math::
    \\text{prob:}\\quad \\log \\tfrac{1}{M} \\textstyle\\sum_m \\mathrm{softmax}(z_m)
    = \\mathrm{logsumexp}_m(\\log\\mathrm{softmax}(z_m)) - \\log M

    \\text{logit:}\\quad \\log\\mathrm{softmax}(\\tfrac{1}{M}\\textstyle\\sum_m z_m)

    \\text{log\\_prob:}\\quad \\log\\mathrm{softmax}(\\tfrac{1}{M}\\textstyle\\sum_m
    \\log\\mathrm{softmax}(z_m)) \\quad \\text{(renormalised geometric mean)}

  Args:
    member_logits: ``[M, B, C]`` (any ``[M, ..., C]``) member logits.
    space: ``"prob"`` (the usual deep-ensemble average, Lakshminarayanan et al. 2017),
      ``"logit"`` or ``"log_prob"``.

  Returns:
    Fused log-probabilities ``[B, C]`` (they ``logsumexp`` to 0 over classes).

  Raises:
    ValueError: for an unknown space (listing the known ones) or a bad rank/dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[[0.0, 0.0]], [[0.0, jnp.log(3.0)]]])  # M=2, B=1, C=2
    >>> [round(float(p), 3) for p in jnp.exp(average(z))[0]]
    [0.375, 0.625]
  """
  _check_space(space, "average")
  member_logits = _check_member_logits(member_logits, "average")
  m = member_logits.shape[0]
  weights = jnp.full((m,), 1.0 / m, member_logits.dtype)
  return _combine(member_logits, jnp.log(weights), weights, space)


def weighted(member_logits: jax.Array, weights: jax.Array, *, space: str = "prob") -> jax.Array:
  """Fuses ``M`` members' logits by a weighted average in ``space``.

  .. math::
    \\text{prob:}\\quad \\log \\textstyle\\sum_m w_m\\,\\mathrm{softmax}(z_m)
    \\qquad \\text{logit:}\\quad \\log\\mathrm{softmax}(\\textstyle\\sum_m w_m z_m)
    \\qquad \\text{log\\_prob:}\\quad \\log\\mathrm{softmax}(\\textstyle\\sum_m w_m
    \\log\\mathrm{softmax}(z_m))

  ``w = 1/M`` gives :func:`average`. Zero weights are exact (the ``prob`` space uses
  ``logsumexp`` with ``log 0 = -inf``).

  Args:
    member_logits: ``[M, B, C]`` member logits.
    weights: ``[M]`` weights on the simplex (non-negative, summing to 1). Values are
      checked only when concrete (not under ``jit``/``grad``).
    space: ``"prob"``, ``"logit"`` or ``"log_prob"``.

  Returns:
    Fused log-probabilities ``[B, C]``.

  Raises:
    ValueError: for an unknown space, a weights shape other than ``[M]``, or (concrete
      values) negative weights or a sum other than 1.

  Examples:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[[0.0, 0.0]], [[0.0, jnp.log(3.0)]]])
    >>> [round(float(p), 3) for p in jnp.exp(weighted(z, jnp.array([0.0, 1.0])))[0]]
    [0.25, 0.75]
  """
  _check_space(space, "weighted")
  member_logits = _check_member_logits(member_logits, "weighted")
  weights = check_weights(weights, member_logits.shape[0], fn="weighted")
  weights = weights.astype(member_logits.dtype)
  return _combine(member_logits, jnp.log(weights), weights, space)
