"""Inference speed of stacked ensembles: each `kdjax.ensemble.apply` strategy vs a loop.

For M = 1, 2, 4, 8 members of the MNIST-1D MLP (40-100-100-10) and CNN1D (im2col convs),
batch B, it times on 8 virtual CPU devices (so `sharded_apply` runs for real):

* ``apply[vmap|map|loop|auto]``: `kdjax.ensemble.apply` with each strategy;
* ``py_loop``: a Python loop of one jitted member call per member (params as a list),
  outputs stacked: the baseline that `apply` must not be slower than;
* ``sharded``: `kdjax.ensemble.sharded_apply` on a 1-D mesh of the 8 virtual devices,
  params placed once with `shard_stacked` (M < 8 padded by repeating members).

Every function is compiled and run once before timing; then the implementations are
interleaved round-robin (``--reps`` rounds) so load changes hit them equally; we report the
median time per call and the spread (25th-75th percentile) in ms, the speed relative to
``py_loop``, the machine load before and after, the device and versions.

Run (about 1-2 minutes with the defaults)::

  python benchmarks/ensemble_speed.py --reps 15 --batch 1000

Writes ``benchmarks/results/ensemble_speed.json`` and prints a table.
Note: the 8 virtual devices share this machine's cores, so ``sharded`` measures the
overhead of the sharded program here, not a multi-device speedup.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kdjax import ensemble  # noqa: E402
from kdjax.models import get_model  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "ensemble_speed.json")


def _make_apply(model):
  return lambda params, x: model.apply({"params": params}, x)


def _candidates(name, num, batch, mesh):
  model = get_model(name)
  apply_fn = _make_apply(model)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 40)), jnp.float32)
  members = [model.init(jax.random.key(i), x[:1])["params"] for i in range(num)]
  stacked = ensemble.stack(members)
  placed = ensemble.shard_stacked(stacked, mesh, "member")
  member_fn = jax.jit(apply_fn)

  def py_loop():
    return jnp.stack([member_fn(p, x) for p in members])

  fns = {"py_loop": py_loop}
  for s in ("vmap", "map", "loop", "auto"):
    fns[f"apply[{s}]"] = lambda s=s: ensemble.apply(apply_fn, stacked, x, strategy=s)
  fns["sharded"] = lambda: ensemble.sharded_apply(apply_fn, placed, x, mesh=mesh,
                                                  num_members=num)
  ref = np.asarray(py_loop())
  for k, f in fns.items():  # compile + check equality
    np.testing.assert_allclose(np.asarray(f()), ref, rtol=2e-5, atol=2e-5, err_msg=k)
  return fns, ensemble.choose_strategy(apply_fn, stacked, x)


def _time(fns, reps):
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f())
      times[k].append(time.perf_counter() - t0)
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reps", type=int, default=15, help="interleaved timing rounds")
  parser.add_argument("--batch", type=int, default=1000)
  parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8])
  parser.add_argument("--models", nargs="+", default=["mlp", "cnn1d"])
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()

  mesh = ensemble.make_member_mesh(8)
  load_before = os.getloadavg()
  rows = []
  for name in args.models:
    for num in args.members:
      fns, auto = _candidates(name, num, args.batch, mesh)
      times = _time(fns, args.reps)
      base = float(np.median(times["py_loop"]))
      for k, ts in times.items():
        ms = np.asarray(ts) * 1e3
        rows.append({"model": name, "members": num, "impl": k, "auto_choice": auto,
                     "median_ms": float(np.median(ms)),
                     "p25_ms": float(np.percentile(ms, 25)),
                     "p75_ms": float(np.percentile(ms, 75)),
                     "speed_vs_py_loop": base / float(np.median(ts))})
  load_after = os.getloadavg()

  meta = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__,
          "batch": args.batch, "reps": args.reps,
          "loadavg_before": load_before, "loadavg_after": load_after}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1)

  print(f"# {meta['backend']} ({meta['device']}, {meta['num_devices']} virtual devices, "
        f"{meta['cpu_count']} cores), jax {meta['jax']}, flax {meta['flax']}, "
        f"batch {args.batch}, {args.reps} interleaved reps, "
        f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")
  print(f"{'model':6} {'M':>2} {'impl':12} {'median ms':>9} {'p25-p75 ms':>13} "
        f"{'x py_loop':>9}  auto")
  for r in rows:
    print(f"{r['model']:6} {r['members']:2d} {r['impl']:12} {r['median_ms']:9.2f} "
          f"{r['p25_ms']:6.2f}-{r['p75_ms']:<6.2f} {r['speed_vs_py_loop']:9.2f}  "
          f"{r['auto_choice']}")


if __name__ == "__main__":
  main()
