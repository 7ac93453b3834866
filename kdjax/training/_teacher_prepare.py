"""From ``config.teacher`` to what the train loop needs: an online teacher (run inside the
step) or cached targets (computed data-parallel, stored on disk and reused).

The loop (``_teacher_setup.setup_teachers``) calls :func:`prepare_teachers` once; see :mod:`kdjax.training._teacher_step`
(the fused teacher function) and :mod:`kdjax.training._teacher_cache` (the cache).
"""

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax import metrics
from kdjax.training._step import TeacherApply
from kdjax.training._teacher_cache import (cached_teacher_targets, default_cache_dir,
                                           teacher_targets)
from kdjax.training._teacher_sharded import make_sharded_teacher_apply, sharded_teacher_variables
from kdjax.training._teacher_step import make_teacher_apply, read_fitted_weights, teacher_variables


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
  fitted = teacher_config.get("fitted_weights", "")
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
  return {"name": config.data.name, "kwargs": as_dict(config.data.get("kwargs")),
          "val_size": config.data.get("val_size", 0),
          "transfer": as_dict(config.get("transfer")),
          # the teacher's compute dtype changes its targets (kdjax.training._precision)
          "teacher_dtype": config.teacher.get("dtype", "") or config.get("dtype", "")}


def prepare_teachers(config, groups, *, objective, train_x: np.ndarray, workdir, mesh: Mesh,
                     data_axis: str = "data", variable_shardings=None) -> TeacherSetup:
  """The online teacher when ``config.teacher.cache`` is off or a loss needs teacher features
  or params, else the cached targets of ``train_x`` (from ``config.teacher.cache_dir`` when
  an earlier run stored them; see :mod:`kdjax.training._teacher_cache`).
  ``variable_shardings``: a function of the online teacher's variables giving their
  shardings (the teacher's sharding rules); ``None`` replicates them."""
  t = config.teacher
  weights = fusion_weights(t, groups)
  common = {"space": t.fusion, "weights": weights, "temperature": t.fusion_temperature,
            "strategy": t.get("member_strategy", "auto")}
  member_axis = t.get("member_axis", "")
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
  if not t.get("disk_cache", True):
    return TeacherSetup(targets=teacher_targets(groups, train_x, mesh=mesh, data_axis=data_axis,
                                                **common))
  cache_dir = pathlib.Path(t.get("cache_dir", "") or default_cache_dir(workdir))
  targets, info = cached_teacher_targets(groups, train_x, cache_dir=cache_dir,
                                         data=_data_identity(config), mesh=mesh,
                                         data_axis=data_axis, **common)
  return TeacherSetup(targets=targets, cache=info)


def teacher_test_scores(config, groups, split: dict, *, mesh: Mesh, data_axis: str = "data"):
  """Accuracy and NLL of the fused teacher (temperature 1) on ``split``, and its size."""
  targets = teacher_targets(groups, split["x"], mesh=mesh, data_axis=data_axis,
                            space=config.teacher.fusion,
                            weights=fusion_weights(config.teacher, groups),
                            strategy=config.teacher.get("member_strategy", "auto"),
                            member_axis=config.teacher.get("member_axis", ""))
  return {"accuracy": float(metrics.accuracy(targets, split["y"])),
          "nll": float(metrics.nll(targets, split["y"])),
          "members": sum(g.size for g in groups)}
