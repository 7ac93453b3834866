"""``kdjax demo``: the MNIST-1D story end to end on a CPU, in a few minutes.

Stages (each a normal ``kdjax train`` run in ``WORKDIR/<stage>/seed<k>``, reused when
its ``summary.json`` is complete):

1. ``teacher_cnn``: the CNN teacher on the 4,000 labelled inputs.
2. ``mlp``: the MLP 40-100-100-10 alone.
3. ``kd_labelled``: the MLP distilled from the teacher on the labelled inputs only.
4. ``kd_transfer``: the MLP distilled from the teacher on a 100,000-input generated
   transfer set (the run that shows what distillation can do).
5. (``fusion=True``) five CNN members on 3,500 examples, their fusion fitted on the 500
   held out (``kdjax fuse``), and the MLP distilled from the probability-averaged
   ensemble.

Then ``report.md``, ``report.json`` and ``accuracy.png`` (test accuracy over training).
Measured results of ``--seeds 3`` are in README.md ("Results: kdjax demo").
"""

import json
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np

from kdjax.config import load_config

NUM_MEMBERS = 5


def _stage_config(path: str, arg: str | None, seed: int, smoke: bool = False,
                  **overrides: Any) -> ml_collections.ConfigDict:
  if smoke:  # every config has a "smoke" variant that runs in seconds
    arg = "smoke" if arg is None else f"{arg},smoke"
  config = load_config(path, arg, {"seed": seed, **overrides})
  return config


def run_stage(name: str, config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """Trains unless ``workdir/summary.json`` already records a finished run of ``config``."""
  from kdjax.training import _workdir, train_and_evaluate

  _workdir.check_resume(workdir, config)  # a finished run of another config is not reused
  summary_path = workdir / "summary.json"
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    if summary.get("steps") == config.num_steps:
      print(f"[{name}] reusing {workdir} (test accuracy {summary['test']['accuracy']:.4f})")
      return summary
  print(f"[{name}] training in {workdir} ...", flush=True)
  summary = train_and_evaluate(config, str(workdir))
  print(f"[{name}] test accuracy {summary['test']['accuracy']:.4f} in {summary['wall_s']:.0f}s",
        flush=True)
  return summary


def demo_stages(root: pathlib.Path, seed: int, fusion: bool, smoke: bool = False) -> list[tuple[str, str, ml_collections.ConfigDict, pathlib.Path]]:
  """``(stage, description, config, workdir)`` in dependency order for one seed."""
  d = lambda stage: root / stage / f"seed{seed}"  # noqa: E731
  teacher = str(d("teacher_cnn"))
  stages = [
      ("teacher_cnn", "CNN teacher (labelled 4k)",
       _stage_config("mnist1d/teacher_cnn.py", None, seed, smoke), d("teacher_cnn")),
      ("mlp", "MLP alone (labelled 4k)",
       _stage_config("mnist1d/mlp.py", None, seed, smoke), d("mlp")),
      ("kd_labelled", "MLP <- CNN, KD on labelled 4k",
       _stage_config("mnist1d/kd_cnn_to_mlp.py", "labelled", seed, smoke, **{"teacher.workdir": teacher}),
       d("kd_labelled")),
      ("kd_transfer", "MLP <- CNN, KD + 100k transfer",
       _stage_config("mnist1d/kd_cnn_to_mlp.py", None, seed, smoke, **{"teacher.workdir": teacher}),
       d("kd_transfer")),
  ]
  if fusion:
    stages += fusion_stages(root, seed, smoke)
  return stages


def _member_dirs(root: pathlib.Path, seed: int) -> list[pathlib.Path]:
  return [root / "members" / f"seed{seed}" / f"cnn{i}" for i in range(NUM_MEMBERS)]


def fusion_stages(root: pathlib.Path, seed: int, smoke: bool = False):
  """The fusion stage's training runs ``(stage, description, config, workdir)``: five CNN
  members on 3,500 examples (the last 500 are the validation split that fusion fits
  on), then the MLP distilled from their probability average over the 100,000-input
  transfer set (``configs/mnist1d/kd_ensemble_to_mlp.py``)."""
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
  from kdjax.programs.fuse import run_fuse

  config: ml_collections.ConfigDict = load_config("mnist1d/fuse_cnn5.py")
  config.members = ",".join(str(d) for d in _member_dirs(root, seed))
  config.seed = seed
  if smoke:
    config.deep.steps = 20
  start = time.time()
  report = run_fuse(config, str(root / "fuse" / f"seed{seed}"))
  wall = time.time() - start
  params = sum(json.loads((d / "summary.json").read_text())["params"]
               for d in _member_dirs(root, seed))
  picks = {"ensemble_average": ("average (prob)", f"{NUM_MEMBERS}-CNN ensemble, probability average"),
           "ensemble_fitted": ("fitted weights (nll)", f"{NUM_MEMBERS}-CNN ensemble, fitted weights"),
           "ensemble_deep": ("deep fusion", f"{NUM_MEMBERS}-CNN ensemble, deep fusion")}
  return {stage: (description, {"test": report["test"][row], "wall_s": wall,
                                "params": params})
          for stage, (row, description) in picks.items()}


def format_spread(values) -> str:
  """``mean +- std (n=k)`` of percentages; one value is ``x (n=1)``, not a zero spread."""
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.1f} (n=1)"
  return f"{values.mean():.1f} +- {values.std():.1f} (n={len(values)})"


