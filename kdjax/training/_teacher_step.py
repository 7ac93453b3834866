r"""Teachers inside the compiled step: one ``teacher_apply(variables, x) -> (fused_logits,
features)`` for a single teacher or an ensemble of several architectures.

Members of one architecture are stacked (a :class:`~kdjax.training.TeacherGroup`) and run
together on the batch the device holds (``vmap``, ``lax.map`` or an unrolled loop over the
member axis); the groups' logits are fused in the step:

.. math::
  \tilde z = \tau \log \mathrm{fuse}_m\big(\mathrm{softmax}(z_m / \tau);\ w\big)

with ``fuse`` a (weighted) average in probability, logit or log-probability space
(:mod:`kdjax.fusion`), fixed or fitted weights :math:`w` and the fusion temperature
:math:`\tau` (the same targets as :func:`kdjax.training.teacher_log_probs`: a KD loss at
temperature :math:`\tau` sees the average of the members' *tempered* distributions). A
single teacher is an ensemble of one, whose targets are its logits (and only it may return
features).

Under data parallelism (``x`` sharded over a ``data`` mesh axis, the teacher variables
replicated) every device runs every member on its own slice of the batch: no member axis is
padded to the device count and no work is repeated. The same function computes cached
targets (:mod:`kdjax.training._teacher_cache`).
"""

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import fusion
from kdjax.training._step import TeacherApply, frozen_teacher_apply
from kdjax.training._teacher import eval_apply_fn

MEMBER_STRATEGIES = ("auto", "vmap", "map", "loop")


def fuse_member_logits(member_logits: jax.Array, *, space: str = "prob", weights=None,
                       temperature: float = 1.0) -> jax.Array:
  r"""Ensemble targets ``[B, C]`` from ``member_logits [M, B, C]``.

  .. math::
    \tilde z = \tau \log \mathrm{fuse}_m(\mathrm{softmax}(z_m / \tau); w)

  One member (``M = 1``) returns its logits unchanged: for any loss of the softmax at
  temperature :math:`\tau` they give the same distribution as the formula.

  Args:
    member_logits: ``[M, B, C]``.
    space: ``"prob"``, ``"logit"`` or ``"log_prob"`` (:func:`kdjax.fusion.weighted`).
    weights: ``[M]`` on the simplex, or ``None`` for the uniform average.
    temperature: :math:`\tau > 0`.

  Returns:
    ``[B, C]``: fused log-probabilities times :math:`\tau` (logits for ``M = 1``).
  """
  if member_logits.shape[0] == 1:
    return member_logits[0]
  tempered = member_logits / temperature
  if weights is None:
    fused = fusion.average(tempered, space=space)
  else:
    fused = fusion.weighted(tempered, jnp.asarray(weights, tempered.dtype), space=space)
  return fused * temperature


def _run_members(apply_fn, stacked_variables, x, strategy: str) -> jax.Array:
  """``[M, B, C]`` logits of one group's stacked members on ``x`` (inside ``jit``)."""
  if strategy == "auto":  # measured in kdjax.ensemble.choose_strategy: lax.map on the CPU
    strategy = "map" if jax.default_backend() == "cpu" else "vmap"
  if strategy == "vmap":
    return jax.vmap(apply_fn, in_axes=(0, None))(stacked_variables, x)
  if strategy == "map":
    return jax.lax.map(lambda v: apply_fn(v, x), stacked_variables)
  size = jax.tree.leaves(stacked_variables)[0].shape[0]
  return jnp.stack([apply_fn(jax.tree.map(lambda a, i=i: a[i], stacked_variables), x)
                    for i in range(size)])


def _group_weights(groups, weights) -> np.ndarray | None:
  """The user's weights (given in workdir order) in group-concatenation order."""
  if weights is None or len(weights) == 0:
    return None
  total = sum(g.size for g in groups)
  w = np.asarray(weights, np.float64)
  if w.shape != (total,):
    raise ValueError(f"config.teacher.weights has {w.size} entries but the teacher ensemble has "
                     f"{total} members (one weight per workdir, in the given order)")
  fusion.check_weights(w, total, fn="config.teacher.weights")
  return w[np.concatenate([g.indices for g in groups])]


def teacher_variables(groups) -> Any:
  """The variables ``teacher_apply`` takes: a single teacher's own ``{"params": ..., **state}``
  (what weight losses read as ``teacher_params``), or for an ensemble
  ``{"params": (stacked params of each group), "model_state": (stacked state of each group)}``."""
  if len(groups) == 1 and groups[0].size == 1:
    return jax.tree.map(lambda leaf: leaf[0], groups[0].variables)
  return {"params": tuple(g.variables["params"] for g in groups),
          "model_state": tuple({k: v for k, v in g.variables.items() if k != "params"}
                               for g in groups)}


