"""``train_and_evaluate(config, workdir)``: the whole training run, resumable.

Reads top to bottom: mesh, data, models, objective, teacher(s), init (or resume),
the chunked loop with evaluation, metrics and checkpoints, the final summary. Each
concern lives in its own module: training data and batches (:mod:`._inputs`), teachers
(:mod:`.teachers`), the initial state (:mod:`._init`), evaluation
(:mod:`._evaluate`), ``metrics.jsonl`` (:mod:`._metrics_log`).

A jitted call runs ``steps_per_call`` optimizer steps (one ``lax.scan``); metrics are
read from the device once every ``log_every`` steps, so the calls of one logging
interval are dispatched back to back while the host (a prefetch thread, for streaming
data) prepares the next blocks.
"""

import copy
import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import losses
from kdjax.config import check_config, resolve_num_steps, with_defaults
from kdjax.models import count_params, output_head
from kdjax.training import _checkpoint as ckpt
from kdjax.training import _distributed, _nonfinite, _padding, _precision, _sharding, _workdir
from kdjax.training._evaluate import evaluate_all, make_predict
from kdjax.training._fresh import FreshChunks
from kdjax.training._init import init_train_state
from kdjax.training._inputs import load_training_data, make_batches
from kdjax.training._metrics_log import MetricsLog, merge_calls
from kdjax.training._optim import make_optimizer
from kdjax.training._preemption import Preempted, PreemptionGuard
from kdjax.training._progress import Progress
from kdjax.training._step import make_train_chunk
from kdjax.training.teachers._load import (check_same_vocabulary, single_teacher,
                                           student_from_config)
from kdjax.training.teachers._setup import setup_teachers