def _accuracy_curve(workdir: pathlib.Path) -> tuple[list[int], list[float]]:
  steps, accs = [], []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "test/accuracy" in record:
      steps.append(record["step"])
      accs.append(record["test/accuracy"])
  return steps, accs


def write_report(root: pathlib.Path, rows: list[dict], curves: dict[str, tuple]) -> None:
  """``report.json``, ``report.md`` and ``accuracy.png`` in ``root``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  (root / "report.json").write_text(json.dumps(rows, indent=2))
  lines = ["| stage | model | test accuracy (%) | test NLL | parameters | wall time (s) | seeds |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['stage']} | {r['description']} | {format_spread(r['accuracies'])} | "
                 f"{r['nll_mean']:.3f} | {r['params']:,} | "
                 f"{r['wall_s_mean']:.1f} | {r['seeds']} |")
  table = "\n".join(lines)
  (root / "report.md").write_text("# kdjax demo: MNIST-1D\n\n" + table + "\n\n![test accuracy](accuracy.png)\n")
  print("\n" + table)

  fig, ax = plt.subplots(figsize=(7, 4))
  for stage, (steps, accs) in curves.items():
    ax.plot(steps, np.asarray(accs) * 100, marker="o", ms=3, label=stage)
  ax.set_xscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("MNIST-1D: teacher, student alone, distilled students (seed 0)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(root / "accuracy.png", dpi=120)
  plt.close(fig)


DEMO_FILE = "demo.json"  # {"smoke": bool}: the variant the workdir's stages trained


def check_demo_workdir(root: pathlib.Path, smoke: bool) -> None:
  """A demo workdir holds the smoke stages or the full ones, never a mixture.

  Raises:
    ValueError: ``root`` holds the other variant's stages.
  """
  path = root / DEMO_FILE
  if not path.exists():
    return
  saved = bool(json.loads(path.read_text()).get("smoke"))
  if saved != smoke:
    held, asked = ("smoke", "full") if saved else ("full", "smoke")
    raise ValueError(f"{root} holds the {held} demo's runs; the {asked} demo needs another "
                     "--workdir")


def run_demo(workdir: str, *, seeds: int = 1, fusion: bool = True, smoke: bool = False) -> list[dict]:
  """Runs every stage for ``seeds`` seeds and writes the report; returns its rows.

  ``smoke=True`` runs every stage's ``smoke`` config variant (seconds, for tests)."""
  root = pathlib.Path(workdir)
  check_demo_workdir(root, smoke)
  root.mkdir(parents=True, exist_ok=True)
  (root / DEMO_FILE).write_text(json.dumps({"smoke": smoke}))
  start = time.time()
  results: dict[str, list[dict]] = {}
  descriptions: dict[str, str] = {}
  curves = {}
  for seed in range(seeds):
    for stage, description, config, stage_dir in demo_stages(root, seed, fusion, smoke):
      results.setdefault(stage, []).append(run_stage(stage, config, stage_dir))
      descriptions[stage] = description
      if seed == 0 and (stage_dir / "metrics.jsonl").exists() and not stage.startswith("member"):
        curves[stage] = _accuracy_curve(stage_dir)
    if fusion:
      for stage, (description, summary) in fusion_results(root, seed, smoke).items():
        results.setdefault(stage, []).append(summary)
        descriptions[stage] = description
  rows = []
  for stage, summaries in results.items():
    acc = np.array([s["test"]["accuracy"] for s in summaries]) * 100
    rows.append({
        "stage": stage, "description": descriptions[stage], "seeds": len(summaries),
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std()) if len(acc) > 1 else None,  # no spread from one seed
        "accuracies": acc.tolist(),
        "nll_mean": float(np.mean([s["test"]["nll"] for s in summaries])),
        "params": summaries[0].get("params", 0),
        "wall_s_mean": float(np.mean([s["wall_s"] for s in summaries])),
    })
  write_report(root, rows, curves)
  print(f"\nreport: {root / 'report.md'}  (total {time.time() - start:.0f}s)")
  return rows
