"""`kdjax train` with a 2-D mesh, a teacher sharded by rules, bf16 compute, and the memory
report in summary.json."""

import json

import jax
import numpy as np

from kdjax.config import load_config
from kdjax.training import load_variables, train_and_evaluate


def _nbytes(tree):
  return sum(np.asarray(a).nbytes for a in jax.tree.leaves(tree))


def test_train_sharded_teacher_bf16_reports_memory(teacher_dir, tmp_path):
  # 5 devices as {"data": 1, "model": 5}: every CNN1D teacher array has a dimension
  # divisible by 5 (25 channels, 125 head inputs, 10 classes), so "fsdp" splits all of them.
  config = load_config("mnist1d/kd_cnn_to_mlp.py", "smoke", {
      "progress_bar": False, "num_steps": 20, "teacher.workdir": str(teacher_dir),
      "teacher.cache": False, "num_devices": 5, "mesh.data": 1, "mesh.model": 5,
      "sharding.teacher": ((".*", "fsdp"),), "dtype": "bfloat16"})
  summary = train_and_evaluate(config, str(tmp_path))
  assert json.loads((tmp_path / "summary.json").read_text())["memory"] == summary["memory"]
  per_device = summary["memory"]["per_device_bytes"]
  teacher = load_variables(teacher_dir)
  assert per_device["teacher_params"] * 5 == _nbytes(teacher["params"])
  student = load_variables(tmp_path)  # float32 params, replicated
  assert {a.dtype for a in jax.tree.leaves(student)} == {np.dtype(np.float32)}
  assert per_device["student_params"] == _nbytes(student["params"])
  assert per_device["optimizer_state"] >= 2 * per_device["student_params"]  # Adam mu, nu
  compiled = summary["memory"]["compiled_step"]
  assert compiled["temp"] > 0 and compiled["argument"] > 0
  assert summary["mesh"] == {"data": 1, "model": 5} and summary["dtype"] == "bfloat16"
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(line["train/loss"]) for line in lines)
  assert 0.0 <= summary["test"]["accuracy"] <= 1.0 and np.isfinite(summary["test"]["nll"])
