"""Shipped reproduction configs' smoke variants through `train_and_evaluate` on tfds mock
data (``config.data.mock_examples``; nothing downloads).

The default run (CI) takes one smoke per config file and per distillation method:
``CIFAR_SMOKES`` (KD, AT, DKD, FitNets, each on one CIFAR-100 pair), ``IMAGENET_SMOKES``
(both ImageNet configs) and the Hinton MNIST teacher, student and KD. The rest of the
matrix (every pair x every method, from a teacher run) is in ``tests/full_config_smokes.py``
(``pytest tests/full_config_smokes.py``, about 10 CPU-minutes).

KD smokes read their teacher from a flax msgpack file (``teacher.params_file``, the
config's ``teacher.model`` architecture) of random teacher variables; MNIST: Hinton's
teacher run, then the student and KD (from the teacher's workdir).
"""

import json
import math
import pathlib

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax.config import load_config
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
  """A flax msgpack file of teacher ``name``'s variables, drawn with NumPy: He-normal
  kernels (std :math:`\\sqrt{2 / \\text{fan\\_in}}`), unit scales and variances, zero
  biases and means. NumPy, not ``model.init``: eager initializers compile one XLA program
  per weight shape, which costs more than the smoke's own training on the CPU."""
  model = as_model(get_model(name, num_classes=num_classes))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(0)

  def draw(key_path, leaf):
    leaf_name = str(key_path[-1].key)
    if leaf_name == "kernel":
      fan_in = math.prod(leaf.shape[:-1])
      return (rng.standard_normal(leaf.shape) * math.sqrt(2.0 / fan_in)).astype(leaf.dtype)
    return (np.ones if leaf_name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  path.write_bytes(flax.serialization.to_bytes(variables))
  return str(path)


# Each CIFAR-100 config file with one method; every distillation method on one pair.
CIFAR_SMOKES = (("vgg13_to_vgg8", "kd"), ("resnet32x4_to_resnet8x4", "at"),
                ("wrn_40_2_to_wrn_16_2", "dkd"), ("resnet56_to_resnet20", "fitnets"))
IMAGENET_SMOKES = (("imagenet/resnet34_to_resnet18.py", "kd,smoke", "resnet34"),
                   ("imagenet/function_matching.py", "smoke", "resnet50"))


def test_every_pair_and_every_distillation_method_has_a_named_smoke():
  from kdjax.config import recipes

  assert {pair for pair, _ in CIFAR_SMOKES} == set(CIFAR_PAIRS)
  assert {m for _, m in CIFAR_SMOKES} == set(recipes.METHODS) - {"teacher", "student"}


def cifar_smoke_from_a_params_file(pair: str, method: str, tmp_path: pathlib.Path) -> dict:
  """The run summary of ``pair``'s ``method`` smoke (``run`` checks steps, logs, metrics)."""
  teacher = pair.split("_to_")[0]
  params_file = write_msgpack_teacher(tmp_path / f"{teacher}.msgpack", teacher, 100, 32)
  return run(f"cifar100/{pair}.py", f"{method},smoke", tmp_path / method,
             **{"teacher.params_file": params_file})


@pytest.mark.parametrize("pair, method", CIFAR_SMOKES)
def test_cifar100_smoke_from_a_params_file(pair, method, tmp_path):
  summary = cifar_smoke_from_a_params_file(pair, method, tmp_path)
  assert summary["teacher_test"]["members"] == 1


@pytest.mark.parametrize("path, arg, teacher", IMAGENET_SMOKES)
def test_imagenet_smoke_from_a_params_file(path, arg, teacher, tmp_path):
  size = load_config(path, arg).data.get("image_size") or 224
  params_file = write_msgpack_teacher(tmp_path / f"{teacher}.msgpack", teacher, 1000, size)
  summary = run(path, arg, tmp_path / "w", **{"teacher.params_file": params_file})
  assert summary["teacher_test"]["members"] == 1


def test_mnist_hinton_smokes(tmp_path):
  run("mnist/hinton.py", "teacher,smoke", tmp_path / "teacher")
  run("mnist/hinton.py", "student,smoke", tmp_path / "student")
  summary = run("mnist/hinton.py", "kd,smoke", tmp_path / "kd",
                **{"teacher.workdir": str(tmp_path / "teacher")})
  assert summary["teacher_test"]["members"] == 1
