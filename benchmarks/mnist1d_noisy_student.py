"""MNIST-1D: Noisy-Student members as the teacher of the distilled MLP (one lever of
benchmarks/mnist1d_above_teacher.py, in its own file).

Noisy Student (Xie et al. 2020) re-trains the teacher's members on the unlabelled pool
labelled by the teacher, with noise on the learner. Here: the fifteen-CNN teacher of
``mnist1d_above_teacher.py`` (probability average at T=4) labels the 100,000-input pool
(argmax; the 3,500 labelled inputs keep their true labels); ``--members`` new CNN1D members
(``configs/mnist1d/member_cnn.py``'s model and Adam 1e-2, with a cosine decay) train
``--member_steps`` steps on those labels with Gaussian input noise of std ``--noise``:

.. math::
  \\min_\\theta \\; \\mathbb{E}_{(x, \\hat y)}\\, \\mathrm{CE}\\big(f_\\theta(x + \\sigma
  \\epsilon), \\hat y\\big), \\qquad \\hat y = \\arg\\max_c \\bar p_{4}(c \\mid x)

Their probability average at T=4 then teaches the MLP exactly as the round-2 rows do
(100,000 fresh inputs added, KD at T=2, 80,000 steps); compare the row
"5 CNNs, 100k pool + 100k fresh inputs, long schedule, T=2" (the original five members).
Writes ``benchmarks/results/mnist1d_noisy_student.{json,md}``.

  python benchmarks/mnist1d_noisy_student.py --members_root /tmp/kd_members --cache /tmp/kd_cache

References: Xie, Luong, Hovy & Le, "Self-training with Noisy Student improves ImageNet
classification", CVPR 2020 (arXiv:1911.04252).
"""

import argparse
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mnist1d_above_teacher as above
from kdjax import data as kd_data
from kdjax.config import load_config
from kdjax.models import get_model

ROW = "Noisy Student: {m} CNNs re-trained on the 15-CNN pool labels, + 100k fresh, long schedule, T=2"


def train_member(x: np.ndarray, y: np.ndarray, *, seed: int, steps: int, noise: float,
                 batch_size: int = 100, learning_rate: float = 1e-2):
  """One CNN1D on ``(x [N, 40], y [N])`` with input noise; returns its ``apply(x) -> logits``."""
  model = get_model("cnn1d", num_classes=10)
  params = model.init(jax.random.key(seed), jnp.asarray(x[:1]))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  opt_state = tx.init(params)

  def loss_fn(p, xb, yb, key):
    logits = model.apply({"params": p}, xb + noise * jax.random.normal(key, xb.shape))
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  @jax.jit
  def chunk(params, opt_state, xs, ys, keys):
    def step(carry, batch):
      p, o = carry
      g = jax.grad(loss_fn)(p, *batch)
      updates, o = tx.update(g, o, p)
      return (optax.apply_updates(p, updates), o), None
    return jax.lax.scan(step, (params, opt_state), (xs, ys, keys))[0]

  every = 1000
  for s in range(0, steps, every):
    n = min(every, steps - s)
    idx = kd_data.batch_indices(len(x), batch_size=batch_size, start_step=s, num_steps=n,
                                seed=seed)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), s), n)
    params, opt_state = chunk(params, opt_state, x[idx], y[idx], keys)
  apply = jax.jit(lambda xb: model.apply({"params": params}, xb))
  return lambda xs: np.concatenate([np.asarray(apply(jnp.asarray(xs[i:i + 10_000])))
                                    for i in range(0, len(xs), 10_000)])


