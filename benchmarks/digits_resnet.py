"""BatchNorm ResNets from the zoo on 8x8 digits, on the CPU: accuracy over seeds, resume,
and step time.

For each seed: resnet14 teacher (``configs/digits/teacher_resnet14.py``), resnet8 alone
(``student_resnet8.py``), resnet8 distilled from that seed's teacher
(``kd_resnet14_to_resnet8.py``, teacher run in the step in eval mode). The resnet8 run of
the first seed is also stopped half-way and resumed from its checkpoint, and compared
bit for bit with the straight run (params, batch_stats, logged losses). Step times are
medians of jitted 50-step chunks after a compile warm-up, one device.

  # one process per seed (they may run side by side), then the report:
  for s in 0 1 2; do python benchmarks/digits_resnet.py --workdir runs/digits_resnet --seed $s & done; wait
  python benchmarks/digits_resnet.py --workdir runs/digits_resnet --report --seeds 3

Writes ``benchmarks/results/digits_resnet.json``.
"""

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data as kd_data
from kdjax import losses
from kdjax.config import load_config
from kdjax.models import as_model, split_variables
from kdjax.training import TrainState, make_optimizer, make_train_chunk, train_and_evaluate
from kdjax.training._checkpoint import load_variables
from kdjax.training.teachers._apply import frozen_teacher_apply
from kdjax.training.teachers._load import model_from_config

RESULTS = pathlib.Path(__file__).parent / "results"
RUNS = {"teacher resnet14": "digits/teacher_resnet14.py",
        "resnet8 alone": "digits/student_resnet8.py",
        "resnet8 <- resnet14 (Hinton KD, T=4, alpha=0.9)": "digits/kd_resnet14_to_resnet8.py"}


def run(path, seed, workdir, **overrides):
  config = load_config(path, None, {"seed": seed, "progress_bar": False, "num_devices": 1,
                                    **overrides})
  return train_and_evaluate(config, str(workdir))


def metrics_losses(workdir):
  return [json.loads(line)["train/loss"]
          for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def resume_check(root, seed):
  """resnet8 stopped at half its steps then resumed, against the straight run."""
  straight = root / "resnet8 alone" / f"seed{seed}"
  resumed = root / "resume" / f"seed{seed}"
  config = load_config(RUNS["resnet8 alone"])
  run(RUNS["resnet8 alone"], seed, resumed, num_steps=config.num_steps // 2)
  run(RUNS["resnet8 alone"], seed, resumed)
  a, b = load_variables(straight), load_variables(resumed)
  same = all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))
  return {"bit_identical_params_and_batch_stats": same,
          "same_logged_losses": metrics_losses(straight) == metrics_losses(resumed),
          "collections": sorted(a)}


def step_time_ms(config_path, teacher=None, repeats=3, chunk=20):
  """Median ms per train step (jitted ``chunk``-step ``lax.scan``), one device."""
  config = load_config(config_path)
  splits = kd_data.load_dataset(config.data.name, **config.data.kwargs)
  model = model_from_config(config.model.to_dict(), splits["num_classes"])
  objective = losses.make_objective(config.losses)
  tx = make_optimizer(config.optimizer, config.num_steps)
  x = splits["train"]["x"][:config.batch_size]
  params, state = split_variables(as_model(model).init(jax.random.key(0), jnp.asarray(x)))
  params = {"student": params, "aux": {}}
  train_state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), model_state=state,
                           rng=jax.random.key_data(jax.random.key(1)))
  teacher_apply, teacher_vars = None, None
  if teacher is not None:  # freshly initialised: the weights do not change the time
    t_model = model_from_config({"name": teacher}, splits["num_classes"])
    teacher_vars = as_model(t_model).init(jax.random.key(2), jnp.asarray(x))
    teacher_apply = frozen_teacher_apply(t_model)
  step = make_train_chunk(model=model, objective=objective, tx=tx, teacher_apply=teacher_apply)
  idx = kd_data.batch_indices(len(splits["train"]["y"]), batch_size=config.batch_size,
                              start_step=0, num_steps=chunk, seed=0)
  batch = {"x": jnp.asarray(splits["train"]["x"][idx]), "y": jnp.asarray(splits["train"]["y"][idx])}
  train_state, m = step(train_state, batch, teacher_vars)  # compile
  jax.block_until_ready(m)
  times, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    train_state, m = step(train_state, batch, teacher_vars)
    jax.block_until_ready(m)
    times.append((time.perf_counter() - start) / chunk * 1e3)
    cpu.append((time.process_time() - start_cpu) / chunk * 1e3)
  # CPU time (all threads of this process) is less sensitive to other jobs than wall time.
  return {"median": float(np.median(times)), "min": float(np.min(times)),
          "max": float(np.max(times)), "cpu_ms_median": float(np.median(cpu)),
          "repeats": repeats, "steps_per_chunk": chunk, "batch_size": config.batch_size}


