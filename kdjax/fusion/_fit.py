"""Fitting fusion weights (and a temperature) on held-out member predictions."""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import metrics
from kdjax.fusion._combine import _check_member_logits, _check_space, _combine

METHODS = ("nll", "grid", "random")
METRICS = ("accuracy", "nll")


class FusionWeights(NamedTuple):
  """Result of :func:`fit_weights`.

  Attributes:
    weights: ``[M]`` weights on the simplex.
    temperature: scalar dividing every member's logits before fusion (1.0 unless
      ``fit_temperature=True``).
    space: the space the weights were fitted in.
  """

  weights: jax.Array
  temperature: jax.Array
  space: str

  def apply(self, member_logits: jax.Array) -> jax.Array:
    """Fused log-probabilities ``[B, C]``: ``weighted(member_logits / T, w, space)``."""
    member_logits = _check_member_logits(member_logits, "FusionWeights.apply")
    z = member_logits / self.temperature
    return _combine(z, jnp.log(self.weights), self.weights, self.space)


def _check_labels(labels, batch: int, fn: str) -> jax.Array:
  labels = jnp.asarray(labels)
  if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{fn}: labels must be integer [B] = ({batch},), got "
                     f"{labels.shape} {labels.dtype}")
  return labels


def _fused_nll(member_logits, labels, weights, log_temperature, space):
  z = member_logits / jnp.exp(log_temperature)
  return metrics.nll(_combine(z, jnp.log(weights), weights, space), labels)


@functools.partial(jax.jit, static_argnames=("space", "steps", "learning_rate",
                                             "fit_weights_", "fit_temperature"))
