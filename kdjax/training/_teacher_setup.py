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
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
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
  in-memory training inputs (:mod:`kdjax.training._teacher_prepare`).
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
  _guards.check_teachers_take(groups, sample_x[:1])
  online = not config.teacher.cache or objective.teacher_features or objective.needs_params
  if data.streaming and not online:
    raise _no_stream_cache(config, data)
  # Online (one teacher or a fused ensemble in the step) or cached targets (disk, reused):
  # kdjax.training._teacher_prepare.
  ready = prepare_teachers(config, groups, objective=objective, train_x=data.train_x,
                           workdir=workdir, mesh=mesh, variable_shardings=variable_shardings)
  if data.streaming:
    predict = jax.jit(lambda variables, x: ready.apply(variables, x)[0])
    test = {**evaluate(predict, ready.variables)["test"], "members": sum(g.size for g in groups)}
  else:
    test = teacher_test_scores(config, groups, data.splits["test"], mesh=mesh)
  return Teachers(groups=groups, test=test, apply=ready.apply, variables=ready.variables,
                  cache=ready.targets, cache_info=ready.cache)
