"""The initial train state of a run: student, optional teacher layers, the objective's
aux params, optimizer state and dropout key."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from kdjax import losses
from kdjax.losses._weights import resolve_mapping
from kdjax.models import as_model, split_variables
from kdjax.training._state import TrainState, run_once
from kdjax.training.teachers._load import load_teacher_groups, single_teacher
from kdjax.training.teachers._setup import Teachers


def module_pairs(copied: list[str], student_params: Any, teacher_params: Any,
                 mapping) -> dict[str, str]:
  """``{student module path: teacher module path}`` of the modules whose params
  :func:`kdjax.losses.init_from_teacher` copied leaf for leaf (same leaf name, no
  projection), e.g. ``{"stage1_block0/BatchNorm_0": "stage1_block0/BatchNorm_0"}``."""
  student = losses.flatten_params(student_params)
  teacher = losses.flatten_params(teacher_params)
  pairs = {}
  for s_path, t_path, proj in resolve_mapping("init_from_teacher", student, teacher, mapping):
    s_mod, _, s_leaf = s_path.rpartition("/")
    t_mod, _, t_leaf = t_path.rpartition("/")
    if s_path in copied and proj is None and s_leaf == t_leaf:
      pairs[s_mod] = t_mod
  return pairs


def copy_teacher_state(model_state: dict, teacher_variables: dict,
                       pairs: dict[str, str]) -> tuple[dict, list[str]]:
  """The student's model state (e.g. BatchNorm ``batch_stats``) with every leaf of a copied
  module replaced by the teacher's leaf of the same collection, module and name (equal
  shape), so a teacher-initialised student also starts from the teacher's running
  statistics. Returns ``(model_state, copied paths "collection/module/leaf")``."""
  new_state, copied = {}, []
  for collection, tree in model_state.items():
    teacher = losses.flatten_params(teacher_variables.get(collection, {}))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for path, leaf in leaves:
      s_path = jax.tree_util.keystr(path, simple=True, separator="/")
      s_mod, _, name = s_path.rpartition("/")
      t_leaf = teacher.get(f"{pairs[s_mod]}/{name}") if s_mod in pairs else None
      if t_leaf is not None and tuple(t_leaf.shape) == tuple(leaf.shape):
        out.append(jnp.asarray(t_leaf, leaf.dtype))
        copied.append(f"{collection}/{s_path}")
      else:
        out.append(leaf)
    new_state[collection] = jax.tree_util.tree_unflatten(treedef, out)
  return new_state, copied


def init_train_state(config, *, model: Any, objective: losses.Objective,
                     tx: optax.GradientTransformation, teachers: Teachers, num_classes: int,
                     sample_x: jax.Array, sample_y, sample_teacher_logits=None
                     ) -> tuple[TrainState, list]:
  """``(state, copied)``: a fresh :class:`TrainState` (not yet placed on devices) and the
  names of teacher layers copied into the student (``config.init.from_teacher``).

  Args:
    config: the run's config (``seed``, ``init``, ``teacher``).
    model: the student module.
    objective: from :func:`kdjax.losses.make_objective`; ``objective.init`` makes the aux
      params from one batch of inputs.
    tx: the optimizer.
    teachers: from :func:`kdjax.training.teachers._setup.setup_teachers`.
    num_classes: output classes.
    sample_x: ``[B, ...]`` inputs to trace shapes; sample_y: their labels ``[B]`` or ``None``.
    sample_teacher_logits: ``[B, C]`` cached teacher targets of ``sample_x`` (cached runs).
  """
  rng_student, rng_aux = jax.random.split(jax.random.key(config.seed))
  student = as_model(model)
  student_params, model_state = split_variables(run_once(student.init, rng_student, sample_x))
  copied = []
  if config.init.from_teacher:
    groups = teachers.groups or load_teacher_groups(config.teacher, num_classes=num_classes,
                                                    sample_x=sample_x)
    _, t_variables = single_teacher(groups)
    mapping = config.init.mapping or None
    student_params, copied = losses.init_from_teacher(
        student_params, t_variables["params"], mapping=mapping)
    model_state, copied_state = copy_teacher_state(
        model_state, t_variables, module_pairs(copied, student_params, t_variables["params"],
                                               mapping))
    copied = copied + copied_state

  def aux_and_optimizer(student_params, model_state, teacher_variables, x, y, teacher_logits):
    """The objective's aux params (traced from one batch's outputs) and ``tx.init``."""
    s_logits, s_features, _ = student.apply({"params": student_params, **model_state}, x,
                                            train=False, features=objective.student_features)
    t_logits, t_features = ((teachers.apply(teacher_variables, x)) if teachers.apply else
                            (teacher_logits, {}))
    aux_params = objective.init(rng_aux, losses.LossInputs(
        student_logits=s_logits, labels=y, teacher_logits=t_logits,
        student_features=s_features, teacher_features=t_features,
        student_params=student_params,
        teacher_params=None if teacher_variables is None else teacher_variables["params"]))
    params = {"student": student_params, "aux": aux_params}
    return params, tx.init(params)

  params, opt_state = run_once(aux_and_optimizer, student_params, model_state,
                               teachers.variables, sample_x, sample_y, sample_teacher_logits)
  dropout_key = jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 0xD50))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                     model_state=model_state, rng=dropout_key)
  return state, copied
