r"""Teachers inside the compiled step: one ``teacher_apply(variables, x) -> (fused_logits,
features)`` for a single teacher or an ensemble of several architectures.

Members of one architecture are stacked (a :class:`~kdjax.training.TeacherGroup`) and run
together on the batch the device holds (``vmap``, ``lax.map`` or an unrolled loop over the
member axis); the groups' logits are fused in the step:

.. math::
  \tilde z = \tau \log \mathrm{fuse}_m\big(\mathrm{softmax}(z_m / \tau);\ w\big)

with ``fuse`` a (weighted) average in probability, logit or log-probability space
(:mod:`kdjax.fusion`), fixed or fitted weights :math:`w` and the fusion temperature
:math:`\tau` (the same targets as :func:`kdjax.training.teacher_targets`: a KD loss at
temperature :math:`\tau` sees the average of the members' *tempered* distributions). A
single teacher is an ensemble of one, whose targets are its logits (and only it may return
features).

Under data parallelism (``x`` sharded over a ``data`` mesh axis, the teacher variables
replicated) every device runs every member on its own slice of the batch: no member axis is
padded to the device count and no work is repeated. The same function computes cached
targets (:mod:`kdjax.training.teachers._cache`).

Ensemble members split over a mesh axis inside the step (``config.teacher.member_axis``).

Each device holds only its ``ceil(M_g / D)`` members of every group (a group whose size
does not divide ``D`` is padded with copies of weight 0), runs them, and the partial fusions
are combined with one collective:

* ``member_axis == data_axis`` (a 1-D mesh): the batch is all-gathered, each device runs its
  members on the whole batch, and the partial sums are reduce-scattered
  (``psum_scatter``) back to the batch slices;
* otherwise (e.g. a ``data`` x ``member`` mesh): each device runs its members on its data
  slice, and the partial sums are ``psum``-ed over ``member_axis``.

Partial sums per space (weights :math:`w`, temperature :math:`\tau`, :math:`D` the devices):

.. math::
  \text{prob: } \log \textstyle\sum_d \exp \ell_d,\ \ell_d = \mathrm{logsumexp}_{m \in d}
  (\log\mathrm{softmax}(z_m/\tau) + \log w_m)\ \text{(max-shifted across devices)}

  \text{logit: } \log\mathrm{softmax}(\textstyle\sum_d \sum_{m \in d} w_m z_m / \tau)
  \qquad \text{log\_prob: } \log\mathrm{softmax}(\textstyle\sum_d \sum_{m \in d} w_m
  \log\mathrm{softmax}(z_m / \tau))

all times :math:`\tau`: the same targets as :func:`~kdjax.training.teachers._apply.make_teacher_apply`.
"""

import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from kdjax import ensemble, fusion
from kdjax.models import eval_apply, eval_logits
from kdjax.training._padding import padded_size

