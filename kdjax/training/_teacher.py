"""Frozen teachers: from their workdirs (one model, or an ensemble of groups), or from a
params file kdjax did not write plus a model spec.

A teacher workdir is any finished (or checkpointed) ``kdjax train`` run: its
``config.json`` rebuilds the model, its latest checkpoint gives the variables (params
and BatchNorm statistics). Teachers of one architecture are stacked (a leading member
axis) and run as one call, always in eval mode.
"""

import dataclasses
import functools
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax

from kdjax.models import as_model, get_model
from kdjax.training._checkpoint import load_variables
from kdjax.training._guards import read_run_info
from kdjax.training._teacher_files import load_teacher_file


def model_from_config(model_config: dict, num_classes: int) -> nn.Module:
  """``get_model(name, num_classes=..., **other fields)`` from a ``config.model`` dict."""
  fields = dict(model_config)
  name = fields.pop("name")
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return get_model(name, num_classes=num_classes, **fields)


def load_run(workdir: str | pathlib.Path) -> tuple[nn.Module, Any, dict]:
  """``(model, variables, run_info)`` of a trained run; ``variables`` is
  ``{"params": ..., **model state}`` (e.g. ``"batch_stats"``).

  Raises:
    FileNotFoundError: if the workdir, its ``run.json`` or a checkpoint is missing.
  """
  path = pathlib.Path(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f"Workdir {str(workdir)!r} does not exist (expected a `kdjax train` run)")
  info_path = path / "run.json"
  if not info_path.exists():
    raise FileNotFoundError(f"{info_path} is missing: {str(workdir)!r} is not a kdjax run")
  info = read_run_info(info_path)
  model = model_from_config(info["model"], info["num_classes"])
  return model, load_variables(path), info


@dataclasses.dataclass(frozen=True)
class TeacherGroup:
  """Members of one architecture: ``variables`` leaves carry a leading member axis."""

  model: nn.Module
  variables: Any  # {"params": ..., **model state}, stacked
  workdirs: tuple[str, ...]  # or the params file
  indices: tuple[int, ...]  # positions of these members in the teacher list given by the user

  @property
  def size(self) -> int:
    return len(self.workdirs)

  @property
  def params(self) -> Any:
    """The stacked params alone (for soups and weight losses)."""
    return self.variables["params"]


def parse_workdirs(spec: str | tuple | list) -> list[str]:
  """Teacher workdirs from a comma-separated string (CLI friendly) or a sequence."""
  items = spec.split(",") if isinstance(spec, str) else list(spec)
  return [s.strip() for s in items if s and s.strip()]


def load_teachers(spec, *, num_classes: int) -> list[TeacherGroup]:
  """Loads every teacher workdir and stacks members by architecture.

  Raises:
    ValueError: if no workdir is given, or a teacher's number of classes differs
      from ``num_classes`` (the student's).
  """
  from kdjax import ensemble

  workdirs = parse_workdirs(spec)
  if not workdirs:
    raise ValueError("The objective needs a teacher but config.teacher.workdir is empty; "
                     "pass --config.teacher.workdir=DIR (comma-separate several for an ensemble)")
  groups: dict[str, list] = {}
  for index, workdir in enumerate(workdirs):
    model, variables, info = load_run(workdir)
    if info["num_classes"] != num_classes:
      raise ValueError(f"Teacher {workdir!r} predicts {info['num_classes']} classes but the "
                       f"student has {num_classes}")
    key = json.dumps(info["model"], sort_keys=True)
    groups.setdefault(key, []).append((model, variables, workdir, index))
  return [TeacherGroup(model=members[0][0],
                       variables=ensemble.stack([m[1] for m in members]),
                       workdirs=tuple(m[2] for m in members),
                       indices=tuple(m[3] for m in members))
          for members in groups.values()]


def load_teacher_groups(teacher_config, *, num_classes: int, sample_x) -> list[TeacherGroup]:
  """Teachers from ``config.teacher``: ``params_file`` + ``model`` (one teacher from a
  file kdjax did not write, see :mod:`kdjax.training._teacher_files`), or ``workdir``.

  Raises:
    ValueError: if both or neither are given, or ``model.name`` is missing.
  """
  params_file = teacher_config.get("params_file", "")
  if not params_file:
    return load_teachers(teacher_config.workdir, num_classes=num_classes)
  if teacher_config.workdir:
    raise ValueError("Set config.teacher.workdir or config.teacher.params_file, not both "
                     f"(got {teacher_config.workdir!r} and {params_file!r})")
  spec = teacher_config.model.to_dict() if hasattr(teacher_config.model, "to_dict") else dict(
      teacher_config.model)
  if not spec.get("name"):
    raise ValueError(f"config.teacher.params_file={params_file!r} needs the architecture: set "
                     "config.teacher.model.name (a kdjax.models registry name) and its fields")
  model = model_from_config(spec, num_classes)
  variables = load_teacher_file(params_file, model, sample_x, model_name=spec["name"],
                                num_classes=num_classes)
  return [TeacherGroup(model=model, variables=jax.tree.map(lambda a: a[None], variables),
                       workdirs=(str(params_file),), indices=(0,))]


@functools.lru_cache(maxsize=64)
def eval_apply_fn(model: Any):
  """``(variables, x) -> logits`` in eval mode, one function object per model (so
  :mod:`kdjax.ensemble`'s jitted calls are compiled once per architecture)."""
  adapter = as_model(model)
  return lambda variables, x: adapter.apply(variables, x, train=False).logits


def single_teacher(groups: list[TeacherGroup]) -> tuple[nn.Module, Any]:
  """The one teacher's ``(model, variables)``; an error for ensembles."""
  if len(groups) != 1 or groups[0].size != 1:
    raise ValueError("Feature- and weight-based losses need a single teacher; got an ensemble of "
                     f"{sum(g.size for g in groups)} members")
  group = groups[0]
  return group.model, jax.tree.map(lambda leaf: leaf[0], group.variables)
