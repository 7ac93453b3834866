"""Feature distillation: FitNets hints (with a learnable projector) and attention transfer."""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.losses import _checks


def hint(student_features: jax.Array, teacher_features: jax.Array, *,
         where: jax.Array | None = None) -> jax.Array:
  r"""FitNets hint loss: per-example mean squared error over all non-batch axes.

  .. math::
    \frac{1}{|D|} \sum_{d \in D} (f^s_{b,d} - f^t_{b,d})^2

  Shapes must match exactly; map student features to the teacher's shape first with
  :class:`Projector` (the composer's ``hint`` term does this for you).

  Args:
    student_features: ``[B, ...]`` float features.
    teacher_features: ``[B, ...]`` float features, same shape.
    where: optional boolean mask broadcastable to the features' shape; only True
      elements enter the mean (an example with none gives 0).

  Returns:
    ``[B]`` per-example losses, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import hint
    >>> hint(jnp.ones((2, 3)), jnp.zeros((2, 3)))
    Array([1., 1.], dtype=float32)

  References:
    Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep
    Nets", ICLR 2015.
  """
  fn = "hint"
  s = _checks.check_floating("student_features", fn, student_features)
  t = _checks.check_floating("teacher_features", fn, teacher_features)
  _checks.check_same_shape(fn, "student_features", s, "teacher_features", t)
  _checks.check_min_rank(fn, "student_features", s, 1)
  dtype = _checks.compute_dtype(s, t)
  axes = tuple(range(1, s.ndim))
  if where is None:
    return jnp.mean(jnp.square(s.astype(dtype) - t.astype(dtype)), axis=axes)
  where = _checks.check_where(fn, where, s.shape, "student_features")
  # Select the inputs, not only the result: NaN in a masked entry must not reach the grads.
  sq = jnp.square(jnp.where(where, s.astype(dtype) - t.astype(dtype), 0))
  count = jnp.sum(where, axis=axes).astype(dtype)
  return jnp.sum(sq, axis=axes) / jnp.maximum(count, 1)


class Projector(nn.Module):
  r"""Maps student features to the teacher's feature shape (a FitNets regressor).

  * ``kind="dense"``: flatten ``[B, ...]`` to ``[B, D_s]``, ``Dense(prod(target_shape))``,
    reshape to ``[B, *target_shape]``.
  * ``kind="conv"``: a 1x1 convolution, i.e. ``Dense(target_shape[-1])`` on the last
    (channel) axis; the spatial dims ``shape[1:-1]`` must already equal
    ``target_shape[:-1]``.
  * ``kind="conv_reg"``: RepDistiller's / mdistiller's FitNets regressor ``ConvReg`` for
    equal spatial dims: the 1x1 convolution (with bias), then BatchNorm with the batch's
    statistics (as ``torch.nn.BatchNorm2d`` in training mode, ``eps=1e-5``; the
    regressor only serves the training loss, so no running averages are kept), then ReLU:

    .. math::
      y = \max\Big(0,\; \gamma \frac{z - \mu}{\sqrt{\sigma^2 + 10^{-5}}} + \beta\Big),
      \quad z = x W + b,

    :math:`\mu, \sigma^2` the per-channel mean and biased variance of :math:`z` over the
    batch and spatial axes (over the rows ``where`` marks valid). The normalisation keeps
    the regressor's output (and its curvature in ``W``) at unit scale whatever the scale
    of the student features; without it the hint weight 100 of the published recipe
    makes SGD at lr 0.05 diverge (post-ReLU student features have a large common mean).

  ``norm="layer"`` adds a LayerNorm over the last axis after the projection
  (``"dense"``/``"conv"`` only).

  Attributes:
    target_shape: the teacher's feature shape without the batch axis.
    kind: ``"dense"`` or ``"conv"``.
    norm: ``None`` or ``"layer"``.
  """

  target_shape: Sequence[int]
  kind: str = "dense"
  norm: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """``x``: ``[B, ...]`` student features; ``where``: optional ``[B]`` valid rows (only
    ``"conv_reg"``'s batch statistics use it). Returns ``[B, *target_shape]``."""
    target = tuple(int(d) for d in self.target_shape)
    if x.ndim < 2:
      raise ValueError(f"Projector: input must be [B, ...], got shape {x.shape}")
    if self.kind == "dense":
      y = nn.Dense(math.prod(target), name="dense")(x.reshape(x.shape[0], -1))
      y = y.reshape((x.shape[0], *target))
    elif self.kind in ("conv", "conv_reg"):
      if not target or x.shape[1:-1] != target[:-1]:
        raise ValueError(f"Projector(kind={self.kind!r}): a 1x1 conv keeps the spatial dims; "
                         f"student features {x.shape} have spatial dims {x.shape[1:-1]} but the "
                         f"target shape {target} needs {target[:-1]} (pool first, or use "
                         "kind='dense')")
      y = nn.Dense(target[-1], name="conv1x1")(x)
      if self.kind == "conv_reg":
        if self.norm is not None:
          raise ValueError(f"Projector(kind='conv_reg') has its own BatchNorm; norm must be "
                           f"None, got {self.norm!r}")
        mask = None
        if where is not None:
          mask = jnp.broadcast_to(where.reshape(where.shape + (1,) * (y.ndim - 1)), y.shape)
        y = nn.BatchNorm(use_running_average=False, epsilon=1e-5, name="bn")(y, mask=mask)
        y = nn.relu(y)
    else:
      raise ValueError(f"Projector: unknown kind {self.kind!r}; known: 'dense', 'conv', "
                       "'conv_reg'")
    if self.norm == "layer":
      y = nn.LayerNorm(name="norm")(y)
    elif self.norm is not None:
      raise ValueError(f"Projector: unknown norm {self.norm!r}; known: None, 'layer'")
    return y


