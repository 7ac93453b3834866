"""The oneDNN convolution (kdjax.ops.conv2d) in a CIFAR KD step: conv_impl="xla" vs "onednn"
vs PyTorch eager, side by side in one run.

Workload: Hinton KD resnet56 (teacher, eval mode) -> resnet20 (student, train mode, BatchNorm
batch statistics), batch 64 x 32x32x3, 100 classes, loss ``0.1 CE + 0.9 T^2 KL(p_t^T || p_s^T)``
at T=4, SGD (momentum 0.9, weight decay 5e-4, lr 0.05), float32, random data. The JAX step is
hand-written here with the same math as ``kdjax.training.make_train_chunk`` (one step per
call, jitted, state donated), the two JAX variants differ only in ``conv_impl``. PyTorch runs
the test suite's RepDistiller reference models (tests/torch_models) eagerly with
``torch.set_num_threads(--threads)``. A separate table times one convolution layer
(forward + both gradients) of each resnet20 shape.

Blocks of ``--steps`` steps are timed round-robin over ``--reps`` repeats after a warm-up; the
table gives medians, the 25-75 percentile spread, and the median of per-repeat ratios
(adjacent blocks), with the 1-minute load average recorded around every block. This machine
is shared: a loaded machine slows PyTorch's thread pool more than XLA's (NOTES.md).

  python benchmarks/conv2d_onednn.py --reps 5 --steps 2 [--profile]

``--profile`` adds a ``jax.profiler`` trace of both JAX steps: milliseconds per step by XLA:CPU
thunk kind (``ffi_call`` is the oneDNN convolutions), i.e. where the time goes.

Writes ``benchmarks/results/conv2d_onednn.json`` and prints markdown tables.
"""

import argparse
import collections
import datetime
import functools
import glob
import gzip
import json
import os
import platform
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.models import get_model
from kdjax.ops import conv2d, onednn_unavailable_reason

RESULTS = os.path.join(os.path.dirname(__file__), "results", "conv2d_onednn.json")
T, ALPHA, LR, MOMENTUM, WD, CLASSES = 4.0, 0.9, 0.05, 0.9, 5e-4, 100


def kd_loss(student_logits, teacher_logits, labels):
  ce = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
  kl = optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(student_logits / T),
                                                   jax.nn.log_softmax(teacher_logits / T))
  return jnp.mean((1 - ALPHA) * ce + ALPHA * T**2 * kl)


def jax_step(conv_impl, x, y):
  teacher = get_model("resnet56", num_classes=CLASSES, conv_impl=conv_impl)
  student = get_model("resnet20", num_classes=CLASSES, conv_impl=conv_impl)
  t_vars = jax.jit(teacher.init)(jax.random.key(0), x)
  s_vars = jax.jit(student.init)(jax.random.key(1), x)
  tx = optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM))
  state = {"params": s_vars["params"], "batch_stats": s_vars["batch_stats"],
           "opt": tx.init(s_vars["params"])}

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, t_vars, x, y):
    t_logits = teacher.apply(t_vars, x, train=False)

    def loss_fn(params):
      logits, upd = student.apply({"params": params, "batch_stats": state["batch_stats"]}, x,
                                  train=True, mutable=["batch_stats"])
      return kd_loss(logits, jax.lax.stop_gradient(t_logits), y), upd

    (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates),
            "batch_stats": upd["batch_stats"], "opt": opt}, loss

  holder = {"state": state}

  def run():
    holder["state"], loss = step(holder["state"], t_vars, x, y)
    return loss

  return run


def torch_step(x, y, threads):
  import torch
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
  from torch_models import build
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  teacher, student = build("resnet56", CLASSES).eval(), build("resnet20", CLASSES).train()
  opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
  xt = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
  yt = torch.from_numpy(y.astype(np.int64))
  f = torch.nn.functional

  def run():
    with torch.no_grad():
      t_logits = teacher(xt)[0]
    s_logits = student(xt)[0]
    kl = f.kl_div(f.log_softmax(s_logits / T, -1), f.log_softmax(t_logits / T, -1),
                  reduction="batchmean", log_target=True)
    loss = (1 - ALPHA) * f.cross_entropy(s_logits, yt) + ALPHA * T**2 * kl
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()

  return run


def conv_layer(impl, shape_x, shape_w, stride):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape_x), jnp.float32)
  w = jnp.asarray(rng.normal(size=shape_w) / np.sqrt(np.prod(shape_w[:3])), jnp.float32)
  pad = ((shape_w[0] // 2,) * 2,) * 2
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv2d(x, w, (stride,) * 2, pad, impl=impl) ** 2),
                          argnums=(0, 1)))
  return lambda: grad(x, w)


def timed_rounds(fns, reps, steps):
  """``{name: [seconds per step for each repeat]}``, blocks interleaved round-robin."""
  times = {name: [] for name in fns}
  loads = []
  for fn in fns.values():  # warm-up: compile and first calls
    for _ in range(2):
      jax.block_until_ready(fn())
  for _ in range(reps):
    for name, fn in fns.items():
      loads.append(os.getloadavg()[0])
      start = time.perf_counter()
      for _ in range(steps):
        out = fn()
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / steps)
  loads.append(os.getloadavg()[0])
  return times, loads


