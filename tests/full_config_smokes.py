"""The shipped reproduction configs' smoke variants beyond CI's default run
(``tests/test_config_smokes.py``, one per config file and per method): every CIFAR-100
pair's KD, every method on resnet56_to_resnet20 from its teacher run, the ImageNet student.
About 10 CPU-minutes (deep ResNets compiled on the CPU), so not collected by the default
run: ``pytest tests/full_config_smokes.py``.
"""

import json

import pytest

from kdjax.config import recipes
from test_config_smokes import (ALL_METHODS_PAIR, CIFAR_PAIRS,  # noqa: F401
                                cifar_smoke_from_a_params_file, offline, run)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pair", [p for p in CIFAR_PAIRS if p not in (ALL_METHODS_PAIR,
                                                                       "vgg13_to_vgg8")])
def test_cifar100_kd_smoke_from_a_params_file(pair, tmp_path):
  summary = cifar_smoke_from_a_params_file(pair, "kd", tmp_path)
  assert summary["teacher_test"]["members"] == 1


@pytest.fixture(scope="module")
def resnet56_teacher(tmp_path_factory):
  """The workdir of resnet56_to_resnet20's ``teacher,smoke`` run."""
  workdir = tmp_path_factory.mktemp("teacher_resnet56")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("TFDS_DATA_DIR", str(workdir / "tfds"))
    run(f"cifar100/{ALL_METHODS_PAIR}.py", "teacher,smoke", workdir)
  return workdir


@pytest.mark.parametrize("method", [m for m in recipes.METHODS if m != "teacher"])
def test_cifar100_every_method_smoke(method, resnet56_teacher, tmp_path):
  overrides = {} if method == "student" else {"teacher.workdir": str(resnet56_teacher)}
  summary = run(f"cifar100/{ALL_METHODS_PAIR}.py", f"{method},smoke", tmp_path / method,
                **overrides)
  assert (summary["teacher_test"] is None) == (method == "student")
  if method != "student":  # the teacher's own test accuracy, measured again by this run
    teacher = json.loads((resnet56_teacher / "summary.json").read_text())
    assert summary["teacher_test"]["accuracy"] == pytest.approx(teacher["test"]["accuracy"],
                                                                abs=1e-6)


def test_imagenet_student_smoke_runs(tmp_path):
  summary = run("imagenet/resnet34_to_resnet18.py", "student,smoke", tmp_path / "w")
  assert summary["teacher_test"] is None


