"""``train_and_evaluate(config, workdir)``: the whole training run, resumable.

Reads top to bottom: mesh, data, models, objective, teacher(s), init (or resume),
the chunked loop with evaluation, metrics and checkpoints, the final summary.
"""

import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import data as kd_data
from kdjax import losses, metrics
from kdjax.models import as_model, count_params, split_variables
from kdjax.training import _checkpoint as ckpt
from kdjax.training import _guards, _nonfinite
from kdjax.training._fresh import FreshChunks
from kdjax.training._optim import make_optimizer
from kdjax.training._preemption import Preempted, PreemptionGuard
from kdjax.training._state import TrainState
from kdjax.training._step import (frozen_teacher_apply, make_predict, make_train_chunk,
                                  predict_in_batches)
from kdjax.training._teacher import (load_teacher_groups, model_from_config,
                                     single_teacher, teacher_log_probs)


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


def _load_training_inputs(config, splits, objective) -> tuple[np.ndarray, np.ndarray | None]:
  """Training inputs and labels; with a transfer set, the inputs only (unlabelled)."""
  x, y = splits["train"]["x"], splits["train"]["y"]
  if not config.transfer.num_samples and not config.transfer.fresh:
    return x, y
  if config.data.name != "mnist1d":
    raise ValueError(f"A generated transfer set exists for mnist1d only, not {config.data.name!r}")
  if objective.needs_labels:
    raise ValueError("config.transfer adds unlabelled inputs, but the objective needs labels "
                     "(set hinton_kd alpha=1 or config.transfer.num_samples=0)")
  if config.transfer.fresh:  # new inputs every step: kdjax.training._fresh
    return x, None
  transfer = kd_data.load_mnist1d_transfer(num_samples=config.transfer.num_samples,
                                           seed=config.transfer.seed)
  return np.concatenate([x, transfer["x"]]), None


def _evaluate(predict, params, split: dict, *, batch_size: int, mesh) -> dict[str, float]:
  logits = predict_in_batches(predict, params, split["x"], batch_size=batch_size, mesh=mesh)
  return {"accuracy": float(metrics.accuracy(logits, split["y"])),
          "nll": float(metrics.nll(logits, split["y"]))}


# metrics.jsonl key -> progress-bar label
_BAR_FIELDS = {"train/loss": "loss", "train/accuracy": "train_acc",
               "train/teacher_agreement": "agree", "test/accuracy": "test_acc"}


