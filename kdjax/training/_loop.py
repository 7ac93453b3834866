"""``train_and_evaluate(config, workdir)``: the whole training run, resumable.

Reads top to bottom: mesh, data, models, objective, teacher(s), init (or resume),
the chunked loop with evaluation, metrics and checkpoints, the final summary. Each
concern lives in its own module: training batches (:mod:`._inputs`), teachers
(:mod:`._teacher_setup`), the initial state (:mod:`._init`), evaluation
(:mod:`._evaluate`), ``metrics.jsonl`` (:mod:`._metrics_log`).
"""

import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import data as kd_data
from kdjax import losses
from kdjax.models import count_params
from kdjax.training import _checkpoint as ckpt
from kdjax.training import _guards, _nonfinite, _precision, _sharding
from kdjax.training._evaluate import evaluate_arrays
from kdjax.training._fresh import FreshChunks
from kdjax.training._init import init_train_state
from kdjax.training._inputs import InMemoryBatches, load_training_inputs
from kdjax.training._metrics_log import MetricsLog, make_progress_bar, update_progress_bar
from kdjax.training._optim import make_optimizer
from kdjax.training._preemption import Preempted, PreemptionGuard
from kdjax.training._step import make_predict, make_train_chunk
from kdjax.training._teacher import model_from_config
from kdjax.training._teacher_setup import setup_teachers


def check_config(config: ml_collections.ConfigDict) -> None:
  """Errors for settings that cannot work, before any compute is spent."""
  _guards.check_fields(config)  # unknown fields and wrong types
  if config.num_steps <= 0:
    raise ValueError(f"num_steps must be positive, got {config.num_steps}")
  for name in ("eval_every", "checkpoint_every"):
    every = config[name]
    if every <= 0 or every % config.log_every:
      raise ValueError(f"{name}={every} must be a positive multiple of log_every={config.log_every} "
                       "(evaluations and checkpoints fall on chunk boundaries)")


def _check_same_run(workdir: pathlib.Path, run_info: dict) -> None:
  """A workdir with checkpoints resumes only the same model on the same data."""
  path = workdir / "run.json"
  if not (path.exists() and ckpt.checkpoint_dir(workdir).is_dir()):
    return
  saved = json.loads(path.read_text())
  current = json.loads(json.dumps(run_info))  # tuples -> lists, as saved
  if saved != current:
    raise ValueError(f"{workdir} holds checkpoints of another run ({saved}); this config trains "
                     f"{current}. Use a new --workdir, or delete the old one")