def train_seed(root, seed):
  """The three runs of one seed; their test accuracies in ``root/seed{seed}.json``."""
  accs = {}
  for name, path in RUNS.items():
    teacher = root / "teacher resnet14" / f"seed{seed}"
    extra = {"teacher.workdir": str(teacher)} if "KD" in name else {}
    summary = run(path, seed, root / name / f"seed{seed}", **extra)
    accs[name] = summary["test"]["accuracy"]
    print(f"seed {seed} {name}: {accs[name]:.4f} ({summary['wall_s']} s)", flush=True)
  (root / f"seed{seed}.json").write_text(json.dumps(accs))


def timing(root):
  """Step times, in ``root/timing.json``."""
  load_before = os.getloadavg()
  times = {"resnet14 (CE)": step_time_ms(RUNS["teacher resnet14"]),
           "resnet8 (CE)": step_time_ms(RUNS["resnet8 alone"]),
           "resnet8 <- resnet14 (KD, teacher in the step)": step_time_ms(
               RUNS["resnet8 <- resnet14 (Hinton KD, T=4, alpha=0.9)"],
               teacher="resnet14")}
  load_after = os.getloadavg()
  result = {"times": times, "load": [load_before[0], load_after[0]]}
  (root / "timing.json").write_text(json.dumps(result))
  return result


def report(root, seeds, resume=True):
  table = {}  # name -> {seed: summary} of the runs that finished
  for name in RUNS:
    for seed in range(seeds):
      path = root / name / f"seed{seed}" / "summary.json"
      if path.exists():
        table.setdefault(name, {})[seed] = json.loads(path.read_text())
  timing_path = root / "timing.json"
  measured = json.loads(timing_path.read_text()) if timing_path.exists() else None
  if measured is None and resume:  # a full report also measures; a partial one reports none
    measured = timing(root)
  times, (load_before, load_after) = ((measured["times"], measured["load"]) if measured
                                      else ("not measured", (float("nan"),) * 2))
  results = {
      "data": "scikit-learn digits as 8x8x1 images: 1,437 train / 360 test (seeded split 0)",
      "recipe": "Adam 1e-3, cosine decay over 200 steps, batch 100, one device; test "
                "accuracy of the final weights (BatchNorm running statistics, eval mode)",
      "seeds": list(range(seeds)),
      "test_accuracy": {name: {"seeds": sorted(runs),
                               "per_seed": [runs[k]["test"]["accuracy"] for k in sorted(runs)],
                               "mean": float(np.mean([r["test"]["accuracy"] for r in runs.values()])),
                               "std": float(np.std([r["test"]["accuracy"] for r in runs.values()])),
                               "nll_per_seed": [runs[k]["test"]["nll"] for k in sorted(runs)],
                               "nll_mean": float(np.mean([r["test"]["nll"] for r in runs.values()])),
                               "wall_s_per_run": [runs[k]["wall_s"] for k in sorted(runs)]}
                        for name, runs in table.items()},
      "not_finished": [name for name in RUNS if len(table.get(name, {})) < seeds],
      "resume": resume_check(root, 0) if resume else "not rerun here: see "
                "tests/test_model_state.py::test_resume_is_bit_identical_including_batch_stats",
      "step_time_ms": times,
      "conditions": {"machine": "shared 2-core CPU VM loaded by other jobs (load average "
                                f"{load_before:.1f} before timing, {load_after:.1f} "
                                "after): times are upper bounds, not quiet-machine numbers",
                     "jax": jax.__version__, "python": platform.python_version(),
                     "device": str(jax.devices()[0])},
  }
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "digits_resnet.json").write_text(json.dumps(results, indent=2) + "\n")
  print(json.dumps(results, indent=2))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", default="runs/digits_resnet")
  parser.add_argument("--seed", type=int, default=None, help="train this seed only")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--report", action="store_true", help="aggregate, resume check, timing")
  parser.add_argument("--timing", action="store_true", help="step times only")
  parser.add_argument("--no-resume", dest="resume", action="store_false")
  args = parser.parse_args()
  root = pathlib.Path(args.workdir)
  root.mkdir(parents=True, exist_ok=True)
  if args.seed is not None:
    train_seed(root, args.seed)
  if args.timing:
    timing(root)
  if args.report:
    report(root, args.seeds, resume=args.resume)
  if args.seed is None and not (args.report or args.timing):
    for seed in range(args.seeds):
      train_seed(root, seed)
    report(root, args.seeds)


if __name__ == "__main__":
  main()
