"""Relational (batch-level) distillation: similarity preserving, RKD distance/angle, PKT.

Every loss here compares relations *between the examples of a batch*, so each returns
one scalar for the batch. Features ``[B, ...]`` are flattened to ``[B, D]``; the student
and teacher widths ``D`` may differ, the batch sizes may not. ``where`` (``[B]`` bool)
marks valid rows (padding): masking equals slicing the valid rows out. Masked rows are
selected out (replaced by zeros) before any arithmetic, so NaN or inf in them reaches
neither the value nor the gradient.
"""

import jax
import jax.numpy as jnp
import optax

from kdjax.losses import _checks


def _prepare(fn: str, student_features: jax.Array, teacher_features: jax.Array,
             where: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  s = _checks.check_floating("student_features", fn, student_features)
  t = _checks.check_floating("teacher_features", fn, teacher_features)
  _checks.check_min_rank(fn, "student_features", s, 2)
  _checks.check_min_rank(fn, "teacher_features", t, 2)
  _checks.check_same_batch(fn, "student_features", s, "teacher_features", t)
  dtype = _checks.compute_dtype(s, t)
  b = s.shape[0]
  if where is None:
    w = jnp.ones((b,), bool)
  else:
    w = _checks.check_where(fn, where, (b,), "the batch")
  s = _checks.select(w, s.reshape(b, -1).astype(dtype))
  t = _checks.select(w, t.reshape(b, -1).astype(dtype))
  return s, t, w


def _count(w: jax.Array, dtype) -> jax.Array:
  return jnp.maximum(jnp.sum(w), 1).astype(dtype)


def _smooth_l1(x: jax.Array) -> jax.Array:
  """``torch.nn.functional.smooth_l1_loss`` elementwise (Huber with delta 1)."""
  ax = jnp.abs(x)
  return jnp.where(ax < 1, 0.5 * jnp.square(x), ax - 0.5)


def similarity_preserving(student_features: jax.Array, teacher_features: jax.Array, *,
                          where: jax.Array | None = None) -> jax.Array:
  r"""Similarity-preserving KD: match row-normalised batch Gram matrices. **Batch-level.**

  .. math::
    G = \mathrm{rownorm}(F F^\top), \qquad
    \mathcal{L} = \frac{1}{B^2} \| G^s - G^t \|_F^2

  with ``rownorm(x) = x / max(||x||_2, 1e-12)`` per row (as in RepDistiller).

  Args:
    student_features: ``[B, ...]`` float features (flattened to ``[B, D_s]``).
    teacher_features: ``[B, ...]`` float features (flattened to ``[B, D_t]``).
    where: optional ``[B]`` boolean mask of valid rows.

  Returns:
    Scalar loss, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import similarity_preserving
    >>> f = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    >>> round(float(similarity_preserving(f, 3 * f)), 6)
    0.0

  References:
    Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.
  """
  s, t, w = _prepare("similarity_preserving", student_features, teacher_features, where)
  gs = _checks.l2_normalize(s @ s.T, axis=-1)
  gt = _checks.l2_normalize(t @ t.T, axis=-1)
  n = _count(w, s.dtype)
  return jnp.sum(jnp.square(gs - gt)) / n**2


def _pdist(e: jax.Array, eps: float = 1e-12) -> jax.Array:
  """RKD's ``pdist``: Euclidean distances via the Gram trick, clamped at ``eps``, 0 diagonal."""
  sq = jnp.sum(jnp.square(e), axis=-1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, eps)
  return jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, jnp.sqrt(d2))


def rkd_distance(student_features: jax.Array, teacher_features: jax.Array, *,
                 where: jax.Array | None = None) -> jax.Array:
  r"""RKD distance loss: smooth L1 between mean-normalised pairwise distances. **Batch-level.**

  .. math::
    \psi_{ij} = \frac{\|f_i - f_j\|_2}{\mu}, \quad
    \mu = \frac{1}{B(B-1)} \sum_{i \ne j} \|f_i - f_j\|_2, \qquad
    \mathcal{L} = \frac{1}{B^2} \sum_{i,j} \mathrm{smooth\_L1}(\psi^s_{ij} - \psi^t_{ij})

  as in the official ``RkdDistance`` (squared distances clamped at 1e-12 before the
  square root; the mean over all ``B^2`` entries, diagonal included).

  Args:
    student_features: ``[B, ...]`` float features, ``B >= 2``.
    teacher_features: ``[B, ...]`` float features.
    where: optional ``[B]`` boolean mask of valid rows.

  Returns:
    Scalar loss, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import rkd_distance
    >>> f = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> round(float(rkd_distance(f, 5 * f)), 6)
    0.0

  References:
    Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.
    https://github.com/lenscloth/RKD
  """
  s, t, w = _prepare("rkd_distance", student_features, teacher_features, where)
  pair = w[:, None] & w[None, :]
  off = pair & ~jnp.eye(s.shape[0], dtype=bool)
  n_off = _count(off, s.dtype)

  def normalised(e):
    d = _pdist(e)
    mean = jnp.sum(jnp.where(off, d, 0)) / n_off
    return d / jnp.where(mean > 0, mean, 1.0)

  loss = jnp.where(pair, _smooth_l1(normalised(s) - normalised(t)), 0)
  return jnp.sum(loss) / _count(w, s.dtype) ** 2


