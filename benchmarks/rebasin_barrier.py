"""Git re-basin on MNIST-1D: the loss barrier between two MLPs trained from different seeds,
along the linear path, naive vs after permutation alignment (kdjax.fusion.permutation_align).

  python benchmarks/rebasin_barrier.py [--pairs 3] [--steps 6000] [--workdir /tmp/kdjax_rebasin]

Each pair trains configs/mnist1d/mlp.py with seeds 2i and 2i + 1. On the test split, at
alpha = 0, 0.1, ..., 1: accuracy and NLL of (1 - alpha) theta_A + alpha theta_B (naive) and of
(1 - alpha) theta_A + alpha pi(theta_B) (aligned). Barrier = max over 0 < alpha < 1 of
NLL(alpha) - ((1 - alpha) NLL(0) + alpha NLL(1)) (negative: the path lies below the chord). Writes benchmarks/results/rebasin_barrier.json,
.md and .png.
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


def path_scores(model, a, b, x, y):
  apply = jax.jit(lambda p: model.apply({"params": p}, x))
  acc, nll = [], []
  for alpha in ALPHAS:
    logits = apply(jax.tree.map(lambda u, v: (1 - alpha) * u + alpha * v, a, b))
    acc.append(float(metrics.accuracy(logits, y)))
    nll.append(float(metrics.nll(logits, y)))
  # Over the interior points: negative when the whole path lies below the chord.
  barrier = max(n - ((1 - t) * nll[0] + t * nll[-1])
                for t, n in zip(ALPHAS[1:-1], nll[1:-1]))
  return {"accuracy": acc, "nll": nll, "barrier_nll": float(barrier),
          "midpoint_accuracy": acc[len(ALPHAS) // 2]}


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--pairs", type=int, default=3)
  parser.add_argument("--steps", type=int, default=6000)
  parser.add_argument("--workdir", default="/tmp/kdjax_rebasin")
  parser.add_argument("--out-dir", default=_bench.RESULTS_DIR)
  args = parser.parse_args(argv)
  shutil.rmtree(args.workdir, ignore_errors=True)
  test = data.load_mnist1d()["test"]
  x, y = np.asarray(test["x"]), np.asarray(test["y"])
  results = []
  for i in range(args.pairs):
    runs = []
    for seed in (2 * i, 2 * i + 1):
      workdir = os.path.join(args.workdir, f"mlp_seed{seed}")
      train_and_evaluate(load_config("mnist1d/mlp.py", None, {
          "seed": seed, "num_steps": args.steps, "progress_bar": False}), workdir)
      runs.append(load_run(workdir))
    (model, va, _), (_, vb, _) = runs
    a, b = va["params"], vb["params"]
    aligned = fusion.permutation_align(a, b, fusion.permutation_spec(model))
    row = {"seeds": [2 * i, 2 * i + 1], "naive": path_scores(model, a, b, x, y),
           "aligned": path_scores(model, a, aligned, x, y)}
    results.append(row)
    print(f"pair {i}: barrier naive {row['naive']['barrier_nll']:.3f}, aligned "
          f"{row['aligned']['barrier_nll']:.3f}; midpoint accuracy naive "
          f"{row['naive']['midpoint_accuracy']:.3f}, aligned "
          f"{row['aligned']['midpoint_accuracy']:.3f}", flush=True)

  def stat(kind, key):
    v = [r[kind][key] for r in results]
    return f"{np.mean(v):.3f} +- {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f}"

  ends = [r["naive"]["accuracy"][0] for r in results] + [r["naive"]["accuracy"][-1] for r in results]
  rows = [[kind, stat(kind, "barrier_nll"), stat(kind, "midpoint_accuracy"),
           f"{np.mean(ends):.3f}"] for kind in ("naive", "aligned")]
  meta = _bench.machine_meta(pairs=args.pairs, steps=args.steps)
  table = (f"MNIST-1D MLP 40-100-100-10, {args.pairs} pairs of seeds, {args.steps} steps; "
           f"{_bench.meta_line(meta)}\n\n" + _bench.markdown_table(
               ["linear path", "loss barrier (test NLL), mean +- std",
                "accuracy at alpha = 0.5", "endpoint accuracy (mean)"], rows))

  def plot(ax):
    for r in results:
      ax.plot(ALPHAS, r["naive"]["accuracy"], color="tab:red", alpha=0.7)
      ax.plot(ALPHAS, r["aligned"]["accuracy"], color="tab:blue", alpha=0.7)
    ax.plot([], [], color="tab:red", label="naive")
    ax.plot([], [], color="tab:blue", label="aligned (weight matching)")
    ax.set(xlabel="alpha (model A -> model B)", ylabel="test accuracy",
           title="MNIST-1D MLPs from different seeds: linear interpolation")
    ax.legend()
    ax.grid(alpha=0.3)

  _bench.write_outputs("rebasin_barrier", {"meta": meta, "alphas": ALPHAS.tolist(),
                                           "pairs": results}, table, out_dir=args.out_dir,
                       plot=plot)


if __name__ == "__main__":
  main()
