"""Bad configuration and bad inputs: each is one error naming the field or the path,
raised before any training step (no metrics line, no checkpoint)."""

import os
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import pytest

from kdjax.config import load_config
from kdjax.training import train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parent.parent
CPU_ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def smoke(path="mnist1d/mlp.py", arg="smoke", **overrides):
  return load_config(path, arg, {"progress_bar": False, **overrides})


def assert_no_training(workdir: pathlib.Path):
  assert not (workdir / "metrics.jsonl").exists()
  assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())


def test_unknown_config_field_names_it_and_a_close_match(tmp_path):
  config = smoke()
  config.optimizer.momentun = 0.9  # a config file may add fields the trainer never reads
  with pytest.raises(ValueError, match=r"unknown field 'optimizer.momentun' \(did you mean 'momentum'\?\)"):
    train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_wrong_type_names_the_field(tmp_path):
  config = smoke()
  config.optimizer = ml_collections.ConfigDict({"name": "sgd", "learning_rate": "0.1"})
  with pytest.raises(TypeError, match=r"config.optimizer.learning_rate must be a float, got '0.1' \(str\)"):
    train_and_evaluate(config, str(tmp_path / "w"))
  config = smoke()
  config.optimizer = ml_collections.ConfigDict({"name": "sgd", "nesterov": "yes"})
  with pytest.raises(TypeError, match=r"config.optimizer.nesterov must be a bool, got 'yes'"):
    train_and_evaluate(config, str(tmp_path / "w"))


def test_unwritable_workdir_names_the_path(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(OSError, match=r"workdir '.*file/w' is not writable"):
    train_and_evaluate(smoke(), str(blocker / "w"))


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
  """A teacher trained on sklearn digits (64 inputs), not MNIST-1D (40)."""
  workdir = tmp_path_factory.mktemp("digits_teacher")
  config = smoke(**{"data.name": "digits", "num_steps": 10, "log_every": 10, "eval_every": 10,
                    "checkpoint_every": 10})
  train_and_evaluate(config, str(workdir))
  return workdir


def test_teacher_with_other_input_shape_names_the_teacher(digits_teacher, tmp_path):
  config = smoke("mnist1d/kd_cnn_to_mlp.py", **{"teacher.workdir": str(digits_teacher)})
  with pytest.raises(ValueError, match=r"Teacher .*digits_teacher.* cannot take the student's "
                                       r"inputs of shape \(40,\)"):
    train_and_evaluate(config, str(tmp_path / "kd"))
  assert_no_training(tmp_path / "kd")


def test_unreadable_teacher_names_the_path(teacher_dir, tmp_path):
  broken = tmp_path / "teacher"
  shutil.copytree(teacher_dir, broken)
  (broken / "run.json").write_text('{"model": ')  # half-written
  config = smoke("mnist1d/kd_cnn_to_mlp.py", **{"teacher.workdir": str(broken)})
  with pytest.raises(ValueError, match=r"teacher/run.json cannot be read \(JSONDecodeError"):
    train_and_evaluate(config, str(tmp_path / "kd"))
  shutil.rmtree(broken / "checkpoints")
  (broken / "run.json").write_text((teacher_dir / "run.json").read_text())
  with pytest.raises(FileNotFoundError, match="No checkpoints in .*teacher"):
    train_and_evaluate(config, str(tmp_path / "kd"))
  assert_no_training(tmp_path / "kd")


def test_cli_bad_config_file_is_one_line_before_training(tmp_path):
  config_file = tmp_path / "typo.py"
  config_file.write_text(
      "from kdjax.config import load_config\n"
      "def get_config(arg=None):\n"
      "  c = load_config('mnist1d/mlp.py', 'smoke')\n"
      "  c.optimizer.wieght_decay = 5e-4\n"
      "  return c\n")
  result = subprocess.run([sys.executable, "-m", "kdjax.main", "train", "--config", str(config_file),
                           "--workdir", str(tmp_path / "w")], capture_output=True, text=True,
                          env=CPU_ENV, cwd=tmp_path)
  assert result.returncode == 1
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("kdjax train: error: ValueError: config has unknown field "
                              "'optimizer.wieght_decay' (did you mean 'weight_decay'?)"), lines[-1]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()
