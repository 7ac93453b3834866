"""Accelerator check: resnet32x4 -> resnet8x4 KD train step, float32 and bfloat16.

kdjax's real chunked train step (``make_train_chunk``: teacher forward + student
forward/backward + SGD momentum, Hinton loss T = 4) on synthetic CIFAR-shaped inputs
(``[B, 32, 32, 3]``, 100 classes; nothing is downloaded) for ``--steps`` steps per dtype.
Reported: images/s, step time, XLA's FLOPs of one step (``cost_analysis``) and the achieved
rate as a fraction of the device's bf16 (and float32) matmul rate measured in the same run
(8192^3 on an accelerator).

bfloat16 here is *compute* in bf16 with float32 master weights: the student's and teacher's
params and the inputs are cast to bf16 inside the step (the cast is differentiated, so
gradients and the SGD update stay float32; BatchNorm statistics stay float32; the loss is
computed on float32 logits). kdjax's zoo has no ``dtype`` field yet on main, hence the
cast in this script (``CastModel``).

Run by ``benchmarks/gpu_check.sh`` (under 5 minutes on one GPU); ``--cpu-smoke`` runs two
steps at batch 4 on the CPU so the test suite can smoke it.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402

from kdjax import losses  # noqa: E402
from kdjax.models import as_model, get_model  # noqa: E402
from kdjax.models._adapters import ModelOutput  # noqa: E402
from kdjax.training import (create_train_state, frozen_teacher_apply,  # noqa: E402
                            make_optimizer, make_train_chunk)


class CastModel:
  """A :class:`kdjax.models.Model` that runs ``model`` with its params and inputs cast to
  ``dtype`` (BatchNorm statistics and the returned logits stay float32)."""

  def __init__(self, model, dtype):
    self.inner, self.dtype = as_model(model), jnp.dtype(dtype)

  def init(self, rng, x):
    return self.inner.init(rng, x)

  def apply(self, variables, x, *, train, rng=None, features=()):
    cast = {**variables, "params": jax.tree.map(lambda p: p.astype(self.dtype),
                                                variables["params"])}
    out = self.inner.apply(cast, x.astype(self.dtype), train=train, rng=rng, features=features)
    return ModelOutput(out.logits.astype(jnp.float32), out.features, out.state)


def matmul_rate(dtype, n, calls=10):
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = f(a)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - t0) / calls)
  return 2 * n ** 3 / best / 1e9


def run_dtype(dtype, batch, steps, chunk, seed=0):
  teacher = get_model("resnet32x4", num_classes=100)
  student = get_model("resnet8x4", num_classes=100)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(chunk, batch, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 100, size=(chunk, batch)), jnp.int32)
  t_vars = teacher.init(jax.random.key(seed + 1), x[0])
  s_model, t_model = CastModel(student, dtype), CastModel(teacher, dtype)
  objective = losses.make_objective([("hinton_kd", 1.0, {"temperature": 4.0, "alpha": 0.9})])
  tx = make_optimizer(ml_collections.ConfigDict(
      {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "schedule": "constant"}), steps)
  fn = make_train_chunk(model=s_model, objective=objective, tx=tx,
                        teacher_apply=frozen_teacher_apply(t_model))
  state = create_train_state(s_model, tx, x[0], rng=jax.random.key(seed))
  batches = {"x": x, "y": y}
  one = {"x": x[:1], "y": y[:1]}
  compiled_one = fn.lower(state, one, t_vars).compile()
  cost = compiled_one.cost_analysis()  # of one step (a scan body may be counted once)
  flops = float((cost[0] if isinstance(cost, list) else cost)["flops"])
  if chunk == 1:
    fn = compiled_one  # one compilation only (the CPU smoke)
  state, m = fn(state, batches, t_vars)  # compile + warm-up
  jax.block_until_ready((state, m))
  calls = max(steps // chunk, 1)
  t0 = time.perf_counter()
  for _ in range(calls):
    state, m = fn(state, batches, t_vars)
  jax.block_until_ready((state, m))
  seconds = (time.perf_counter() - t0) / (calls * chunk)
  return {"dtype": str(jnp.dtype(dtype)), "batch": batch, "steps": calls * chunk,
          "step_ms": seconds * 1e3, "images_per_s": batch / seconds,
          "step_gflop": flops / 1e9, "gflops": flops / seconds / 1e9,
          "final_loss": float(m["loss"])}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--chunk", type=int, default=50)
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--cpu-smoke", action="store_true", help="2 steps of batch 4 on the CPU")
  parser.add_argument("--out-dir", default=_bench.RESULTS_DIR)
  args = parser.parse_args(argv)
  if args.cpu_smoke:
    jax.config.update("jax_platforms", "cpu")
    args.batch, args.steps, args.chunk = 4, 2, 1
  n = 8192 if jax.default_backend() != "cpu" else 256
  rates = {"bf16_matmul_gflops": matmul_rate(jnp.bfloat16, n),
           "f32_matmul_gflops": matmul_rate(jnp.float32, n), "matmul_n": n}
  load0 = os.getloadavg()[0]
  rows = [run_dtype(d, args.batch, args.steps, args.chunk) for d in args.dtypes]
  for r in rows:
    r["fraction_of_bf16_matmul"] = r["gflops"] / rates["bf16_matmul_gflops"]
  meta = _bench.machine_meta(load=[(load0, os.getloadavg()[0])], cpu_smoke=args.cpu_smoke,
                             **rates)
  body = [[r["dtype"], r["batch"], r["steps"], f"{r['images_per_s']:,.1f}",
           f"{r['step_ms']:.2f}", f"{r['step_gflop']:.1f}", f"{r['gflops']:,.0f}",
           f"{100 * r['fraction_of_bf16_matmul']:.0f}%", f"{r['final_loss']:.3f}"]
          for r in rows]
  table = (f"resnet32x4 -> resnet8x4 KD step on {meta['device']}, {_bench.meta_line(meta)}; "
           f"matmul {n}^3: bf16 {rates['bf16_matmul_gflops']:,.0f} GFLOP/s, float32 "
           f"{rates['f32_matmul_gflops']:,.0f}\n\n" + _bench.markdown_table(
               ["dtype", "batch", "steps", "images/s", "step ms", "GFLOP/step", "GFLOP/s",
                "of bf16 matmul", "final loss"], body))

  def plot(ax):
    ax.bar([r["dtype"] for r in rows], [r["images_per_s"] for r in rows])
    ax.set_ylabel("images/s")
    ax.set_title(f"resnet32x4 -> resnet8x4 KD, {meta['device']}", fontsize=9)

  name = "gpu_check_cpu_smoke" if args.cpu_smoke else "gpu_check"
  _bench.write_outputs(name, {"meta": meta, "rows": rows}, table, args.out_dir, plot)
  return rows


if __name__ == "__main__":
  main()
