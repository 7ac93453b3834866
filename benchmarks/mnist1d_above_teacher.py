"""MNIST-1D: can the distilled MLP pass its CNN-ensemble teacher? Each lever's share, 3 seeds.

Levers on top of the baseline (``configs/mnist1d/kd_ensemble_to_mlp.py``: MLP 40-100-100-10,
Hinton KD T=4 alpha=1 from the five-CNN probability average fused at T=4, the 3,500 labelled
inputs + a 100,000-input generated pool, Adam 1e-2, 1,000 warmup + cosine over 40,000 steps,
batch 100):

* ``pool``: more never-repeated inputs: the pool plus 100,000 or 200,000 inputs of the fresh
  generator (:class:`kdjax.data.FreshMNIST1D`, stream seed 7 + seed); the limit of this lever
  is ``config.transfer.fresh`` (new inputs every step);
* ``members``: a stronger teacher, ten CNN members instead of five;
* ``long``: a longer schedule (80,000 steps).

Teacher members are ``kdjax train`` runs of ``configs/mnist1d/member_cnn.py`` (members 0-4
use the demo's seeds ``5 * seed + i``, members 5-9 seeds ``1000 + 10 * seed + i``) under
``--members`` (trained when missing, reused otherwise). The fused teacher targets of every
(seed, teacher, inputs) are computed once (``kdjax.training.teacher_log_probs``,
the trainer's own target function) and kept as ``.npy`` under ``--cache``; the students
are trained here by a minimal ``lax.scan`` loop with kdjax's MLP, ``make_optimizer`` and
``hinton_kd`` (the update of the trainer's cached-target step, without
``train_and_evaluate``'s checkpoints and evaluations), so that a 3-seed table fits a shared
2-core CPU. Writes ``benchmarks/results/mnist1d_above_teacher.{json,md}``.

  python benchmarks/mnist1d_above_teacher.py --members /tmp/kd_members --cache /tmp/kd_cache

References: Hinton et al. 2015 (arXiv:1503.02531); Greydanus 2020 (arXiv:2011.14439).
"""

import argparse
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data as kd_data
from kdjax import losses, metrics
from kdjax.configs import load_config
from kdjax.models import get_model

RESULTS = pathlib.Path(__file__).parent / "results"
KD_CONFIG = "mnist1d/kd_ensemble_to_mlp.py"


def member_dirs(root: pathlib.Path, seed: int, count: int) -> list[pathlib.Path]:
  """Trains (or reuses) ``count`` CNN members of one seed; returns their workdirs."""
  from kdjax.demo import run_stage

  dirs = []
  for i in range(count):
    d = root / f"seed{seed}" / f"cnn{i}"
    member_seed = 5 * seed + i if i < 5 else 1000 + 10 * seed + i
    run_stage(d.name, load_config("mnist1d/member_cnn.py", None,
                                  {"seed": member_seed, "progress_bar": False}), d)
    dirs.append(d)
  return dirs


