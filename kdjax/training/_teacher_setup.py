"""The teacher(s) a run trains against, prepared once before the loop.

Teachers are frozen inputs to the step (eval mode), never part of the train state. They
reach the step one of two ways:

* online: ``apply(variables, x) -> (logits, features)`` runs inside the jitted step on
  the student's own batch ``x``, so teacher and student see the same (augmented, mixed)
  view, as function matching requires (Beyer et al. 2022); features and weight losses
  need it too;
* cached: targets for every training example computed once (``config.teacher.cache``)
  and shipped with the batches as ``batch["teacher_logits"]``: in-memory inputs only,
  which are never augmented.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from kdjax import metrics
from kdjax.training import _guards
from kdjax.training._step import TeacherApply, frozen_teacher_apply, make_predict
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


def _no_stream_cache(config, data) -> ValueError:
  meta = data.pipelines["train"].meta
  if meta["augment"] != "none" or meta["mixup_alpha"]:
    why = (f"config.data.augment={meta['augment']!r}, mixup_alpha={meta['mixup_alpha']} makes a "
           "new view every step and the teacher must see it (online)")
  else:
    why = (f"targets are cached for in-memory data only (config.data.source='local', not "
           f"{config.data.source!r})")
  return ValueError(f"config.teacher.cache=True but {why}; set config.teacher.cache=False")


def setup_teachers(config, objective, *, num_classes: int, sample_x, data, sharding,
                   evaluate: Callable) -> Teachers:
  """Loads ``config.teacher`` if ``objective`` needs a teacher, measures it on the test
  split and makes it online (``apply`` + ``variables`` under ``sharding``) or caches its
  targets on the in-memory training inputs.

  Args:
    data: the run's :class:`kdjax.training._inputs.TrainingData`.
    evaluate: ``(predict, variables) -> {split: metrics}`` on the run's held-out data.

  Raises:
    ValueError: ``config.teacher.cache=True`` with streaming inputs.
  """
  if not objective.needs_teacher:
    return Teachers()
  groups = load_teacher_groups(config.teacher, num_classes=num_classes, sample_x=sample_x)
  _guards.check_teachers_take(groups, sample_x[:1])
  online = (not config.teacher.cache or objective.teacher_features or objective.needs_params)
  if data.streaming and not online:
    raise _no_stream_cache(config, data)
  test = None
  if not data.streaming:
    split = data.splits["test"]
    test_targets = teacher_log_probs(groups, split["x"], space=config.teacher.fusion,
                                     weights=config.teacher.weights)  # the fused ensemble
    test = {"accuracy": float(metrics.accuracy(test_targets, split["y"])),
            "nll": float(metrics.nll(test_targets, split["y"])),
            "members": sum(g.size for g in groups)}
  if online:
    t_model, t_variables = single_teacher(groups)
    variables = jax.device_put(t_variables, sharding)  # all variables, e.g. batch_stats
    if test is None:
      test = {**evaluate(make_predict(t_model), variables)["test"], "members": 1}
    return Teachers(groups=groups, test=test, variables=variables,
                    apply=frozen_teacher_apply(t_model, objective.teacher_features))
  cache = teacher_log_probs(groups, data.train_x, space=config.teacher.fusion,
                            weights=config.teacher.weights,
                            temperature=config.teacher.fusion_temperature)
  return Teachers(groups=groups, test=test, cache=cache)