def _angles(e: jax.Array) -> jax.Array:
  """``[B, B, B]`` cosines of the angle at ``e_i`` between ``e_j`` and ``e_k``."""
  diff = e[None, :, :] - e[:, None, :]  # diff[i, j] = e_j - e_i
  unit = _checks.l2_normalize(diff, axis=-1)
  return jnp.einsum("ijd,ikd->ijk", unit, unit)


def rkd_angle(student_features: jax.Array, teacher_features: jax.Array, *,
              where: jax.Array | None = None) -> jax.Array:
  r"""RKD angle loss: smooth L1 between triplet angle cosines. **Batch-level.**

  .. math::
    \psi_{ijk} = \Big\langle \frac{f_j - f_i}{\|f_j - f_i\|}, \frac{f_k - f_i}{\|f_k - f_i\|}
    \Big\rangle, \qquad
    \mathcal{L} = \frac{1}{B^3} \sum_{i,j,k} \mathrm{smooth\_L1}(\psi^s_{ijk} - \psi^t_{ijk})

  as in the official ``RKdAngle`` (zero vectors normalise to 0; ``O(B^2 D)`` memory).

  Args:
    student_features: ``[B, ...]`` float features.
    teacher_features: ``[B, ...]`` float features.
    where: optional ``[B]`` boolean mask of valid rows.

  Returns:
    Scalar loss, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import rkd_angle
    >>> f = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> float(rkd_angle(f, 3 * f + 1)) < 1e-7
    True

  References:
    Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.
    https://github.com/lenscloth/RKD
  """
  s, t, w = _prepare("rkd_angle", student_features, teacher_features, where)
  triple = w[:, None, None] & w[None, :, None] & w[None, None, :]
  loss = jnp.where(triple, _smooth_l1(_angles(s) - _angles(t)), 0)
  return jnp.sum(loss) / _count(w, s.dtype) ** 3


def pkt(student_features: jax.Array, teacher_features: jax.Array, *,
        where: jax.Array | None = None, eps: float = 1e-7) -> jax.Array:
  r"""Probabilistic knowledge transfer with the cosine kernel. **Batch-level.**

  With unit rows :math:`\hat f_i = f_i / (\|f_i\| + \epsilon)`, kernel
  :math:`K_{ij} = (\hat f_i^\top \hat f_j + 1) / 2` and conditional probabilities
  :math:`P_{ij} = K_{ij} / \sum_k K_{ik}`,

  .. math::
    \mathcal{L} = \frac{1}{B^2} \sum_{i,j} P^t_{ij}
    \log \frac{P^t_{ij} + \epsilon}{P^s_{ij} + \epsilon}

  as in the official ``cosine_similarity_loss``.

  Args:
    student_features: ``[B, ...]`` float features.
    teacher_features: ``[B, ...]`` float features.
    where: optional ``[B]`` boolean mask of valid rows.
    eps: the official code's ``eps``.

  Returns:
    Scalar loss, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import pkt
    >>> f = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    >>> round(float(pkt(f, 2 * f)), 6)
    0.0

  References:
    Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
    Transfer", ECCV 2018. https://github.com/passalis/probabilistic_kt
  """
  s, t, w = _prepare("pkt", student_features, teacher_features, where)
  pair = w[:, None] & w[None, :]

  def probs(e):
    u = e / (optax.safe_norm(e, 0.0, axis=-1, keepdims=True) + eps)
    k = jnp.where(pair, (u @ u.T + 1) / 2, 0)
    z = jnp.sum(k, axis=-1, keepdims=True)
    return k / jnp.where(z > 0, z, 1.0)

  ps, pt = probs(s), probs(t)
  loss = jnp.where(pair, pt * jnp.log((pt + eps) / (ps + eps)), 0)
  return jnp.sum(loss) / _count(w, s.dtype) ** 2
