"""Byte-level student perplexity alone, with full-logit KD, with the fused terms and from a
stored top-k teacher (k = 8, 32), 3 seeds each, on stdlib source bytes, all through `train_and_evaluate` (configs/sequence/byte_lm_kd.py).

  python benchmarks/sequence_kd.py [--workdir /tmp/kdjax_seq] [--smoke] [--seeds 0,1,2]

The teacher (seed 0) is trained once; each student method runs once per seed. Writes
benchmarks/results/sequence_kd.json and prints a markdown table (mean +- std over seeds).
"""

import argparse
import json
import os
import shutil
import time

import jax
import numpy as np

from kdjax.config import load_config
from kdjax.training import train_and_evaluate

METHODS = (("alone", "none"), ("full-logit KD", "full"), ("fused KD", "fused"),
           ("top-8 KD (stored)", "topk,k=8"), ("top-32 KD (stored)", "topk,k=32"))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", default="/tmp/kdjax_sequence_kd")
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--seeds", default="0,1,2")
  args = parser.parse_args()
  seeds = tuple(int(s) for s in args.seeds.split(","))
  smoke = ",smoke" if args.smoke else ""
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.environ["KDJAX_CACHE_DIR"] = os.path.join(args.workdir, "cache")  # a fresh top-k store
  t0, load = time.perf_counter(), os.getloadavg()
  quiet = {"progress_bar": False}
  teacher_dir = os.path.join(args.workdir, "teacher")
  teacher = train_and_evaluate(load_config("sequence/byte_lm_kd.py", "teacher" + smoke, quiet),
                               teacher_dir)
  rows = {}
  for label, arg in METHODS:
    rows[label] = []
    for seed in seeds:
      overrides = {**quiet, "seed": seed, "teacher.workdir": teacher_dir}
      t1 = time.perf_counter()
      s = train_and_evaluate(load_config("sequence/byte_lm_kd.py", arg + smoke, overrides),
                             os.path.join(args.workdir, f"{arg}_seed{seed}"))
      rows[label].append({"seed": seed, "test_perplexity": s["test"]["perplexity"],
                          "test_nll": s["test"]["nll"], "test_accuracy": s["test"]["accuracy"],
                          "seconds": round(time.perf_counter() - t1, 1),
                          "params": s["params"], "teacher_cache": s["teacher_cache"]})
    print(label, [round(r["test_perplexity"], 3) for r in rows[label]], flush=True)
  summary = {label: {"mean": float(np.mean([r["test_perplexity"] for r in rs])),
                     "std": float(np.std([r["test_perplexity"] for r in rs], ddof=1))
                     if len(rs) > 1 else 0.0}
             for label, rs in rows.items()}
  out = {"config": {arg: load_config("sequence/byte_lm_kd.py", arg + smoke).to_dict()
                    for _, arg in (("teacher", "teacher"),) + METHODS},
         "teacher_cache": {arg: rows[label][0].get("teacher_cache") for label, arg in METHODS},
         "seeds": seeds, "runs": rows, "student_test_perplexity": summary,
         "teacher_test_perplexity": teacher["test"]["perplexity"],
         "teacher_params": teacher["params"],
         "jax": jax.__version__, "cpu_count": os.cpu_count(),
         "loadavg_start": [round(x, 2) for x in load],
         "loadavg_end": [round(x, 2) for x in os.getloadavg()],
         "wall_seconds": round(time.perf_counter() - t0, 1)}
  if not args.smoke:
    path = os.path.join(os.path.dirname(__file__), "results", "sequence_kd.json")
    with open(path, "w") as f:
      json.dump(out, f, indent=1)
  print(f"\nteacher test perplexity {out['teacher_test_perplexity']:.3f} "
        f"({teacher['params']} params); student {rows['alone'][0]['params']} params; "
        f"seeds {seeds}\n")
  print("| student | test perplexity (mean +- std) |")
  print("|---|---|")
  for label in rows:
    print(f"| {label} | {summary[label]['mean']:.3f} +- {summary[label]['std']:.3f} |")


if __name__ == "__main__":
  main()