def _fit_nll(member_logits, labels, init_logits, *, space, steps, learning_rate,
             fit_weights_, fit_temperature):
  """Adam on ``(softmax-parametrised weights, log T)`` minimising the fused NLL."""
  params = {"logits": init_logits, "log_t": jnp.zeros((), member_logits.dtype)}
  tx = optax.adam(learning_rate)

  def loss_fn(p):
    w_logits = p["logits"] if fit_weights_ else jax.lax.stop_gradient(p["logits"])
    log_t = p["log_t"] if fit_temperature else jax.lax.stop_gradient(p["log_t"])
    return _fused_nll(member_logits, labels, jax.nn.softmax(w_logits), log_t, space)

  def step(carry, _):
    p, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = tx.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), loss

  (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return jax.nn.softmax(params["logits"]), jnp.exp(params["log_t"]), losses


def simplex_grid(num_members: int, resolution: int) -> np.ndarray:
  """All weight vectors with entries in ``{0, 1/r, ..., 1}`` summing to 1.

  Returns:
    ``[C(r + M - 1, M - 1), M]`` float64 array (stars and bars).
  """
  rows = []
  for bars in itertools.combinations(range(resolution + num_members - 1), num_members - 1):
    edges = (-1,) + bars + (resolution + num_members - 1,)
    rows.append([edges[i + 1] - edges[i] - 1 for i in range(num_members)])
  return np.asarray(rows, dtype=np.float64) / resolution


@functools.partial(jax.jit, static_argnames=("space",))
def _score_candidates(member_logits, labels, candidates, log_temperature, *, space):
  """``(accuracy [K], nll [K])`` of each candidate weight vector ``[K, M]``."""
  z = member_logits / jnp.exp(log_temperature)

  def one(w):
    log_probs = _combine(z, jnp.log(w), w, space)
    return metrics.accuracy(log_probs, labels), metrics.nll(log_probs, labels)

  return jax.lax.map(one, candidates, batch_size=64)


def fit_weights(member_logits: jax.Array, labels: jax.Array, *, space: str = "prob",
                method: str = "nll", metric: str = "nll", steps: int = 300,
                learning_rate: float = 0.05, fit_temperature: bool = False,
                resolution: int = 10, num_samples: int = 1000, max_candidates: int = 200_000,
                seed: int = 0) -> FusionWeights:
  """Fits ensemble weights on held-out member predictions.

  Methods:

  * ``"nll"``: Adam (``steps``, ``learning_rate``) on ``w = softmax(a)`` (from uniform)
    minimising :math:`-\\frac1B\\sum_b \\log p_w(y_b \\mid x_b)` of
    ``weighted(member_logits / T, w, space)``; with ``fit_temperature`` also on ``log T``
    (jointly).
  * ``"grid"``: every point of the simplex with step ``1 / resolution``
    (:func:`simplex_grid`, ``C(resolution + M - 1, M - 1)`` points: small ``M`` only).
  * ``"random"``: ``num_samples`` Dirichlet(1) draws (``seed``), plus the ``M`` vertices and
    the uniform weights.

  Grid and random search pick the best candidate by ``metric``: ``"nll"`` (lowest) or
  ``"accuracy"`` (highest, ties broken by lowest NLL). With ``fit_temperature`` a
  temperature is then fitted by Adam with the chosen weights fixed.

  Fit on held-out predictions (not the members' training data), or the weights reward
  overfitting members.

  Args:
    member_logits: ``[M, B, C]`` held-out member logits.
    labels: ``[B]`` integer labels.
    space: ``"prob"``, ``"logit"`` or ``"log_prob"`` (see :func:`kdjax.fusion.weighted`).
    method: ``"nll"``, ``"grid"`` or ``"random"``.
    metric: selection metric of grid/random search (``"nll"`` or ``"accuracy"``).
    steps: Adam steps (``"nll"`` and the temperature fit).
    learning_rate: Adam learning rate.
    fit_temperature: also fit one temperature ``T > 0`` shared by all members.
    resolution: grid step is ``1 / resolution``.
    num_samples: Dirichlet draws of ``"random"``.
    max_candidates: the grid is refused (``ValueError``) beyond this many points.
    seed: seed of ``"random"``.

  Returns:
    :class:`FusionWeights` ``(weights [M], temperature, space)``; ``.apply(member_logits)``
    gives the fused log-probabilities.

  Raises:
    ValueError: unknown method/metric/space, bad shapes, or a grid that is too large.

  References:
    Caruana et al. 2004, "Ensemble selection from libraries of models";
    Guo et al. 2017, "On calibration of modern neural networks" (temperature scaling).
  """
  fn = "fit_weights"
  _check_space(space, fn)
  if method not in METHODS:
    raise ValueError(f"{fn}: unknown method {method!r}; known methods: {list(METHODS)}")
  if metric not in METRICS:
    raise ValueError(f"{fn}: unknown metric {metric!r}; known metrics: {list(METRICS)}")
  member_logits = _check_member_logits(member_logits, fn)
  if member_logits.ndim != 3:
    raise ValueError(f"{fn}: member_logits must be [M, B, C], got {member_logits.shape}")
  m, b, _ = member_logits.shape
  labels = _check_labels(labels, b, fn)
  dtype = member_logits.dtype
  opt = dict(space=space, steps=steps, learning_rate=learning_rate)

  if method == "nll":
    w, t, _ = _fit_nll(member_logits, labels, jnp.zeros((m,), dtype), fit_weights_=True,
                       fit_temperature=fit_temperature, **opt)
    return FusionWeights(w, t, space)

  if method == "grid":
    count = math.comb(resolution + m - 1, m - 1)
    if count > max_candidates:
      raise ValueError(f"{fn}: grid of resolution {resolution} over {m} members has {count} "
                       f"points > max_candidates={max_candidates}; use method='random' or a "
                       "coarser resolution")
    candidates = simplex_grid(m, resolution)
  else:
    rng = np.random.default_rng(seed)
    candidates = np.concatenate([np.eye(m), np.full((1, m), 1.0 / m),
                                 rng.dirichlet(np.ones(m), size=num_samples)])
  acc, nll = _score_candidates(member_logits, labels, jnp.asarray(candidates, dtype),
                               jnp.zeros((), dtype), space=space)
  acc, nll = np.asarray(acc), np.asarray(nll)
  best = int(np.argmin(nll)) if metric == "nll" else int(np.lexsort((nll, -acc))[0])
  w = jnp.asarray(candidates[best], dtype)
  t = jnp.ones((), dtype)
  if fit_temperature:
    # Weights are held fixed through stop_gradient; log(w) of zero weights is -inf there,
    # so parametrise by log w directly (softmax(log w) == w).
    with np.errstate(divide="ignore"):
      init = jnp.asarray(np.log(candidates[best]), dtype)
    _, t, _ = _fit_nll(member_logits, labels, init, fit_weights_=False, fit_temperature=True,
                       **opt)
  return FusionWeights(w, t, space)
