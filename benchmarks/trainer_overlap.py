"""Does `kdjax train` overlap host batch preparation with device compute?

The real trainer (``kdjax.training.train_and_evaluate``: the streaming
``StreamBatches`` + ``DevicePrefetcher`` path of ``kdjax/training/_inputs.py``) on a
synthetic image stream (``data.source="synthetic"``) whose host side is made expensive on
purpose: ``--image``-sized uint8 images through the Inception random-resized crop + flip
(a Pillow resize per example) and normalisation, while the device side is a small MLP on
the flattened image, sized so that the two costs are of the same order (the effect of
overlap is largest then). Three modes, the same run otherwise:

* ``prefetch=2`` (the default, ``config.data.prefetch=2``): a background thread prepares
  and places the next blocks while the device computes;
* ``prefetch=0``: each block is prepared when the loop asks for it; calls inside a
  logging interval are still dispatched asynchronously, so the host prepares call k+1
  while the device runs call k, but every logging interval ends in a sync;
* ``serial`` (``prefetch=0`` and ``log_every = steps_per_call``): the loop reads the
  metrics after every call, so host preparation and device compute never overlap (the
  trainer before issue 9: ``float(metrics)`` right after each dispatch).

The time per step is measured inside the run: from the end of the first logging interval
(compiled, warm) to the end of the last, each end being the moment the interval's metrics
reached the host (``_loop.merge_calls``). The modes are interleaved round-robin over
``--reps`` rounds after one warm-up run each; we report medians, the min-max spread and
the load average before and after, and the whole run's wall and CPU time
(``meta.wall_s``, ``meta.cpu_s``: the CPU time bounds an idle 2-core run's length).

On this machine the "device" is the same 2-core CPU that prepares the batches. So that
it behaves like an accelerator beside the host, XLA computes on one thread
(``--device_threads 1``, the default: ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1``), leaving the other core to the host's preparation;
``--device_threads all`` lets XLA use every core (then overlap can only hide host work
as far as a core is idle). Under load from other jobs no core is idle and the modes
converge: label the load.

Run (the lead's quiet rerun; label the load)::

  nice -n 15 python benchmarks/trainer_overlap.py

Writes ``benchmarks/results/trainer_overlap.json`` and ``trainer_overlap.md``.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(__file__)
MODES = ("prefetch=2", "prefetch=0", "serial")
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
# jax is imported inside the functions: main() sets XLA_FLAGS before the first import.


def make_config(mode: str, *, image: int, batch: int, hidden: int, steps_per_call: int,
                log_every: int, intervals: int, num_threads: int = 0):
  """The trainer's config for one run of ``mode`` (one of :data:`MODES`)."""
  from kdjax.training import default_config
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  c = default_config()
  c.data.name = c.data.source = "synthetic"
  c.data.synthetic = {"num_examples": 100_000, "eval_examples": batch,
                      "shape": (image, image, 3), "num_classes": 10}
  c.data.augment = "inception_crop_flip"  # a Pillow resize per example: host work
  c.data.flatten = True
  c.data.num_threads = num_threads
  c.data.prefetch = 2 if mode == "prefetch=2" else 0
  c.model = {"name": "mlp", "hidden": (hidden,)}
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 0.01
  c.batch_size = c.eval_batch_size = batch
  c.steps_per_call = steps_per_call
  c.log_every = steps_per_call if mode == "serial" else log_every
  c.num_steps = c.eval_every = c.checkpoint_every = log_every * intervals
  c.progress_bar = False
  return c


def timed_run(config) -> float:
  """Seconds per step between the first and the last logging interval's end."""
  from kdjax.training import _loop, train_and_evaluate
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
  steps = config.num_steps - config.log_every  # after the first interval's end
  return (ends[-1] - ends[0]) / steps


def host_ms_per_batch(config, batches: int = 8) -> float:
  """The host cost alone: ms to prepare one training batch (the trainer's pipeline)."""
  from kdjax.data import pipelines_from_config
  pipes = pipelines_from_config(config.data, batch_size=config.batch_size,
                                eval_batch_size=config.batch_size, seed=config.seed)
  it = pipes["train"].iterator()
  next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  elapsed = time.perf_counter() - start
  it.close()
  return 1e3 * elapsed / batches


