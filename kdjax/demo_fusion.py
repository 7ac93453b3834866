"""The demo's fusion stage: five CNN members, their fusion, and ensemble distillation.

Members train on 3,500 examples (the last 500 are the validation split that fusion
fits on); the probability-averaged ensemble then teaches the MLP over the 100,000-input
transfer set, as in ``configs/mnist1d/kd_ensemble_to_mlp.py``.
"""

import pathlib
import time

import ml_collections

NUM_MEMBERS = 5


def _member_dirs(root: pathlib.Path, seed: int) -> list[pathlib.Path]:
  return [root / "members" / f"seed{seed}" / f"cnn{i}" for i in range(NUM_MEMBERS)]


def fusion_stages(root: pathlib.Path, seed: int, smoke: bool = False):
  """Training stages ``(stage, description, config, workdir)``: members, then the
  ensemble-distilled MLP."""
  from kdjax.demo import _stage_config

  stages = [(f"member_cnn{i}", f"CNN member {i} (labelled 3.5k)",
             _stage_config("mnist1d/member_cnn.py", None, NUM_MEMBERS * seed + i, smoke), d)
            for i, d in enumerate(_member_dirs(root, seed))]
  teachers = ",".join(str(d) for d in _member_dirs(root, seed))
  stages.append(("kd_ensemble", f"MLP <- {NUM_MEMBERS}-CNN ensemble, KD + 100k transfer",
                 _stage_config("mnist1d/kd_ensemble_to_mlp.py", None, seed, smoke,
                               **{"teacher.workdir": teachers}),
                 root / "kd_ensemble" / f"seed{seed}"))
  return stages


def fusion_results(root: pathlib.Path, seed: int, smoke: bool = False) -> dict[str, tuple[str, dict]]:
  """Runs ``kdjax fuse`` over the seed's members; returns demo rows
  ``stage -> (description, summary)`` for the fused predictors."""
  from kdjax.configs import load_config
  from kdjax.fuse import run_fuse

  config: ml_collections.ConfigDict = load_config("mnist1d/fuse_cnn5.py")
  config.members = ",".join(str(d) for d in _member_dirs(root, seed))
  config.seed = seed
  if smoke:
    config.deep.steps = 20
  start = time.time()
  report = run_fuse(config, str(root / "fuse" / f"seed{seed}"))
  wall = time.time() - start
  picks = {"ensemble_average": ("average (prob)", f"{NUM_MEMBERS}-CNN ensemble, probability average"),
           "ensemble_fitted": ("fitted weights (nll)", f"{NUM_MEMBERS}-CNN ensemble, fitted weights"),
           "ensemble_deep": ("deep fusion", f"{NUM_MEMBERS}-CNN ensemble, deep fusion")}
  return {stage: (description, {"test": report["test"][row], "wall_s": wall,
                                "params": 5210 * NUM_MEMBERS})
          for stage, (row, description) in picks.items()}