class _MetricsLog:
  """``metrics.jsonl``: one JSON object a line; a resumed run first drops the lines
  written after its checkpoint, so the file never holds a step twice."""

  def __init__(self, path: pathlib.Path, resume_step: int):
    self.path = path
    kept = []
    if path.exists():
      kept = [line for line in path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= resume_step]
    path.write_text("".join(line + "\n" for line in kept))

  def write(self, record: dict[str, Any]) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config``'s student in ``workdir``, resuming from its latest checkpoint.

  Returns the summary also written to ``workdir/summary.json``:
  ``{"test": {"accuracy", "nll"}, "steps", "wall_s", "params", ...}``.
  """
  start_time = time.time()
  check_config(config)
  workdir = pathlib.Path(workdir)
  _guards.check_workdir(workdir)
  mesh = kd_data.make_data_mesh(config.num_devices)
  if config.batch_size % mesh.size:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by {mesh.size} devices")
  replicated = NamedSharding(mesh, P())

  # Data.
  splits = kd_data.load_dataset(config.data.name, **config.data.get("kwargs", {}),
                                val_size=config.data.val_size)
  num_classes = splits["num_classes"]

  # Models and objective.
  model = model_from_config(config.model.to_dict(), num_classes)
  objective = losses.make_objective(config.losses)
  train_x, train_y = _load_training_inputs(config, splits, objective)

  sample_x = jnp.asarray(train_x[:config.batch_size])

  # Teachers: frozen inputs to the step (eval mode), never part of the state.
  teacher_apply, teacher_params, teacher_cache, teacher_test = None, None, None, None
  if objective.needs_teacher:
    groups = load_teacher_groups(config.teacher, num_classes=num_classes, sample_x=sample_x)
    _guards.check_teachers_take(groups, train_x[:1])
    test_targets = teacher_log_probs(groups, splits["test"]["x"], space=config.teacher.fusion,
                                     weights=config.teacher.weights)  # what the ensemble predicts
    teacher_test = {"accuracy": float(metrics.accuracy(test_targets, splits["test"]["y"])),
                    "nll": float(metrics.nll(test_targets, splits["test"]["y"])),
                    "members": sum(g.size for g in groups)}
    online = (not config.teacher.cache or objective.teacher_features or objective.needs_params)
    if online:
      t_model, t_variables = single_teacher(groups)
      teacher_apply = frozen_teacher_apply(t_model, objective.teacher_features)
      teacher_params = jax.device_put(t_variables, replicated)  # all variables, e.g. batch_stats
    else:
      teacher_cache = teacher_log_probs(groups, train_x, space=config.teacher.fusion,
                                        weights=config.teacher.weights,
                                        temperature=config.teacher.fusion_temperature)

  fresh = None
  if config.transfer.fresh:  # targets per chunk (host, batched) unless the teacher is in the step
    fresh = FreshChunks(config, groups if teacher_cache is not None else None)

  run_info = {"model": config.model.to_dict(), "num_classes": num_classes,
              "data": config.data.name}
  _check_same_run(workdir, run_info)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  (workdir / "run.json").write_text(json.dumps(run_info, indent=2))

  # Init: student (params + model state such as batch_stats), optional copy of teacher
  # layers, objective's aux params, optimizer, dropout key.
  rng_student, rng_aux = jax.random.split(jax.random.key(config.seed))
  student = as_model(model)
  student_params, model_state = split_variables(student.init(rng_student, sample_x))
  copied = []
  if config.init.from_teacher:
    if not objective.needs_teacher:
      groups = load_teacher_groups(config.teacher, num_classes=num_classes, sample_x=sample_x)
    _, t_variables = single_teacher(groups)
    student_params, copied = losses.init_from_teacher(
        student_params, t_variables["params"], mapping=config.init.mapping or None)
  s_logits, s_features, _ = student.apply({"params": student_params, **model_state}, sample_x,
                                          train=False, features=objective.student_features)
  t_logits, t_features = (teacher_apply(teacher_params, sample_x) if teacher_apply else
                          (None if teacher_cache is None else
                           jnp.asarray(teacher_cache[:config.batch_size]), {}))
  aux_params = objective.init(rng_aux, losses.LossInputs(
      student_logits=s_logits, labels=None if train_y is None else jnp.asarray(
          train_y[:config.batch_size]),
      teacher_logits=t_logits, student_features=s_features, teacher_features=t_features,
      student_params=student_params,
      teacher_params=None if teacher_params is None else teacher_params["params"]))
  params = {"student": student_params, "aux": aux_params}
  tx = make_optimizer(config.optimizer, config.num_steps,
                      steps_per_epoch=len(train_x) // config.batch_size)
  tx = _nonfinite.wrap_optimizer(tx, config.on_nonfinite, config.num_steps)
  dropout_key = jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 0xD50))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     model_state=model_state, rng=dropout_key)
  state = jax.device_put(state, replicated)

  manager = ckpt.make_manager(workdir, max_to_keep=config.keep_checkpoints)
  restored = ckpt.restore_latest(manager, state)
  if restored is not None:
    state = restored
  start_step = int(state.step)
  log = _MetricsLog(workdir / "metrics.jsonl", start_step)

  train_chunk = make_train_chunk(model=model, objective=objective, tx=tx,
                                 teacher_apply=teacher_apply)
  predict = make_predict(model)
  eval_batch = max(config.eval_batch_size // mesh.size, 1) * mesh.size

  def chunk_batches(step: int, num: int):
    if fresh is not None:
      ahead = min(config.log_every, config.num_steps - step - num)
      return kd_data.shard_batch(fresh.chunk(step, num, ahead), mesh, batch_axis=1)
    idx = kd_data.batch_indices(len(train_x), batch_size=config.batch_size, start_step=step,
                                num_steps=num, seed=config.seed)
    idx = kd_data.host_slice(idx)
    batch = {"x": train_x[idx]}
    if train_y is not None:
      batch["y"] = train_y[idx]
    if teacher_cache is not None:
      batch["teacher_logits"] = teacher_cache[idx]
    return kd_data.shard_batch(batch, mesh, batch_axis=1)

  bar = tqdm.tqdm(total=config.num_steps, initial=start_step, disable=None if config.progress_bar else True,  # None: off when not a TTY
                  desc=workdir.name, dynamic_ncols=True, leave=False)
  step = start_step
  preemption = PreemptionGuard().install()  # SIGTERM: checkpoint at the next chunk boundary
  while step < config.num_steps:
    num = min(config.log_every, config.num_steps - step)
    state, chunk_metrics = train_chunk(state, chunk_batches(step, num), teacher_params)
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
          result = _evaluate(predict, state.student_variables(), splits[split],
                             batch_size=eval_batch, mesh=mesh)
          record.update({f"{split}/{k}": v for k, v in result.items()})
    log.write(record)
    bar.update(num)
    bar.set_postfix({name: f"{record[key]:.3f}" for key, name in _BAR_FIELDS.items()
                     if key in record})
    if step % config.checkpoint_every == 0 or step == config.num_steps or preemption.requested:
      ckpt.save(manager, step, state, force=preemption.requested)
    if preemption.requested and step < config.num_steps:
      preemption.uninstall()
      bar.close()
      manager.wait_until_finished()
      manager.close()
      raise Preempted(step, str(workdir))
  preemption.uninstall()
  bar.close()
  manager.wait_until_finished()
  manager.close()

  test = _evaluate(predict, state.student_variables(), splits["test"], batch_size=eval_batch,
                   mesh=mesh)
  summary = {
      "test": test,
      "steps": step,
      "resumed_from": start_step,
      "wall_s": round(time.time() - start_time, 2),
      "params": count_params(state.params["student"]),
      "model": config.model.name,
      "teacher_test": teacher_test,
      "copied_from_teacher": list(copied),
      "devices": mesh.size,
      "backend": jax.default_backend(),
      "skipped_updates": _nonfinite.skipped_updates(state.opt_state),
  }
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
