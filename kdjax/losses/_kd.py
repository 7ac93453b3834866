"""Logit distillation losses: soft-target KL, Hinton KD, DKD and DIST.

All per-example losses return one value per example (no reduction): the caller
averages, once, in the step. Low-precision inputs (bf16/fp16) are computed in
float32 and the result is float32 (float64 when an input is float64).

Labels: every loss that takes integer labels (``cross_entropy``, ``hinton_kd``, ``dkd``)
applies one policy, through one check (``kdjax.losses.label_mask``): a label outside
``[0, C)`` (``-1``, ``-100``, ``C``, ...) marks its row as ignored, like PyTorch's
``ignore_index``: the row's loss is exactly 0 and it gets no gradient. Average over
the valid rows (``make_objective`` does), so a batch of only ignored rows gives 0.

Masks select, never multiply: entries excluded by ``where`` (and ignored rows) are
replaced before any arithmetic, so NaN or inf there reaches neither the value nor the
gradient.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.losses import _checks
from kdjax.losses._checks import select_rows as _select_rows
from kdjax.losses._checks import take_class as _take
from kdjax.losses._targets import cross_entropy
from kdjax.losses._targets import soft_cross_entropy


def _log_softmax(x: jax.Array, axis: int, where: jax.Array | None) -> jax.Array:
  """``log_softmax`` over the entries where ``where`` is True.

  Masked entries of the result are 0 (not -inf) so that callers that mask them out
  never produce ``inf - inf``; a fully masked slice gives all zeros.
  """
  if where is None:
    return jax.nn.log_softmax(x, axis=axis)
  m = jnp.max(jnp.where(where, x, -jnp.inf), axis=axis, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  shifted = jnp.where(where, x - m, 0.0)
  s = jnp.sum(jnp.where(where, jnp.exp(shifted), 0.0), axis=axis, keepdims=True)
  s = jnp.where(s > 0, s, 1.0)
  return jnp.where(where, shifted - jnp.log(s), 0.0)


def _kl_log_space(teacher_log_probs: jax.Array, student_log_probs: jax.Array, axis: int,
                  where: jax.Array | None) -> jax.Array:
  """``sum p_t (log p_t - log p_s)`` (``optax.losses.kl_divergence_with_log_targets``);
  ``p_t = 0`` terms (and their gradients) are exactly 0."""
  # Classes whose teacher probability is 0 (-inf, or underflowed) are selected out before
  # optax sees them: exp(-inf) * (-inf - ls) would be NaN, and the huge log-ratios of
  # underflowed classes would overflow in the backward pass.
  keep = jnp.exp(teacher_log_probs) > 0
  if where is not None:
    keep = keep & where
  return optax.losses.kl_divergence_with_log_targets(
      jnp.where(keep, student_log_probs, 0.0), jnp.where(keep, teacher_log_probs, 0.0),
      axis=axis, where=keep)


def _prepare_pair(fn: str, student: Any, teacher: Any, student_name: str, teacher_name: str,
                  temperature: Any, where: Any) -> tuple[jax.Array, jax.Array, Any, Any]:
  student = _checks.check_floating(student_name, fn, student)
  teacher = _checks.check_floating(teacher_name, fn, teacher)
  _checks.check_same_shape(fn, student_name, student, teacher_name, teacher)
  _checks.check_min_rank(fn, student_name, student, 1)
  _checks.check_positive(fn, "temperature", temperature)
  if where is not None:
    where = _checks.check_where(fn, where, student.shape, student_name)
    student, teacher = jnp.where(where, student, 0), jnp.where(where, teacher, 0)
  dtype = _checks.compute_dtype(student, teacher)
  return student.astype(dtype), teacher.astype(dtype), jnp.asarray(temperature, dtype), where


def soft_target_kl(student_logits: jax.Array, teacher_logits: jax.Array, *,
                   temperature: float | jax.Array = 1.0, axis: int = -1,
                   where: jax.Array | None = None) -> jax.Array:
  r"""Temperature-scaled KL divergence from the teacher's to the student's softmax.

  .. math::
    T^2 \, \mathrm{KL}\big(\mathrm{softmax}(t / T) \,\|\, \mathrm{softmax}(s / T)\big)
    = T^2 \sum_c p^t_c \, (\log p^t_c - \log p^s_c)

  The :math:`T^2` factor keeps gradient magnitudes comparable across temperatures
  (Hinton et al., 2015). Computed with ``log_softmax`` in float32 (float64 for float64
  inputs), so logits of magnitude 1e4 give finite values and gradients, and
  :math:`0 \log 0` terms are exactly 0.

  Args:
    student_logits: ``[..., C]`` float logits (any float dtype).
    teacher_logits: ``[..., C]`` float logits, same shape as ``student_logits``.
    temperature: softmax temperature :math:`T > 0`.
    axis: the class axis.
    where: optional boolean mask broadcastable to the logits' shape; classes where it
      is False are excluded from both softmaxes and from the sum (like
      ``optax.kl_divergence``). To drop whole examples, mask the per-example result.

  Returns:
    ``[...]`` per-example losses (the logits' shape without ``axis``), float32 (or
    float64 when an input is float64).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import soft_target_kl
    >>> s = jnp.array([[1.0, 2.0, 3.0]])
    >>> soft_target_kl(s, s, temperature=4.0)
    Array([0.], dtype=float32)

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
  """
  fn = "soft_target_kl"
  s, t, temp, where = _prepare_pair(fn, student_logits, teacher_logits, "student_logits",
                                    "teacher_logits", temperature, where)
  ls = _log_softmax(s / temp, axis, where)
  lt = _log_softmax(t / temp, axis, where)
  return temp**2 * _kl_log_space(lt, ls, axis, where)


def soft_target_kl_with_log_targets(student_logits: jax.Array, teacher_log_probs: jax.Array, *,
                                    temperature: float | jax.Array = 1.0, axis: int = -1,
                                    where: jax.Array | None = None) -> jax.Array:
  r""":func:`soft_target_kl` with the teacher given as log-probabilities.

  For cached teacher outputs or fused ensembles (e.g. the log of an averaged softmax).
  The teacher's log-probabilities are **re-tempered**:

  .. math::
    p^t = \mathrm{softmax}(\ell^t / T), \quad
    T^2 \, \mathrm{KL}\big(p^t \,\|\, \mathrm{softmax}(s / T)\big)

  Log-probabilities are logits up to an additive constant per example and softmax is
  shift-invariant, so with :math:`\ell^t = \log\mathrm{softmax}(t)` this equals
  ``soft_target_kl(student_logits, t, temperature=T)``; at ``T = 1`` the teacher
  distribution is used as given. (To use already-tempered targets unchanged with a
  tempered student, pass ``teacher_log_probs * T``.)

  Args:
    student_logits: ``[..., C]`` float logits.
    teacher_log_probs: ``[..., C]`` teacher log-probabilities (any per-example additive
      constant is ignored), same shape as ``student_logits``.
    temperature: :math:`T > 0`, applied to both.
    axis: the class axis.
    where: optional boolean class mask broadcastable to the logits' shape.

  Returns:
    ``[...]`` per-example losses, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.losses import soft_target_kl_with_log_targets
    >>> s = jnp.array([[1.0, 2.0, 3.0]])
    >>> loss = soft_target_kl_with_log_targets(s, jax.nn.log_softmax(s), temperature=2.0)
    >>> round(float(loss[0]), 5)
    0.0

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
  """
  fn = "soft_target_kl_with_log_targets"
  s, lt, temp, where = _prepare_pair(fn, student_logits, teacher_log_probs, "student_logits",
                                     "teacher_log_probs", temperature, where)
  # -inf log-probs (exact zeros) stay finite zero-probability classes after re-tempering.
  # Double `where` so that the gradient w.r.t. those entries is 0, not NaN.
  zero_prob = jnp.isneginf(lt)
  lt = jnp.where(zero_prob, jnp.finfo(lt.dtype).min / 4, jnp.where(zero_prob, 0.0, lt) / temp)
  ls = _log_softmax(s / temp, axis, where)
  lt = _log_softmax(lt, axis, where)
  return temp**2 * _kl_log_space(lt, ls, axis, where)


def hinton_kd(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array | None,
              label_probs: jax.Array | None = None, *, temperature: float | jax.Array,
              alpha: float | jax.Array, label_smoothing: float | jax.Array = 0.0) -> jax.Array:
  r"""Hinton et al.'s distillation loss: soft-target KL mixed with hard-label CE.

  .. math::
    \alpha \, T^2 \, \mathrm{KL}\big(\mathrm{softmax}(t/T) \,\|\, \mathrm{softmax}(s/T)\big)
    + (1 - \alpha) \, \mathrm{CE}(s, q)

  The cross-entropy uses the untempered student logits, against the target distribution
  :math:`q`: the one-hot label, or ``label_probs`` (e.g. mixup's) when given, smoothed
  by :math:`\epsilon` = ``label_smoothing`` (:func:`soft_cross_entropy`).

  Args:
    student_logits: ``[..., C]`` float logits (class axis last).
    teacher_logits: ``[..., C]`` float logits, same shape.
    labels: ``[...]`` integer labels; a label outside ``[0, C)`` ignores its row (loss 0,
      no gradient, also in the soft term). May be ``None`` when ``alpha == 1`` (pure
      distillation of every row) or when ``label_probs`` is given (every row is used).
    label_probs: optional ``[..., C]`` target probabilities for the hard part, used
      instead of one-hot ``labels``.
    temperature: :math:`T > 0`.
    alpha: weight of the soft-target term, usually in ``[0, 1]``.
    label_smoothing: :math:`\epsilon \in [0, 1]` for the hard part.

  Returns:
    ``[...]`` per-example losses, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import hinton_kd
    >>> s = jnp.zeros((1, 4))
    >>> hinton_kd(s, s, jnp.array([0]), temperature=4.0, alpha=0.5)
    Array([0.6931472], dtype=float32)

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
  """
  fn = "hinton_kd"
  concrete_one = not isinstance(alpha, jax.core.Tracer) and bool(np.all(np.asarray(alpha) == 1))
  if labels is None and (label_probs is None or concrete_one):
    if not concrete_one:
      raise ValueError(f"{fn}: labels and label_probs are None, which is only allowed when "
                       f"alpha == 1 (pure distillation), got alpha={alpha!r}")
    return soft_target_kl(student_logits, teacher_logits, temperature=temperature)
  s = _checks.check_floating("student_logits", fn, student_logits)
  t = _checks.check_floating("teacher_logits", fn, teacher_logits)
  _checks.check_same_shape(fn, "student_logits", s, "teacher_logits", t)
  _checks.check_min_rank(fn, "student_logits", s, 1)
  if labels is None:
    valid = jnp.ones(s.shape[:-1], jnp.bool_)
  else:
    labels, valid = _checks.check_labels(fn, s, labels, -1)
  s, t = _select_rows(valid, -1, s, t)
  soft = soft_target_kl(s, t, temperature=temperature)
  if not concrete_one:
    if label_probs is None:
      hard = cross_entropy(s, labels, label_smoothing=label_smoothing)
    else:
      (label_probs,) = _select_rows(valid, -1, jnp.asarray(label_probs))
      hard = soft_cross_entropy(s, label_probs, label_smoothing=label_smoothing)
    alpha = jnp.asarray(alpha, soft.dtype)
    soft = alpha * soft + (1 - alpha) * hard
  return jnp.where(valid, soft, 0)


def dkd(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
        alpha: float | jax.Array = 1.0, beta: float | jax.Array = 8.0,
        temperature: float | jax.Array = 4.0) -> jax.Array:
  r"""Decoupled Knowledge Distillation (DKD): target-class + non-target-class KD.

  With :math:`p = \mathrm{softmax}(z / T)` and the label :math:`y`,

  .. math::
    \mathrm{TCKD} = T^2 \, \mathrm{KL}\big([p^t_y, 1 - p^t_y] \,\|\, [p^s_y, 1 - p^s_y]\big)
    \qquad
    \mathrm{NCKD} = T^2 \, \mathrm{KL}\big(\hat p^t \,\|\, \hat p^s\big)

  where :math:`\hat p = \mathrm{softmax}_{c \ne y}(z / T)` is the distribution over the
  non-target classes; the loss is :math:`\alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}`.

  Follows the official mdistiller ``dkd_loss`` (per example instead of the batch sum
  divided by ``B``), but computed exactly in log space: the binary probabilities use
  :math:`\log(1 - p_y) = \mathrm{logsumexp}_{c \ne y} \log p_c` and the target class is
  removed with a mask instead of subtracting 1000 from ``z / T`` (equal whenever the
  1000 trick is exact; stable for logits of magnitude 1e4 where it is not).

  Args:
    student_logits: ``[..., C]`` float logits, ``C >= 2``.
    teacher_logits: ``[..., C]`` float logits, same shape.
    labels: ``[...]`` integer labels; a label outside ``[0, C)`` ignores its row (loss 0,
      no gradient).
    alpha: TCKD weight.
    beta: NCKD weight.
    temperature: :math:`T > 0`.

  Returns:
    ``[...]`` per-example losses, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import dkd
    >>> s = jnp.array([[1.0, 2.0, 3.0]])
    >>> dkd(s, s, jnp.array([2]))
    Array([0.], dtype=float32)

  References:
    Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.
    https://github.com/megvii-research/mdistiller
  """
  fn = "dkd"
  s, t, temp, _ = _prepare_pair(fn, student_logits, teacher_logits, "student_logits",
                                "teacher_logits", temperature, None)
  if s.shape[-1] < 2:
    raise ValueError(f"{fn}: needs at least 2 classes, got student_logits.shape={s.shape}")
  labels, valid = _checks.check_labels(fn, s, labels, -1)
  s, t = _select_rows(valid, -1, s, t)
  gt = jax.nn.one_hot(labels, s.shape[-1], dtype=jnp.bool_)
  other = ~gt
  ls = jax.nn.log_softmax(s / temp, axis=-1)
  lt = jax.nn.log_softmax(t / temp, axis=-1)

  def binary(lp):
    lp_gt = _take(lp, labels, -1)
    m = jax.lax.stop_gradient(jnp.max(jnp.where(other, lp, -jnp.inf), axis=-1, keepdims=True))
    # exp(-inf) = 0 keeps the masked (target) entry out of the sum and out of the grads.
    lp_other = jnp.log(jnp.sum(jnp.exp(jnp.where(other, lp - m, -jnp.inf)), axis=-1)) + m[..., 0]
    return jnp.stack([lp_gt, lp_other], axis=-1)

  tckd = _kl_log_space(binary(lt), binary(ls), -1, None)
  nckd = _kl_log_space(_log_softmax(t / temp, -1, other), _log_softmax(s / temp, -1, other),
                       -1, other)
  alpha = jnp.asarray(alpha, s.dtype)
  beta = jnp.asarray(beta, s.dtype)
  return jnp.where(valid, temp**2 * (alpha * tckd + beta * nckd), 0)


def _pearson(a: jax.Array, b: jax.Array, axis: int, where: jax.Array | None,
             eps: float = 1e-8) -> jax.Array:
  """DIST's ``pearson_correlation``: cosine of centred vectors, ``eps`` in the denominator;
  entries outside ``where`` are selected out."""
  if where is None:
    a = a - jnp.mean(a, axis=axis, keepdims=True)
    b = b - jnp.mean(b, axis=axis, keepdims=True)
  else:
    n = jnp.maximum(jnp.sum(where, axis=axis, keepdims=True), 1).astype(a.dtype)
    a = jnp.where(where, a - jnp.sum(jnp.where(where, a, 0), axis=axis, keepdims=True) / n, 0)
    b = jnp.where(where, b - jnp.sum(jnp.where(where, b, 0), axis=axis, keepdims=True) / n, 0)
  num = jnp.sum(a * b, axis=axis)
  return num / (optax.safe_norm(a, 0.0, axis=axis) * optax.safe_norm(b, 0.0, axis=axis) + eps)


def dist(student_logits: jax.Array, teacher_logits: jax.Array, *, beta: float = 1.0,
         gamma: float = 1.0, temperature: float = 1.0,
         where: jax.Array | None = None) -> jax.Array:
  r"""DIST: inter- and intra-class Pearson relations of the softmax. **Batch-level.**

  With :math:`Y = \mathrm{softmax}(Z / T)` row-wise (``[B, C]``) and
  :math:`\rho` the Pearson correlation (with ``eps = 1e-8`` in the denominator),

  .. math::
    T^2 \Big(\beta \big(1 - \tfrac1B \textstyle\sum_i \rho(Y^s_{i,:}, Y^t_{i,:})\big)
    + \gamma \big(1 - \tfrac1C \textstyle\sum_c \rho(Y^s_{:,c}, Y^t_{:,c})\big)\Big)

  as in the official code (``DIST.forward``). The intra-class term correlates columns
  across the batch, so the loss is one scalar for the batch.

  Args:
    student_logits: ``[B, C]`` float logits.
    teacher_logits: ``[B, C]`` float logits.
    beta: inter-class (per row) weight.
    gamma: intra-class (per column) weight.
    temperature: :math:`T > 0`.
    where: optional ``[B]`` boolean mask of valid rows (padding); equals slicing them.

  Returns:
    Scalar loss, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import dist
    >>> z = jnp.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]])
    >>> float(dist(z, z)) < 1e-6
    True

  References:
    Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher",
    NeurIPS 2022. https://github.com/hunto/DIST_KD
  """
  fn = "dist"
  s, t, temp, _ = _prepare_pair(fn, student_logits, teacher_logits, "student_logits",
                                "teacher_logits", temperature, None)
  if s.ndim != 2:
    raise ValueError(f"{fn}: logits must be [B, C], got student_logits.shape={s.shape}")
  if where is not None:
    where = _checks.check_where(fn, where, s.shape[:1], "the batch")
    s, t = _select_rows(where, -1, s, t)
  ys = jax.nn.softmax(s / temp, axis=-1)
  yt = jax.nn.softmax(t / temp, axis=-1)
  inter = 1 - _checks.masked_mean(_pearson(ys, yt, 1, None), where)
  intra = 1 - jnp.mean(_pearson(ys, yt, 0, None if where is None else where[:, None]))
  return temp**2 * (jnp.asarray(beta, s.dtype) * inter + jnp.asarray(gamma, s.dtype) * intra)