@dataclasses.dataclass(frozen=True)
class Intervals:
  """When the loop logs, evaluates and checkpoints (steps counted from 0, also after a
  resume): interval ends are the multiples of ``log_every`` and ``num_steps``; a jitted call
  runs ``per_call`` steps."""

  num_steps: int
  log_every: int
  per_call: int
  eval_every: int
  checkpoint_every: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Intervals":
    return cls(num_steps=int(config.num_steps), log_every=int(config.log_every),
               per_call=int(config.steps_per_call or config.log_every),
               eval_every=int(config.eval_every), checkpoint_every=int(config.checkpoint_every))

  def interval_end(self, step: int) -> int:
    return min((step // self.log_every + 1) * self.log_every, self.num_steps)

  def evaluates(self, step: int) -> bool:
    return step % self.eval_every == 0 or step == self.num_steps

  def checkpoints(self, step: int) -> bool:
    return step % self.checkpoint_every == 0 or step == self.num_steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config``'s student in ``workdir``, resuming from its latest checkpoint.

  A workdir holds one run (:mod:`._workdir`): the config is checked against the one that
  made it and the workdir is locked, before anything is written there.

  Returns the summary also written to ``workdir/summary.json``:
  ``{"test": {"accuracy", "nll"}, "steps", "wall_s", "params", ...}``.
  """
  start_time = time.time()
  check_config(config)
  config = with_defaults(config)  # every field present: no .get(field, default) below
  workdir = pathlib.Path(workdir)
  changes = _workdir.check_resume(workdir, config)  # reads only
  _workdir.check_workdir(workdir)
  with _workdir.locked(workdir, enabled=_distributed.is_writer()):
    return _train(config, workdir, changes, start_time)


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, changes: dict,
           start_time: float) -> dict[str, Any]:
  mesh = _sharding.make_mesh(config.mesh, config.num_devices)  # axes "data", "model"
  local_rows, _ = _padding.local_rows(config.batch_size, mesh)  # uneven: padded, masked rows
  eval_batch = max(config.eval_batch_size // mesh.size, 1) * mesh.size

  # Data, models and objective.
  objective = losses.make_objective(config.losses)
  data = load_training_data(config, objective, eval_batch_size=eval_batch)
  config = copy.deepcopy(config)
  config.num_steps = resolve_num_steps(config, data.train_size)
  every = Intervals.from_config(config)
  student, model_info = student_from_config(config.model.to_dict(), data.num_classes)
  model = _precision.with_compute_dtype(student, config.dtype)
  sample_x = jnp.asarray(data.sample_x)

  def evaluate(predict, variables) -> dict[str, dict[str, float]]:
    return evaluate_all(predict, variables, data, batch_size=eval_batch, mesh=mesh)

  # Teachers: frozen inputs to the step (eval mode), never part of the state.
  teachers = setup_teachers(config, objective, num_classes=data.num_classes, sample_x=sample_x,
                            data=data, evaluate=evaluate, mesh=mesh, workdir=workdir,
                            variable_shardings=functools.partial(  # config.sharding.teacher
                                _sharding.tree_shardings, rules=config.sharding.teacher,
                                mesh=mesh, field="config.sharding.teacher"))

  if data.tokens and teachers.groups:
    check_same_vocabulary(student, teachers.groups, sample_x[:1],
                          student_source=config.model.get("hf_path", ""),
                          teacher_source=config.teacher.hf_path)

  run_info = {"model": model_info, "num_classes": data.num_classes,
              "data": config.data.name}
  if data.streaming:
    run_info["data_source"] = config.data.source
  _workdir.check_same_run(workdir, run_info)

  # Init (or resume, with the stream's position).
  tx = make_optimizer(config.optimizer, config.num_steps,
                      steps_per_epoch=data.train_size // config.batch_size)
  tx = _nonfinite.wrap_optimizer(tx, config.on_nonfinite, config.num_steps)
  state, copied = init_train_state(
      config, model=model, objective=objective, tx=tx, teachers=teachers,
      num_classes=data.num_classes, sample_x=sample_x,
      sample_y=None if data.sample_y is None else jnp.asarray(data.sample_y),
      sample_teacher_logits=None if teachers.cache is None else jnp.asarray(
          teachers.cache[:config.batch_size]))
  _padding.check_padding(batch_size=config.batch_size, local_rows=local_rows, mesh=mesh,
                         model=model, model_state=state.model_state)
  state, state_shardings = _sharding.place_state(state, tx, config.sharding.student, mesh)
  _distributed.barrier("train_state")  # hosts may differ in start-up time
  manager = ckpt.make_manager(workdir, max_to_keep=config.keep_checkpoints)
  state, data_state = ckpt.restore_latest(manager, state, with_data=data.streaming)
  if _distributed.is_writer():  # process 0 writes the run's files, once the resume is known good
    _workdir.write_config(workdir, config, changes)
    (workdir / "run.json").write_text(json.dumps(run_info, indent=2))
  start_step = int(state.step)
  log = MetricsLog(workdir / "metrics.jsonl", start_step)

  teacher_head = None
  if objective.needs_heads and objective.needs_teacher:  # the fused terms
    teacher_head = output_head(single_teacher(teachers.groups)[0])
  train_chunk = make_train_chunk(model=model, objective=objective, tx=tx,
                                 teacher_apply=teachers.apply, state_shardings=state_shardings,
                                 teacher_head=teacher_head)
  train_chunk = _sharding.KeepCompiled(train_chunk)  # for XLA's memory analysis
  predict = make_predict(model)
  inputs = make_batches(data, config, mesh=mesh, teacher_cache=teachers.cache,
                        teacher_topk=teachers.topk, state=data_state)
  if config.transfer.fresh:  # new generated inputs every step (kdjax.training._fresh)
    inputs.close()
    inputs = FreshChunks(config, teachers, mesh=mesh)

  progress = Progress(total=config.num_steps, initial=start_step, enabled=config.progress_bar,
                      desc="/".join(workdir.parts[-2:]))
  step, held_out = start_step, {}
  preemption = PreemptionGuard().install()  # SIGTERM: checkpoint at the next chunk boundary
  try:
    while step < every.num_steps:
      end, calls = every.interval_end(step), []
      while step < end:  # dispatched back to back: no host sync inside a logging interval
        num = min(every.per_call, end - step)
        state, call_metrics = train_chunk(state, inputs.chunk(step, num), teachers.variables)
        calls.append((step, num, call_metrics))
        step += num
      # Raises before logging or saving a non-finite chunk; the last good checkpoint stays.
      train = merge_calls(calls, policy=config.on_nonfinite)
      record = {"step": step, **{f"train/{k}": v for k, v in train.items()}}
      if every.evaluates(step):
        held_out = evaluate(predict, state.student_variables())
        for split, result in held_out.items():
          record.update({f"{split}/{k}": v for k, v in result.items()})
      log.write(record)
      progress.update(sum(num for _, num, _ in calls), record)
      if every.checkpoints(step) or preemption.requested:
        ckpt.save(manager, step, state, force=preemption.requested,
                  data_state=inputs.get_state())
      if preemption.requested and step < every.num_steps:
        raise Preempted(step, str(workdir), preemption.signal_name)
  finally:  # also on errors: a save in flight completes
    preemption.uninstall()
    progress.close()
    inputs.close()
    manager.wait_until_finished()
    manager.close()

  if "test" in held_out:  # the last interval (always evaluated) saw these same params
    test = held_out["test"]
  else:  # resumed at the end: no interval ran
    test = evaluate_all(predict, state.student_variables(), data, batch_size=eval_batch,
                        mesh=mesh, splits=("test",))["test"]
  summary = {
      "test": test,
      "steps": step,
      "resumed_from": start_step,
      "wall_s": round(time.time() - start_time, 2),
      "params": count_params(state.params["student"]),
      "model": config.model.name,
      "teacher_test": teachers.test,
      "teacher_cache": teachers.cache_info,
      "copied_from_teacher": list(copied),
      "devices": mesh.size,
      "backend": jax.default_backend(),
      "skipped_updates": _nonfinite.skipped_updates(state.opt_state),
      "mesh": dict(mesh.shape), "dtype": config.dtype, "memory": _sharding.memory_report(
          state, teachers.variables, train_chunk.compiled),
  }
  if _distributed.is_writer():
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
