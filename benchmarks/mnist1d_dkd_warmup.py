"""MNIST-1D: DKD with and without its weight warm-up, against the MLP alone and KD.

Every run is a ``kdjax train`` run (``kdjax.training.train_and_evaluate``) on the in-memory
MNIST-1D path (4,000 labelled training inputs, 1,000 test inputs, no transfer set), 6,000
Adam steps of batch 100. Per seed, one CNN teacher (``configs/mnist1d/teacher_cnn.py``,
trained with that seed) teaches every student of that seed. The variants:

* ``mlp``: the MLP 40-100-100-10 alone (``configs/mnist1d/mlp.py``);
* ``kd``: Hinton KD, T=4, alpha=0.9 (``configs/mnist1d/kd_cnn_to_mlp.py:labelled``);
* ``dkd``: CE + DKD (alpha=1, beta=8, T=4: mdistiller's CIFAR-100 setting), no warm-up;
* ``dkd_warmup``: the same with DKD's weight warmed up linearly from 0 over the first
  1/12 of the steps (DKD's official recipe warms up over 20 of 240 epochs);
* ``dkd_warmup_beta{2,1,05}``, ``dkd_warmup_T{2,8}``, ``dkd_warmup_beta1_T8``: the
  warm-up with the NCKD weight beta (the DKD paper tunes it per teacher-student pair and
  uses 0.5 on ImageNet) and/or the temperature changed; ``dkd_beta1``: beta=1 without
  the warm-up (which of the two changes helps).

Writes ``benchmarks/results/mnist1d_dkd_warmup.json`` (per-seed test accuracies under
``"accuracy"``, wall times, the machine load) and ``mnist1d_dkd_warmup.md`` (mean +- std
over the seeds). Finished runs under ``--workdir`` are reused; results of variants not
rerun are kept.

  python benchmarks/mnist1d_dkd_warmup.py --workdir runs/dkd_warmup --seeds 0,1,2
  # the chosen recipe against the baselines on fresh seeds (not used to choose it):
  python benchmarks/mnist1d_dkd_warmup.py --workdir runs/dkd_warmup --seeds 3,4,5 \
      --variants mlp,kd,dkd,dkd_warmup,dkd_warmup_beta1 --out mnist1d_dkd_warmup_confirm
"""

import argparse
import json
import os
import pathlib
import platform

import jax
import ml_collections
import numpy as np

from kdjax.config import load_config
from kdjax.programs.demo import run_stage

RESULTS = pathlib.Path(__file__).parent / "results"
NUM_STEPS = 6000
WARMUP_STEPS = NUM_STEPS // 12  # 20 / 240 epochs of DKD's official CIFAR-100 recipe


def dkd_losses(*, beta=8.0, temperature=4.0, warmup_steps=0):
  weight = {"value": 1.0, "warmup_steps": warmup_steps} if warmup_steps else 1.0
  return {"cross_entropy": {"weight": 1.0},
          "dkd": {"weight": weight, "alpha": 1.0, "beta": beta, "temperature": temperature}}


# name -> (description, config path, arg, losses or None for the config's own)
VARIANTS = {
    "mlp": ("MLP alone", "mnist1d/mlp.py", None, None),
    "kd": ("KD (T=4, alpha=0.9)", "mnist1d/kd_cnn_to_mlp.py", "labelled", None),
    "dkd": ("CE + DKD (beta=8, T=4), no warm-up", "mnist1d/dkd_cnn_to_mlp.py", None,
            dkd_losses()),
    "dkd_warmup": (f"CE + DKD (beta=8, T=4), warm-up {WARMUP_STEPS} steps",
                   "mnist1d/dkd_cnn_to_mlp.py", None, dkd_losses(warmup_steps=WARMUP_STEPS)),
    "dkd_warmup_beta2": (f"CE + DKD (beta=2, T=4), warm-up {WARMUP_STEPS} steps",
                         "mnist1d/dkd_cnn_to_mlp.py", None,
                         dkd_losses(beta=2.0, warmup_steps=WARMUP_STEPS)),
    "dkd_warmup_beta1": (f"CE + DKD (beta=1, T=4), warm-up {WARMUP_STEPS} steps",
                         "mnist1d/dkd_cnn_to_mlp.py", None,
                         dkd_losses(beta=1.0, warmup_steps=WARMUP_STEPS)),
    "dkd_warmup_beta05": (f"CE + DKD (beta=0.5, T=4), warm-up {WARMUP_STEPS} steps",
                          "mnist1d/dkd_cnn_to_mlp.py", None,
                          dkd_losses(beta=0.5, warmup_steps=WARMUP_STEPS)),
    "dkd_beta1": ("CE + DKD (beta=1, T=4), no warm-up", "mnist1d/dkd_cnn_to_mlp.py", None,
                  dkd_losses(beta=1.0)),
    "dkd_warmup_beta1_T8": (f"CE + DKD (beta=1, T=8), warm-up {WARMUP_STEPS} steps",
                            "mnist1d/dkd_cnn_to_mlp.py", None,
                            dkd_losses(beta=1.0, temperature=8.0, warmup_steps=WARMUP_STEPS)),
    "dkd_warmup_T2": (f"CE + DKD (beta=8, T=2), warm-up {WARMUP_STEPS} steps",
                      "mnist1d/dkd_cnn_to_mlp.py", None,
                      dkd_losses(temperature=2.0, warmup_steps=WARMUP_STEPS)),
    "dkd_warmup_T8": (f"CE + DKD (beta=8, T=8), warm-up {WARMUP_STEPS} steps",
                      "mnist1d/dkd_cnn_to_mlp.py", None,
                      dkd_losses(temperature=8.0, warmup_steps=WARMUP_STEPS)),
}


