r"""Weight-space merges of models fine-tuned from one base: task arithmetic, TIES, DARE,
SLERP and model stock. Pure functions over pytrees; members are stacked (leaves ``[M, ...]``,
as :func:`kdjax.ensemble.stack` gives), the base is one member's pytree.

With task vectors :math:`\tau_m = \theta_m - \theta_0` (per leaf):

* task arithmetic: :math:`\theta_0 + \lambda \sum_m \tau_m` (Ilharco et al., ICLR 2023);
* TIES: trim each :math:`\tau_m` to its ``density`` share of largest magnitudes, elect the
  sign :math:`s = \mathrm{sign}(\sum_m \hat\tau_m)`, average the kept entries that agree
  with it (disjoint mean), :math:`\theta_0 + \lambda \bar\tau` (Yadav et al., NeurIPS 2023);
* DARE: drop entries with probability :math:`1 - p`, rescale the kept by :math:`1 / p`, then
  task arithmetic or TIES' sign election (Yu et al., ICML 2024);
* SLERP: spherical interpolation of two models, per leaf (mergekit);
* model stock: :math:`t\,\bar\theta + (1 - t)\,\theta_0`,
  :math:`t = N\cos\phi / (1 + (N - 1)\cos\phi)` with :math:`\cos\phi` the mean pairwise cosine
  of the task vectors, per leaf (Jang et al., ECCV 2024).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.ensemble import num_members


def _task_vectors(base: Any, finetuned: Any) -> Any:
  """``[M, ...]`` task vectors; checks that base and members share structure and shapes."""
  num_members(finetuned)
  if jax.tree.structure(base) != jax.tree.structure(finetuned):
    raise ValueError("base and the fine-tuned members have different param trees: the base "
                     "must be the members' start (same architecture)")

  def tv(b, f):
    if tuple(f.shape[1:]) != tuple(np.shape(b)):
      raise ValueError(f"a member leaf of shape {tuple(f.shape[1:])} does not match the base's "
                       f"{tuple(np.shape(b))}: the base must be the members' start")
    return f - b[None]

  return jax.tree.map(tv, base, finetuned)


def _check_density(density: float) -> None:
  if not 0 < float(density) <= 1:
    raise ValueError(f"density must be in (0, 1], got {density}")


def task_arithmetic(base: Any, finetuned: Any, *, scale: float = 1.0) -> Any:
  """``base + scale * sum_m (theta_m - base)`` per leaf."""
  return jax.tree.map(lambda b, t: b + scale * jnp.sum(t, 0),
                      base, _task_vectors(base, finetuned))


def _trim(tau: jax.Array, density: float) -> jax.Array:
  """``[M, ...]`` with each member's entries outside its top ``ceil(density * n)``
  magnitudes set to 0 (ties in magnitude broken by position)."""
  m = tau.shape[0]
  flat = tau.reshape(m, -1)
  n = flat.shape[1]
  k = max(1, int(np.ceil(float(density) * n)))
  if k >= n:
    return tau
  _, idx = jax.lax.top_k(jnp.abs(flat), k)
  keep = jnp.zeros(flat.shape, bool).at[jnp.arange(m)[:, None], idx].set(True)
  return jnp.where(keep, flat, 0).reshape(tau.shape)


def _disjoint_mean(tau: jax.Array) -> jax.Array:
  """TIES' sign election and disjoint mean over the member axis of ``[M, ...]``."""
  sign = jnp.sign(jnp.sum(tau, 0))
  agree = (jnp.sign(tau) == sign[None]) & (tau != 0)
  count = jnp.sum(agree, 0)
  return jnp.where(count > 0, jnp.sum(jnp.where(agree, tau, 0), 0) / jnp.maximum(count, 1), 0)


def ties_merge(base: Any, finetuned: Any, *, density: float = 0.2, scale: float = 1.0) -> Any:
  """TIES merging (module docstring); ``density`` is the share of entries each member keeps."""
  _check_density(density)
  return jax.tree.map(lambda b, t: b + scale * _disjoint_mean(_trim(t, density)),
                      base, _task_vectors(base, finetuned))


def dare(base: Any, finetuned: Any, *, density: float, key: jax.Array, scale: float = 1.0,
         combine: str = "sum") -> Any:
  """DARE (module docstring): each task-vector entry kept with probability ``density`` and
  rescaled by ``1 / density``; ``combine="sum"`` (task arithmetic) or ``"ties"`` (sign
  election and disjoint mean of the rescaled vectors)."""
  _check_density(density)
  if combine not in ("sum", "ties"):
    raise ValueError(f"dare: combine must be 'sum' or 'ties', got {combine!r}")
  taus = _task_vectors(base, finetuned)
  leaves, treedef = jax.tree.flatten(taus)
  keys = jax.random.split(key, len(leaves))
  dropped = [jnp.where(jax.random.bernoulli(k, density, t.shape), t / density, 0)
             for k, t in zip(keys, leaves)]
  merged = [(jnp.sum(t, 0) if combine == "sum" else _disjoint_mean(t)) for t in dropped]
  return jax.tree.map(lambda b, t: b + scale * t, base, jax.tree.unflatten(treedef, merged))


def slerp(a: Any, b: Any, t: float, *, eps: float = 1e-8) -> Any:
  r"""Spherical interpolation per leaf: with :math:`\Omega` the angle between the
  flattened leaves, :math:`\frac{\sin((1-t)\Omega)}{\sin\Omega} a +
  \frac{\sin(t\Omega)}{\sin\Omega} b`; (anti)parallel leaves interpolate linearly."""

  def one(x, y):
    xf, yf = x.reshape(-1), y.reshape(-1)
    cos = jnp.dot(xf, yf) / jnp.maximum(jnp.linalg.norm(xf) * jnp.linalg.norm(yf), eps)
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    so = jnp.sin(omega)
    linear = (1 - t) * x + t * y
    safe = jnp.where(so > eps, so, 1.0)
    spherical = (jnp.sin((1 - t) * omega) / safe) * x + (jnp.sin(t * omega) / safe) * y
    return jnp.where(so > eps, spherical, linear)

  return jax.tree.map(one, a, b)


def model_stock(base: Any, finetuned: Any, *, eps: float = 1e-8) -> Any:
  """Model stock (module docstring), per leaf; needs at least 2 members."""
  if num_members(finetuned) < 2:
    raise ValueError("model_stock needs at least 2 fine-tuned members")

  def one(b, tau, f):
    n = tau.shape[0]
    flat = tau.reshape(n, -1)
    unit = flat / jnp.maximum(jnp.linalg.norm(flat, axis=1, keepdims=True), eps)
    cos = unit @ unit.T
    mean_cos = (jnp.sum(cos) - jnp.trace(cos)) / (n * (n - 1))
    ratio = n * mean_cos / (1 + (n - 1) * mean_cos)
    return ratio * jnp.mean(f, 0) + (1 - ratio) * b

  return jax.tree.map(one, base, _task_vectors(base, finetuned), finetuned)
