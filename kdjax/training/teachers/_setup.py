"""The teacher(s) a run trains against, prepared once before the loop.

Teachers are frozen inputs to the step (eval mode), never part of the train state. They
reach the step one of two ways:

* online: ``apply(variables, x) -> (logits, features)`` runs inside the jitted step on
  the student's own batch ``x``, so teacher and student see the same (augmented, mixed)
  view, as function matching requires (Beyer et al. 2022); features and weight losses
  need it too;
* cached: targets for every training example computed once (``config.teacher.cache``),
  shipped with the batches as ``batch["teacher_logits"]``: in-memory inputs only, which
  are never augmented.

The loop calls :func:`setup_teachers` once, which calls :func:`prepare_teachers`; see
:mod:`kdjax.training.teachers._apply` (the fused teacher function) and
:mod:`kdjax.training.teachers._cache` (the cache).
"""

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax import metrics
from kdjax.training._precision import teacher_groups_in
from kdjax.training.teachers._load import TeacherGroup, check_teachers_take, load_teacher_groups
from kdjax.training.teachers._cache import (cached_teacher_targets, default_cache_dir,
                                           teacher_targets)
from kdjax.training.teachers._apply import (TeacherApply, make_sharded_teacher_apply, make_teacher_apply,
                                            read_fitted_weights, sharded_teacher_variables,
                                            teacher_variables)


@dataclasses.dataclass
class Teachers:
  """What the loop needs of its teachers (all ``None`` when the objective has none).

  Attributes:
    groups: the loaded teacher groups.
    apply: the online teacher, or ``None`` (cached or no teacher).
    variables: the online teacher's variables, placed replicated on the mesh.
    cache: ``[N, C]`` targets for the ``N`` training inputs, or ``None``.
    test: the (fused) teacher's own ``{"accuracy", "nll", "members"}`` on the test split.
  """

  groups: list[TeacherGroup] | None = None
  apply: TeacherApply | None = None
  variables: Any = None
  cache: np.ndarray | None = None
  topk: dict[str, np.ndarray] | None = None  # a stored top-k teacher: [N, T, k] per token row
  test: dict[str, Any] | None = None
  cache_info: dict[str, Any] | None = None  # disk cache {"path", "reused", "seconds"}


def _no_stream_cache(config, data) -> ValueError:
  meta = data.pipelines["train"].meta
  if meta["augment"] != "none" or meta["mixup_alpha"]:
    why = (f"config.data.augment={meta['augment']!r}, mixup_alpha={meta['mixup_alpha']} makes a "
           "new view every step and the teacher must see it (online)")
  else:
    why = (f"targets are cached for in-memory data only (config.data.source='local', not "
           f"{config.data.source!r})")
  return ValueError(f"config.teacher.cache=True but {why}; set config.teacher.cache=False")


def setup_teachers(config, objective, *, num_classes: int, sample_x, data, evaluate: Callable,
                   mesh, workdir, variable_shardings=None) -> Teachers:
  """Loads ``config.teacher`` if ``objective`` needs a teacher, measures it on the test
  split and makes it online (``apply`` + ``variables``) or caches its targets on the
  in-memory training inputs (:mod:`kdjax.training.teachers._setup`).
  ``variable_shardings`` is a function of the online teacher's variables giving their
  shardings (the teacher's sharding rules). The teacher computes in
  ``config.teacher.dtype`` (``""``: ``config.dtype``).

  Args:
    data: the run's :class:`kdjax.training._inputs.TrainingData`; streaming data needs
      the online teacher (it runs on the student's own, augmented view).
    evaluate: ``(predict, variables) -> {split: metrics}`` on the run's held-out data
      (measures a streaming run's teacher).

  Raises:
    ValueError: ``config.teacher.cache=True`` with streaming inputs.
  """
  if not objective.needs_teacher:
    return Teachers()
  groups = load_teacher_groups(config.teacher, num_classes=num_classes, sample_x=sample_x)
  groups = teacher_groups_in(groups, config.teacher.dtype or config.dtype)
  check_teachers_take(groups, sample_x[:1])
  if objective.needs_topk or config.teacher.topk:
    return _stored_topk_teacher(config, groups, objective, data=data, evaluate=evaluate,
                                workdir=workdir)
  online = not config.teacher.cache or objective.teacher_features or objective.needs_params
  if data.streaming and not online:
    raise _no_stream_cache(config, data)
  if data.tokens and not online:
    raise ValueError("config.teacher.cache=True but the data are token rows: their [N, T, V] "
                     "teacher logits are not cached; set config.teacher.cache=False (the "
                     "teacher runs in the step)")
  # Online (one teacher or a fused ensemble in the step) or cached targets (disk, reused):
  # kdjax.training.teachers._setup.
  ready = prepare_teachers(config, groups, objective=objective, train_x=data.train_x,
                           workdir=workdir, mesh=mesh, variable_shardings=variable_shardings)
  if data.streaming or data.tokens:
    predict = jax.jit(lambda variables, x: ready.apply(variables, x)[0])
    test = {**evaluate(predict, ready.variables)["test"], "members": sum(g.size for g in groups)}
  else:
    test = teacher_test_scores(config, groups, data.splits["test"], mesh=mesh)
  return Teachers(groups=groups, test=test, apply=ready.apply, variables=ready.variables,
                  cache=ready.targets, cache_info=ready.cache)


