"""Every shipped reproduction config's smoke variant through `train_and_evaluate` on
tfds mock data (``config.data.mock_examples``; nothing downloads).

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

from kdjax import recipes
from kdjax.configs import load_config
from kdjax.models import as_model, get_model
from kdjax.training import NonFiniteError, train_and_evaluate

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


@pytest.fixture(scope="module")
def resnet56_teacher(tmp_path_factory):
  """The workdir of resnet56_to_resnet20's ``teacher,smoke`` run."""
  workdir = tmp_path_factory.mktemp("teacher_resnet56")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("TFDS_DATA_DIR", str(workdir / "tfds"))
    run(f"cifar100/{ALL_METHODS_PAIR}.py", "teacher,smoke", workdir)
  return workdir


@pytest.mark.parametrize("pair", [p for p in CIFAR_PAIRS if p != ALL_METHODS_PAIR])
def test_cifar100_kd_smoke_from_a_params_file(pair, tmp_path):
  teacher = pair.split("_to_")[0]
  params_file = write_msgpack_teacher(tmp_path / f"{teacher}.msgpack", teacher, 100, 32)
  summary = run(f"cifar100/{pair}.py", "kd,smoke", tmp_path / "kd",
                **{"teacher.params_file": params_file})
  assert summary["teacher_test"]["members"] == 1


FITNETS_DIVERGES = pytest.mark.xfail(
    strict=True, raises=NonFiniteError,
    reason="measured 2026-11-28: the published FitNets recipe (hint weight 100, SGD 0.05) "
           "overflows at step 3 on mock data with a 4-step teacher; open: fix the smoke recipe")


@pytest.mark.parametrize("method", [pytest.param(m, marks=FITNETS_DIVERGES) if m == "fitnets"
                                    else m for m in recipes.METHODS if m != "teacher"])
def test_cifar100_every_method_smoke(method, resnet56_teacher, tmp_path):
  overrides = {} if method == "student" else {"teacher.workdir": str(resnet56_teacher)}
  summary = run(f"cifar100/{ALL_METHODS_PAIR}.py", f"{method},smoke", tmp_path / method,
                **overrides)
  assert (summary["teacher_test"] is None) == (method == "student")
  if method != "student":  # the teacher's own test accuracy, measured again by this run
    teacher = json.loads((resnet56_teacher / "summary.json").read_text())
    assert summary["teacher_test"]["accuracy"] == pytest.approx(teacher["test"]["accuracy"],
                                                                abs=1e-6)


@pytest.mark.parametrize("path, arg, teacher", [
    ("imagenet/resnet34_to_resnet18.py", "student,smoke", None),
    ("imagenet/resnet34_to_resnet18.py", "kd,smoke", "resnet34"),
    ("imagenet/function_matching.py", "smoke", "resnet50"),
])
def test_imagenet_smoke_runs(path, arg, teacher, tmp_path):
  overrides = {}
  if teacher:
    overrides["teacher.params_file"] = write_msgpack_teacher(
        tmp_path / f"{teacher}.msgpack", teacher, 1000, 224)
  summary = run(path, arg, tmp_path / "w", **overrides)
  assert (summary["teacher_test"] is None) == (teacher is None)


def test_mnist_hinton_smokes(tmp_path):
  run("mnist/hinton.py", "teacher,smoke", tmp_path / "teacher")
  run("mnist/hinton.py", "student,smoke", tmp_path / "student")
  summary = run("mnist/hinton.py", "kd,smoke", tmp_path / "kd",
                **{"teacher.workdir": str(tmp_path / "teacher")})
  assert summary["teacher_test"]["members"] == 1
