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

Second round (rows 6-): fifteen members (members 10-14 seeds ``1000 + 10 * seed + i``), the
student's KD temperature (2 or 1 on the targets still fused at T=4), 160,000 steps, batch
200 or 500, Adam 3e-3, and a cross-entropy on the 3,500 labelled inputs' true labels added
to the KD loss (:func:`kd_label_loss`). Each run also reports the
student's accuracy on two 20,000-input held-out sets with true classes, one from the fresh
generator and one from the package's ``make_dataset`` (the generator of the pool and the
test set), and its argmax agreement with the teacher: the 1,000 test inputs alone give
differences of a few tenths that are noise (binomial standard error about 0.7 points).

Teacher members are ``kdjax train`` runs of ``configs/mnist1d/member_cnn.py`` (members 0-4
use the demo's seeds ``5 * seed + i``, members 5-9 seeds ``1000 + 10 * seed + i``) under
``--members`` (trained when missing, reused otherwise). The fused teacher targets of every
(seed, teacher, inputs) are computed once (``kdjax.training.teacher_targets``,
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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data as kd_data
from kdjax import losses, metrics
from kdjax.config import load_config
from kdjax.models import get_model

RESULTS = pathlib.Path(__file__).parent / "results"
KD_CONFIG = "mnist1d/kd_ensemble_to_mlp.py"
# Held-out generated inputs with their true classes: a 20x larger, less noisy view of
# generalisation than the 1,000 test inputs (never trained on): "heldout" from the fresh
# generator (FreshMNIST1D, stream seed 99), "heldout_pkg" from the package's make_dataset
# (load_mnist1d_transfer seed 3), the generator of the pool and of the test set.
HELDOUT_SEED, HELDOUT_SIZE, HELDOUT_PKG_SEED = 99, 20_000, 3


class Lever(NamedTuple):
  """One row: the teacher's member count, fresh inputs added to the pool, student steps
  (``None``: the config's), and student overrides (``None``: the config's): the weight of
  a cross-entropy term on the labelled inputs' true labels (the pool's inputs have none),
  the KD temperature, Adam's peak learning rate and the batch size."""
  members: int
  extra: int
  steps: int | None = None
  label_weight: float = 0.0
  temperature: float | None = None
  learning_rate: float | None = None
  batch_size: int | None = None


def member_dirs(root: pathlib.Path, seed: int, count: int) -> list[pathlib.Path]:
  """Trains (or reuses) ``count`` CNN members of one seed; returns their workdirs."""
  from kdjax.programs.demo import run_stage

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

  Members are evaluated in blocks of five (``kdjax.training.teacher_targets``),
  each block cached as ``cache/key_b<k>.npy``; equal blocks combine exactly,
  :math:`\bar p_\tau = \frac1K \sum_k \bar p_{\tau,k}`, so ten members reuse the first
  five's targets."""
  from kdjax.training import teacher_targets
  from kdjax.training.teachers._load import load_teacher_groups

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
          np.asarray(teacher_targets(groups, x[i:i + 10_000], space="prob", temperature=tau))
          for i in range(0, len(x), 10_000)]))
    blocks.append(np.load(path).astype(np.float64) / tau)
  fused = np.log(np.mean(np.exp(np.stack(blocks)), axis=0))  # log of the mean probability
  return (tau * fused).astype(np.float32)


def kd_label_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
                  temperature: float, alpha: float, label_weight: float) -> jax.Array:
  r"""Batch mean of Hinton KD plus a cross-entropy on the rows that have a true label.

  .. math::
    \frac1B \sum_b \Big[\alpha T^2 \mathrm{KL}\big(\mathrm{softmax}(t_b/T) \,\|\,
    \mathrm{softmax}(s_b/T)\big) + \lambda\,[y_b \ge 0]\,\big(-\log
    \mathrm{softmax}(s_b)_{y_b}\big)\Big]

  (``alpha = 1`` here, so ``hinton_kd``'s own hard term is off.) Args: ``[B, C]`` logits,
  ``[B]`` int labels (``-1``: none), :math:`T`, :math:`\alpha`, :math:`\lambda`. Returns a
  scalar."""
  loss = losses.hinton_kd(student_logits, teacher_logits, None, temperature=temperature,
                          alpha=alpha)
  if label_weight:
    loss = loss + label_weight * losses.cross_entropy(student_logits, labels)  # 0 where -1
  return loss.mean()


