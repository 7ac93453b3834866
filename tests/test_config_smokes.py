"""Shipped reproduction configs' smoke variants through `train_and_evaluate` on tfds mock
data (``config.data.mock_examples``; nothing downloads).

The suite runs the Hinton MNIST smokes and the KD smoke of one CIFAR-100 pair; the whole
matrix (every pair, every method on resnet56_to_resnet20, the ImageNet configs) compiles
deep ResNets on the CPU for about 20 CPU-minutes, more than CI's budget, and lives in
``tests/full_config_smokes.py``: ``pytest tests/full_config_smokes.py``.

KD smokes read their teacher from a flax msgpack file (``teacher.params_file``, the
config's ``teacher.model`` architecture) of a freshly initialised teacher, except on
resnet56_to_resnet20, where every method runs and the KD-family methods use the
workdir of that file's ``teacher,smoke`` run (``teacher.workdir``). MNIST: Hinton's
teacher run, then the student and KD (from the teacher's workdir).
"""

import json
import math
import pathlib

import flax.serialization
import jax
import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds

from kdjax.configs import load_config
from kdjax.models import as_model, get_model
from kdjax.training import train_and_evaluate

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent / "configs"
CIFAR_PAIRS = ("resnet32x4_to_resnet8x4", "wrn_40_2_to_wrn_16_2", "resnet56_to_resnet20",
               "vgg13_to_vgg8")
ALL_METHODS_PAIR = "resnet56_to_resnet20"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))

  def refuse(*args, **kwargs):
    raise AssertionError("a test tried to download")

  for name in ("download", "download_and_extract"):
    monkeypatch.setattr(tfds.download.DownloadManager, name, refuse)


def run(path: str, arg: str, workdir: pathlib.Path, **overrides) -> dict:
  config = load_config(path, arg, {"progress_bar": False, **overrides})
  summary = train_and_evaluate(config, str(workdir))
  assert summary["steps"] == config.num_steps
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(config.log_every, config.num_steps + 1,
                                                    config.log_every))
  assert all(math.isfinite(r["train/loss"]) for r in records)
  assert 0.0 <= summary["test"]["accuracy"] <= 1.0 and math.isfinite(summary["test"]["nll"])
  return summary


def test_every_config_file_is_covered():
  files = {str(p.relative_to(ROOT)) for d in ("cifar100", "imagenet", "mnist")
           for p in (ROOT / d).glob("*.py")}
  covered = ({f"cifar100/{p}.py" for p in CIFAR_PAIRS}
             | {"imagenet/resnet34_to_resnet18.py", "imagenet/function_matching.py",
                "mnist/hinton.py"})
  assert files == covered


def write_msgpack_teacher(path: pathlib.Path, name: str, num_classes: int, size: int) -> str:
  model = get_model(name, num_classes=num_classes)
  variables = as_model(model).init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
  path.write_bytes(flax.serialization.to_bytes(variables))
  return str(path)


@pytest.mark.parametrize("pair", ["vgg13_to_vgg8"])  # the other pairs: full_config_smokes.py
def test_cifar100_kd_smoke_from_a_params_file(pair, tmp_path):
  teacher = pair.split("_to_")[0]
  params_file = write_msgpack_teacher(tmp_path / f"{teacher}.msgpack", teacher, 100, 32)
  summary = run(f"cifar100/{pair}.py", "kd,smoke", tmp_path / "kd",
                **{"teacher.params_file": params_file})
  assert summary["teacher_test"]["members"] == 1


def test_mnist_hinton_smokes(tmp_path):
  run("mnist/hinton.py", "teacher,smoke", tmp_path / "teacher")
  run("mnist/hinton.py", "student,smoke", tmp_path / "student")
  summary = run("mnist/hinton.py", "kd,smoke", tmp_path / "kd",
                **{"teacher.workdir": str(tmp_path / "teacher")})
  assert summary["teacher_test"]["members"] == 1
