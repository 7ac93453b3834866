"""Git re-basin: the loss barrier between two networks trained from different seeds, along
the linear path, naive vs after permutation alignment (kdjax.fusion.permutation_align), and
for BatchNorm ResNets vs aligned + REPAIR (kdjax.fusion.repair_batch_norm).

  python benchmarks/rebasin_barrier.py [--pairs 3] [--studies mlp,cnn,resnet8_digits]

Studies (each pair trains the config with seeds 2i and 2i + 1):
* ``mlp``: configs/mnist1d/mlp.py (MLP 40-100-100-10, 6,000 steps), MNIST-1D test split;
* ``cnn``: configs/mnist1d/teacher_cnn.py (CNN1D 25-25-25, 6,000 steps), MNIST-1D test split;
* ``resnet8_digits``: configs/digits/student_resnet8.py (resnet8 with BatchNorm, 200 steps),
  digits test split. The path interpolates params and running statistics alike (as a soup
  does); "+ REPAIR" re-estimates the statistics at each alpha on the training split (REPAIR's
  BatchNorm case, "resetting BatchNorm").
At alpha = 0, 0.1, ..., 1: accuracy and NLL of (1 - alpha) theta_A + alpha theta_B (naive)
and of (1 - alpha) theta_A + alpha pi(theta_B) (aligned). Barrier = max over 0 < alpha < 1 of
NLL(alpha) - ((1 - alpha) NLL(0) + alpha NLL(1)) (negative: the path lies below the chord).
Writes benchmarks/results/rebasin_barrier.json, .md and .png.
"""

import argparse
import os
import shutil
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import _bench  # noqa: E402

from kdjax import data, fusion, metrics  # noqa: E402
from kdjax.config import load_config  # noqa: E402
from kdjax.training import load_run, train_and_evaluate  # noqa: E402

ALPHAS = np.linspace(0, 1, 11)
STUDIES = {  # name: (config, description, dataset)
    "mlp": ("mnist1d/mlp.py", "MNIST-1D MLP 40-100-100-10", "mnist1d"),
    "cnn": ("mnist1d/teacher_cnn.py", "MNIST-1D CNN1D 25-25-25", "mnist1d"),
    "resnet8_digits": ("digits/student_resnet8.py", "digits 8x8 resnet8 (BatchNorm)", "digits"),
}
COLORS = {"naive": "tab:red", "aligned": "tab:blue", "naive + REPAIR": "tab:orange",
          "aligned + REPAIR": "tab:green"}