TeacherApply = Callable[[Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def frozen_teacher_apply(teacher: Any, features=()) -> TeacherApply:
  """``(teacher_variables, x) -> (logits, features)`` in eval mode: BatchNorm uses the
  teacher's running statistics and never updates them, dropout is off.

  Args:
    teacher: a linen or NNX module, an ``apply_fn`` or a :class:`kdjax.models.Model`.
    features: the feature paths to return (``objective.teacher_features``).
  """
  return eval_apply(teacher, features)


MEMBER_STRATEGIES = ensemble.STRATEGIES


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
  apply_fns = tuple(eval_logits(g.model) for g in groups)

  def apply(variables, x):
    member_logits = jnp.concatenate([
        ensemble.apply(fn, {"params": p, **s}, x, strategy=strategy)
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


def sharded_teacher_variables(groups: Sequence, mesh: Mesh, member_axis: str):
  """Every group's stacked variables padded to a multiple of the axis size (repeating
  members) and placed with the member axis split over ``member_axis``
  (:func:`kdjax.ensemble.shard_stacked`)."""
  placed = [ensemble.shard_stacked(g.variables, mesh, member_axis) for g in groups]
  return {"params": tuple(v["params"] for v in placed),
          "model_state": tuple({k: a for k, a in v.items() if k != "params"} for v in placed)}


def make_sharded_teacher_apply(groups: Sequence, *, mesh: Mesh, member_axis: str,
                               data_axis: str = "data", space: str = "prob", weights=None,
                               temperature: float = 1.0, strategy: str = "auto") -> TeacherApply:
  """:func:`~kdjax.training.teachers._apply.make_teacher_apply` with the members split over
  ``member_axis`` of ``mesh``; takes :func:`sharded_teacher_variables`. A single teacher is
  not split (its one member runs data-parallel, as unsharded).

  Raises:
    ValueError: if ``mesh`` lacks ``member_axis`` or ``data_axis``, and as
      ``make_teacher_apply``.
  """
  for name, axis in (("member_axis", member_axis), ("data_axis", data_axis)):
    if axis not in mesh.shape:
      raise ValueError(f"config.teacher.{name}={axis!r} is not an axis of the mesh "
                       f"{dict(mesh.shape)}")
  unsharded = make_teacher_apply(groups, space=space, weights=weights, temperature=temperature,
                                 strategy=strategy)  # checks every argument
  total = sum(g.size for g in groups)
  if total == 1:
    return unsharded
  shards = mesh.shape[member_axis]
  w = _group_weights(groups, weights)
  w = np.full(total, 1.0 / total) if w is None else w
  group_w, start = [], 0
  for g in groups:  # group order; padding copies get weight 0
    wg = np.zeros(padded_size(g.size, shards), np.float32)
    wg[:g.size] = w[start:start + g.size]
    group_w.append(wg)
    start += g.size
  apply_fns = tuple(eval_logits(g.model) for g in groups)
  gather = member_axis == data_axis
  # Each device runs its members (kdjax.ensemble.apply) and the fusion is reduced across
  # the member axis (psum of weighted probabilities, or of weighted logits): the [M, B, C]
  # member logits are never gathered, as kdjax.ensemble.sharded_apply would return them.

  def body(params, states, x):
    k = jax.lax.axis_index(member_axis)
    x_all = jax.lax.all_gather(x, member_axis, axis=0, tiled=True) if gather else x
    logits, local_w = [], []
    for fn, p, s, wg in zip(apply_fns, params, states, group_w):
      per = len(wg) // shards
      logits.append(ensemble.apply(fn, {"params": p, **s}, x_all, strategy=strategy))
      local_w.append(jax.lax.dynamic_slice_in_dim(jnp.asarray(wg), k * per, per))
    z = jnp.concatenate(logits).astype(jnp.float32) / temperature
    lw = jnp.concatenate(local_w)[:, None, None]
    reduce = ((lambda a: jax.lax.psum_scatter(a, member_axis, scatter_dimension=0, tiled=True))
              if gather else (lambda a: jax.lax.psum(a, member_axis)))
    if space == "prob":
      local = jax.nn.logsumexp(jax.nn.log_softmax(z, axis=-1) + jnp.log(lw), axis=0)
      top = jax.lax.stop_gradient(jax.lax.pmax(local, member_axis))
      if gather:  # this device's rows of the max
        rows = x.shape[0]
        fused = jnp.log(reduce(jnp.exp(local - top))) + jax.lax.dynamic_slice_in_dim(
            top, k * rows, rows)
      else:
        fused = jnp.log(reduce(jnp.exp(local - top))) + top
    else:
      inner = z if space == "logit" else jax.nn.log_softmax(z, axis=-1)
      fused = jax.nn.log_softmax(reduce(jnp.sum(lw * inner, axis=0)), axis=-1)
    return fused * temperature

  run = jax.shard_map(body, mesh=mesh, in_specs=(P(member_axis), P(member_axis), P(data_axis)),
                      out_specs=P(data_axis), check_vma=False)

  def apply(variables, x):
    return run(variables["params"], variables["model_state"], x), {}

  return apply