def _stored_topk_teacher(config, groups, objective, *, data, evaluate, workdir) -> Teachers:
  """The teacher as its top-k store (:mod:`kdjax.training.teachers._topk`), measured on the
  test split; the step reads only the store."""
  from kdjax.training.teachers._topk import topk_store
  k = int(config.teacher.topk)
  others = sorted(t.label for t in objective.terms if t.name != "sparse_kl"
                  and any(n.startswith("teacher") for n in t.spec.inputs))
  if not objective.needs_topk or k < 1 or not data.tokens or others:
    raise ValueError(f"a stored top-k teacher needs config.teacher.topk=k >= 1 (got {k}), token "
                     f"rows (got {'tokens' if data.tokens else 'examples'}) and the sparse_kl "
                     f"term as the only teacher term (got teacher terms {others})")
  cache_dir = pathlib.Path(config.teacher.cache_dir or default_cache_dir(workdir))
  store, info = topk_store(groups, data.train_x, k=k, cache_dir=cache_dir,
                           data=_data_identity(config), num_shards=config.teacher.topk_shards)
  apply = make_teacher_apply(groups)
  variables = teacher_variables(groups)
  predict = jax.jit(lambda v, x: apply(v, x)[0])
  test = {**evaluate(predict, variables)["test"], "members": sum(g.size for g in groups)}
  return Teachers(groups=groups, test=test, topk=store, cache_info=info)


@dataclasses.dataclass(frozen=True)
class TeacherSetup:
  """``apply`` + ``variables`` (replicated on the mesh) for an online teacher, or
  ``targets [N, C]`` (NumPy, every row on every process) for cached ones; ``cache`` is
  ``{"path", "reused", "seconds"}`` when the disk cache was used."""

  apply: TeacherApply | None = None
  variables: Any = None
  targets: np.ndarray | None = None
  cache: dict | None = None


def fusion_weights(teacher_config, groups) -> tuple | None:
  """``config.teacher.weights``, or the weights of ``config.teacher.fitted_weights`` (a
  ``kdjax fuse`` report), in the order the teachers were given; ``None``: uniform.

  Raises:
    ValueError: if both are set.
  """
  fitted = teacher_config.fitted_weights
  if fitted and teacher_config.weights:
    raise ValueError("Set config.teacher.weights or config.teacher.fitted_weights, not both "
                     f"(got {tuple(teacher_config.weights)} and {fitted!r})")
  if fitted:
    workdirs = [w for _, w in sorted((i, w) for g in groups for i, w in zip(g.indices, g.workdirs))]
    return read_fitted_weights(fitted, workdirs, space=teacher_config.fusion)
  return tuple(teacher_config.weights) or None


def _data_identity(config) -> dict:
  """Names the inputs (the cache key also fingerprints their bytes)."""
  as_dict = lambda c: c.to_dict() if hasattr(c, "to_dict") else dict(c or {})  # noqa: E731
  return {"name": config.data.name, "kwargs": as_dict(config.data.kwargs),
          "val_size": config.data.val_size,
          "transfer": as_dict(config.transfer),
          # the teacher's compute dtype changes its targets (kdjax.training._precision)
          "teacher_dtype": config.teacher.dtype or config.dtype}


def prepare_teachers(config, groups, *, objective, train_x: np.ndarray, workdir, mesh: Mesh,
                     data_axis: str = "data", variable_shardings=None) -> TeacherSetup:
  """The online teacher when ``config.teacher.cache`` is off or a loss needs teacher features
  or params, else the cached targets of ``train_x`` (from ``config.teacher.cache_dir`` when
  an earlier run stored them; see :mod:`kdjax.training.teachers._cache`).
  ``variable_shardings``: a function of the online teacher's variables giving their
  shardings (the teacher's sharding rules); ``None`` replicates them."""
  t = config.teacher
  weights = fusion_weights(t, groups)
  common = {"space": t.fusion, "weights": weights, "temperature": t.fusion_temperature,
            "strategy": t.member_strategy}
  member_axis = t.member_axis
  if not t.cache or objective.teacher_features or objective.needs_params:
    apply = make_teacher_apply(groups, features=objective.teacher_features,
                               needs_params=objective.needs_params, **common)
    if member_axis and sum(g.size for g in groups) > 1:
      apply = make_sharded_teacher_apply(groups, mesh=mesh, member_axis=member_axis,
                                         data_axis=data_axis, **common)
      return TeacherSetup(apply=apply,
                          variables=sharded_teacher_variables(groups, mesh, member_axis))
    variables = teacher_variables(groups)
    variables = jax.device_put(variables, NamedSharding(mesh, P()) if variable_shardings is None
                               else variable_shardings(variables))
    return TeacherSetup(apply=apply, variables=variables)
  common["member_axis"] = member_axis
  if not t.disk_cache:
    return TeacherSetup(targets=teacher_targets(groups, train_x, mesh=mesh, data_axis=data_axis,
                                                **common))
  cache_dir = pathlib.Path(t.cache_dir or default_cache_dir(workdir))
  targets, info = cached_teacher_targets(groups, train_x, cache_dir=cache_dir,
                                         data=_data_identity(config), mesh=mesh,
                                         data_axis=data_axis, **common)
  return TeacherSetup(targets=targets, cache=info)


def teacher_test_scores(config, groups, split: dict, *, mesh: Mesh, data_axis: str = "data"):
  """Accuracy and NLL of the fused teacher (temperature 1) on ``split``, and its size."""
  targets = teacher_targets(groups, split["x"], mesh=mesh, data_axis=data_axis,
                            space=config.teacher.fusion,
                            weights=fusion_weights(config.teacher, groups),
                            strategy=config.teacher.member_strategy,
                            member_axis=config.teacher.member_axis)
  return {"accuracy": float(metrics.accuracy(targets, split["y"])),
          "nll": float(metrics.nll(targets, split["y"])),
          "members": sum(g.size for g in groups)}
