"""Trainer: data parallelism, teachers, clear errors (faults: tests/test_faults_*.py)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from kdjax.config import load_config
from kdjax.training import load_params, train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parent.parent


def smoke(path: str, arg: str = "smoke", **overrides):
  return load_config(path, arg, {"progress_bar": False, **overrides})


def assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def test_eight_devices_equal_one_device(tmp_path):
  runs = {}
  for n in (1, 8):
    config = smoke("mnist1d/teacher_cnn.py", num_devices=n, num_steps=20)
    summary = train_and_evaluate(config, str(tmp_path / f"d{n}"))
    assert summary["devices"] == n
    losses = [json.loads(l)["train/loss"] for l in (tmp_path / f"d{n}/metrics.jsonl").read_text().splitlines()]
    runs[n] = (losses, load_params(tmp_path / f"d{n}"), summary)
  np.testing.assert_allclose(runs[1][0], runs[8][0], rtol=1e-5)
  # atol: Adam's update lr * g / (|g| + eps) turns the reduction-order difference of a
  # near-zero gradient (|g| ~ 1e-7; 8 partial sums instead of 1) into up to ~1e-5 of a
  # parameter's change (seed 0: 3.3e-6 after one step of lr 0.01), 0.1% of the learning rate.
  assert_trees_close(runs[1][1], runs[8][1], rtol=1e-4, atol=1e-5)
  assert abs(runs[1][2]["test"]["nll"] - runs[8][2]["test"]["nll"]) < 1e-4


def test_summary_metrics_and_checkpoints(teacher_dir):
  summary = json.loads((teacher_dir / "summary.json").read_text())
  assert set(summary["test"]) == {"accuracy", "nll"} and summary["params"] == 5210
  assert summary["test"]["accuracy"] > 0.3  # 60 steps already beat chance (0.1)
  records = [json.loads(l) for l in (teacher_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
  assert "test/accuracy" in records[1] and "train/grad_norm" in records[0]
  assert sorted(p.name for p in (teacher_dir / "checkpoints").iterdir()) == ["40", "60"]
  # The summary's test metrics are the last interval's evaluation (the same final params).
  assert summary["test"] == {"accuracy": records[-1]["test/accuracy"],
                             "nll": records[-1]["test/nll"]}


def test_a_run_resumed_at_its_end_evaluates_the_final_params_again(teacher_dir, tmp_path):
  shutil.copytree(teacher_dir, tmp_path / "t")
  config = load_config("mnist1d/teacher_cnn.py", "smoke", {"progress_bar": False, "num_steps": 60})
  again = train_and_evaluate(config, str(tmp_path / "t"))  # no interval left to run
  first = json.loads((teacher_dir / "summary.json").read_text())
  assert again["resumed_from"] == again["steps"] == 60
  assert again["test"]["accuracy"] == first["test"]["accuracy"]
  assert again["test"]["nll"] == pytest.approx(first["test"]["nll"], rel=1e-6)


def test_kd_with_cached_teacher_and_transfer_set(teacher_dir, tmp_path):
  config = smoke("mnist1d/kd_cnn_to_mlp.py", **{"teacher.workdir": str(teacher_dir)})
  summary = train_and_evaluate(config, str(tmp_path / "kd"))
  teacher = json.loads((teacher_dir / "summary.json").read_text())
  assert summary["teacher_test"]["accuracy"] == pytest.approx(teacher["test"]["accuracy"], abs=1e-6)
  record = json.loads((tmp_path / "kd/metrics.jsonl").read_text().splitlines()[-1])
  assert "train/teacher_agreement" in record and "train/accuracy" not in record  # unlabelled


def test_missing_teacher_workdir_is_a_clear_error(tmp_path):
  config = smoke("mnist1d/kd_cnn_to_mlp.py", **{"teacher.workdir": str(tmp_path / "nope")})
  with pytest.raises(FileNotFoundError, match="Workdir .*nope. does not exist"):
    train_and_evaluate(config, str(tmp_path / "kd"))
  config = smoke("mnist1d/kd_cnn_to_mlp.py")
  with pytest.raises(ValueError, match="config.teacher.workdir is empty"):
    train_and_evaluate(config, str(tmp_path / "kd"))


def test_teacher_with_other_number_of_classes_is_a_clear_error(teacher_dir, tmp_path):
  import shutil
  other = tmp_path / "teacher5"
  shutil.copytree(teacher_dir, other)
  info = json.loads((other / "run.json").read_text())
  (other / "run.json").write_text(json.dumps({**info, "num_classes": 5}))
  config = smoke("mnist1d/kd_cnn_to_mlp.py", **{"teacher.workdir": str(other)})
  with pytest.raises(ValueError, match="predicts 5 classes but the student has 10"):
    train_and_evaluate(config, str(tmp_path / "kd"))


def run_cli(*args, tmp_path):
  return subprocess.run([sys.executable, "-m", "kdjax.main", *args], capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu",
                             "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})


def test_cli_config_typo_is_a_one_line_error(tmp_path):
  result = run_cli("train", "--config", str(REPO / "configs/mnist1d/mlp.py:smoke"),
                   "--workdir", str(tmp_path / "w"), "--config.optimizer.learnig_rate=0.1",
                   tmp_path=tmp_path)
  assert result.returncode != 0
  assert "learnig_rate" in result.stderr
  assert "Traceback" not in result.stderr


def test_cli_unknown_command_and_missing_teacher(tmp_path):
  result = run_cli("trian", tmp_path=tmp_path)
  assert result.returncode != 0 and "unknown command 'trian'" in result.stderr
  result = run_cli("train", "--config", str(REPO / "configs/mnist1d/kd_cnn_to_mlp.py:smoke"),
                   "--workdir", str(tmp_path / "w"), f"--config.teacher.workdir={tmp_path}/missing",
                   tmp_path=tmp_path)
  assert result.returncode == 1
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("kdjax train: error: FileNotFoundError: Workdir")


def test_bad_config_values(tmp_path):
  with pytest.raises(ValueError, match="eval_every=15 must be a positive multiple of log_every=10"):
    train_and_evaluate(smoke("mnist1d/mlp.py", eval_every=15), str(tmp_path / "a"))
  # (A batch the devices do not divide is padded now: tests/test_device_counts.py.)
  with pytest.raises(ValueError, match="num_devices=9 but only 8 devices exist"):
    train_and_evaluate(smoke("mnist1d/mlp.py", num_devices=9), str(tmp_path / "b"))
  with pytest.raises(ValueError, match="Unknown model 'mlpp'"):
    train_and_evaluate(smoke("mnist1d/mlp.py", **{"model.name": "mlpp"}), str(tmp_path / "c"))


def test_ensemble_teacher_targets_match_float64_reference(teacher_dir, tmp_path):
  from kdjax.training import load_run, load_teachers, teacher_targets
  mlp_dir = tmp_path / "mlp_teacher"
  train_and_evaluate(smoke("mnist1d/mlp.py"), str(mlp_dir))
  workdirs = f"{teacher_dir},{mlp_dir},{teacher_dir}"
  groups = load_teachers(workdirs, num_classes=10)
  assert sorted(g.size for g in groups) == [1, 2]  # stacked by architecture
  x = np.random.default_rng(0).normal(size=(37, 40)).astype(np.float32)
  member_logits = []
  for w in workdirs.split(","):
    model, variables, _ = load_run(w)
    member_logits.append(np.asarray(model.apply(variables, x), np.float64))
  z = np.stack(member_logits)
  for temperature in (1.0, 4.0):
    p = np.exp(z / temperature - np.log(np.exp(z / temperature).sum(-1, keepdims=True)))
    expected = temperature * np.log(p.mean(0))
    got = teacher_targets(groups, x, space="prob", temperature=temperature, batch_size=16)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  weights = np.array([0.2, 0.7, 0.1])  # in the order the workdirs were given
  p = np.exp(z - np.log(np.exp(z).sum(-1, keepdims=True)))
  got = teacher_targets(groups, x, space="prob", weights=tuple(weights), batch_size=16)
  np.testing.assert_allclose(got, np.log(np.einsum("m,mbc->bc", weights, p)), rtol=1e-4, atol=1e-4)


def test_resume_into_a_workdir_of_another_model_is_a_clear_error(teacher_dir, tmp_path):
  import shutil
  workdir = tmp_path / "w"
  shutil.copytree(teacher_dir, workdir)
  with pytest.raises(ValueError, match='holds a run with another config: .*model.name "cnn1d" -> "mlp"'):
    train_and_evaluate(smoke("mnist1d/mlp.py"), str(workdir))
  # resume=override accepts config changes, never another model under the checkpoints.
  with pytest.raises(ValueError, match="holds checkpoints of another run"):
    train_and_evaluate(smoke("mnist1d/mlp.py", resume="override"), str(workdir))


def test_unknown_teacher_fusion_is_a_clear_error_even_for_one_teacher(teacher_dir, tmp_path):
  config = smoke("mnist1d/kd_cnn_to_mlp.py", **{"teacher.workdir": str(teacher_dir),
                                                 "teacher.fusion": "median"})
  with pytest.raises(ValueError, match="Unknown teacher fusion 'median'"):
    train_and_evaluate(config, str(tmp_path / "kd"))
