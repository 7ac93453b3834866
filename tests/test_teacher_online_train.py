"""`kdjax train` with an ensemble teacher: online in the step, or cached on disk and reused."""

import json

import numpy as np
import pytest

from kdjax.config import load_config
from kdjax.training import train_and_evaluate


def _losses(workdir):
  return [json.loads(line)["train/loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_online_ensemble_equals_cached_targets_and_the_disk_cache_is_reused(teacher_dir, tmp_path,
                                                                             monkeypatch):
  monkeypatch.delenv("KDJAX_CACHE_DIR", raising=False)
  teachers = {"teacher.workdir": f"{teacher_dir},{teacher_dir}", "teacher.weights": (0.3, 0.7),
              "teacher.fusion_temperature": 4.0, "progress_bar": False, "num_steps": 20}
  cached = load_config("mnist1d/kd_ensemble_to_mlp.py", "smoke", teachers)
  first = train_and_evaluate(cached, str(tmp_path / "runs" / "a"))
  assert first["teacher_cache"]["reused"] is False
  assert first["teacher_cache"]["path"].startswith(str(tmp_path / "runs" / ".kdjax_cache"))
  again = train_and_evaluate(cached, str(tmp_path / "runs" / "b"))  # a later run, same parent
  assert again["teacher_cache"]["reused"] is True
  assert again["teacher_cache"]["path"] == first["teacher_cache"]["path"]
  assert again["test"] == first["test"] and _losses(tmp_path / "runs/b") == _losses(tmp_path / "runs/a")
  resumed = train_and_evaluate(cached, str(tmp_path / "runs" / "a"))  # a resume reads it too
  assert resumed["resumed_from"] == 20 and resumed["teacher_cache"]["reused"] is True
  online = load_config("mnist1d/kd_ensemble_to_mlp.py", "smoke", {**teachers, "teacher.cache": False,
                                                                  "teacher.member_axis": "data"})
  summary = train_and_evaluate(online, str(tmp_path / "runs" / "online"))
  assert summary["teacher_cache"] is None
  np.testing.assert_allclose(_losses(tmp_path / "runs/online"), _losses(tmp_path / "runs/a"),
                             rtol=1e-4)
  assert summary["test"]["accuracy"] == pytest.approx(first["test"]["accuracy"], abs=2e-3)


def test_feature_loss_with_an_ensemble_names_the_problem(teacher_dir, tmp_path):
  config = load_config("mnist1d/hint_cnn_to_mlp.py", "smoke", {
      "teacher.workdir": f"{teacher_dir},{teacher_dir}", "progress_bar": False})
  with pytest.raises(ValueError, match=r"needs teacher features .* which only a single teacher "
                     "has; config.teacher gives an ensemble of 2 members"):
    train_and_evaluate(config, str(tmp_path / "hint"))
