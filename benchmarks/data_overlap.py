"""Does host batch preparation overlap device compute? Step time with and without it.

A synthetic CIFAR-shaped training stream (``kdjax.data.SyntheticSource`` 32x32x3 uint8,
pad-4 crop + flip + normalisation on the host, grain, batch ``--batch``) feeds a step;
each step reads its loss back to the host (``float(loss)``), as a trainer that logs every
call does. Two steps:

* ``xla_cpu``: a small jitted SGD step (two stride-2 3x3 convs, 16 and 32 channels, a
  dense layer, cross-entropy, ``value_and_grad``) computed by XLA on this CPU. Here the
  "device" is the same two cores the host prepares batches on, so overlap can only help
  as far as cores are idle;
* ``simulated_device``: the host waits ``--device_ms`` (``time.sleep``, which releases
  the GIL as waiting on an accelerator does) instead of computing: a model of a TPU/GPU
  step, where the host is free while the device works.

For each, timed interleaved round-robin over ``--reps`` rounds of ``--steps`` steps after
a warm-up pass:

* ``serial``: prepare the batch, place it, run the step, read the loss: no overlap;
* ``prefetch``: ``kdjax.data.DevicePrefetcher`` (``buffer_size=2``) prepares and places
  the next batches in a background thread while the step runs;
* ``prepare_only``: host preparation + placement alone (no step);
* ``step_only``: the step alone on one already-placed batch.

Perfect overlap gives ``prefetch`` = max(prepare_only, step_only); none gives
``serial`` = prepare_only + step_only. We report medians over rounds (ms per step) and
the min-max spread, the load before and after, devices and versions.

Run (about a minute)::

  python benchmarks/data_overlap.py --reps 3 --steps 20 --batch 128 --device_ms 100

Writes ``benchmarks/results/data_overlap.json`` and ``data_overlap.md``.
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import data

HERE = os.path.dirname(__file__)
CIFAR100 = data.TFDS_DATASETS["cifar100"]


def _pipeline(batch, seed):
  source = data.SyntheticSource(50_000, (32, 32, 3), num_classes=100, seed=0)
  return data.make_pipeline(source, batch_size=batch, seed=seed, train=True, num_classes=100,
                            image_size=32, mean=CIFAR100.mean, std=CIFAR100.std,
                            augment="pad_crop_flip", process_index=0, process_count=1)


def _init(rng):
  k1, k2, k3 = jax.random.split(rng, 3)
  he = jax.nn.initializers.he_normal()
  return {"c1": he(k1, (3, 3, 3, 16)), "c2": he(k2, (3, 3, 16, 32)),
          "w": he(k3, (32, 100)), "b": jnp.zeros(100)}


def _loss(params, batch):
  dn = ("NHWC", "HWIO", "NHWC")
  h = jax.nn.relu(jax.lax.conv_general_dilated(batch["x"], params["c1"], (2, 2), "SAME",
                                               dimension_numbers=dn))
  h = jax.nn.relu(jax.lax.conv_general_dilated(h, params["c2"], (2, 2), "SAME",
                                               dimension_numbers=dn))
  logits = h.mean((1, 2)) @ params["w"] + params["b"]
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def _make_step(tx):
  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(_loss)(params, {"x": batch["x"], "y": batch["y"]})
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--device_ms", type=float, default=100.0)
  parser.add_argument("--out", default=os.path.join(HERE, "results", "data_overlap"))
  args = parser.parse_args()

  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  tx = optax.sgd(0.05, momentum=0.9)
  xla_step = _make_step(tx)
  state = {"params": _init(jax.random.key(0))}
  state["opt"] = tx.init(state["params"])
  place = lambda batch: data.shard_batch(batch, mesh)  # noqa: E731  (the prefetcher's placement)

  def step(kind, batch):
    if kind == "simulated_device":
      time.sleep(args.device_ms / 1e3)  # the host waits; an accelerator would compute
      return 0.0
    state["params"], state["opt"], loss = xla_step(state["params"], state["opt"], batch)
    return float(loss)

  def run(kind, mode, rep):
    it = _pipeline(args.batch, seed=rep).iterator()
    if mode == "step_only":
      batch = place(next(it))
      start = time.perf_counter()
      for _ in range(args.steps):
        step(kind, batch)
      return time.perf_counter() - start
    if mode == "prepare_only":
      start = time.perf_counter()
      for _ in range(args.steps):
        jax.block_until_ready(place(next(it)))
      return time.perf_counter() - start
    buffer = 2 if mode == "prefetch" else 0
    start = time.perf_counter()
    with data.DevicePrefetcher(it, mesh=mesh, buffer_size=buffer) as batches:
      for _ in range(args.steps):
        step(kind, next(batches))
    return time.perf_counter() - start

  kinds = ("xla_cpu", "simulated_device")
  modes = ("serial", "prefetch", "prepare_only", "step_only")
  for kind in kinds:  # compile and warm up
    for mode in modes:
      run(kind, mode, 1000)
  load_before = os.getloadavg()
  times = {(k, m): [] for k in kinds for m in modes}
  for rep in range(args.reps):
    for kind in kinds:
      for mode in modes:
        times[kind, mode].append(1e3 * run(kind, mode, rep) / args.steps)
  load_after = os.getloadavg()

  rows = [{"step": k, "mode": m, "ms_per_step_median": round(statistics.median(t), 1),
           "ms_min": round(min(t), 1), "ms_max": round(max(t), 1)}
          for (k, m), t in times.items()]
  summary = {}
  for kind in kinds:
    med = {r["mode"]: r["ms_per_step_median"] for r in rows if r["step"] == kind}
    summary[kind] = {
        "no_overlap_bound_ms": round(med["prepare_only"] + med["step_only"], 1),
        "perfect_overlap_bound_ms": round(max(med["prepare_only"], med["step_only"]), 1),
        "prefetch_speedup_over_serial": round(med["serial"] / med["prefetch"], 2),
    }
  meta = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
          "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "numpy": np.__version__, "batch": args.batch, "steps": args.steps,
          "reps": args.reps, "device_ms": args.device_ms,
          "loadavg_before": load_before, "loadavg_after": load_after,
          "conditions": "shared 2-core VM, loaded by other jobs (see loadavg)"}
  result = {"meta": meta, "rows": rows, "summary": summary}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(result, f, indent=1)
  lines = [f"Batch {args.batch}, {args.steps} steps x {args.reps} interleaved rounds, "
           f"{meta['num_devices']} {meta['device']} device(s), {meta['cpu_count']} cores, "
           f"simulated device step {args.device_ms:g} ms; load average {load_before[0]:.1f} "
           f"before, {load_after[0]:.1f} after (a shared machine: other jobs ran).", "",
           "| step | mode | ms/step (median) | min | max |", "|---|---|---|---|---|"]
  lines += [f"| {r['step']} | {r['mode']} | {r['ms_per_step_median']} | {r['ms_min']} | "
            f"{r['ms_max']} |" for r in rows]
  lines.append("")
  for kind, s in summary.items():
    lines.append(f"{kind}: no overlap would be prepare + step = {s['no_overlap_bound_ms']} ms, "
                 f"perfect overlap max(prepare, step) = {s['perfect_overlap_bound_ms']} ms; "
                 f"prefetch is {s['prefetch_speedup_over_serial']}x serial.")
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
