"""Train-step speed of the model zoo on this CPU (kdjax; with ``--torch`` also the PyTorch
reference side by side).

For each zoo architecture, one SGD cross-entropy train step (forward + backward, BatchNorm
in train mode; ``jax.jit`` with the BatchNorm statistics updated, PyTorch eager
``model.train()``) on random data, CIFAR models at ``--batch`` x 32x32, ImageNet models at
``--batch`` x 64x64. All are warmed up (compiled) first, then timed interleaved
round-robin; medians and the 25th-75th percentile spread are reported with the machine
load and XLA's FLOP count of the step, so the achieved GFLOP/s shows which zoo models are
slow on CPU for their size (depthwise and grouped convolutions). ``--torch`` needs PyTorch
(``pip install 'kdjax[torch]'``) and uses the test suite's reference models
(tests/torch_models); PyTorch's thread pool collapses on a busy machine, so compare only
on a quiet one.

  python benchmarks/zoo_speed.py --reps 5 --batch 32 [--torch] [--models resnet20 mobilenetv2]

Writes ``benchmarks/results/zoo_speed.json`` and prints a table.
"""

import argparse
import functools
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.models import get_model

ZOO = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
       "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13",
       "mobilenetv2", "shufflenetv1", "shufflenetv2", "resnet18", "resnet34", "resnet50")

RESULTS = os.path.join(os.path.dirname(__file__), "results", "zoo_speed.json")
IMAGENET = ("resnet18", "resnet34", "resnet50")


def jax_step_fn(name, x, y):
  # XLA's convolutions (as when results/zoo_speed.json was taken; XLA's cost analysis cannot
  # count FLOPs inside the oneDNN calls of the default conv_impl="auto" on one CPU device).
  try:
    model = get_model(name, num_classes=10, conv_impl="xla")
  except ValueError:  # no conv_impl field (MLP, MobileNetV2, ShuffleNets: always XLA)
    model = get_model(name, num_classes=10)
  variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(variables, x, y):
    def loss_fn(params):
      logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates
    grads, updates = jax.grad(loss_fn, has_aux=True)(variables["params"])
    params = jax.tree.map(lambda p, g: p - 0.01 * g, variables["params"], grads)
    return {"params": params, **updates}

  flops = step.lower(variables, x, y).compile().cost_analysis().get("flops", float("nan"))
  state = {"v": variables}

  def run():
    state["v"] = step(state["v"], x, y)
    jax.block_until_ready(state["v"])
  return run, flops


def torch_step_fn(name, x, y):
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
  import torch_models  # pylint: disable=import-outside-toplevel
  model = torch_models.build(name, 10).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.01)
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  yt = torch.from_numpy(np.array(y, np.int64))

  def run():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(xt)[0], yt).backward()
    opt.step()
  return run


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--models", nargs="*", default=list(ZOO))
  parser.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
  args = parser.parse_args()
  rows = []
  for name in args.models:
    size = 64 if name in IMAGENET else 32
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch, size, size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=args.batch))
    t0 = time.perf_counter()
    fns = {}
    fns["kdjax"], flops = jax_step_fn(name, x, y)
    if args.torch:
      fns["torch"] = torch_step_fn(name, x, y)
    for fn in fns.values():
      fn()
    compile_s = time.perf_counter() - t0
    times = {k: [] for k in fns}
    for _ in range(args.reps):
      for k, fn in fns.items():
        t = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t)
    row = {"model": name, "input": f"{args.batch}x{size}x{size}x3", "warmup_s": round(compile_s, 1),
           "load_1min": os.getloadavg()[0]}
    for k, ts in times.items():
      row[f"{k}_ms"] = round(1e3 * float(np.median(ts)), 1)
      row[f"{k}_ms_iqr"] = [round(1e3 * float(q), 1) for q in np.percentile(ts, [25, 75])]
    row["step_gflop"] = round(flops / 1e9, 3)
    row["kdjax_gflops_per_s"] = round(flops / 1e6 / row["kdjax_ms"], 2)
    line = (f"{name:13s} {row['input']:>13s} {row['step_gflop']:7.2f} GFLOP  kdjax {row['kdjax_ms']:8.1f} ms"
            f" ({row['kdjax_gflops_per_s']:5.1f} GFLOP/s)")
    if args.torch:
      row["kdjax_over_torch_speed"] = round(row["torch_ms"] / row["kdjax_ms"], 2)
      line += f"  torch {row['torch_ms']:8.1f} ms  speed ratio {row['kdjax_over_torch_speed']:.2f}"
    rows.append(row)
    print(f"{line}  load {row['load_1min']:.1f}", flush=True)
  meta = {"device": jax.devices()[0].device_kind, "cpus": os.cpu_count(), "jax": jax.__version__,
          "python": platform.python_version(), "reps": args.reps, "batch": args.batch}
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
