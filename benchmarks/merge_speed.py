"""Time of the data-aware merges and of permutation alignment on CIFAR ResNets (random
weights: the cost does not depend on the values), one CPU device.

  python benchmarks/merge_speed.py [--reps 2]

* ``diagonal_fisher`` (per-example gradients, 256 images in 4 batches) + ``fisher_merge`` of
  2 members, and ``input_grams`` + ``regmean`` of 2 members, for resnet56;
* ``permutation_align`` of two resnet20s at widths 1x, 2x, 4x.
Medians over ``--reps``; the XLA compile of the first call is excluded (a warm-up run).
Memory: XLA's compiled peak (arguments + outputs + temporaries - aliased, from
``memory_analysis``) of the two programs that run: one member's statistics over one batch
of 64 (the Fisher's per-example gradients, or the unfolded inputs' Grams; it runs once per
member and batch) and the merge of the 2 members' statistics (``fisher_merge``,
``regmean``).
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


def compiled_peak(fn, *args):
  m = jax.jit(fn).lower(*args).compile().memory_analysis()
  return {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
          "temp": int(m.temp_size_in_bytes), "alias": int(m.alias_size_in_bytes),
          "peak": int(m.argument_size_in_bytes + m.output_size_in_bytes
                      + m.temp_size_in_bytes - m.alias_size_in_bytes)}


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

  def fisher(stacked=params, xs=x):
    batch_list = [{"x": xs[i:i + 64]} for i in range(0, 256, 64)]
    fs = [fusion.diagonal_fisher(apply, jax.tree.map(lambda a: a[i], stacked), batch_list,
                                 key=jax.random.key(i)) for i in range(2)]
    return fusion.fisher_merge(stacked, ensemble.stack(fs))

  def regmean(stacked=params, xs=x):
    batch_list = [{"x": xs[i:i + 64]} for i in range(0, 256, 64)]
    grams = [fusion.input_grams(apply, jax.tree.map(lambda a: a[i], stacked), batch_list)
             for i in range(2)]
    return fusion.regmean(stacked, ensemble.stack(grams))

  one = members[0]["params"]
  fisher_stats = lambda p, xb: fusion.diagonal_fisher(  # noqa: E731
      apply, p, [{"x": xb}], key=jax.random.key(0))
  gram_stats = lambda p, xb: fusion.input_grams(apply, p, [{"x": xb}])  # noqa: E731
  fishers = ensemble.stack([fisher_stats(m["params"], x[:64]) for m in members])
  grams = ensemble.stack([gram_stats(m["params"], x[:64]) for m in members])
  programs = {
      "fisher: diagonal_fisher x2 + fisher_merge": (
          compiled_peak(fisher_stats, one, x[:64]),
          compiled_peak(fusion.fisher_merge, params, fishers)),
      "regmean: input_grams x2 + regmean": (
          compiled_peak(gram_stats, one, x[:64]),
          compiled_peak(fusion.regmean, params, grams)),
  }
  n = count_params(members[0]["params"])
  memory = {}
  mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
  for name, fn in (("fisher: diagonal_fisher x2 + fisher_merge", fisher),
                   ("regmean: input_grams x2 + regmean", regmean)):
    sec = timed(fn, args.reps)
    stats_peak, merge_peak = programs[name]
    memory[name] = {"statistics_one_batch": stats_peak, "merge": merge_peak}
    payload[name] = sec
    rows.append([name, "resnet56", f"{n:,}", f"{sec:.2f}", mib(stats_peak["peak"]),
                 mib(merge_peak["peak"])])
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
                 f"{sec:.2f}", "-", "-"])
    print(rows[-1], flush=True)
  meta = _bench.machine_meta(reps=args.reps)
  table = (f"Merge time and compiled memory, one CPU device, 256 images of 32x32 in batches of "
           f"64; {_bench.meta_line(meta)}\n\n"
           + _bench.markdown_table(["operation", "model", "params", "median seconds",
                                    "statistics peak MiB (one batch)",
                                    "merge peak MiB"], rows))
  _bench.write_outputs("merge_speed", {"meta": meta, "seconds": payload, "memory_bytes": memory},
                       table)


if __name__ == "__main__":
  main()