def train_student(x: np.ndarray, targets: np.ndarray, evals: dict, *, seed: int, num_steps: int,
                  config, labels: np.ndarray | None = None, label_weight: float = 0.0) -> dict:
  r"""The trainer's cached-target KD: MLP, ``config.optimizer``, ``hinton_kd`` at
  ``config.losses.hinton_kd``; chunks of ``config.log_every`` steps in one ``lax.scan``.

  With ``label_weight`` :math:`\lambda > 0` the loss of a batch is
  :math:`\frac1B \sum_b \big[\mathrm{KD}_b + \lambda\,\mathrm{CE}(s_b, y_b)\big]`, the
  cross-entropy only on rows with a label (``labels >= 0``; the pool's rows have ``-1``), as
  ``config.losses.cross_entropy.weight`` does in the trainer.

  Args:
    x: ``[N, 40]`` inputs; targets: ``[N, 10]`` the teacher's fused (tempered) logits.
    evals: ``{name: {"x": [n, 40], "y": [n], "teacher": [n, 10]}}`` sets to report the
      student's accuracy (``<name>_accuracy``) and its argmax agreement with the teacher
      (``<name>_agreement``) on, in %.
    labels: ``[N]`` int, ``-1`` where unlabelled (only read when ``label_weight > 0``).

  Returns:
    ``{"accuracy": test %, <name>_accuracy, <name>_agreement, "final_loss" (mean of the
    last chunk), "wall_s", "load"}``.
  """
  from kdjax.training import make_optimizer

  start = time.time()
  kd = config.losses.hinton_kd
  model = get_model("mlp", num_classes=10, hidden=tuple(config.model.hidden))
  params = model.init(jax.random.key(seed), jnp.asarray(x[:1]))["params"]
  tx = make_optimizer(config.optimizer, num_steps)
  opt_state = tx.init(params)
  if labels is None:
    labels = np.full(len(x), -1, np.int32)

  def loss_fn(p, xb, tb, yb):
    return kd_label_loss(model.apply({"params": p}, xb), tb, yb, temperature=kd.temperature,
                         alpha=kd.alpha, label_weight=label_weight)

  @jax.jit
  def chunk(params, opt_state, xs, ts, ys):
    def step(carry, batch):
      p, o = carry
      loss, g = jax.value_and_grad(loss_fn)(p, *batch)
      updates, o = tx.update(g, o, p)
      return (jax.tree.map(jnp.add, p, updates), o), loss
    (params, opt_state), loss = jax.lax.scan(step, (params, opt_state), (xs, ts, ys))
    return params, opt_state, loss.mean()

  every = config.log_every
  for s in range(0, num_steps, every):
    n = min(every, num_steps - s)
    idx = kd_data.batch_indices(len(x), batch_size=config.batch_size, start_step=s,
                                num_steps=n, seed=seed)
    params, opt_state, loss = chunk(params, opt_state, x[idx], targets[idx], labels[idx])
  out = {}
  for name, e in evals.items():
    pred = np.asarray(model.apply({"params": params}, jnp.asarray(e["x"]))).argmax(-1)
    out[f"{name}_accuracy"] = 100 * float(np.mean(pred == e["y"]))
    out[f"{name}_agreement"] = 100 * float(np.mean(pred == e["teacher"].argmax(-1)))
  out["accuracy"] = out.pop("test_accuracy")
  return {**out, "final_loss": float(loss), "wall_s": time.time() - start,
          "load": os.getloadavg()[0]}


