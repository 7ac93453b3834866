"""Multi-task model merging on MNIST-1D (a FusionBench-style table): one base MLP, fine-tuned
into five task models (task k: MNIST-1D under input corruption k), merged by every
kdjax.fusion method.

  python benchmarks/merge_multitask.py [--seeds 0,1,2]

Per seed: the MLP 40-100-100-10 trained on the 3,500 clean training examples (2,000 Adam steps),
then fine-tuned on each task's corrupted training examples (500 steps). Corruptions: the
signal reversed in time, negated, circularly shifted by 10, plus Gaussian noise (sigma 0.5),
and scaled by 3. A task is scored by 10-way accuracy on its corrupted test examples. Each
method's hyperparameters are chosen on the 500 validation examples (mean task accuracy),
never on test. The individual fine-tuned models are the ceiling (task k's model on task k).
Writes benchmarks/results/merge_multitask.json / .md.
"""

import argparse
import itertools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
import _bench  # noqa: E402

from kdjax import data, ensemble, fusion  # noqa: E402
from kdjax.models import MLP  # noqa: E402

TASKS = {"reversed": lambda x: x[:, ::-1], "negated": lambda x: -x,
         "shifted": lambda x: np.roll(x, 10, axis=1),
         "noisy": lambda x: x + 0.5 * np.random.default_rng(7).normal(size=x.shape).astype(x.dtype),
         "scaled": lambda x: 3 * x}
MODEL = MLP(hidden=(100, 100))


def train(params, x, y, steps, lr, seed):
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(p, o, xb, yb):
    def loss(p):
      logits = MODEL.apply({"params": p}, xb)
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))
    g = jax.grad(loss)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(x), 100)
    params, opt = step(params, opt, x[idx], y[idx])
  return params


def corrupt(split) -> list[dict]:
  return [{"x": np.ascontiguousarray(f(split["x"])), "y": split["y"]} for f in TASKS.values()]


def task_scores(params, tasks) -> list[float]:
  apply = jax.jit(lambda p, x: MODEL.apply({"params": p}, x))
  return [float(np.mean(np.argmax(np.asarray(apply(params, t["x"])), -1) == t["y"]))
          for t in tasks]


def methods(base, stacked, task_data, seed):
  """``{name: [(hyperparameters, merged params), ...]}``: each method's grid."""
  apply = lambda p, x: MODEL.apply({"params": p}, x)  # noqa: E731
  members = ensemble.unstack(stacked)
  batches = [[{"x": d["x"][i:i + 100], "y": d["y"][i:i + 100]} for i in range(0, len(d["x"]), 100)]
             for d in task_data]
  fishers = ensemble.stack([fusion.diagonal_fisher(apply, m, b, key=jax.random.key(seed + i))
                            for i, (m, b) in enumerate(zip(members, batches))])
  grams = ensemble.stack([fusion.input_grams(apply, m, b) for m, b in zip(members, batches)])
  scales = (0.3, 0.5, 0.7, 1.0)
  return {
      "average (uniform soup)": [({}, fusion.uniform_soup(stacked))],
      "task arithmetic": [({"scale": s}, fusion.task_arithmetic(base, stacked, scale=s))
                          for s in scales],
      "TIES": [({"density": d, "scale": s}, fusion.ties_merge(base, stacked, density=d, scale=s))
               for d, s in itertools.product((0.2, 0.5), (0.5, 1.0, 1.5))],
      "DARE + task arithmetic": [
          ({"density": d, "scale": s},
           fusion.dare(base, stacked, density=d, scale=s, key=jax.random.key(seed)))
          for d, s in itertools.product((0.3, 0.5), scales)],
      "DARE + TIES": [
          ({"density": d, "scale": s},
           fusion.dare(base, stacked, density=d, scale=s, key=jax.random.key(seed), combine="ties"))
          for d, s in itertools.product((0.3, 0.5), (0.5, 1.0, 1.5))],
      "Fisher": [({}, fusion.fisher_merge(stacked, fishers))],
      "RegMean": [({"alpha": a}, fusion.regmean(stacked, grams, alpha=a)) for a in (0.5, 0.9)],
      "model stock": [({}, fusion.model_stock(base, stacked))],
  }


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", default="0,1,2")
  args = parser.parse_args(argv)
  splits = data.load_mnist1d()
  tr, test = splits["train"], splits["test"]
  train_s = {k: v[:3500] for k, v in tr.items()}
  val = {k: v[3500:] for k, v in tr.items()}
  per_seed = []
  for seed in (int(s) for s in args.seeds.split(",")):
    init = MODEL.init(jax.random.key(seed), train_s["x"][:1])["params"]
    base = train(init, train_s["x"], train_s["y"], 2000, 1e-3, seed)
    task_data, val_tasks, test_tasks = corrupt(train_s), corrupt(val), corrupt(test)
    tuned = [train(base, d["x"], d["y"], 500, 1e-3, seed + 1 + i) for i, d in enumerate(task_data)]
    stacked = ensemble.stack(tuned)
    rows = {"base": {"hyper": {}, "test": task_scores(base, test_tasks)},
            "individual (ceiling)": {"hyper": {}, "test": [task_scores(m, test_tasks)[i]
                                                           for i, m in enumerate(tuned)]}}
    for name, grid in methods(base, stacked, task_data, seed).items():
      best = max(grid, key=lambda hp: np.mean(task_scores(hp[1], val_tasks)))
      rows[name] = {"hyper": best[0], "test": task_scores(best[1], test_tasks)}
    per_seed.append({"seed": seed, "rows": rows})
    print(seed, {k: round(float(np.mean(v["test"])), 3) for k, v in rows.items()}, flush=True)

  names = list(per_seed[0]["rows"])
  table_rows = []
  for name in names:
    tests = np.array([s["rows"][name]["test"] for s in per_seed])  # [seeds, tasks]
    avg = tests.mean(1)
    cells = [f"{tests[:, k].mean():.3f}" for k in range(len(TASKS))]
    table_rows.append([name, *cells, f"{avg.mean():.3f} +- {avg.std(ddof=1) if len(avg) > 1 else 0:.3f}",
                       "; ".join(str(s["rows"][name]["hyper"]) for s in per_seed)])
  meta = _bench.machine_meta(seeds=args.seeds)
  table = ("MNIST-1D under 5 input corruptions, MLP 40-100-100-10, test accuracy "
           f"(mean over seeds {args.seeds}); {_bench.meta_line(meta)}\n\n"
           + _bench.markdown_table(["method", *TASKS, "average (mean +- std over seeds)",
                                    "chosen on val (per seed)"], table_rows))
  _bench.write_outputs("merge_multitask", {"meta": meta, "seeds": per_seed}, table)


if __name__ == "__main__":
  main()