def fuse(member_logits: list[np.ndarray], tau: float) -> np.ndarray:
  r""":math:`\tau \log \frac1M \sum_m \mathrm{softmax}(z_m / \tau)`, as the trainer caches it."""
  z = np.stack(member_logits).astype(np.float64) / tau
  log_p = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(
      -1, keepdims=True)
  return (tau * np.log(np.mean(np.exp(log_p), axis=0))).astype(np.float32)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--members_root", default="runs/above_teacher/members")
  parser.add_argument("--cache", default="runs/above_teacher/cache")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--members", type=int, default=5)
  parser.add_argument("--member_steps", type=int, default=10_000)
  parser.add_argument("--noise", type=float, default=0.1)
  args = parser.parse_args()
  config = load_config(above.KD_CONFIG)
  lever = above.LEVERS["5 CNNs, 100k pool + 100k fresh inputs, long schedule, T=2"]
  row_config = above.lever_config(config, lever)
  tau = config.teacher.fusion_temperature
  out = above.RESULTS / "mnist1d_noisy_student.json"
  results = json.loads(out.read_text()) if out.exists() else {"rows": {}, "teachers": {}}
  cache = pathlib.Path(args.cache)
  for seed in map(int, args.seeds.split(",")):
    splits = kd_data.load_dataset("mnist1d", val_size=config.data.val_size)
    pool = np.concatenate([splits["train"]["x"], kd_data.load_mnist1d_transfer(
        num_samples=config.transfer.num_samples, seed=config.transfer.seed)["x"]])
    dirs15 = above.member_dirs(pathlib.Path(args.members_root), seed, 15)
    n_lab = len(splits["train"]["y"])
    pseudo = above.teacher_targets(dirs15, pool, cache, f"s{seed}_pool", config).argmax(-1)
    pseudo[:n_lab] = splits["train"]["y"]  # the labelled inputs keep their true labels
    fresh = kd_data.FreshMNIST1D(7 + seed, 1000).chunk(0, 100).reshape(-1, 40)
    heldout_x, heldout_y = above.heldout_set()
    pkg = kd_data.load_mnist1d_transfer(num_samples=above.HELDOUT_SIZE,
                                        seed=above.HELDOUT_PKG_SEED)
    sets = {"train": np.concatenate([pool, fresh]), "test": splits["test"]["x"],
            "heldout": heldout_x, "heldout_pkg": pkg["x"]}
    start = time.time()
    logits = {k: [] for k in sets}
    for i in range(args.members):
      apply = train_member(pool, pseudo.astype(np.int32), seed=3000 + 10 * seed + i,
                           steps=args.member_steps, noise=args.noise)
      for k, xs in sets.items():
        logits[k].append(apply(xs))
    member_s = time.time() - start
    t = {k: fuse(v, tau) for k, v in logits.items()}
    labels = {"test": splits["test"]["y"], "heldout": heldout_y, "heldout_pkg": pkg["oracle_y"]}
    name = f"{args.members} Noisy-Student CNNs"
    for k, y in labels.items():
      results["teachers"].setdefault(f"{name} {k}", {})[str(seed)] = 100 * float(
          np.mean(t[k].argmax(-1) == y))
    evals = {k: {"x": sets[k], "y": y, "teacher": t[k]} for k, y in labels.items()}
    r = above.train_student(sets["train"], t["train"], evals, seed=seed,
                            num_steps=row_config.num_steps, config=row_config)
    r.update(steps=row_config.num_steps, inputs=len(sets["train"]), members=args.members,
             member_steps=args.member_steps, noise=args.noise, members_wall_s=member_s)
    results["rows"].setdefault(ROW.format(m=args.members), {})[str(seed)] = r
    print(f"seed {seed}: {r}", flush=True)
    out.write_text(json.dumps(results, indent=2))
  write_table(results)


def write_table(results: dict) -> None:
  lines = ["| run | student test (%) | seeds | held-out, fresh generator (%) | held-out, package "
           "generator (%) | member steps | noise | members' wall s | load |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name, per_seed in results["rows"].items():
    runs = list(per_seed.values())
    ms = above._mean_std
    lines.append(f"| {name} | {ms([r['accuracy'] for r in runs])} | {','.join(per_seed)} | "
                 f"{ms([r['heldout_accuracy'] for r in runs])} | "
                 f"{ms([r['heldout_pkg_accuracy'] for r in runs])} | {runs[0]['member_steps']:,} | "
                 f"{runs[0]['noise']} | {np.mean([r['members_wall_s'] for r in runs]):.0f} | "
                 f"{np.mean([r['load'] for r in runs]):.0f} |")
  lines += ["", "| teacher (probability average at T=4) on | accuracy (%) | seeds |", "|---|---|---|"]
  for name, per_seed in results["teachers"].items():
    lines.append(f"| {name} | {above._mean_std(list(per_seed.values()))} | {','.join(per_seed)} |")
  (above.RESULTS / "mnist1d_noisy_student.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines), flush=True)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