LEVERS = {  # name -> Lever; steps None = the config's
    "baseline: 5 CNNs, 100k pool": Lever(5, 0),
    "5 CNNs, 100k pool + 100k fresh inputs": Lever(5, 100_000),
    "10 CNNs, 100k pool": Lever(10, 0),
    "10 CNNs, 100k pool + 100k fresh inputs": Lever(10, 100_000),
    "10 CNNs, 100k pool + 100k fresh inputs, long schedule": Lever(10, 100_000, 80_000),
    "10 CNNs, 100k pool + 200k fresh inputs, long schedule": Lever(10, 200_000, 80_000),
    # 6..: the second round (held-out generated accuracy measured too)
    "15 CNNs, 100k pool + 100k fresh inputs, long schedule": Lever(15, 100_000, 80_000),
    "15 CNNs, 100k pool + 100k fresh inputs, 160k steps": Lever(15, 100_000, 160_000),
    "15 CNNs, 100k pool + 100k fresh inputs, long schedule, + true-label CE": Lever(
        15, 100_000, 80_000, label_weight=1.0),
    "15 CNNs, 100k pool + 100k fresh inputs, long schedule, T=2": Lever(
        15, 100_000, 80_000, temperature=2.0),
    "15 CNNs, 100k pool + 100k fresh inputs, long schedule, lr 3e-3": Lever(
        15, 100_000, 80_000, learning_rate=3e-3),
    "15 CNNs, 100k pool + 100k fresh inputs, long schedule, batch 200": Lever(
        15, 100_000, 80_000, batch_size=200),
    "15 CNNs, 100k pool + 100k fresh inputs, long schedule, T=1": Lever(
        15, 100_000, 80_000, temperature=1.0),
    "15 CNNs, 100k pool + 100k fresh inputs, long schedule, batch 500": Lever(
        15, 100_000, 80_000, batch_size=500),
    "15 CNNs, 100k pool + 200k fresh inputs, long schedule": Lever(15, 200_000, 80_000),
    "10 CNNs, 100k pool + 100k fresh inputs, long schedule, T=2": Lever(
        10, 100_000, 80_000, temperature=2.0),
    "15 CNNs, 100k pool + 100k fresh inputs, 160k steps, T=2": Lever(
        15, 100_000, 160_000, temperature=2.0),
    "15 CNNs, 100k pool + 200k fresh inputs, 160k steps, T=2": Lever(
        15, 200_000, 160_000, temperature=2.0),
    "15 CNNs, 100k pool + 100k fresh inputs, 160k steps, T=1": Lever(
        15, 100_000, 160_000, temperature=1.0),
    "5 CNNs, 100k pool + 100k fresh inputs, long schedule, T=2": Lever(
        5, 100_000, 80_000, temperature=2.0),
}