def teacher_targets(dirs, x: np.ndarray, cache: pathlib.Path, key: str, config) -> np.ndarray:
  r"""Fused teacher log-probabilities of ``x`` (``prob`` fusion at ``fusion_temperature``
  :math:`\tau`, as the trainer caches them: :math:`\tau \log \bar p_\tau`).

  Members are evaluated in blocks of five (``kdjax.training.teacher_log_probs``),
  each block cached as ``cache/key_b<k>.npy``; equal blocks combine exactly,
  :math:`\bar p_\tau = \frac1K \sum_k \bar p_{\tau,k}`, so ten members reuse the first
  five's targets."""
  from kdjax.training import teacher_log_probs
  from kdjax.training._teacher import load_teacher_groups

  t = config.teacher.copy_and_resolve_references()
  if t.fusion != "prob" or t.weights or len(dirs) % 5:
    raise ValueError("blocks of five members with uniform prob fusion only")
  tau = t.fusion_temperature
  blocks = []
  for k in range(len(dirs) // 5):
    path = cache / f"{key}_b{k}.npy"
    if not path.exists():
      t.workdir = ",".join(str(d) for d in dirs[5 * k:5 * k + 5])
      groups = load_teacher_groups(t, num_classes=10, sample_x=x[:100])
      np.save(path, np.concatenate([
          np.asarray(teacher_log_probs(groups, x[i:i + 10_000], space="prob", temperature=tau))
          for i in range(0, len(x), 10_000)]))
    blocks.append(np.load(path).astype(np.float64) / tau)
  fused = np.log(np.mean(np.exp(np.stack(blocks)), axis=0))  # log of the mean probability
  return (tau * fused).astype(np.float32)


def train_student(x: np.ndarray, targets: np.ndarray, test: dict, *, seed: int, num_steps: int,
                  config) -> dict:
  """The trainer's cached-target KD: MLP, ``config.optimizer``, ``hinton_kd`` at
  ``config.losses.hinton_kd``; chunks of ``config.log_every`` steps in one ``lax.scan``."""
  from kdjax.training import make_optimizer

  start = time.time()
  kd = config.losses.hinton_kd
  model = get_model("mlp", num_classes=10, hidden=tuple(config.model.hidden))
  params = model.init(jax.random.key(seed), jnp.asarray(x[:1]))["params"]
  tx = make_optimizer(config.optimizer, num_steps)
  opt_state = tx.init(params)

  def loss_fn(p, xb, tb):
    s = model.apply({"params": p}, xb)
    return losses.hinton_kd(s, tb, None, temperature=kd.temperature, alpha=kd.alpha).mean()

  @jax.jit
  def chunk(params, opt_state, xs, ts):
    def step(carry, batch):
      p, o = carry
      loss, g = jax.value_and_grad(loss_fn)(p, *batch)
      updates, o = tx.update(g, o, p)
      return (jax.tree.map(jnp.add, p, updates), o), loss
    (params, opt_state), loss = jax.lax.scan(step, (params, opt_state), (xs, ts))
    return params, opt_state, loss.mean()

  every = config.log_every
  for s in range(0, num_steps, every):
    n = min(every, num_steps - s)
    idx = kd_data.batch_indices(len(x), batch_size=config.batch_size, start_step=s,
                                num_steps=n, seed=seed)
    params, opt_state, _ = chunk(params, opt_state, x[idx], targets[idx])
  logits = model.apply({"params": params}, jnp.asarray(test["x"]))
  return {"accuracy": 100 * float(metrics.accuracy(logits, test["y"])),
          "wall_s": time.time() - start, "load": os.getloadavg()[0]}


LEVERS = {  # name -> (members, fresh inputs added to the pool, steps: None = the config's)
    "baseline: 5 CNNs, 100k pool": (5, 0, None),
    "5 CNNs, 100k pool + 100k fresh inputs": (5, 100_000, None),
    "10 CNNs, 100k pool": (10, 0, None),
    "10 CNNs, 100k pool + 100k fresh inputs": (10, 100_000, None),
    "10 CNNs, 100k pool + 100k fresh inputs, long schedule": (10, 100_000, 80_000),
    "10 CNNs, 100k pool + 200k fresh inputs, long schedule": (10, 200_000, 80_000),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--members", default="runs/above_teacher/members")
  parser.add_argument("--cache", default="runs/above_teacher/cache")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--seed", type=int, default=-1, help=">= 0: only this seed (one per process)")
  parser.add_argument("--levers", default=",".join(str(i) for i in range(len(LEVERS))),
                      help="indices into LEVERS")
  parser.add_argument("--num_steps", type=int, default=0, help="0: the config's")
  parser.add_argument("--out", default="mnist1d_above_teacher")
  parser.add_argument("--merge", default="",
                      help="comma-separated result files (of runs with --out) to merge into --out")
  args = parser.parse_args()
  if args.merge:
    return merge(args.merge.split(","), args.out, pathlib.Path(args.members))
  cache = pathlib.Path(args.cache)
  cache.mkdir(parents=True, exist_ok=True)
  config = load_config(KD_CONFIG)
  chosen = [list(LEVERS)[int(i)] for i in args.levers.split(",")]
  if args.num_steps:
    config.num_steps = args.num_steps
  out_json = RESULTS / f"{args.out}.json"
  results = json.loads(out_json.read_text()) if out_json.exists() else {}
  results.setdefault("rows", {})
  results["teachers"] = results.get("teachers", {})
  for seed in (range(args.seeds) if args.seed < 0 else [args.seed]):
    splits = kd_data.load_dataset("mnist1d", val_size=config.data.val_size)
    pool = np.concatenate([splits["train"]["x"], kd_data.load_mnist1d_transfer(
        num_samples=config.transfer.num_samples, seed=config.transfer.seed)["x"]])
    for name in chosen:
      count, extra, steps = LEVERS[name]
      dirs = member_dirs(pathlib.Path(args.members), seed, count)
      tag = f"s{seed}"
      x, t = pool, teacher_targets(dirs, pool, cache, f"{tag}_pool", config)
      stream = kd_data.FreshMNIST1D(7 + seed, 1000)
      for start in range(0, extra, 100_000):  # fresh inputs in blocks of 100,000
        block = stream.chunk(start // 1000, 100).reshape(-1, 40)
        x = np.concatenate([x, block])
        t = np.concatenate([t, teacher_targets(dirs, block, cache, f"{tag}_fresh{start}",
                                               config)])
      test_t = teacher_targets(dirs, splits["test"]["x"], cache, f"{tag}_test", config)
      results["teachers"].setdefault(f"{count} CNNs", {})[str(seed)] = 100 * float(
          metrics.accuracy(test_t, splits["test"]["y"]))
      steps = steps or config.num_steps
      r = train_student(x, t, splits["test"], seed=seed, num_steps=steps, config=config)
      r.update(steps=steps, inputs=len(x), members=count)
      results["rows"].setdefault(name, {})[str(seed)] = r
      print(f"seed {seed} {name}: {r}", flush=True)
      out_json.write_text(json.dumps(results, indent=2))
  write_table(results, args.out)


def input_costs(members: pathlib.Path, repeats: int = 20) -> dict:
  """Host cost of fresh inputs per step of 100: generating them (:class:`FreshMNIST1D`) and
  the five-CNN teacher's targets for them (one compiled program, batches of 1,000), in ms,
  with the load."""
  from kdjax.training._teacher import load_teacher_groups
  from kdjax.training._teacher_cache import targets_program

  stream = kd_data.FreshMNIST1D(0, 100)
  stream.batch(0)  # templates and standardisation constants, once
  start = time.perf_counter()
  for s in range(repeats):
    stream.batch(s)
  gen = (time.perf_counter() - start) / repeats
  t = load_config(KD_CONFIG).teacher
  t.workdir = ",".join(str(d) for d in member_dirs(members, 0, 5))
  x = jnp.asarray(kd_data.FreshMNIST1D(0, 1000).batch(0))
  groups = load_teacher_groups(t, num_classes=10, sample_x=x[:100])
  run, variables, _ = targets_program(groups, mesh=jax.sharding.Mesh(jax.devices()[:1], ("data",)),
                                      temperature=t.fusion_temperature)
  run(variables, x).block_until_ready()  # compile
  start = time.perf_counter()
  for _ in range(5):
    run(variables, x).block_until_ready()
  teach = (time.perf_counter() - start) / 5 / 10
  return {"generate_ms_per_100": 1e3 * gen, "teacher5_ms_per_100": 1e3 * teach,
          "load": os.getloadavg()[0]}


def merge(paths: list[str], out: str, members: pathlib.Path) -> None:
  """Merges the rows and teachers of result files (one per process) into ``out``."""
  results = {"rows": {}, "teachers": {}}
  for path in paths:
    part = json.loads(pathlib.Path(path).read_text())
    for group in ("rows", "teachers"):
      for name, per_seed in part[group].items():
        results[group].setdefault(name, {}).update(per_seed)
  results["rows"] = {k: results["rows"][k] for k in LEVERS if k in results["rows"]}
  results["input_costs"] = input_costs(members)
  (RESULTS / f"{out}.json").write_text(json.dumps(results, indent=2))
  write_table(results, out)


def write_table(results: dict, out: str) -> None:
  lines = ["| run | student test accuracy (%) | seeds | steps | inputs | wall s / run | load |",
           "|---|---|---|---|---|---|---|"]
  for name, per_seed in results["rows"].items():
    acc = np.array([r["accuracy"] for r in per_seed.values()])
    r0 = next(iter(per_seed.values()))
    lines.append(f"| {name} | {acc.mean():.1f} +- {acc.std():.1f} | {len(acc)} | {r0['steps']:,} | "
                 f"{r0['inputs']:,} | {np.mean([r['wall_s'] for r in per_seed.values()]):.0f} | "
                 f"{np.mean([r['load'] for r in per_seed.values()]):.0f} |")
  if "input_costs" in results:
    c = results["input_costs"]
    lines += ["", f"Fresh inputs, host cost per step of 100 (load {c['load']:.0f}): generating "
              f"{c['generate_ms_per_100']:.1f} ms, the five-CNN teacher's targets "
              f"{c['teacher5_ms_per_100']:.1f} ms."]
  lines += ["", "| teacher | test accuracy (%) | seeds |", "|---|---|---|"]
  for name, per_seed in results["teachers"].items():
    acc = np.array(list(per_seed.values()))
    lines.append(f"| {name}, probability average at T=4 | {acc.mean():.1f} +- {acc.std():.1f} | "
                 f"{len(acc)} |")
  (RESULTS / f"{out}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