def make_teacher_apply(groups: Sequence, *, space: str = "prob", weights=None,
                       temperature: float = 1.0, features: Sequence[str] = (),
                       needs_params: bool = False, strategy: str = "auto") -> TeacherApply:
  r"""``teacher_apply(variables, x) -> (targets [B, C], features)`` for the step.

  ``variables`` is :func:`teacher_variables` ``(groups)``; ``targets`` are
  :func:`fuse_member_logits` of every member (the single teacher's logits for one member).
  Pure and jittable: pass it to :func:`kdjax.training.make_train_chunk` (``teacher_apply``)
  or jit it over data-sharded inputs (:func:`kdjax.training.teacher_targets`).

  Args:
    groups: :class:`~kdjax.training.TeacherGroup` s (``load_teacher_groups``).
    space: fusion space, ``"prob"``, ``"logit"`` or ``"log_prob"``.
    weights: ``[M]`` fusion weights in the order the teachers were given (``groups[i].indices``),
      or ``None``/empty for the uniform average.
    temperature: fusion temperature :math:`\tau` (see the module docstring).
    features: teacher feature paths for feature losses (a single teacher only).
    needs_params: whether a loss reads the teacher's params (a single teacher only).
    strategy: how members of a group run on a device: ``"auto"`` (``lax.map`` on the CPU,
      ``vmap`` elsewhere), ``"vmap"``, ``"map"`` or ``"loop"`` (unrolled).

  Raises:
    ValueError: for an unknown space or strategy, bad weights or temperature, or features or
      params asked of an ensemble (the message names the objective's need and the members).
  """
  if space not in fusion.SPACES:
    raise ValueError(f"Unknown teacher fusion {space!r}; known: {list(fusion.SPACES)}")
  if strategy not in MEMBER_STRATEGIES:
    raise ValueError(f"Unknown config.teacher.member_strategy {strategy!r}; known: "
                     f"{list(MEMBER_STRATEGIES)}")
  if not temperature > 0:
    raise ValueError(f"config.teacher.fusion_temperature must be > 0, got {temperature}")
  total = sum(g.size for g in groups)
  if total == 0:
    raise ValueError("make_teacher_apply: no teacher groups")
  if total == 1:
    return frozen_teacher_apply(groups[0].model, features)
  workdirs = [w for g in groups for w in g.workdirs]
  for needed, what in ((bool(features), f"teacher features {sorted(features)}"),
                       (needs_params, "the teacher's params")):
    if needed:
      raise ValueError(f"The objective needs {what}, which only a single teacher has; "
                       f"config.teacher gives an ensemble of {total} members ({workdirs}). "
                       "Use one teacher workdir, or logit-based losses with the ensemble")
  w = _group_weights(groups, weights)
  apply_fns = tuple(eval_apply_fn(g.model) for g in groups)

  def apply(variables, x):
    member_logits = jnp.concatenate([
        _run_members(fn, {"params": p, **s}, x, strategy)
        for fn, p, s in zip(apply_fns, variables["params"], variables["model_state"])])
    return fuse_member_logits(member_logits, space=space, weights=w, temperature=temperature), {}

  return apply


def read_fitted_weights(report: str, workdirs: Sequence[str], *, space: str) -> tuple:
  """Fusion weights fitted by ``kdjax fuse``: ``"REPORT.json"`` or ``"REPORT.json:METHOD"``
  (``nll``, the default, or ``random``), renormalised after the report's rounding.

  Raises:
    FileNotFoundError / ValueError: if the report is missing, has no such method, was fitted
      on other members (names compared with the teacher workdirs' last path parts) or in
      another fusion space.
  """
  path, sep, method = report.rpartition(":")
  if not sep:
    path, method = report, "nll"
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"config.teacher.fitted_weights: {path!r} is not a file (expected "
                            "the report.json of `kdjax fuse`)")
  data = json.loads(file.read_text())
  fitted = data.get("fitted_weights", {})
  if method not in fitted:
    raise ValueError(f"config.teacher.fitted_weights: {path} has no weights {method!r}; "
                     f"it has {sorted(fitted)}")
  names = [pathlib.Path(w).name for w in workdirs]
  if data.get("members") != names:
    raise ValueError(f"config.teacher.fitted_weights: {path} was fitted on members "
                     f"{data.get('members')}, but the teachers are {names} (same order needed)")
  if data.get("space", space) != space:
    raise ValueError(f"config.teacher.fitted_weights: {path} was fitted in space "
                     f"{data['space']!r} but config.teacher.fusion={space!r}")
  w = np.asarray(fitted[method], np.float64)
  return tuple((w / w.sum()).tolist())
