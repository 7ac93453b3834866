"""DeepFusion: a small learned combiner of member outputs, fitted with K-fold cross-fitting."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import metrics
from kdjax.fusion._combine import _check_member_logits, _check_space, _combine


class DeepFusion(nn.Module):
  """Learned fusion of ``M`` members' logits (and optionally features) into fused logits.

  .. math::
    \\tilde z_m = a_m z_m + c_m, \\qquad
    \\log p = \\log\\mathrm{softmax}\\big(\\mathrm{fuse}_{w}(\\tilde z) +
    \\mathrm{MLP}([\\log\\mathrm{softmax}(z_1), \\dots, \\log\\mathrm{softmax}(z_M), h])\\big)

  * per member ``m``: a scale ``a_m`` (an inverse temperature, init 1) and a class bias
    ``c_m [C]`` (init 0) on its logits;
  * ``fuse_w``: :func:`kdjax.fusion.weighted` in ``space`` with ``w = softmax(v)`` (init
    uniform);
  * optional residual MLP (``hidden`` non-empty) on the concatenated recalibrated member
    log-probabilities ``[B, M*C]`` (clipped at ``log_prob_floor`` and scaled to
    ``[-1, 0]``) and optional member features ``[B, F]``; its last layer is
    zero-initialised, so an untrained module equals :func:`kdjax.fusion.average`.

  Returns fused **log-probabilities** ``[B, C]`` (usable as logits).
  """

  num_members: int
  num_classes: int
  space: str = "prob"
  hidden: Sequence[int] = ()
  log_prob_floor: float = -10.0  # MLP inputs: max(log p, floor) / -floor, in [-1, 0]

  @nn.compact
  def __call__(self, member_logits: jax.Array, features: jax.Array | None = None) -> jax.Array:
    m, c = self.num_members, self.num_classes
    if member_logits.ndim != 3 or member_logits.shape[0] != m or member_logits.shape[2] != c:
      raise ValueError(f"DeepFusion: member_logits must be [M={m}, B, C={c}], got "
                       f"{member_logits.shape}")
    scale = self.param("scale", nn.initializers.ones_init(), (m,))
    bias = self.param("bias", nn.initializers.zeros_init(), (m, c))
    weight_logits = self.param("weight_logits", nn.initializers.zeros_init(), (m,))
    z = member_logits * scale[:, None, None] + bias[:, None, :]
    w = jax.nn.softmax(weight_logits)
    fused = _combine(z, jnp.log(w), w, self.space)
    if not self.hidden:
      return fused
    # The MLP sees the recalibrated members (after the affine), whose log-probs are tame even
    # when a raw member is very overconfident.
    h = jnp.maximum(jax.nn.log_softmax(z, axis=-1), self.log_prob_floor) / -self.log_prob_floor
    h = h.transpose(1, 0, 2).reshape(-1, m * c)
    if features is not None:
      h = jnp.concatenate([h, features.reshape(features.shape[0], -1)], axis=-1)
    for i, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, name=f"dense_{i}")(h))
    residual = nn.Dense(c, kernel_init=nn.initializers.zeros_init(), name="residual")(h)
    return jax.nn.log_softmax(fused + residual, axis=-1)


class DeepFusionFit(NamedTuple):
  """Result of :func:`fit_deep_fusion`.

  Attributes:
    module: the :class:`DeepFusion` module.
    params: params trained on all the given data (use these for new data).
    predict: ``predict(member_logits, features=None) -> log_probs [B, C]`` with ``params``.
    oof_log_probs: ``[B, C]`` out-of-fold predictions: example ``b`` predicted by the model
      of the fold that did not train on it.
    oof_nll: mean NLL of ``oof_log_probs`` (an honest held-out estimate).
    oof_accuracy: accuracy of ``oof_log_probs``.
    fold_params: params of the ``K`` fold models (leading axis ``K``).
  """

  module: DeepFusion
  params: Any
  predict: Callable[..., jax.Array]
  oof_log_probs: jax.Array
  oof_nll: float
  oof_accuracy: float
  fold_params: Any


def prior_params(params: Any) -> Any:
  """The regulariser's centre: the members as they are, averaged.

  Scales 1 (each member's logits unchanged), biases 0, weight logits 0 (uniform
  weights) and residual MLP weights 0, i.e. the params at which :class:`DeepFusion`
  equals :func:`kdjax.fusion.average` in its space (the MLP's last layer is zero).
  """
  prior = jax.tree.map(jnp.zeros_like, params)
  return {**prior, "scale": jnp.ones_like(params["scale"])}


def _l2_to_prior(params, prior):
  return sum(jnp.sum(jnp.square(p - q))
             for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(prior)))


@jax.jit
def _out_of_fold(all_folds, fold_of, labels):
  """``(log_probs [B, C], nll, accuracy)`` of each example under the model that held it out."""
  oof = jnp.take_along_axis(all_folds, fold_of[None, :, None], axis=0)[0]
  return oof, metrics.nll(oof, labels), metrics.accuracy(oof, labels)


@functools.partial(jax.jit, static_argnames=("module", "steps", "learning_rate", "weight_decay"))
def _train_masked(module, init_params, member_logits, features, labels, masks, *, steps,
                  learning_rate, weight_decay):
  """Trains one model per row of ``masks [K, B]`` (bool; full batch Adam), vmapped over ``K``."""
  tx = optax.adam(learning_rate)
  prior = prior_params(init_params)

  def train_one(mask):
    def loss_fn(p):
      log_probs = module.apply({"params": p}, member_logits, features)
      nll = metrics.nll(log_probs, jnp.where(mask, labels, -1))  # held-out rows ignored
      return nll + weight_decay * _l2_to_prior(p, prior)

    def step(carry, _):
      p, state = carry
      grads = jax.grad(loss_fn)(p)
      updates, state = tx.update(grads, state, p)
      return (optax.apply_updates(p, updates), state), None

    (p, _), _ = jax.lax.scan(step, (init_params, tx.init(init_params)), None, length=steps)
    return p

  return jax.vmap(train_one)(masks)


def fit_deep_fusion(member_logits: jax.Array, labels: jax.Array, *, folds: int = 5,
                    features: jax.Array | None = None, space: str = "prob",
                    hidden: Sequence[int] = (), steps: int = 200, learning_rate: float = 0.02,
                    weight_decay: float = 1e-2, seed: int = 0) -> DeepFusionFit:
  """Fits :class:`DeepFusion` on held-out member predictions with K-fold cross-fitting.

  The examples are shuffled (``seed``) and split into ``folds`` parts. Fold model ``k``
  trains on the other ``K - 1`` parts and predicts part ``k``; together they give
  out-of-fold predictions for every example, so ``oof_nll`` / ``oof_accuracy`` measure the
  combiner on data it never saw (it cannot just memorise the labels). A last model trains
  on all the data; its params back ``predict``. All ``K + 1`` models train at once
  (full-batch Adam, ``vmap`` over per-example masks: one compilation).

  Args:
    member_logits: ``[M, B, C]`` held-out member logits (not the members' training data).
    labels: ``[B]`` integer labels.
    folds: number of folds ``K >= 2``.
    features: optional ``[B, F]`` member features for the residual MLP (needs ``hidden``).
    space: fusion space of the weighted part.
    hidden: widths of the residual MLP (empty: affine per member + weights only).
    steps: Adam steps per model.
    learning_rate: Adam learning rate.
    weight_decay: L2 penalty pulling the params towards :func:`prior_params`, the
      plain average of the unchanged members: member scales towards 1 (the member as
      it is), biases and the residual MLP towards 0, the weights towards uniform; a
      huge value gives :func:`kdjax.fusion.average`. A weak penalty lets the residual MLP
      overfit the label noise of a small held-out set: keep it strong there.
    seed: seeds the fold split and the init.

  Returns:
    :class:`DeepFusionFit`.
  """
  fn = "fit_deep_fusion"
  _check_space(space, fn)
  member_logits = _check_member_logits(member_logits, fn)
  if member_logits.ndim != 3:
    raise ValueError(f"{fn}: member_logits must be [M, B, C], got {member_logits.shape}")
  m, b, c = member_logits.shape
  labels = jnp.asarray(labels)
  if labels.shape != (b,) or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{fn}: labels must be integer [B] = ({b},), got {labels.shape} {labels.dtype}")
  if not 2 <= folds <= b:
    raise ValueError(f"{fn}: folds must be in [2, B={b}], got {folds}")
  if features is not None and not hidden:
    raise ValueError(f"{fn}: features are only used by the residual MLP; pass hidden=(...)")

  module = DeepFusion(num_members=m, num_classes=c, space=space, hidden=tuple(hidden))
  init_params = jax.jit(module.init)(jax.random.key(seed), member_logits[:, :1],
                                     None if features is None else features[:1])["params"]
  fold_of = np.empty(b, dtype=np.int64)
  fold_of[np.random.default_rng(seed).permutation(b)] = np.arange(b) % folds
  masks = np.ones((folds + 1, b), dtype=bool)
  for k in range(folds):
    masks[k, fold_of == k] = False
  params = _train_masked(module, init_params, member_logits, features, labels,
                         jnp.asarray(masks), steps=steps,
                         learning_rate=learning_rate, weight_decay=weight_decay)
  fold_params = jax.tree.map(lambda p: p[:folds], params)
  final_params = jax.tree.map(lambda p: p[folds], params)

  apply = jax.jit(lambda p, z, f: module.apply({"params": p}, z, f))
  all_folds = jax.vmap(apply, in_axes=(0, None, None))(fold_params, member_logits, features)
  oof = _out_of_fold(all_folds, jnp.asarray(fold_of), labels)
  oof_log_probs, oof_nll, oof_acc = oof[0], float(oof[1]), float(oof[2])

  def predict(new_member_logits, new_features=None):
    return apply(final_params, new_member_logits, new_features)

  return DeepFusionFit(module, final_params, predict, oof_log_probs, oof_nll, oof_acc,
                       fold_params)
