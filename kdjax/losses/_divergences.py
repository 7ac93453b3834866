"""The divergence family used to distil language models, per token, in log space.

Every function compares the student's and the teacher's softmax at temperature :math:`T`,
:math:`p_S = \\mathrm{softmax}(s / T)` and :math:`p_T = \\mathrm{softmax}(t / T)`, returns
one value per token (the logits' shape without ``axis``), is 0 when the two distributions
are equal and, except :func:`total_variation`, is scaled by :math:`T^2` like
:func:`~kdjax.losses.soft_target_kl`. Mixtures are formed with ``logsumexp`` of
log-probabilities, so logits of magnitude 1e4 give finite values and gradients.

``where`` is a boolean mask broadcastable to the logits' shape that *selects*
(``jnp.where``): masked classes leave both softmaxes and the sum; a token whose classes
are all masked (``where=token_mask[..., None]``) gives 0 and a zero gradient even when
its logits are NaN.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.losses._kd import _kl_log_space, _log_softmax, _prepare_pair


def _log_probs(fn: str, student_logits: Any, teacher_logits: Any, temperature: Any, axis: int,
               where: Any) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
  s, t, temp, where = _prepare_pair(fn, student_logits, teacher_logits, "student_logits",
                                    "teacher_logits", temperature, where)
  if where is not None:  # NaN/inf logits of masked entries never reach value or gradient
    s, t = jnp.where(where, s, 0.0), jnp.where(where, t, 0.0)
  return _log_softmax(s / temp, axis, where), _log_softmax(t / temp, axis, where), temp, where


def _check_unit(fn: str, name: str, value: Any, *, open_interval: bool = False) -> None:
  if isinstance(value, jax.core.Tracer):
    return
  v = np.asarray(value)
  bad = np.any((v <= 0) | (v >= 1)) if open_interval else np.any((v < 0) | (v > 1))
  if bad:
    interval = "(0, 1)" if open_interval else "[0, 1]"
    raise ValueError(f"{fn}: {name} must be in {interval}, got {value!r}")


def _log_mixture(lp_a: jax.Array, lp_b: jax.Array, weight_a: jax.Array) -> jax.Array:
  """``log(w p_a + (1 - w) p_b)`` by logsumexp; exact at ``w = 0`` and ``w = 1``."""
  # jnp.log(0) = -inf is fine inside logsumexp; clamp so the gradient w.r.t. w stays finite.
  tiny = jnp.finfo(lp_a.dtype).tiny
  log_w = jnp.log(jnp.maximum(weight_a, tiny))
  log_1mw = jnp.log(jnp.maximum(1 - weight_a, tiny))
  both = jnp.stack([lp_a + log_w, lp_b + log_1mw])
  return jax.nn.logsumexp(both, axis=0)


def forward_kl(student_logits: jax.Array, teacher_logits: jax.Array, *,
               temperature: float | jax.Array = 1.0, axis: int = -1,
               where: jax.Array | None = None) -> jax.Array:
  r"""Forward KL, the teacher's distribution to the student's (mode covering).

  .. math::
    T^2 \, \mathrm{KL}(p_T \,\|\, p_S) = T^2 \sum_v p_{T,v} (\log p_{T,v} - \log p_{S,v})

  The classic distillation loss (equal to :func:`~kdjax.losses.soft_target_kl`).

  Args:
    student_logits: ``[..., V]`` float logits.
    teacher_logits: ``[..., V]`` float logits, same shape.
    temperature: :math:`T > 0`, applied to both.
    axis: the vocabulary axis.
    where: optional boolean mask broadcastable to the logits (see the module docstring).

  Returns:
    ``[...]`` per-token values, float32 (float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import forward_kl
    >>> forward_kl(jnp.array([[0.0, 0.0]]), jnp.array([[0.0, 0.0]]))
    Array([0.], dtype=float32)

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
  """
  ls, lt, temp, where = _log_probs("forward_kl", student_logits, teacher_logits, temperature,
                                   axis, where)
  return temp**2 * _kl_log_space(lt, ls, axis, where)


def reverse_kl(student_logits: jax.Array, teacher_logits: jax.Array, *,
               temperature: float | jax.Array = 1.0, axis: int = -1,
               where: jax.Array | None = None) -> jax.Array:
  r"""Reverse KL, the student's distribution to the teacher's (mode seeking).

  .. math::
    T^2 \, \mathrm{KL}(p_S \,\|\, p_T) = T^2 \sum_v p_{S,v} (\log p_{S,v} - \log p_{T,v})

  Preferred by MiniLLM and on-policy distillation (GKD with ``beta = 1``) for generative
  students too small to cover every mode of the teacher.

  Args:
    student_logits: ``[..., V]`` float logits.
    teacher_logits: ``[..., V]`` float logits, same shape.
    temperature: :math:`T > 0`, applied to both.
    axis: the vocabulary axis.
    where: optional boolean mask broadcastable to the logits.

  Returns:
    ``[...]`` per-token values, float32 (float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import reverse_kl
    >>> round(float(reverse_kl(jnp.array([[0.0, 0.0]]), jnp.array([[0.0, 1.0]]))[0]), 4)
    0.1201

  References:
    Gu, Dong, Wei & Huang, "MiniLLM: Knowledge Distillation of Large Language Models",
    ICLR 2024.
  """
  ls, lt, temp, where = _log_probs("reverse_kl", student_logits, teacher_logits, temperature,
                                   axis, where)
  return temp**2 * _kl_log_space(ls, lt, axis, where)


def generalized_jsd(student_logits: jax.Array, teacher_logits: jax.Array, *,
                    beta: float | jax.Array = 0.5, temperature: float | jax.Array = 1.0,
                    axis: int = -1, where: jax.Array | None = None) -> jax.Array:
  r"""Generalised Jensen-Shannon divergence (GKD), in TRL's ``beta`` convention.

  With :math:`M = \beta p_T + (1 - \beta) p_S`, for :math:`0 < \beta < 1`

  .. math::
    T^2 \big(\beta \, \mathrm{KL}(p_T \,\|\, M) + (1 - \beta) \, \mathrm{KL}(p_S \,\|\, M)\big)

  and, by definition, :math:`\beta = 0` is the forward KL :math:`T^2 \mathrm{KL}(p_T\|p_S)`
  and :math:`\beta = 1` the reverse KL :math:`T^2 \mathrm{KL}(p_S\|p_T)` (TRL's
  ``GKDTrainer.generalized_jsd_loss``). The interior expression itself tends to 0 at both
  ends (:math:`M` becomes one of the two distributions and its weight vanishes): the ends
  are a switch of objective, not a limit. ``beta = 0.5`` is the symmetric JSD, bounded by
  :math:`T^2 \log 2`. EasyDeL's distillation loss weights the mixture the other way round;
  its ``beta`` corresponds to ``1 - beta`` here.

  Args:
    student_logits: ``[..., V]`` float logits.
    teacher_logits: ``[..., V]`` float logits, same shape.
    beta: in :math:`[0, 1]`; a concrete 0 or 1 selects the KL, a traced value is handled
      with the same three cases.
    temperature: :math:`T > 0`, applied to both.
    axis: the vocabulary axis.
    where: optional boolean mask broadcastable to the logits.

  Returns:
    ``[...]`` per-token values, float32 (float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import generalized_jsd
    >>> s, t = jnp.array([[0.0, 0.0]]), jnp.array([[0.0, 1.0]])
    >>> round(float(generalized_jsd(s, t, beta=0.5)[0]), 4)
    0.0285

  References:
    Agarwal et al., "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (GKD), ICLR 2024. https://github.com/huggingface/trl
  """
  fn = "generalized_jsd"
  _check_unit(fn, "beta", beta)
  ls, lt, temp, where = _log_probs(fn, student_logits, teacher_logits, temperature, axis, where)
  fwd = lambda: _kl_log_space(lt, ls, axis, where)
  rev = lambda: _kl_log_space(ls, lt, axis, where)

  def interior(b):
    lm = _log_mixture(lt, ls, b)
    return b * _kl_log_space(lt, lm, axis, where) + (1 - b) * _kl_log_space(ls, lm, axis, where)

  if not isinstance(beta, jax.core.Tracer):
    b = float(np.asarray(beta))
    out = fwd() if b == 0 else rev() if b == 1 else interior(jnp.asarray(b, ls.dtype))
    return temp**2 * out
  b = jnp.asarray(beta, ls.dtype)
  return temp**2 * jnp.where(b == 0, fwd(), jnp.where(b == 1, rev(), interior(b)))


def skew_kl(student_logits: jax.Array, teacher_logits: jax.Array, *,
            alpha: float | jax.Array = 0.1, temperature: float | jax.Array = 1.0, axis: int = -1,
            where: jax.Array | None = None) -> jax.Array:
  r"""Skew forward KL (DistiLLM): the teacher against a teacher-student mixture.

  .. math::
    T^2 \, \mathrm{KL}\big(p_T \,\|\, \alpha p_T + (1 - \alpha) p_S\big)

  Bounded by :math:`-T^2 \log \alpha` and with gradients that do not blow up where the
  student puts almost no mass; :math:`\alpha = 0` is the forward KL. DistiLLM's code
  minimises the cross-entropy :math:`-\sum p_T \log(\cdot)`, which differs from this by the
  teacher's entropy (no gradient for the student).

  Args:
    student_logits: ``[..., V]`` float logits.
    teacher_logits: ``[..., V]`` float logits, same shape.
    alpha: skew in :math:`[0, 1)`.
    temperature: :math:`T > 0`, applied to both.
    axis: the vocabulary axis.
    where: optional boolean mask broadcastable to the logits.

  Returns:
    ``[...]`` per-token values, float32 (float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import skew_kl
    >>> bool(abs(skew_kl(jnp.array([[1.0, 2.0]]), jnp.array([[1.0, 2.0]]))[0]) < 1e-6)
    True

  References:
    Ko, Kim, Chen & Yun, "DistiLLM: Towards Streamlined Distillation for Large Language
    Models", ICML 2024. https://github.com/jongwooko/distillm
  """
  fn = "skew_kl"
  _check_unit(fn, "alpha", alpha)
  ls, lt, temp, where = _log_probs(fn, student_logits, teacher_logits, temperature, axis, where)
  lm = _log_mixture(lt, ls, jnp.asarray(alpha, ls.dtype))
  return temp**2 * _kl_log_space(lt, lm, axis, where)


def skew_reverse_kl(student_logits: jax.Array, teacher_logits: jax.Array, *,
                    alpha: float | jax.Array = 0.1, temperature: float | jax.Array = 1.0,
                    axis: int = -1, where: jax.Array | None = None) -> jax.Array:
  r"""Skew reverse KL (DistiLLM): the student against a student-teacher mixture.

  .. math::
    T^2 \, \mathrm{KL}\big(p_S \,\|\, \alpha p_S + (1 - \alpha) p_T\big)

  :math:`\alpha = 0` is the reverse KL; DistiLLM's default for on-policy data is
  ``alpha = 0.1``.

  Args:
    student_logits: ``[..., V]`` float logits.
    teacher_logits: ``[..., V]`` float logits, same shape.
    alpha: skew in :math:`[0, 1)`.
    temperature: :math:`T > 0`, applied to both.
    axis: the vocabulary axis.
    where: optional boolean mask broadcastable to the logits.

  Returns:
    ``[...]`` per-token values, float32 (float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import skew_reverse_kl
    >>> bool(abs(skew_reverse_kl(jnp.array([[1.0, 2.0]]), jnp.array([[1.0, 2.0]]))[0]) < 1e-6)
    True

  References:
    Ko, Kim, Chen & Yun, "DistiLLM: Towards Streamlined Distillation for Large Language
    Models", ICML 2024. https://github.com/jongwooko/distillm
  """
  fn = "skew_reverse_kl"
  _check_unit(fn, "alpha", alpha)
  ls, lt, temp, where = _log_probs(fn, student_logits, teacher_logits, temperature, axis, where)
  lm = _log_mixture(ls, lt, jnp.asarray(alpha, ls.dtype))
  return temp**2 * _kl_log_space(ls, lm, axis, where)


def total_variation(student_logits: jax.Array, teacher_logits: jax.Array, *,
                    temperature: float | jax.Array = 1.0, axis: int = -1,
                    where: jax.Array | None = None) -> jax.Array:
  r"""Total variation distance between the two softmaxes (no :math:`T^2`).

  .. math::
    \tfrac12 \sum_v |p_{T,v} - p_{S,v}| \in [0, 1]

  Bounded and symmetric; its gradient does not vanish when the distributions are far
  apart. (The gradient of :math:`|x|` at 0 is taken as 0.)

  Args:
    student_logits: ``[..., V]`` float logits.
    teacher_logits: ``[..., V]`` float logits, same shape.
    temperature: :math:`T > 0`, applied to both.
    axis: the vocabulary axis.
    where: optional boolean mask broadcastable to the logits.

  Returns:
    ``[...]`` per-token values, float32 (float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import total_variation
    >>> total_variation(jnp.array([[0.0, -1e4]]), jnp.array([[-1e4, 0.0]]))
    Array([1.], dtype=float32)

  References:
    Wen, Li, Du & Mou, "f-Divergence Minimization for Sequence-Level Knowledge
    Distillation", ACL 2023. https://github.com/arcee-ai/DistillKit
  """
  ls, lt, _, where = _log_probs("total_variation", student_logits, teacher_logits, temperature,
                                axis, where)
  diff = jnp.abs(jnp.exp(lt) - jnp.exp(ls))
  if where is not None:
    diff = jnp.where(where, diff, 0.0)
  return 0.5 * jnp.sum(diff, axis=axis)
