"""Every loss term is reachable from a config and trains, on 8 devices."""

import json

import numpy as np
import pytest

from kdjax.config import load_config
from kdjax.losses import TERMS
from kdjax.training import train_and_evaluate


def smoke(path, arg="smoke", **overrides):
  return load_config(path, arg, {"progress_bar": False, **overrides})

FEATURE_KW = {"student_feature": "block_2", "teacher_feature": "block_2"}
EVERY_TERM = {
    "cross_entropy": {"weight": 1.0},
    "soft_target_kl": {"weight": 0.5, "temperature": 2.0},
    "hinton_kd": {"weight": 0.5, "temperature": 4.0, "alpha": 0.5},
    "dkd": {"weight": 0.1},
    "dist": {"weight": 0.1},
    "hint": {"weight": 1.0, "projector": "conv", **FEATURE_KW},
    "attention_transfer": {"weight": 1.0, **FEATURE_KW},
    "similarity_preserving": {"weight": 1.0, **FEATURE_KW},
    "rkd_distance": {"weight": 0.1, **FEATURE_KW},
    "rkd_angle": {"weight": 0.1, **FEATURE_KW},
    "pkt": {"weight": 0.1, **FEATURE_KW},
    "weight_matching": {"weight": 1e-3},
    "forward_kl": {"weight": 0.1, "temperature": 2.0},
    "reverse_kl": {"weight": 0.1},
    "generalized_jsd": {"weight": 0.1, "beta": 0.5},
    "skew_kl": {"weight": 0.1, "alpha": 0.1},
    "skew_reverse_kl": {"weight": 0.1, "alpha": 0.1},
    "total_variation": {"weight": 0.1},
}


def test_every_term_trains_from_config(teacher_dir, tmp_path):
  # The fused terms read a language model's head, sparse_kl a top-k store: trained in
  # tests/test_lm_training.py.
  assert set(EVERY_TERM) | {"fused_kd", "fused_cross_entropy", "sparse_kl"} == set(TERMS)
  config = smoke("mnist1d/teacher_cnn.py", num_steps=20, **{"teacher.workdir": str(teacher_dir)})
  config.losses = EVERY_TERM
  train_and_evaluate(config, str(tmp_path / "all"))
  records = [json.loads(l) for l in (tmp_path / "all/metrics.jsonl").read_text().splitlines()]
  for name in EVERY_TERM:
    values = [r[f"train/loss/{name}"] for r in records]
    assert all(np.isfinite(values)), name
  total = [r["train/loss"] for r in records]
  assert total[-1] < total[0]


@pytest.mark.parametrize("path,arg,copied", [
    ("mnist1d/hint_cnn_to_mlp.py", "smoke", False),
    ("mnist1d/dkd_cnn_to_mlp.py", "smoke", False),
    ("mnist1d/weight_matching_cnn.py", "smoke", False),
    ("mnist1d/born_again_cnn.py", "init,smoke", True),
])
def test_distillation_configs_run(teacher_dir, tmp_path, path, arg, copied):
  config = smoke(path, arg, **{"teacher.workdir": str(teacher_dir)})
  summary = train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["steps"] == config.num_steps and np.isfinite(summary["test"]["nll"])
  assert bool(summary["copied_from_teacher"]) == copied
  if copied:  # born-again init: every leaf copied; the student starts as the teacher
    assert len(summary["copied_from_teacher"]) == 8
    assert summary["test"]["accuracy"] > 0.3