def summarize(times, bases, batch):
  """Medians, spread, and for each base the median (min, max) of per-repeat ratios
  ``base time / time`` (> 1: faster than the base), adjacent blocks only."""
  rows = {}
  for name, ts in times.items():
    ts = np.asarray(ts)
    row = {"ms_median": float(np.median(ts) * 1e3),
           "ms_p25": float(np.percentile(ts, 25) * 1e3),
           "ms_p75": float(np.percentile(ts, 75) * 1e3),
           "samples_per_s": float(batch / np.median(ts)) if batch else None,
           "ms_all": [float(t * 1e3) for t in ts]}
    for base in bases:
      ratio = np.asarray(times[base]) / ts
      row[f"speedup_vs_{base}_median"] = float(np.median(ratio))
      row[f"speedup_vs_{base}_min"] = float(np.min(ratio))
      row[f"speedup_vs_{base}_max"] = float(np.max(ratio))
    rows[name] = row
  return rows


def profile(run, steps=2):
  """Milliseconds per step spent in each kind of XLA:CPU thunk (``ffi_call`` = the oneDNN
  convolutions, ``convolution`` = XLA's, ``*_fusion`` = element-wise/BatchNorm/update work),
  from a ``jax.profiler`` trace of ``steps`` warm steps."""
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        jax.block_until_ready(run())
    (path,) = glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith("$") or "Executable" in name or "Thunk" in name \
        or "Pjit" in name or name.startswith("end:"):
      continue
    totals[re.sub(r"\.\d+$", "", name)] += e.get("dur", 0) / 1e3 / steps
  return dict(totals.most_common(8))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--profile", action="store_true",
                      help="also profile the two JAX steps (ms per step by XLA thunk kind)")
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()
  reason = onednn_unavailable_reason()
  if reason:
    sys.exit(f"conv2d_onednn: the oneDNN convolution is unavailable: {reason}")

  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, CLASSES, size=args.batch).astype(np.int32)
  steps = {"xla": jax_step("xla", jnp.asarray(x), jnp.asarray(y)),
           "onednn": jax_step("onednn", jnp.asarray(x), jnp.asarray(y))}
  torch_version = None
  if not args.no_torch:
    import torch
    torch_version = torch.__version__
    steps["pytorch"] = torch_step(x, y, args.threads)
  kd_times, kd_loads = timed_rounds(steps, args.reps, args.steps)
  profiles = {}
  if args.profile:
    for impl in ("xla", "onednn"):
      profiles[impl] = {"load_1min": os.getloadavg()[0], "ms_per_step": profile(steps[impl])}

  b = args.batch
  shapes = {"3x3 s1 16->16 @32": ((b, 32, 32, 16), (3, 3, 16, 16), 1),
            "3x3 s2 16->32 @32": ((b, 32, 32, 16), (3, 3, 16, 32), 2),
            "1x1 s2 16->32 @32": ((b, 32, 32, 16), (1, 1, 16, 32), 2),
            "3x3 s1 64->64 @8": ((b, 8, 8, 64), (3, 3, 64, 64), 1)}
  layer_rows = {}
  for label, (sx, sw, s) in shapes.items():
    fns = {impl: conv_layer(impl, sx, sw, s) for impl in ("xla", "onednn")}
    times, loads = timed_rounds(fns, args.reps, 10)
    layer_rows[label] = {"rows": summarize(times, ["xla"], None), "load_1min": loads}

  result = {
      "benchmark": "conv2d_onednn",
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "processor": platform.processor()},
      "versions": {"jax": jax.__version__, "torch": torch_version, "python": platform.python_version()},
      "args": {**vars(args), "out": os.path.relpath(args.out)},
      "kd_step": {"workload": "resnet56 -> resnet20 Hinton KD T=4, batch %d, float32" % b,
                  "rows": summarize(kd_times, [k for k in ("xla", "pytorch") if k in kd_times], b),
                  "load_1min": kd_loads},
      "conv_layer_fwd_bwd": layer_rows,
      "kd_step_profile": profiles,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)

  base = "pytorch" if "pytorch" in kd_times else "xla"
  print(f"\nKD step resnet56 -> resnet20, batch {b}; load (1 min) {min(kd_loads):.1f}-"
        f"{max(kd_loads):.1f}; {args.reps} repeats x {args.steps} steps\n")
  print(f"| impl | ms/step (median) | p25-p75 | samples/s | x xla (median, min-max) "
        f"| x {base} (median, min-max) |")
  print("|---|---|---|---|---|---|")
  for name, r in result["kd_step"]["rows"].items():
    ratios = " | ".join(f"{r[f'speedup_vs_{k}_median']:.2f} ({r[f'speedup_vs_{k}_min']:.2f}-"
                        f"{r[f'speedup_vs_{k}_max']:.2f})" for k in ("xla", base))
    print(f"| {name} | {r['ms_median']:.1f} | {r['ms_p25']:.1f}-{r['ms_p75']:.1f} | "
          f"{r['samples_per_s']:.0f} | {ratios} |")
  print("\nOne convolution, forward + both gradients (ms, median; x xla)\n")
  print("| layer | xla | onednn | onednn speedup (median, min-max) |")
  print("|---|---|---|---|")
  for label, entry in layer_rows.items():
    r = entry["rows"]
    print(f"| {label} | {r['xla']['ms_median']:.2f} | {r['onednn']['ms_median']:.2f} | "
          f"{r['onednn']['speedup_vs_xla_median']:.2f} ({r['onednn']['speedup_vs_xla_min']:.2f}-"
          f"{r['onednn']['speedup_vs_xla_max']:.2f}) |")
  for impl, prof in profiles.items():
    total = sum(prof["ms_per_step"].values())
    print(f"\nProfile, conv_impl={impl} (load {prof['load_1min']:.1f}), ms per step by thunk kind: "
          + ", ".join(f"{k} {v:.0f} ({100 * v / total:.0f}%)" for k, v in prof["ms_per_step"].items()))
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