def _attention_map(f: jax.Array, p: float) -> jax.Array:
  a = jnp.mean(jnp.abs(f) ** p, axis=-1).reshape(f.shape[0], -1)
  return _checks.l2_normalize(a, axis=-1)


def attention_transfer(student_features: jax.Array, teacher_features: jax.Array, *,
                       p: float = 2) -> jax.Array:
  r"""Attention transfer: match L2-normalised spatial attention maps, per example.

  For channels-last features ``[B, H, W, C]`` or ``[B, L, C]``, the attention map is the
  channel mean of :math:`|f|^p`, flattened to ``[B, N]`` (``N = H W`` or ``L``) and
  L2-normalised (``x / max(||x||, 1e-12)``):

  .. math::
    a = \frac{\mathrm{vec}\big(\tfrac1C \sum_c |f_{\cdot,c}|^p\big)}
             {\big\|\mathrm{vec}\big(\tfrac1C \sum_c |f_{\cdot,c}|^p\big)\big\|_2},
    \qquad
    \ell_b = \frac1N \sum_n (a^s_{b,n} - a^t_{b,n})^2

  This is the RepDistiller ``Attention`` loss (``(at(f_s) - at(f_t)).pow(2).mean()``)
  before its batch mean; the paper's :math:`\|a_s - a_t\|_2` (not squared, no
  :math:`1/N`) differs by that monotone transform.

  Args:
    student_features: ``[B, H, W, C_s]`` or ``[B, L, C_s]`` float features.
    teacher_features: ``[B, H, W, C_t]`` or ``[B, L, C_t]``: same batch and spatial
      dims (pool first if they differ); channel counts may differ.
    p: exponent of the attention map.

  Returns:
    ``[B]`` per-example losses, float32 (or float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import attention_transfer
    >>> f = jnp.arange(24.0).reshape(1, 4, 6)
    >>> attention_transfer(f, 2 * f[..., :3]).shape  # channel counts may differ
    (1,)

  References:
    Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.
    https://github.com/HobbitLong/RepDistiller
  """
  fn = "attention_transfer"
  s = _checks.check_floating("student_features", fn, student_features)
  t = _checks.check_floating("teacher_features", fn, teacher_features)
  for name, x in (("student_features", s), ("teacher_features", t)):
    if x.ndim not in (3, 4):
      raise ValueError(f"{fn}: {name} must be [B, H, W, C] or [B, L, C], got shape {x.shape}")
  if s.shape[:-1] != t.shape[:-1]:
    raise ValueError(f"{fn}: student_features and teacher_features must have the same batch "
                     f"and spatial dims (pool the larger one first), got student_features."
                     f"shape={s.shape} and teacher_features.shape={t.shape}")
  _checks.check_positive(fn, "p", p)
  dtype = _checks.compute_dtype(s, t)
  diff = _attention_map(s.astype(dtype), p) - _attention_map(t.astype(dtype), p)
  return jnp.mean(jnp.square(diff), axis=-1)
