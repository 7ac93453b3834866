"""Does the trainer overlap host batch preparation with device compute? `kdjax train`'s
step time with the device prefetcher (``data.prefetch=2``) and without (``prefetch=0``).

The real trainer (``kdjax.training.train_and_evaluate``) on a synthetic CIFAR-shaped
stream (``data.source="synthetic"``, 32x32x3 uint8, 100 classes, pad-4 crop + flip +
normalisation on the host through grain), ``steps_per_call`` steps per jitted call and
metrics read every ``log_every`` steps. The time per step is measured inside the run:
from the end of the first logging interval (compiled, warm) to the end of the last,
each end being the moment the interval's metrics reached the host. Runs are
interleaved round-robin (prefetch 2, prefetch 0, per model) over ``--reps`` rounds; we
report medians and the min-max spread, and the load average before and after (this is
a shared 2-core machine: the "device" is the same CPU the host prepares batches on, so
overlap helps only as far as cores are idle).

Run (a few minutes)::

  python benchmarks/trainer_overlap.py --reps 3

Writes ``benchmarks/results/trainer_overlap.json`` and ``trainer_overlap.md``.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

from kdjax.training import _loop, default_config, train_and_evaluate

HERE = os.path.dirname(__file__)


def make_config(model: dict, *, prefetch: int, batch: int, steps_per_call: int,
                log_every: int, intervals: int):
  c = default_config()
  c.data.name = c.data.source = "synthetic"
  c.data.synthetic = {"num_examples": 50_000, "eval_examples": batch, "shape": (32, 32, 3),
                      "num_classes": 100}
  c.data.augment, c.data.prefetch = "pad_crop_flip", prefetch
  c.model = model
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 0.05
  c.batch_size = c.eval_batch_size = batch
  c.steps_per_call, c.log_every = steps_per_call, log_every
  c.num_steps = c.eval_every = c.checkpoint_every = log_every * intervals
  c.progress_bar = False
  return c


def timed_run(config) -> float:
  """Seconds per step between the first and the last logging interval's end."""
  ends = []
  original = _loop.merge_calls

  def merge_calls(calls, **kwargs):
    out = original(calls, **kwargs)  # reads the metrics: the interval's steps are done
    ends.append(time.perf_counter())
    return out

  _loop.merge_calls = merge_calls
  try:
    with tempfile.TemporaryDirectory() as workdir:
      train_and_evaluate(config, workdir)
  finally:
    _loop.merge_calls = original
  return (ends[-1] - ends[0]) / (config.log_every * (len(ends) - 1))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps_per_call", type=int, default=4)
  parser.add_argument("--log_every", type=int, default=8)
  parser.add_argument("--intervals", type=int, default=4)
  parser.add_argument("--out", default=os.path.join(HERE, "results", "trainer_overlap"))
  args = parser.parse_args()

  models = {"resnet8": {"name": "resnet8"}, "mlp_256": {"name": "mlp", "hidden": (256,)}}
  modes = {"prefetch=2": 2, "prefetch=0": 0}

  def config(model, mode):
    return make_config(models[model], prefetch=modes[mode], batch=args.batch,
                       steps_per_call=args.steps_per_call, log_every=args.log_every,
                       intervals=args.intervals)

  for model in models:  # warm up: compile, fill caches
    timed_run(config(model, "prefetch=2"))
  load_before = os.getloadavg()
  times = {(m, k): [] for m in models for k in modes}
  for _ in range(args.reps):
    for model in models:
      for mode in modes:
        times[model, mode].append(1e3 * timed_run(config(model, mode)))
  load_after = os.getloadavg()

  rows = [{"model": m, "mode": k, "ms_per_step_median": round(statistics.median(t), 2),
           "ms_min": round(min(t), 2), "ms_max": round(max(t), 2)}
          for (m, k), t in times.items()]
  summary = {m: round(statistics.median(times[m, "prefetch=0"])
                      / statistics.median(times[m, "prefetch=2"]), 2) for m in models}
  meta = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
          "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "numpy": np.__version__, "batch": args.batch,
          "steps_per_call": args.steps_per_call, "log_every": args.log_every,
          "timed_steps": args.log_every * (args.intervals - 1), "reps": args.reps,
          "loadavg_before": load_before, "loadavg_after": load_after,
          "conditions": "shared 2-core VM, loaded by other jobs (see loadavg)"}
  result = {"meta": meta, "rows": rows, "speedup_prefetch2_over_prefetch0": summary}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(result, f, indent=1)
  lines = [f"`kdjax train` on synthetic CIFAR-shaped data (pad-4 crop + flip), batch "
           f"{args.batch}, {args.steps_per_call} steps a call, {meta['timed_steps']} timed steps "
           f"x {args.reps} interleaved rounds, {meta['num_devices']} {meta['device']} "
           f"device(s), {meta['cpu_count']} cores; load average {load_before[0]:.1f} before, "
           f"{load_after[0]:.1f} after (a shared machine: other jobs ran).", "",
           "| model | mode | ms/step (median) | min | max |", "|---|---|---|---|---|"]
  lines += [f"| {r['model']} | {r['mode']} | {r['ms_per_step_median']} | {r['ms_min']} | "
            f"{r['ms_max']} |" for r in rows]
  lines.append("")
  lines += [f"{m}: prefetch=2 is {s}x faster than prefetch=0 (median ratio)."
            for m, s in summary.items()]
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
