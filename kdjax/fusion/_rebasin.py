r"""Permutation alignment of independently trained members (git re-basin's weight matching).

Hidden units can be permuted without changing a network's function. A
:class:`PermutationSpec` says which param axes each permutation acts on; weight matching
(Ainsworth et al., "Git Re-Basin", ICLR 2023, Algorithm 2) finds the permutations of
``params`` that bring it closest to ``reference``,

.. math:: \max_{\pi} \sum_\ell \langle W^{ref}_\ell, \pi_\ell W_\ell \pi_{\ell-1}^\top \rangle,

by coordinate ascent: one permutation at a time is the linear assignment problem of its
summed cross-correlation (``scipy.optimize.linear_sum_assignment``), in random order, until
no permutation improves. The aligned params compute the same function as ``params``; the
linear path to ``reference`` then crosses a much lower loss barrier.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import traverse_util


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
  """``axes[param path]``: per axis of that param, the permutation acting on it or ``None``
  (paths ``"dense_0/kernel"``, ``/``-joined)."""

  axes: dict[str, tuple[str | None, ...]]

  @property
  def perms(self) -> dict[str, list[tuple[str, int]]]:
    """``{permutation: [(param path, axis), ...]}``."""
    out: dict[str, list[tuple[str, int]]] = {}
    for path, names in self.axes.items():
      for axis, name in enumerate(names):
        if name is not None:
          out.setdefault(name, []).append((path, axis))
    return out


def mlp_permutation_spec(num_hidden: int) -> PermutationSpec:
  """:class:`kdjax.models.MLP` with ``num_hidden`` hidden layers (``dense_i``, ``head``)."""
  axes = {}
  for i in range(num_hidden):
    prev = None if i == 0 else f"P{i - 1}"
    axes[f"dense_{i}/kernel"] = (prev, f"P{i}")
    axes[f"dense_{i}/bias"] = (f"P{i}",)
  axes["head/kernel"] = (f"P{num_hidden - 1}" if num_hidden else None, None)
  axes["head/bias"] = (None,)
  return PermutationSpec(axes)


def permutation_spec(model: Any) -> PermutationSpec:
  """The :class:`PermutationSpec` of a zoo model (today: :class:`kdjax.models.MLP`).

  Raises:
    ValueError: for a model without one.
  """
  from kdjax.models import MLP
  if isinstance(model, MLP):
    return mlp_permutation_spec(len(model.hidden))
  raise ValueError(f"permutation_spec: no spec for {type(model).__name__} yet (known: MLP)")


def _permuted(flat: dict, spec: PermutationSpec, perms: dict[str, np.ndarray],
              skip: str | None = None) -> dict:
  out = {}
  for path, value in flat.items():
    for axis, name in enumerate(spec.axes.get(path, ())):
      if name is not None and name != skip:
        value = np.take(value, perms[name], axis=axis)
    out[path] = value
  return out


def permutation_align(reference: Any, params: Any, spec: PermutationSpec, *,
                      max_iter: int = 100, seed: int = 0) -> Any:
  """``params`` with its hidden units permuted to match ``reference`` (module docstring);
  the result computes the same function as ``params``.

  Raises:
    ValueError: if ``spec`` names a path the params lack, or the two trees differ.
  """
  from scipy.optimize import linear_sum_assignment
  flat_ref = {k: np.asarray(v, np.float64) for k, v in
              traverse_util.flatten_dict(dict(reference), sep="/").items()}
  flat = {k: np.asarray(v, np.float64) for k, v in
          traverse_util.flatten_dict(dict(params), sep="/").items()}
  if set(flat_ref) != set(flat) or any(flat[k].shape != flat_ref[k].shape for k in flat):
    raise ValueError("permutation_align: reference and params have different trees or shapes")
  missing = sorted(set(spec.axes) - set(flat))
  if missing:
    raise ValueError(f"permutation_align: the spec names params {missing[:3]} the model lacks")
  groups = spec.perms
  sizes = {name: flat[path].shape[axis] for name, [(path, axis), *_] in groups.items()}
  perms = {name: np.arange(n) for name, n in sizes.items()}
  rng = np.random.default_rng(seed)
  for _ in range(max_iter):
    improved = False
    for name in rng.permutation(sorted(groups)):
      n = sizes[name]
      others = _permuted(flat, spec, perms, skip=name)
      cost = np.zeros((n, n))
      for path, axis in groups[name]:
        a = np.moveaxis(flat_ref[path], axis, 0).reshape(n, -1)
        b = np.moveaxis(others[path], axis, 0).reshape(n, -1)
        cost += a @ b.T
      _, new = linear_sum_assignment(cost, maximize=True)
      old_score = np.trace(cost[:, perms[name]])
      new_score = np.trace(cost[:, new])
      if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
        perms[name], improved = new, True
    if not improved:
      break
  aligned = _permuted(flat, spec, perms)
  leaves = traverse_util.flatten_dict(dict(params), sep="/")
  out = {k: np.asarray(aligned[k], np.asarray(leaves[k]).dtype) for k in leaves}
  return jax.tree.map(np.asarray, traverse_util.unflatten_dict(out, sep="/"))
