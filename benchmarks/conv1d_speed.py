"""Train-step speed of the MNIST-1D CNN: im2col convolution vs XLA's native 1-D conv.

`kdjax.models.CNN1D` takes ``conv_implementation="im2col"`` (strided slices + one
matmul) or ``"xla"`` (``lax.conv_general_dilated``). Both share parameters and agree to
float tolerance (tests/test_models.py). This benchmark times one jitted cross-entropy
train step (forward + backward + Adam), the same step inside a 100-step ``lax.scan``
(how ``kdjax train`` runs it; reported per step) and a forward pass of each, interleaved
round-robin after a warm-up compile, and reports medians, the 25th-75th percentile
spread, the ratio, the device, versions and the machine load.

  python benchmarks/conv1d_speed.py --reps 30 --batch 100

Writes ``benchmarks/results/conv1d_speed.json`` and prints a table.
"""

import argparse
import json
import os
import platform
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.models import get_model

CHUNK = 100
RESULTS = os.path.join(os.path.dirname(__file__), "results", "conv1d_speed.json")


def make_fns(implementation: str, batch: int):
  model = get_model("cnn1d", conv_implementation=implementation)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, 40)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=batch))
  params = model.init(jax.random.key(0), x)["params"]
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  def loss_fn(p):
    logits = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s):
    grads = jax.grad(loss_fn)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  @jax.jit
  def chunk(p, s):  # the trainer's form: CHUNK steps inside one lax.scan
    def body(carry, _):
      grads = jax.grad(loss_fn)(carry[0])
      updates, s2 = tx.update(grads, carry[1], carry[0])
      return (optax.apply_updates(carry[0], updates), s2), None
    return jax.lax.scan(body, (p, s), None, length=CHUNK)[0]

  forward = jax.jit(lambda p: model.apply({"params": p}, x))
  state = {"p": params, "s": opt_state}

  def run_step():
    state["p"], state["s"] = step(state["p"], state["s"])
    jax.block_until_ready(state["p"])

  def run_chunk():  # reported per step
    state["p"], state["s"] = chunk(state["p"], state["s"])
    jax.block_until_ready(state["p"])

  def run_forward():
    jax.block_until_ready(forward(state["p"]))

  return {"train_step": run_step, "scan_step": run_chunk, "forward": run_forward}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reps", type=int, default=30, help="interleaved rounds")
  parser.add_argument("--inner", type=int, default=50, help="calls per timed block")
  parser.add_argument("--batch", type=int, default=100)
  args = parser.parse_args()
  load_before = os.getloadavg()
  fns = {impl: make_fns(impl, args.batch) for impl in ("im2col", "xla")}
  for impl in fns.values():  # compile + warm up
    for f in impl.values():
      for _ in range(5):
        f()
  times = {(impl, kind): [] for impl in fns for kind in fns[impl]}
  for _ in range(args.reps):
    for (impl, kind), samples in times.items():
      f = fns[impl][kind]
      start = time.perf_counter()
      for _ in range(args.inner):
        f()
      per_call = (time.perf_counter() - start) / args.inner * 1e6
      samples.append(per_call / CHUNK if kind == "scan_step" else per_call)
  rows = []
  for kind in ("train_step", "scan_step", "forward"):
    med = {impl: float(np.median(times[(impl, kind)])) for impl in fns}
    for impl in fns:
      q25, q75 = np.percentile(times[(impl, kind)], [25, 75])
      rows.append({"what": kind, "implementation": impl, "median_us": med[impl],
                   "p25_us": float(q25), "p75_us": float(q75),
                   "speedup_vs_xla": med["xla"] / med[impl]})
  meta = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
          "jax": jax.__version__, "flax": flax.__version__, "python": platform.python_version(),
          "batch": args.batch, "reps": args.reps, "inner": args.inner,
          "load_before": load_before, "load_after": os.getloadavg()}
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=2)
  print(f"CNN1D (MNIST-1D ConvBase), batch {args.batch}, {meta['device']}, jax {jax.__version__}, "
        f"load {load_before[0]:.1f} -> {meta['load_after'][0]:.1f}")
  print("| what | implementation | median (us) | p25-p75 (us) | speed vs xla |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['what']} | {r['implementation']} | {r['median_us']:.0f} | "
          f"{r['p25_us']:.0f}-{r['p75_us']:.0f} | {r['speedup_vs_xla']:.2f}x |")


if __name__ == "__main__":
  main()