def heldout_set() -> tuple[np.ndarray, np.ndarray]:
  """``HELDOUT_SIZE`` generated inputs and their true classes (stream ``HELDOUT_SEED``)."""
  stream = kd_data.FreshMNIST1D(HELDOUT_SEED, 1000)
  xs, ys = zip(*(stream.batch(s, labels=True) for s in range(HELDOUT_SIZE // 1000)))
  return np.concatenate(xs), np.concatenate(ys)


def lever_config(config, lever: Lever):
  """A copy of the KD config with the lever's student overrides (steps, T, lr, batch)."""
  c = config.copy_and_resolve_references()
  c.num_steps = lever.steps or config.num_steps
  if lever.temperature is not None:
    c.losses.hinton_kd.temperature = lever.temperature
  if lever.learning_rate is not None:
    c.optimizer.learning_rate = lever.learning_rate
  if lever.batch_size is not None:
    c.batch_size = lever.batch_size
  return c


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
  parser.add_argument("--record_train", default="",
                      help="comma-separated `kdjax train` workdirs of one config to add to --out")
  parser.add_argument("--train_config", default="mnist1d/kd_above_teacher_mlp.py")
  args = parser.parse_args()
  if args.merge:
    return merge(args.merge.split(","), args.out, pathlib.Path(args.members))
  if args.record_train:
    return record_train(args.record_train.split(","), args.train_config, args.out)
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
    heldout_x, heldout_y = heldout_set()
    pkg = kd_data.load_mnist1d_transfer(num_samples=HELDOUT_SIZE, seed=HELDOUT_PKG_SEED)
    for name in chosen:
      lever = LEVERS[name]
      count = lever.members
      dirs = member_dirs(pathlib.Path(args.members), seed, count)
      tag = f"s{seed}"
      x, t = pool, teacher_targets(dirs, pool, cache, f"{tag}_pool", config)
      labels = np.concatenate([splits["train"]["y"], np.full(len(pool) - len(splits["train"]["y"]),
                                                              -1, np.int32)])
      stream = kd_data.FreshMNIST1D(7 + seed, 1000)
      for start in range(0, lever.extra, 100_000):  # fresh inputs in blocks of 100,000
        block = stream.chunk(start // 1000, 100).reshape(-1, 40)
        x = np.concatenate([x, block])
        t = np.concatenate([t, teacher_targets(dirs, block, cache, f"{tag}_fresh{start}",
                                               config)])
      labels = np.concatenate([labels, np.full(len(x) - len(labels), -1, np.int32)])
      evals = {"test": {**splits["test"],
                        "teacher": teacher_targets(dirs, splits["test"]["x"], cache,
                                                   f"{tag}_test", config)},
               "heldout": {"x": heldout_x, "y": heldout_y,
                           "teacher": teacher_targets(dirs, heldout_x, cache,
                                                      f"{tag}_heldout", config)},
               "heldout_pkg": {"x": pkg["x"], "y": pkg["oracle_y"],
                               "teacher": teacher_targets(dirs, pkg["x"], cache,
                                                          f"{tag}_heldoutpkg", config)}}
      for group, e in (("teachers", evals["test"]), ("teachers_heldout", evals["heldout"]),
                       ("teachers_heldout_pkg", evals["heldout_pkg"])):
        results.setdefault(group, {}).setdefault(f"{count} CNNs", {})[str(seed)] = 100 * float(
            metrics.accuracy(e["teacher"], e["y"]))
      row_config = lever_config(config, lever)
      r = train_student(x, t, evals, seed=seed, num_steps=row_config.num_steps,
                        config=row_config, labels=labels, label_weight=lever.label_weight)
      r.update(steps=row_config.num_steps, inputs=len(x), members=count)
      results["rows"].setdefault(name, {})[str(seed)] = r
      print(f"seed {seed} {name}: {r}", flush=True)
      out_json.write_text(json.dumps(results, indent=2))
  write_table(results, args.out)


def input_costs(members: pathlib.Path, repeats: int = 20) -> dict:
  """Host cost of fresh inputs per step of 100: generating them (:class:`FreshMNIST1D`) and
  the five-CNN teacher's targets for them (one compiled program, batches of 1,000), in ms,
  with the load."""
  from kdjax.training.teachers._load import load_teacher_groups
  from kdjax.training.teachers._cache import targets_program

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


GROUPS = ("rows", "teachers", "teachers_heldout", "teachers_heldout_pkg", "kdjax_train")


def record_train(workdirs: list[str], config_name: str, out: str) -> None:
  """Adds finished ``kdjax train`` runs of ``config_name`` (their ``summary.json``: test
  accuracy, steps, wall time; the seed from ``config.json``) to ``out`` under
  ``kdjax_train``."""
  from kdjax.training import load_params

  path = RESULTS / f"{out}.json"
  results = json.loads(path.read_text())
  runs = results.setdefault("kdjax_train", {}).setdefault(config_name, {})
  heldout = dict(zip(("x", "y"), heldout_set()))
  pkg = kd_data.load_mnist1d_transfer(num_samples=HELDOUT_SIZE, seed=HELDOUT_PKG_SEED)
  model = get_model("mlp", num_classes=10, hidden=tuple(load_config(config_name).model.hidden))
  for workdir in workdirs:
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    seed = json.loads((pathlib.Path(workdir) / "config.json").read_text())["seed"]
    params = load_params(workdir)
    held = {name: 100 * float(metrics.accuracy(model.apply({"params": params}, jnp.asarray(x)), y))
            for name, (x, y) in (("heldout", (heldout["x"], heldout["y"])),
                                 ("heldout_pkg", (pkg["x"], pkg["oracle_y"])))}
    runs[str(seed)] = {"accuracy": 100 * summary["test"]["accuracy"], "steps": summary["steps"],
                       "wall_s": summary["wall_s"],
                       "teacher_accuracy": 100 * summary["teacher_test"]["accuracy"],
                       **{f"{k}_accuracy": v for k, v in held.items()}}
  path.write_text(json.dumps(results, indent=2))
  write_table(results, out)


def merge(paths: list[str], out: str, members: pathlib.Path) -> None:
  """Merges the rows and teachers of result files (one per process; a later file's seed
  replaces an earlier one's) into ``out``; keeps the first file's ``input_costs`` or
  measures them."""
  results = {group: {} for group in GROUPS}
  for path in paths:
    part = json.loads(pathlib.Path(path).read_text())
    for group in GROUPS:
      for name, per_seed in part.get(group, {}).items():
        results[group].setdefault(name, {}).update(per_seed)
    if "input_costs" in part:
      results.setdefault("input_costs", part["input_costs"])
  results["rows"] = {k: results["rows"][k] for k in LEVERS if k in results["rows"]}
  for group in GROUPS:
    for name in results[group]:
      results[group][name] = dict(sorted(results[group][name].items()))
  if "input_costs" not in results:
    results["input_costs"] = input_costs(members)
  (RESULTS / f"{out}.json").write_text(json.dumps(results, indent=2))
  write_table(results, out)


def _mean_std(values) -> str:
  v = np.asarray(values, dtype=np.float64)
  return f"{v.mean():.1f} +- {v.std():.1f}" if len(v) > 1 else f"{v[0]:.1f} (n=1)"


def write_table(results: dict, out: str) -> None:
  lines = ["| run | student test accuracy (%) | seeds | held-out, fresh generator (%) | "
           "held-out, package generator (%) | test agreement with teacher (%) | steps | inputs "
           "| wall s / run | load |", "|---|---|---|---|---|---|---|---|---|---|"]
  for name, per_seed in results["rows"].items():
    runs = list(per_seed.values())
    held = [r["heldout_accuracy"] for r in runs if "heldout_accuracy" in r]
    pkg = [r["heldout_pkg_accuracy"] for r in runs if "heldout_pkg_accuracy" in r]
    agree = [r["test_agreement"] for r in runs if "test_agreement" in r]
    lines.append(f"| {name} | {_mean_std([r['accuracy'] for r in runs])} | "
                 f"{','.join(per_seed)} | {_mean_std(held) if held else '-'} | "
                 f"{_mean_std(pkg) if pkg else '-'} | "
                 f"{_mean_std(agree) if agree else '-'} | {runs[0]['steps']:,} | "
                 f"{runs[0]['inputs']:,} | {np.mean([r['wall_s'] for r in runs]):.0f} | "
                 f"{np.mean([r['load'] for r in runs]):.0f} |")
  if "input_costs" in results:
    c = results["input_costs"]
    lines += ["", f"Fresh inputs, host cost per step of 100 (load {c['load']:.0f}): generating "
              f"{c['generate_ms_per_100']:.1f} ms, the five-CNN teacher's targets "
              f"{c['teacher5_ms_per_100']:.1f} ms."]
  if results.get("kdjax_train"):
    lines += ["", "| `kdjax train` run | student test accuracy (%) | seeds | held-out, fresh "
              "generator (%) | held-out, package generator (%) | teacher test accuracy (%) | "
              "steps | wall s / run (whole run) |", "|---|---|---|---|---|---|---|---|"]
    for name, per_seed in results["kdjax_train"].items():
      runs = list(per_seed.values())
      lines.append(f"| {name} | {_mean_std([r['accuracy'] for r in runs])} | {','.join(per_seed)} "
                   f"| {_mean_std([r['heldout_accuracy'] for r in runs])} "
                   f"| {_mean_std([r['heldout_pkg_accuracy'] for r in runs])} "
                   f"| {_mean_std([r['teacher_accuracy'] for r in runs])} | {runs[0]['steps']:,} "
                   f"| {np.mean([r['wall_s'] for r in runs]):.0f} |")
  lines += ["", f"| teacher, probability average at T=4 | test accuracy (%) | seeds | held-out, "
            f"fresh generator (%, {HELDOUT_SIZE:,} inputs) | held-out, package generator (%) | "
            "seeds (held-out) |", "|---|---|---|---|---|---|"]
  for name, per_seed in results["teachers"].items():
    held = results.get("teachers_heldout", {}).get(name, {})
    pkg = results.get("teachers_heldout_pkg", {}).get(name, {})
    lines.append(f"| {name} | {_mean_std(list(per_seed.values()))} | {','.join(per_seed)} | "
                 f"{_mean_std(list(held.values())) if held else '-'} | "
                 f"{_mean_std(list(pkg.values())) if pkg else '-'} | "
                 f"{','.join(held) if held else '-'} |")
  (RESULTS / f"{out}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))

if __name__ == "__main__":
  main()
