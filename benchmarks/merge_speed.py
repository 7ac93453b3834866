"""Time of the data-aware merges and of permutation alignment on CIFAR ResNets (random
weights: the cost does not depend on the values), one CPU device.

  python benchmarks/merge_speed.py [--reps 2]

* ``diagonal_fisher`` (per-example gradients, 256 images in 4 batches) + ``fisher_merge`` of
  2 members, and ``input_grams`` + ``regmean`` of 2 members, for resnet56;
* ``permutation_align`` of two resnet20s at widths 1x, 2x, 4x.
Medians over ``--reps``; the XLA compile of the first call is excluded (a warm-up run).
Writes benchmarks/results/merge_speed.json / .md.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import _bench  # noqa: E402

from kdjax import ensemble, fusion  # noqa: E402
from kdjax.models import count_params, get_model  # noqa: E402


def timed(fn, reps):
  fn()  # compile
  out = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return float(np.median(out))


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=2)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(256, 32, 32, 3)), jnp.float32)
  batches = [{"x": x[i:i + 64]} for i in range(0, 256, 64)]
  rows, payload = [], {}

  model = get_model("resnet56", num_classes=100, conv_impl="xla")
  members = [model.init(jax.random.key(i), x[:2]) for i in range(2)]
  stats = members[0]["batch_stats"]
  apply = lambda p, xb: model.apply({"params": p, "batch_stats": stats}, xb)  # noqa: E731
  params = ensemble.stack([m["params"] for m in members])

  def fisher():
    fs = [fusion.diagonal_fisher(apply, m["params"], batches, key=jax.random.key(i))
          for i, m in enumerate(members)]
    return fusion.fisher_merge(params, ensemble.stack(fs))

  def regmean():
    grams = [fusion.input_grams(apply, m["params"], batches) for m in members]
    return fusion.regmean(params, ensemble.stack(grams))

  n = count_params(members[0]["params"])
  for name, fn in (("fisher: diagonal_fisher x2 + fisher_merge", fisher),
                   ("regmean: input_grams x2 + regmean", regmean)):
    sec = timed(fn, args.reps)
    payload[name] = sec
    rows.append([name, "resnet56", f"{n:,}", f"{sec:.2f}"])
    print(rows[-1], flush=True)

  for mult in (1, 2, 4):
    widths = tuple(w * mult for w in (16, 16, 32, 64))
    m = get_model("resnet20", num_classes=10, widths=widths, conv_impl="xla")
    a, b = (m.init(jax.random.key(i), x[:2]) for i in range(2))
    spec = fusion.permutation_spec(m)
    sec = timed(lambda: fusion.permutation_align(a, b, spec), args.reps)
    name = f"permutation_align resnet20 {mult}x"
    payload[name] = sec
    rows.append([name, f"resnet20 widths {widths}", f"{count_params(a['params']):,}",
                 f"{sec:.2f}"])
    print(rows[-1], flush=True)
  meta = _bench.machine_meta(reps=args.reps)
  table = (f"Merge time, one CPU device; {_bench.meta_line(meta)}\n\n"
           + _bench.markdown_table(["operation", "model", "params", "median seconds"], rows))
  _bench.write_outputs("merge_speed", {"meta": meta, "seconds": payload}, table)


if __name__ == "__main__":
  main()
