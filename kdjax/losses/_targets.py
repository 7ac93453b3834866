"""Softmax cross-entropy: integer labels, soft targets (mixup) and label smoothing.

Labels follow the one policy of kdjax (:func:`kdjax.losses.label_mask`): a label outside
``[0, C)`` ignores its row (loss 0, no gradient). Computed by optax
(``softmax_cross_entropy_with_integer_labels``, ``softmax_cross_entropy``,
``smooth_labels``) in float32 (float64 for float64 inputs).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.losses import _checks
from kdjax.losses._checks import select_rows as _select_rows
from kdjax.losses._checks import take_class as _take


def _smoothing(fn: str, label_smoothing: Any) -> Any:
  """Checks a concrete ``label_smoothing`` is in ``[0, 1]``; returns it (traced: as is)."""
  if not isinstance(label_smoothing, jax.core.Tracer):
    eps = np.asarray(label_smoothing)
    if eps.shape != () or not (0 <= float(eps) <= 1):
      raise ValueError(f"{fn}: label_smoothing must be a number in [0, 1], got "
                       f"{label_smoothing!r}")
  return label_smoothing


def _is_zero(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer) and bool(np.all(np.asarray(x) == 0))


def cross_entropy(logits: jax.Array, labels: jax.Array, *, axis: int = -1,
                  where: jax.Array | None = None,
                  label_smoothing: float | jax.Array = 0.0) -> jax.Array:
  r"""Softmax cross-entropy with integer labels, per example, optionally label-smoothed.

  .. math::
    -\sum_c q_c \log \mathrm{softmax}(z)_c, \qquad
    q = (1 - \epsilon)\,\mathrm{onehot}(y) + \epsilon / C

  (:math:`-\log \mathrm{softmax}(z)_y` when :math:`\epsilon = 0`; 0 when
  :math:`y \notin [0, C)`). Computed by
  ``optax.losses.softmax_cross_entropy_with_integer_labels`` (and ``optax.smooth_labels``
  + ``optax.losses.softmax_cross_entropy`` when :math:`\epsilon > 0`). This is the one
  NLL of kdjax: :func:`kdjax.metrics.nll` and the fusion fits average it.

  Args:
    logits: ``[..., C]`` float logits (or log-probabilities).
    labels: ``[...]`` integer class indices. A label outside ``[0, C)`` (e.g. ``-1`` or
      ``-100`` padding) marks an ignored row: its loss is 0 and it gets no gradient.
    axis: the class axis.
    where: optional boolean class mask broadcastable to ``logits.shape``; masked classes
      are excluded from the softmax (and :math:`C` counts the kept classes). A row whose
      label's class is masked is ignored.
    label_smoothing: :math:`\epsilon \in [0, 1]` (Szegedy et al. 2016).

  Returns:
    ``[...]`` per-example losses, float32 (or float64 for float64 logits).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import cross_entropy
    >>> cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))
    Array([1.3862944], dtype=float32)

  References:
    Goodfellow, Bengio & Courville, "Deep Learning", 2016, section 6.2.2.3.
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016
    (label smoothing).
  """
  fn = "cross_entropy"
  label_smoothing = _smoothing(fn, label_smoothing)
  logits = _checks.check_floating("logits", fn, logits)
  _checks.check_min_rank(fn, "logits", logits, 1)
  axis = axis % logits.ndim
  labels, valid = _checks.check_labels(fn, logits, labels, axis)
  if where is not None:
    where = _checks.check_where(fn, where, logits.shape, "logits")
    valid = valid & _take(where, labels, axis)
    logits = jnp.where(where, logits, 0)
  (logits,) = _select_rows(valid, axis, logits.astype(_checks.compute_dtype(logits)))
  if _is_zero(label_smoothing):
    loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels, axis=axis,
                                                                  where=where)
  else:
    onehot = jnp.moveaxis(jax.nn.one_hot(labels, logits.shape[axis], dtype=logits.dtype),
                          -1, axis)
    loss = _soft_ce(logits, onehot, axis, where, label_smoothing)
  return jnp.where(valid, loss, 0)


def _soft_ce(logits: jax.Array, probs: jax.Array, axis: int, where: jax.Array | None,
             label_smoothing: Any) -> jax.Array:
  if not _is_zero(label_smoothing):
    probs = optax.smooth_labels(probs, jnp.asarray(label_smoothing, probs.dtype), axis=axis,
                                where=where)
  return optax.losses.softmax_cross_entropy(logits, probs, axis=axis, where=where)


def soft_cross_entropy(logits: jax.Array, label_probs: jax.Array, *, axis: int = -1,
                       where: jax.Array | None = None,
                       label_smoothing: float | jax.Array = 0.0) -> jax.Array:
  r"""Softmax cross-entropy against a target distribution (soft labels), per example.

  .. math::
    -\sum_c q_c \log \mathrm{softmax}(z)_c, \qquad q = (1 - \epsilon)\,p + \epsilon / C

  For mixup's targets :math:`p = \lambda\,\mathrm{onehot}(a) + (1-\lambda)\,
  \mathrm{onehot}(b)` this is :math:`\lambda\,\mathrm{CE}(z, a) + (1-\lambda)\,
  \mathrm{CE}(z, b)`; a one-hot :math:`p` gives :func:`cross_entropy`. Computed by
  ``optax.losses.softmax_cross_entropy`` (after ``optax.smooth_labels`` when
  :math:`\epsilon > 0`). The rows of :math:`p` should sum to 1 (not checked: the values
  may be traced).

  Args:
    logits: ``[..., C]`` float logits.
    label_probs: ``[..., C]`` float target probabilities, same shape as ``logits``.
    axis: the class axis.
    where: optional boolean class mask broadcastable to ``logits.shape``; masked classes
      are excluded from the softmax and from the sum.
    label_smoothing: :math:`\epsilon \in [0, 1]`.

  Returns:
    ``[...]`` per-example losses, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import soft_cross_entropy
    >>> soft_cross_entropy(jnp.zeros((1, 4)), jnp.array([[0.5, 0.5, 0.0, 0.0]]))
    Array([1.3862944], dtype=float32)

  References:
    Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical Risk Minimization",
    ICLR 2018.
  """
  fn = "soft_cross_entropy"
  label_smoothing = _smoothing(fn, label_smoothing)
  logits = _checks.check_floating("logits", fn, logits)
  probs = _checks.check_floating("label_probs", fn, label_probs)
  _checks.check_same_shape(fn, "logits", logits, "label_probs", probs)
  _checks.check_min_rank(fn, "logits", logits, 1)
  axis = axis % logits.ndim
  dtype = _checks.compute_dtype(logits, probs)
  logits, probs = logits.astype(dtype), probs.astype(dtype)
  if where is not None:
    where = _checks.check_where(fn, where, logits.shape, "logits")
    logits, probs = jnp.where(where, logits, 0), jnp.where(where, probs, 0)
  return _soft_ce(logits, probs, axis, where, label_smoothing)


def cross_entropy_term(logits: jax.Array, labels: jax.Array | None,
                          label_probs: jax.Array | None = None, *,
                          label_smoothing: float | jax.Array = 0.0) -> jax.Array:
  """The ``cross_entropy`` term of :func:`kdjax.losses.make_objective`: soft targets
  ``label_probs`` when given (rows with an ignored label, when ``labels`` is also given,
  give 0), else integer ``labels``."""
  if label_probs is None:
    return cross_entropy(logits, labels, label_smoothing=label_smoothing)
  if labels is None:
    return soft_cross_entropy(logits, label_probs, label_smoothing=label_smoothing)
  labels, valid = _checks.check_labels("cross_entropy", logits, labels, -1)
  logits, label_probs = _select_rows(valid, -1, jnp.asarray(logits), jnp.asarray(label_probs))
  loss = soft_cross_entropy(logits, label_probs, label_smoothing=label_smoothing)
  return jnp.where(valid, loss, 0)
