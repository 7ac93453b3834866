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

import jax
import numpy as np

from kdjax import metrics
from kdjax.training import _guards
from kdjax.training._precision import teacher_groups_in
from kdjax.training._step import TeacherApply, frozen_teacher_apply
from kdjax.training._teacher import (TeacherGroup, load_teacher_groups, single_teacher,
                                     teacher_log_probs)


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


def setup_teachers(config, objective, *, num_classes: int, sample_x, train_x: np.ndarray,
                   test_split: dict, sharding) -> Teachers:
  """Loads ``config.teacher`` if ``objective`` needs a teacher, measures it on
  ``test_split`` and makes it online (``apply`` + ``variables`` under ``sharding``)
  or caches its targets on ``train_x``. ``sharding`` is a ``Sharding``, or a function of
  the variables giving their shardings (the teacher's sharding rules). The teacher
  computes in ``config.teacher.dtype`` (``""``: ``config.dtype``)."""
  if not objective.needs_teacher:
    return Teachers()
  groups = load_teacher_groups(config.teacher, num_classes=num_classes, sample_x=sample_x)
  groups = teacher_groups_in(groups, config.teacher.dtype or config.dtype)
  _guards.check_teachers_take(groups, train_x[:1])
  test_targets = teacher_log_probs(groups, test_split["x"], space=config.teacher.fusion,
                                   weights=config.teacher.weights)  # what the ensemble predicts
  test = {"accuracy": float(metrics.accuracy(test_targets, test_split["y"])),
          "nll": float(metrics.nll(test_targets, test_split["y"])),
          "members": sum(g.size for g in groups)}
  online = (not config.teacher.cache or objective.teacher_features or objective.needs_params)
  if online:
    t_model, t_variables = single_teacher(groups)
    return Teachers(groups=groups, test=test,
                    apply=frozen_teacher_apply(t_model, objective.teacher_features),
                    variables=jax.device_put(  # all variables, e.g. batch_stats too
                        t_variables, sharding(t_variables) if callable(sharding) else sharding))
  cache = teacher_log_probs(groups, train_x, space=config.teacher.fusion,
                            weights=config.teacher.weights,
                            temperature=config.teacher.fusion_temperature)
  return Teachers(groups=groups, test=test, cache=cache)
