"""``memory_report(config)``: a run's per-device memory, from its config, before any step.

Nothing is loaded but the configs (a Hugging Face folder's ``config.json``, a teacher
workdir's ``run.json``) and the data's shapes: the student, the teacher and the train state
are abstract (``jax.eval_shape``), placed by the config's sharding rules on its mesh, and
the train chunk is lowered and compiled for those shapes. XLA's memory analysis of that
program gives the bytes per device (arguments: params, optimizer state, teacher, batch;
temporaries: activations, logits, gradients), so a teacher + student pair can be sized
for a slice before it is bought: build the mesh with as many (virtual) devices as the
slice has. The analysis is the compiling backend's (XLA:CPU for a CPU dry run); an
accelerator's compiler fuses and schedules differently.
"""

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import losses
from kdjax.config import check_config, with_defaults
from kdjax.models import as_model, output_head
from kdjax.training import _nonfinite, _precision, _sharding
from kdjax.training._inputs import load_training_data
from kdjax.training._optim import make_optimizer
from kdjax.training._state import TrainState
from kdjax.training._step import make_train_chunk
from kdjax.training.teachers._apply import make_teacher_apply
from kdjax.training.teachers._load import TeacherGroup, hf_decoder_config, model_from_config


def _abstract_teacher(config, num_classes: int, sample, mesh):
  """``(model, abstract variables with shardings)`` of ``config.teacher`` from its config
  alone (``hf_path``: ``config.json``, params in its ``torch_dtype``; ``workdir``:
  ``run.json``)."""
  t = config.teacher
  if t.hf_path:
    fields = hf_decoder_config(t.hf_path, num_classes, field="config.teacher.hf_path")
    saved = json.loads((pathlib.Path(t.hf_path) / "config.json").read_text())
    dtype = jnp.dtype(saved.get("torch_dtype") or saved.get("dtype") or "float32")
    model = model_from_config(fields, num_classes)
  elif t.workdir and "," not in t.workdir:
    info = json.loads((pathlib.Path(t.workdir) / "run.json").read_text())
    model, dtype = model_from_config(info["model"], info["num_classes"]), jnp.float32
  else:
    raise ValueError("memory_report sizes one teacher: config.teacher.hf_path or a single "
                     "config.teacher.workdir")
  shapes = jax.eval_shape(lambda: as_model(model).init(jax.random.key(0), sample))
  shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype if jnp.issubdtype(
      s.dtype, jnp.floating) else s.dtype), shapes)
  shardings = _sharding.tree_shardings(shapes, config.sharding.teacher, mesh,
                                       field="config.sharding.teacher")
  return model, _with_shardings(shapes, shardings)


def _with_shardings(shapes, shardings):
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def _bytes_per_device(tree) -> int:
  return int(sum(np.prod(s.sharding.shard_shape(s.shape)) * s.dtype.itemsize
                 for s in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """A run's jitted train chunk and the abstract (shape, dtype, sharding) arguments it is
  compiled for: ``chunk(state, batches, teacher_variables)``."""

  chunk: Any
  state: Any
  batches: dict
  teacher_variables: Any
  mesh: Any
  tokens_per_step: int


def plan_train_step(config) -> StepPlan:
  """The train chunk of ``config`` for one step, with abstract arguments (module docstring)."""
  check_config(config)
  config = with_defaults(config)
  mesh = _sharding.make_mesh(config.mesh, config.num_devices)
  objective = losses.make_objective(config.losses)
  data = load_training_data(config, objective, eval_batch_size=mesh.size)
  sample = jnp.asarray(data.sample_x[:1])
  student = model_from_config(dict(config.model.to_dict()), data.num_classes)
  model = _precision.with_compute_dtype(student, config.dtype)
  tx = _nonfinite.wrap_optimizer(make_optimizer(config.optimizer, max(config.num_steps, 1),
                                                steps_per_epoch=1),
                                 config.on_nonfinite, config.num_steps)
  teacher_vars, teacher_apply, teacher_head = None, None, None
  if objective.needs_teacher:
    teacher_model, teacher_vars = _abstract_teacher(config, data.num_classes, sample, mesh)
    group = TeacherGroup(model=_precision.with_compute_dtype(
        teacher_model, config.teacher.dtype or config.dtype, field="config.teacher.dtype"),
        variables=None, workdirs=("",), indices=(0,))
    teacher_apply = make_teacher_apply([group], features=objective.teacher_features,
                                       needs_params=objective.needs_params)
    if objective.needs_heads:
      teacher_head = output_head(teacher_model)

  def init_state():
    params = {"student": as_model(student).init(jax.random.key(0), sample)["params"], "aux": {}}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state={}, rng=jnp.zeros((2,), jnp.uint32))

  state = jax.eval_shape(init_state)
  state = _with_shardings(state, _sharding.state_shardings(state, tx, config.sharding.student,
                                                           mesh))
  batch_sharding = NamedSharding(mesh, P(None, "data"))
  batches = {k: jax.ShapeDtypeStruct((1, config.batch_size, *v.shape[1:]), v.dtype,
                                     sharding=batch_sharding)
             for k, v in {"x": data.sample_x, "y": data.sample_y}.items()}
  chunk = make_train_chunk(model=model, objective=objective, tx=tx, teacher_apply=teacher_apply,
                           teacher_head=teacher_head,
                           state_shardings=jax.tree.map(lambda s: s.sharding, state))
  return StepPlan(chunk=chunk, state=state, batches=batches, teacher_variables=teacher_vars,
                  mesh=mesh, tokens_per_step=int(config.batch_size
                                                 * np.prod(data.sample_y.shape[1:])))


def memory_report(config) -> dict[str, Any]:
  """Per-device bytes of ``config``'s run before its first step (module docstring).

  Returns:
    ``{"per_device_bytes": {"student_params", "optimizer_state", "teacher_params"},
    "compiled_step": {"argument", "output", "alias", "temp", "generated_code"},
    "peak_estimate": argument + output - alias + temp, "mesh", "tokens_per_step"}``.
  """
  plan = plan_train_step(config)
  compiled = plan.chunk.lower(plan.state, plan.batches, plan.teacher_variables).compile()
  stats = _sharding.compiled_memory(compiled) or {}
  return {
      "per_device_bytes": {
          "student_params": _bytes_per_device(plan.state.params["student"]),
          "optimizer_state": _bytes_per_device(plan.state.opt_state),
          "teacher_params": (0 if plan.teacher_variables is None
                             else _bytes_per_device(plan.teacher_variables))},
      "compiled_step": stats,
      "peak_estimate": (stats.get("argument", 0) + stats.get("output", 0)
                        - stats.get("alias", 0) + stats.get("temp", 0)),
      "mesh": dict(plan.mesh.shape),
      "tokens_per_step": plan.tokens_per_step,
  }