def run(*, reps: int, image: int, batch: int, hidden: int, steps_per_call: int,
        log_every: int, intervals: int, warmup: int = 1) -> dict:
  """Measures every mode, interleaved; returns the result dict."""
  import jax
  import numpy as np
  def config(mode):
    return make_config(mode, image=image, batch=batch, hidden=hidden,
                       steps_per_call=steps_per_call, log_every=log_every, intervals=intervals)

  host_ms = host_ms_per_batch(config("prefetch=2"))
  for _ in range(warmup):  # imports, caches, Pillow, the first compiles
    for mode in MODES:
      timed_run(config(mode))
  load_before = os.getloadavg()
  times = {mode: [] for mode in MODES}
  for _ in range(reps):
    for mode in MODES:
      times[mode].append(1e3 * timed_run(config(mode)))
  load_after = os.getloadavg()
  rows = [{"mode": m, "ms_per_step_median": round(statistics.median(t), 2),
           "ms_min": round(min(t), 2), "ms_max": round(max(t), 2),
           "ms_per_step_all": [round(v, 2) for v in t]} for m, t in times.items()]
  med = {m: statistics.median(t) for m, t in times.items()}
  meta = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
          "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "numpy": np.__version__, "image": image, "batch": batch, "mlp_hidden": hidden,
          "augment": "inception_crop_flip", "steps_per_call": steps_per_call,
          "log_every": log_every, "timed_steps": log_every * (intervals - 1), "reps": reps,
          "seed": 0, "host_ms_per_batch": round(host_ms, 2),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "loadavg_before": load_before, "loadavg_after": load_after}
  return {"meta": meta, "rows": rows,
          "speedup_prefetch2_over_serial": round(med["serial"] / med["prefetch=2"], 2),
          "speedup_prefetch2_over_prefetch0": round(med["prefetch=0"] / med["prefetch=2"], 2)}


def to_markdown(result: dict, load_label: str) -> str:
  meta = result["meta"]
  lines = [f"`kdjax train` (train_and_evaluate, streaming synthetic {meta['image']}x"
           f"{meta['image']}x3 images, Inception crop + flip on the host, MLP "
           f"{meta['mlp_hidden']} hidden on the flattened image), batch {meta['batch']}, "
           f"{meta['steps_per_call']} steps a call, {meta['timed_steps']} timed steps x "
           f"{meta['reps']} interleaved rounds, {meta['num_devices']} {meta['device']} "
           f"device(s) (XLA_FLAGS `{meta['xla_flags']}`), {meta['cpu_count']} cores. "
           "Host preparation alone: "
           f"{meta['host_ms_per_batch']} ms a batch. Load average "
           f"{meta['loadavg_before'][0]:.1f} before, {meta['loadavg_after'][0]:.1f} after "
           f"({load_label}).", "",
           "| mode | ms/step (median) | min | max |", "|---|---|---|---|"]
  lines += [f"| {r['mode']} | {r['ms_per_step_median']} | {r['ms_min']} | {r['ms_max']} |"
            for r in result["rows"]]
  lines += ["", f"prefetch=2 is {result['speedup_prefetch2_over_serial']}x faster than serial "
            f"and {result['speedup_prefetch2_over_prefetch0']}x faster than prefetch=0 "
            "(ratios of medians)."]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--image", type=int, default=32)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--hidden", type=int, default=1024)
  parser.add_argument("--device_threads", choices=("1", "all"), default="1")
  parser.add_argument("--steps_per_call", type=int, default=2)
  parser.add_argument("--log_every", type=int, default=8)
  parser.add_argument("--intervals", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1, help="warm-up runs of each mode")
  parser.add_argument("--load_label", default="shared 2-core VM, other jobs running: under load")
  parser.add_argument("--out", default=os.path.join(HERE, "results", "trainer_overlap"))
  args = parser.parse_args(argv)
  if args.device_threads == "1":
    if "jax" in sys.modules:
      raise RuntimeError("--device_threads 1 must set XLA_FLAGS before jax is imported")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ONE_THREAD_XLA).strip()
  start, cpu_start = time.perf_counter(), time.process_time()
  result = run(reps=args.reps, image=args.image, batch=args.batch, hidden=args.hidden,
               steps_per_call=args.steps_per_call, log_every=args.log_every,
               intervals=args.intervals, warmup=args.warmup)
  result["meta"]["conditions"] = args.load_label
  result["meta"]["wall_s"] = round(time.perf_counter() - start, 1)
  result["meta"]["cpu_s"] = round(time.process_time() - cpu_start, 1)  # all its threads
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(result, f, indent=1)
  text = to_markdown(result, args.load_label)
  with open(args.out + ".md", "w") as f:
    f.write(text)
  print(text)
  return result


if __name__ == "__main__":
  main()
