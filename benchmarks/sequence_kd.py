"""Student perplexity alone, with full-logit KD (online teacher, fused loss) and with
stored top-k KD (k = 8, 32), 3 seeds each, on stdlib source bytes (configs/sequence).

  python benchmarks/sequence_kd.py [--workdir /tmp/kdjax_seq] [--smoke]

Writes benchmarks/results/sequence_kd.json and prints a markdown table (mean +- std).
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from kdjax import config as configs
from kdjax.programs import lm_distill

METHODS = (("alone", "none"), ("full-logit KD", "full"), ("top-8 KD", "topk,k=8"),
           ("top-32 KD", "topk,k=32"))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", default="/tmp/kdjax_sequence_kd")
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--seeds", default="0,1,2")
  args = parser.parse_args()
  seeds = tuple(int(s) for s in args.seeds.split(","))
  t0 = time.perf_counter()
  load = os.getloadavg()
  rows = {}
  for label, arg in METHODS:
    config = configs.load_config("sequence/byte_lm_kd.py", arg + (",smoke" if args.smoke else ""))
    rows[label] = lm_distill.run(config, args.workdir, seeds=seeds)
    print(label, [round(r["student_val_perplexity"], 3) for r in rows[label]], flush=True)
  summary = {label: {"mean": float(np.mean([r["student_val_perplexity"] for r in rs])),
                     "std": float(np.std([r["student_val_perplexity"] for r in rs], ddof=1))
                     if len(rs) > 1 else 0.0}
             for label, rs in rows.items()}
  out = {"config": configs.load_config("sequence/byte_lm_kd.py",
                                       "smoke" if args.smoke else None).to_dict(),
         "seeds": seeds, "runs": rows, "student_val_perplexity": summary,
         "teacher_val_perplexity": rows["alone"][0]["teacher_val_perplexity"],
         "jax": jax.__version__, "cpu_count": os.cpu_count(),
         "loadavg_start": [round(x, 2) for x in load],
         "loadavg_end": [round(x, 2) for x in os.getloadavg()],
         "wall_seconds": round(time.perf_counter() - t0, 1)}
  if not args.smoke:
    path = os.path.join(os.path.dirname(__file__), "results", "sequence_kd.json")
    with open(path, "w") as f:
      json.dump(out, f, indent=1)
  print(f"\nteacher val perplexity {out['teacher_val_perplexity']:.3f} "
        f"({rows['alone'][0]['teacher_params']} params); student "
        f"{rows['alone'][0]['student_params']} params; seeds {seeds}\n")
  print("| student | val perplexity (mean +- std) | store bytes/token |")
  print("|---|---|---|")
  for label, rs in rows.items():
    bpt = rs[0].get("store_bytes_per_token")
    print(f"| {label} | {summary[label]['mean']:.3f} +- {summary[label]['std']:.3f} | "
          f"{'' if bpt is None else f'{bpt:.1f}'} |")


if __name__ == "__main__":
  main()
