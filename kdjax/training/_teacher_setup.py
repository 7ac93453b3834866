"""The teacher(s) a run trains against, prepared once before the loop.

Teachers are frozen inputs to the step (eval mode), never part of the train state. They
reach the step one of two ways:

* online: ``apply(variables, x) -> (logits, features)`` runs inside the jitted step on
  the student's own batch (features and weight losses need it; augmented inputs need it);
* cached: targets for every training example computed once (``config.teacher.cache``),
  shipped with the batches as ``batch["teacher_logits"]``.
"""

import dataclasses
from typing import Any

import numpy as np

from kdjax.training import _guards
from kdjax.training._step import TeacherApply
from kdjax.training._teacher import TeacherGroup, load_teacher_groups
from kdjax.training._precision import teacher_groups_in
from kdjax.training._teacher_prepare import prepare_teachers, teacher_test_scores


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
  test: dict[str, Any] | None = None
  cache_info: dict[str, Any] | None = None  # disk cache {"path", "reused", "seconds"}


def setup_teachers(config, objective, *, num_classes: int, sample_x, train_x: np.ndarray,
                   test_split: dict, mesh, workdir, variable_shardings=None) -> Teachers:
  """Loads ``config.teacher`` if ``objective`` needs a teacher, measures it on
  ``test_split`` and makes it online (``apply`` + ``variables`` under ``sharding``)
  or caches its targets on ``train_x``. ``variable_shardings`` is a function of the online
  teacher's variables giving their shardings (the teacher's sharding rules). The teacher
  computes in ``config.teacher.dtype`` (``""``: ``config.dtype``)."""
  if not objective.needs_teacher:
    return Teachers()
  groups = load_teacher_groups(config.teacher, num_classes=num_classes, sample_x=sample_x)
  groups = teacher_groups_in(groups, config.teacher.dtype or config.dtype)
  _guards.check_teachers_take(groups, train_x[:1])
  test = teacher_test_scores(config, groups, test_split, mesh=mesh)
  # Online (one teacher or a fused ensemble in the step) or cached targets (disk, reused):
  # kdjax.training._teacher_prepare.
  ready = prepare_teachers(config, groups, objective=objective, train_x=train_x,
                           workdir=workdir, mesh=mesh, variable_shardings=variable_shardings)
  return Teachers(groups=groups, test=test, apply=ready.apply, variables=ready.variables,
                  cache=ready.targets, cache_info=ready.cache)