def path_scores(model, a, b, x, y, repair_batches=None):
  """Scores along ``(1 - alpha) a + alpha b`` for full variables ``a``, ``b``."""
  apply = jax.jit(lambda v: model.apply(v, x))
  acc, nll = [], []
  for alpha in ALPHAS:
    v = jax.tree.map(lambda u, w: (1 - alpha) * u + alpha * w, a, b)
    if repair_batches is not None:
      v = fusion.repair_batch_norm(model, v, repair_batches)
    logits = apply(v)
    acc.append(float(metrics.accuracy(logits, y)))
    nll.append(float(metrics.nll(logits, y)))
  # Over the interior points: negative when the whole path lies below the chord.
  barrier = max(n - ((1 - t) * nll[0] + t * nll[-1])
                for t, n in zip(ALPHAS[1:-1], nll[1:-1]))
  return {"accuracy": acc, "nll": nll, "barrier_nll": float(barrier),
          "midpoint_accuracy": acc[len(ALPHAS) // 2]}


def run_study(name, pairs, workdir, steps=None):
  config_file, _, dataset = STUDIES[name]
  splits = data.load_dataset(dataset, **({"image_shape": (8, 8, 1)} if dataset == "digits"
                                          else {}))
  x, y = np.asarray(splits["test"]["x"]), np.asarray(splits["test"]["y"])
  train_x = np.asarray(splits["train"]["x"])
  repair_batches = [{"x": train_x[i:i + 256]} for i in range(0, len(train_x), 256)]
  results = []
  for i in range(pairs):
    runs = []
    for seed in (2 * i, 2 * i + 1):
      run_dir = os.path.join(workdir, f"{name}_seed{seed}")
      overrides = {"seed": seed, "progress_bar": False}
      if steps:
        overrides["num_steps"] = steps
      train_and_evaluate(load_config(config_file, None, overrides), run_dir)
      runs.append(load_run(run_dir))
    (model, va, _), (_, vb, _) = runs
    keep = lambda v: {c: t for c, t in v.items() if c in ("params", "batch_stats")}  # noqa: E731
    va, vb = keep(va), keep(vb)
    aligned = fusion.permutation_align(va, vb, fusion.permutation_spec(model))
    if "batch_stats" not in va:
      aligned = {"params": aligned} if "params" not in aligned else aligned
    row = {"seeds": [2 * i, 2 * i + 1], "naive": path_scores(model, va, vb, x, y),
           "aligned": path_scores(model, va, aligned, x, y)}
    if "batch_stats" in va:
      row["naive + REPAIR"] = path_scores(model, va, vb, x, y, repair_batches)
      row["aligned + REPAIR"] = path_scores(model, va, aligned, x, y, repair_batches)
    results.append(row)
    print(name, f"pair {i}:", {k: (round(v["barrier_nll"], 3), round(v["midpoint_accuracy"], 3))
                               for k, v in row.items() if k != "seeds"}, flush=True)
  return results


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--pairs", type=int, default=3)
  parser.add_argument("--studies", default=",".join(STUDIES))
  parser.add_argument("--steps", type=int, default=0, help="override every config's steps")
  parser.add_argument("--workdir", default="/tmp/kdjax_rebasin")
  parser.add_argument("--out-dir", default=_bench.RESULTS_DIR)
  args = parser.parse_args(argv)
  shutil.rmtree(args.workdir, ignore_errors=True)
  studies = {name: run_study(name, args.pairs, args.workdir, args.steps)
             for name in args.studies.split(",")}

  def stat(results, kind, key):
    v = [r[kind][key] for r in results]
    return f"{np.mean(v):.3f} +- {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f}"

  rows = []
  for name, results in studies.items():
    ends = [r["naive"]["accuracy"][k] for r in results for k in (0, -1)]
    kinds = [k for k in results[0] if k != "seeds"]
    steps = args.steps or load_config(STUDIES[name][0]).num_steps
    rows += [[f"{STUDIES[name][1]}, {steps:,} steps", kind, stat(results, kind, "barrier_nll"),
              stat(results, kind, "midpoint_accuracy"), f"{np.mean(ends):.3f}"]
             for kind in kinds]
  meta = _bench.machine_meta(pairs=args.pairs, steps=args.steps or "config")
  table = (f"Linear paths between networks from different seeds, {args.pairs} pairs of seeds "
           f"each; {_bench.meta_line(meta)}\n\n" + _bench.markdown_table(
               ["networks", "linear path", "loss barrier (test NLL), mean +- std",
                "accuracy at alpha = 0.5", "endpoint accuracy (mean)"], rows))

  def plot(axes):
    for ax, (name, results) in zip(np.atleast_1d(axes), studies.items()):
      for r in results:
        for kind in COLORS:
          if kind in r:
            ax.plot(ALPHAS, r[kind]["accuracy"], color=COLORS[kind], alpha=0.7)
      for kind, color in COLORS.items():
        if kind in results[0]:
          ax.plot([], [], color=color, label=kind)
      ax.set(xlabel="alpha (model A -> model B)", ylabel="test accuracy",
             title=STUDIES[name][1])
      ax.legend()
      ax.grid(alpha=0.3)

  _bench.write_outputs("rebasin_barrier", {"meta": meta, "alphas": ALPHAS.tolist(),
                                           "studies": studies}, table, out_dir=args.out_dir,
                       plot=plot, ncols=len(studies))


if __name__ == "__main__":
  main()
