"""KL divergence against a teacher given only by its top-k log-probabilities per token."""

from typing import Any

import jax
import jax.numpy as jnp

from kdjax.losses import _checks
from kdjax.losses._kd import _kl_log_space

VARIANTS = ("renormalized", "partial", "tail")


def _log1mexp(x: jax.Array) -> jax.Array:
  """``log(1 - exp(x))`` for ``x <= 0``; ``-inf`` (zero mass) for ``x >= 0``, NaN-free grads."""
  neg = x < 0
  safe = jnp.where(neg, x, -1.0)
  # Two branches (Maechler, "Accurately Computing log(1 - exp(-|a|))", 2012).
  val = jnp.where(safe > -0.6931472, jnp.log(-jnp.expm1(safe)), jnp.log1p(-jnp.exp(safe)))
  return jnp.where(neg, val, -jnp.inf)


def _check(fn: str, student_logits: Any, log_probs: Any, indices: Any,
           where: Any) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
  s = _checks.check_floating("student_logits", fn, student_logits)
  lt = _checks.check_floating("teacher_topk_log_probs", fn, log_probs)
  idx = _checks.check_integer("teacher_topk_indices", fn, indices)
  _checks.check_min_rank(fn, "student_logits", s, 1)
  _checks.check_same_shape(fn, "teacher_topk_log_probs", lt, "teacher_topk_indices", idx)
  if lt.ndim != s.ndim or lt.shape[:-1] != s.shape[:-1] or lt.shape[-1] > s.shape[-1]:
    raise ValueError(f"{fn}: teacher_topk_log_probs must be [..., k] with the student's leading "
                     f"shape and k <= V, got teacher_topk_log_probs.shape={lt.shape} and "
                     f"student_logits.shape={s.shape}")
  if where is not None:
    where = _checks.check_where(fn, where, s.shape[:-1], "the tokens (student_logits.shape[:-1])")
  dtype = _checks.compute_dtype(s, lt)
  s, lt = s.astype(dtype), lt.astype(dtype)
  if where is not None:  # masked tokens never reach the value or the gradient
    s = jnp.where(where[..., None], s, 0.0)
    lt = jnp.where(where[..., None], lt, 0.0)
  return s, lt, idx, where


def sparse_kl(student_logits: jax.Array, teacher_topk_log_probs: jax.Array,
              teacher_topk_indices: jax.Array, *, variant: str = "renormalized",
              where: jax.Array | None = None) -> jax.Array:
  r"""Forward KL from a teacher stored (or served) as its top-k log-probabilities.

  With the teacher's top-k log-probabilities :math:`\ell_{T,i}` of its *full* distribution
  at the indices :math:`v_i` (:math:`i = 1..k`) and the student's full log-softmax
  :math:`\log q_v`:

  - ``"renormalized"`` (MaxText, tunix): both renormalised over the k indices,

    .. math:: \mathrm{KL}(\hat p_T \,\|\, \hat q), \quad
       \hat p_{T,i} = \frac{p_{T,i}}{\sum_j p_{T,j}}, \;
       \hat q_i = \frac{q_{v_i}}{\sum_j q_{v_j}}

    Ignores how much mass the student puts outside the k tokens: use it when k is small
    and only the ranking inside the teacher's top-k should be taught.
  - ``"partial"`` (EasyDeL): the teacher's missing mass ignored,
    :math:`\sum_i p_{T,i} (\ell_{T,i} - \log q_{v_i})`. 0 when the student equals the
    teacher, but not a divergence: it can be negative, and its minimum
    (:math:`P \log P` with :math:`P = \sum_i p_{T,i}`) puts all the student's mass on the
    k tokens. Use it when the teacher's top-k cover almost all its mass.
  - ``"tail"`` (DistillKit, TRL): a KL over k + 1 bins, the k tokens plus one bucket
    holding each side's remaining mass :math:`1 - \sum_i p_{T,i}` and
    :math:`1 - \sum_i q_{v_i}`. A proper divergence (0 iff the binned distributions
    agree) that also teaches how much mass belongs outside the top-k: the default choice
    for offline logits at small k.

  With k = V (every token stored, in any order) all three equal the full forward KL.
  The temperature is that of the stored log-probabilities (store at the temperature you
  distil at).

  Args:
    student_logits: ``[..., V]`` float logits.
    teacher_topk_log_probs: ``[..., k]`` teacher log-probabilities (of the full-vocabulary
      softmax), ``k <= V``; any float dtype (float16 storage is upcast).
    teacher_topk_indices: ``[..., k]`` integer token ids, distinct, in ``[0, V)``.
    variant: ``"renormalized"``, ``"partial"`` or ``"tail"``.
    where: optional boolean token mask broadcastable to ``[...]``; masked tokens give 0
      and a zero gradient, even if their inputs are NaN.

  Returns:
    ``[...]`` per-token values, float32 (float64 for float64 inputs).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.losses import sparse_kl
    >>> z = jnp.array([[2.0, 1.0, 0.0, -1.0]])
    >>> lp, idx = jax.lax.top_k(jax.nn.log_softmax(z), 2)
    >>> sparse_kl(z, lp, idx, variant="tail")
    Array([0.], dtype=float32)

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015;
    https://github.com/AI-Hypercomputer/maxtext, https://github.com/google/tunix,
    https://github.com/erfanzar/EasyDeL, https://github.com/arcee-ai/DistillKit.
  """
  fn = "sparse_kl"
  if variant not in VARIANTS:
    raise ValueError(f"{fn}: variant must be one of {VARIANTS}, got {variant!r}")
  s, lt, idx, where = _check(fn, student_logits, teacher_topk_log_probs, teacher_topk_indices,
                             where)
  ls_full = jax.nn.log_softmax(s, axis=-1)
  ls = jnp.take_along_axis(ls_full, idx, axis=-1)
  if variant == "renormalized":
    lt_r = lt - jax.nn.logsumexp(lt, axis=-1, keepdims=True)
    ls_r = ls - jax.nn.logsumexp(ls, axis=-1, keepdims=True)
    out = _kl_log_space(lt_r, ls_r, -1, None)
  elif variant == "partial":
    out = _kl_log_space(lt, ls, -1, None)
  else:
    chosen = jnp.put_along_axis(jnp.zeros(s.shape, jnp.bool_), idx, True, axis=-1,
                                inplace=False)
    has_tail = ~jnp.all(chosen, axis=-1)
    rest = jnp.where(chosen, -jnp.inf, ls_full)
    rest = jnp.where(has_tail[..., None], rest, 0.0)  # an empty bucket keeps grads finite
    ls_tail = jnp.where(has_tail, jax.nn.logsumexp(rest, axis=-1), -jnp.inf)
    lt_tail = jnp.where(has_tail, _log1mexp(jax.nn.logsumexp(lt, axis=-1)), -jnp.inf)
    out = _kl_log_space(jnp.concatenate([lt, lt_tail[..., None]], -1),
                        jnp.concatenate([ls, ls_tail[..., None]], -1), -1, None)
  if where is not None:
    out = jnp.where(where, out, 0.0)
  return out