def _close(manager, bar, preemption) -> None:
  preemption.uninstall()
  bar.close()
  manager.wait_until_finished()
  manager.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config``'s student in ``workdir``, resuming from its latest checkpoint.

  Returns the summary also written to ``workdir/summary.json``:
  ``{"test": {"accuracy", "nll"}, "steps", "wall_s", "params", ...}``.
  """
  start_time = time.time()
  check_config(config)
  workdir = pathlib.Path(workdir)
  _guards.check_workdir(workdir)
  mesh = _sharding.make_mesh(config.mesh, config.num_devices)  # axes "data", "model"
  if config.batch_size % mesh.shape["data"]:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by {mesh.shape['data']} devices")

  # Data, models and objective.
  splits = kd_data.load_dataset(config.data.name, **config.data.get("kwargs", {}),
                                val_size=config.data.val_size)
  num_classes = splits["num_classes"]
  model = _precision.with_compute_dtype(model_from_config(config.model.to_dict(), num_classes),
                                       config.dtype)
  objective = losses.make_objective(config.losses)
  train_x, train_y = load_training_inputs(config, splits, objective)
  sample_x = jnp.asarray(train_x[:config.batch_size])

  # Teachers: frozen inputs to the step (eval mode), never part of the state.
  teachers = setup_teachers(config, objective, num_classes=num_classes, sample_x=sample_x,
                            train_x=train_x, test_split=splits["test"], mesh=mesh,
                            workdir=workdir,
                            variable_shardings=functools.partial(  # config.sharding.teacher
                                _sharding.tree_shardings, rules=config.sharding.teacher,
                                mesh=mesh, field="config.sharding.teacher"))

  run_info = {"model": config.model.to_dict(), "num_classes": num_classes,
              "data": config.data.name}
  _check_same_run(workdir, run_info)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  (workdir / "run.json").write_text(json.dumps(run_info, indent=2))

  # Init (or resume).
  tx = make_optimizer(config.optimizer, config.num_steps,
                      steps_per_epoch=len(train_x) // config.batch_size)
  tx = _nonfinite.wrap_optimizer(tx, config.on_nonfinite, config.num_steps)
  state, copied = init_train_state(
      config, model=model, objective=objective, tx=tx, teachers=teachers,
      num_classes=num_classes, sample_x=sample_x,
      sample_y=None if train_y is None else jnp.asarray(train_y[:config.batch_size]),
      sample_teacher_logits=None if teachers.cache is None else jnp.asarray(
          teachers.cache[:config.batch_size]))
  state, state_shardings = _sharding.place_state(state, tx, config.sharding.student, mesh)
  manager = ckpt.make_manager(workdir, max_to_keep=config.keep_checkpoints)
  restored = ckpt.restore_latest(manager, state)
  if restored is not None:
    state = restored
  start_step = int(state.step)
  log = MetricsLog(workdir / "metrics.jsonl", start_step)

  train_chunk = make_train_chunk(model=model, objective=objective, tx=tx,
                                 teacher_apply=teachers.apply, state_shardings=state_shardings)
  train_chunk = _sharding.KeepCompiled(train_chunk)  # for XLA's memory analysis
  predict = make_predict(model)
  eval_batch = max(config.eval_batch_size // mesh.size, 1) * mesh.size
  inputs = InMemoryBatches(train_x, train_y, teacher_cache=teachers.cache,
                           batch_size=config.batch_size, seed=config.seed, mesh=mesh)
  if config.transfer.fresh:  # new generated inputs every step
    inputs = FreshChunks(config, teachers, mesh=mesh)

  def evaluate(split: str) -> dict[str, float]:
    return evaluate_arrays(predict, state.student_variables(), splits[split],
                           batch_size=eval_batch, mesh=mesh)

  bar = make_progress_bar(total=config.num_steps, initial=start_step,
                          enabled=config.progress_bar, desc=workdir.name)
  step = start_step
  preemption = PreemptionGuard().install()  # SIGTERM: checkpoint at the next chunk boundary
  while step < config.num_steps:
    num = min(config.log_every, config.num_steps - step)
    state, chunk_metrics = train_chunk(state, inputs.chunk(step, num), teachers.variables)
    try:  # stop before logging or saving a non-finite chunk; the last good checkpoint stays
      chunk_metrics = _nonfinite.check_chunk(chunk_metrics, chunk_start=step,
                                             policy=config.on_nonfinite)
    except _nonfinite.NonFiniteError:
      preemption.uninstall()
      manager.wait_until_finished()
      raise
    step += num
    record = {"step": step, **{f"train/{k}": float(v) for k, v in chunk_metrics.items()}}
    if step % config.eval_every == 0 or step == config.num_steps:
      for split in ("val", "test"):
        if split in splits:
          record.update({f"{split}/{k}": v for k, v in evaluate(split).items()})
    log.write(record)
    update_progress_bar(bar, num, record)
    if step % config.checkpoint_every == 0 or step == config.num_steps or preemption.requested:
      ckpt.save(manager, step, state, force=preemption.requested)
    if preemption.requested and step < config.num_steps:
      _close(manager, bar, preemption)
      raise Preempted(step, str(workdir))
  _close(manager, bar, preemption)

  summary = {
      "test": evaluate("test"),
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
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