def run_variant(name, seed, root, teacher):
  _, path, arg, losses = VARIANTS[name]
  overrides = {"seed": seed, "progress_bar": False}
  if name != "mlp":
    overrides["teacher.workdir"] = str(teacher)
  config = load_config(path, arg, overrides)
  if losses is not None:
    config.losses = ml_collections.ConfigDict(losses)
  assert config.num_steps == NUM_STEPS and config.transfer.num_samples == 0, name
  load_before = os.getloadavg()[0]
  summary = run_stage(f"{name} seed {seed}", config, root / name / f"seed{seed}")
  return summary, (load_before, os.getloadavg()[0])


def table(results):
  lines = ["| variant | recipe | test accuracy (%) mean +- std | seeds |", "|---|---|---|---|"]
  for name, values in results["accuracy"].items():
    lines.append(f"| {name} | {results['description'][name]} | {np.mean(values):.1f} +- "
                 f"{np.std(values):.1f} | {len(values)} |")
  loads = np.array([x for runs in results["load_1min"].values() for x in runs]).ravel()
  lines.append("")
  lines.append(f"Seeds {results['seeds']}; {results['conditions'].split(':')[0]} "
               f"(1-minute load average {loads.min():.0f}-{loads.max():.0f} during the runs; "
               "it slows the runs: wall_s in the JSON).")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/dkd_warmup")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--out", default="mnist1d_dkd_warmup",
                      help="results name under benchmarks/results (.json and .md)")
  parser.add_argument("--table_only", action="store_true",
                      help="rewrite the markdown table from the JSON, train nothing")
  args = parser.parse_args()
  if args.table_only:
    results = json.loads((RESULTS / f"{args.out}.json").read_text())
    (RESULTS / f"{args.out}.md").write_text(table(results) + "\n")
    print(table(results))
    return
  root = pathlib.Path(args.workdir)
  seeds = [int(s) for s in args.seeds.split(",")]
  variants = args.variants.split(",")
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise ValueError(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
  out_json = RESULTS / f"{args.out}.json"
  previous = json.loads(out_json.read_text()) if out_json.exists() else {}
  fields = ("accuracy", "description", "wall_s", "load_1min")
  results = {k: dict(previous.get(k, {})) for k in fields}
  fresh = {k: {} for k in fields}
  for seed in seeds:
    teacher = root / "teacher_cnn" / f"seed{seed}"
    config = load_config("mnist1d/teacher_cnn.py", None, {"seed": seed, "progress_bar": False})
    run_stage(f"teacher seed {seed}", config, teacher)
    for name in variants:
      summary, load = run_variant(name, seed, root, teacher)
      fresh["accuracy"].setdefault(name, []).append(100 * float(summary["test"]["accuracy"]))
      fresh["wall_s"].setdefault(name, []).append(float(summary["wall_s"]))
      fresh["load_1min"].setdefault(name, []).append(list(load))
      fresh["description"][name] = VARIANTS[name][0]
  for k in fields:
    results[k].update(fresh[k])
  # Keep the variants in VARIANTS order.
  for k in fields:
    results[k] = {n: results[k][n] for n in VARIANTS if n in results[k]}
  results["seeds"] = seeds
  results["conditions"] = (
      f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), jax "
      f"{jax.__version__}, shared with other jobs: 1-minute load average before/after each "
      "run in load_1min; wall_s includes compilation and evaluation")
  RESULTS.mkdir(exist_ok=True)
  out_json.write_text(json.dumps(results, indent=2) + "\n")
  (RESULTS / f"{args.out}.md").write_text(table(results) + "\n")
  print(table(results))


if __name__ == "__main__":
  main()
