"""KD train-step speed: kdjax's real train step against PyTorch eager (+ torchdistill).

The step is the same math everywhere: teacher forward (eval mode, no gradient) + student
forward/backward (train mode: BatchNorm batch statistics) + SGD update (lr 0.01, momentum
0.9), Hinton loss with T = 4 mixing 0.9 soft KL and 0.1 hard CE, float32, random inputs
already in memory. Candidates (``--impls``):

* ``kdjax_chunk``: ``kdjax.training.make_train_chunk`` -- what ``kdjax train`` runs --
  with ``--chunk`` steps per call inside one jitted ``lax.scan`` (``kdjax train`` uses
  ``config.log_every`` steps per chunk);
* ``kdjax_1``: the same function with one step per call;
* ``kdjax_cached``: a chunk with the teacher's logits precomputed (``teacher.cache``);
* ``torchdistill``: PyTorch eager, loss = torchdistill's ``KDLoss`` (alpha 0.1 on CE,
  beta 0.9 on T^2 KL: the same mixture);
* ``torch``: PyTorch eager, the same loss written with ``F.kl_div`` + ``F.cross_entropy``.

PyTorch and torchdistill are optional: missing ones are left out of the table. Both
frameworks use every core (``torch.set_num_threads(os.cpu_count())``; XLA's default).

Timing: see ``benchmarks/_bench.py`` (compile + warm-up first, interleaved blocks of
``--block`` steps, ``--reps`` rounds, medians and 25th-75th percentiles, per-round ratios
to torchdistill -- to plain PyTorch when torchdistill is absent --, the load before and
after every round). GFLOP/s: XLA's ``cost_analysis()`` FLOPs of the compiled one-step
program, built with ``conv_impl="xla"`` for the CNNs (XLA cannot count the FLOPs inside the
oneDNN FFI calls that the default ``"auto"`` runs on one CPU device); the online step's count
is used for PyTorch, which computes the same math, the cached step's own count for
``kdjax_cached``; as a fraction of each framework's float32 1024^3 matmul rate, timed as one more block in the same
interleaved rounds (so it sees the same load as the steps).

Workloads: W1 Hinton MLPs 784-1200-1200-10 -> 784-800-800-10 at batch 128 and 1024; W2
CIFAR resnet56 -> resnet20, batch 64; W4 resnet32x4 -> resnet8x4, batch 64 (100 classes).

  python benchmarks/step_speed.py                       # all workloads, about 5 min quiet
  python benchmarks/step_speed.py --workloads W1_b128 W1_b1024 --reps 7
  python benchmarks/step_speed.py --quick --out-dir /tmp/x   # smoke test, tiny sizes
  python benchmarks/step_speed.py --workloads W2 --no-torch --profile /tmp/trace  # a trace

Writes ``step_speed.{json,md,png}`` (``--name``) to ``benchmarks/results/`` (or ``--out-dir``).
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402

from kdjax import losses  # noqa: E402
from kdjax.models import get_model  # noqa: E402
from kdjax.training import (create_train_state, frozen_teacher_apply,  # noqa: E402
                            make_optimizer, make_train_chunk)
from kdjax.training import _nonfinite  # noqa: E402

TEMPERATURE, ALPHA, LR, MOMENTUM = 4.0, 0.9, 0.01, 0.9

WORKLOADS = {
    "W1_b128": dict(teacher=("mlp", {"hidden": (1200, 1200)}),
                    student=("mlp", {"hidden": (800, 800)}), shape=(784,), classes=10,
                    batch=128),
    "W1_b1024": dict(teacher=("mlp", {"hidden": (1200, 1200)}),
                     student=("mlp", {"hidden": (800, 800)}), shape=(784,), classes=10,
                     batch=1024),
    "W2": dict(teacher=("resnet56", {}), student=("resnet20", {}), shape=(32, 32, 3),
               classes=100, batch=64),
    "W4": dict(teacher=("resnet32x4", {}), student=("resnet8x4", {}), shape=(32, 32, 3),
               classes=100, batch=64),
}
QUICK = {
    "W1_tiny": dict(teacher=("mlp", {"hidden": (32, 32)}), student=("mlp", {"hidden": (16,)}),
                    shape=(20,), classes=10, batch=8),
    "W2_tiny": dict(teacher=("resnet8", {}), student=("resnet8", {}), shape=(32, 32, 3),
                    classes=10, batch=2),
}
IMPLS = ("kdjax_chunk", "kdjax_1", "kdjax_cached", "torchdistill", "torch")


# ------------------------------------------------------------------------------- kdjax


def kdjax_candidates(w: dict, chunk: int, block: int, impls, seed: int = 0) -> tuple[dict, dict]:
  """``{impl: run(block steps)}`` for the kdjax impls, and XLA's FLOPs of one step
  (``{"online": ..., "cached": ...}``)."""
  (tname, tkw), (sname, skw) = w["teacher"], w["student"]
  teacher = get_model(tname, num_classes=w["classes"], **tkw)
  student = get_model(sname, num_classes=w["classes"], **skw)
  rng = np.random.default_rng(seed)
  b = w["batch"]
  x = jnp.asarray(rng.normal(size=(chunk, b, *w["shape"])), jnp.float32)
  y = jnp.asarray(rng.integers(0, w["classes"], size=(chunk, b)), jnp.int32)
  t_vars = teacher.init(jax.random.key(seed + 1), x[0])
  objective = losses.make_objective([("hinton_kd", 1.0,
                                      {"temperature": TEMPERATURE, "alpha": ALPHA})])
  opt = ml_collections.ConfigDict({"name": "sgd", "learning_rate": LR, "momentum": MOMENTUM,
                                   "schedule": "constant"})
  tx = _nonfinite.wrap_optimizer(make_optimizer(opt, 10 ** 6), "stop", 10 ** 6)
  online = make_train_chunk(model=student, objective=objective, tx=tx,
                            teacher_apply=frozen_teacher_apply(teacher))
  cached = make_train_chunk(model=student, objective=objective, tx=tx)
  t_apply = jax.jit(frozen_teacher_apply(teacher))
  t_logits = jax.vmap(lambda xb: t_apply(t_vars, xb)[0])(x)

  def fresh():
    return create_train_state(student, tx, x[0], rng=jax.random.key(seed))

  one = {"x": x[:1], "y": y[:1]}

  def step_flops(fn, batch, teacher_vars):
    cost = fn.lower(fresh(), batch, teacher_vars).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])

  # XLA's cost analysis cannot see into the oneDNN FFI convolutions that conv_impl="auto"
  # runs on one CPU device: count the FLOPs of the same step with XLA's convolutions.
  online_x, cached_x = online, cached
  if len(w["shape"]) == 3:
    student_x = get_model(sname, num_classes=w["classes"], conv_impl="xla", **skw)
    teacher_x = get_model(tname, num_classes=w["classes"], conv_impl="xla", **tkw)
    online_x = make_train_chunk(model=student_x, objective=objective, tx=tx,
                                teacher_apply=frozen_teacher_apply(teacher_x))
    cached_x = make_train_chunk(model=student_x, objective=objective, tx=tx)
  flops = {"online": step_flops(online_x, one, t_vars)}
  if "kdjax_cached" in impls:  # no teacher forward in this step
    flops["cached"] = step_flops(cached_x, {**one, "teacher_logits": t_logits[:1]}, None)

  def runner(fn, batches, steps_per_call, teacher_vars):
    if block % steps_per_call:
      raise ValueError(f"--block={block} is not a multiple of {steps_per_call} steps per call")
    state = [fresh()]

    def run():
      s = state[0]
      for _ in range(block // steps_per_call):
        s, metrics = fn(s, batches, teacher_vars)
      jax.block_until_ready((s, metrics))
      state[0] = s

    run()  # compile + warm-up
    return run

  cands = {}
  if "kdjax_chunk" in impls:
    cands["kdjax_chunk"] = runner(online, {"x": x, "y": y}, chunk, t_vars)
  if "kdjax_1" in impls:
    cands["kdjax_1"] = runner(online, one, 1, t_vars)
  if "kdjax_cached" in impls:
    cands["kdjax_cached"] = runner(cached, {"x": x, "y": y, "teacher_logits": t_logits}, chunk,
                                   None)
  return cands, flops


# ------------------------------------------------------------------------------ PyTorch


def _torch_model(torch, name, kw, classes, shape):
  if name == "mlp":
    dims = [int(np.prod(shape)), *kw["hidden"]]
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
      layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(torch.nn.Flatten(), *layers, torch.nn.Linear(dims[-1], classes))
    return lambda x: net(x), net
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.join(repo, "tests"))
  from torch_models import build  # the test suite's reference models (RepDistiller's)
  net = build(name, classes)
  return lambda x: net(x)[0], net


def torch_candidates(w: dict, block: int, impls, seed: int = 0) -> dict:
  torch = _bench.torch_or_none()
  if torch is None:
    return {}
  import torch.nn.functional as F
  torch.manual_seed(seed)
  (tname, tkw), (sname, skw) = w["teacher"], w["student"]
  t_fwd, t_net = _torch_model(torch, tname, tkw, w["classes"], w["shape"])
  s_fwd, s_net = _torch_model(torch, sname, skw, w["classes"], w["shape"])
  t_net.eval()
  s_net.train()
  rng = np.random.default_rng(seed)
  shape = w["shape"] if len(w["shape"]) == 1 else (w["shape"][2], *w["shape"][:2])  # NCHW
  x = torch.as_tensor(rng.normal(size=(w["batch"], *shape)), dtype=torch.float32)
  y = torch.as_tensor(rng.integers(0, w["classes"], size=w["batch"]))
  opt = torch.optim.SGD(s_net.parameters(), lr=LR, momentum=MOMENTUM)

  def plain_loss(s, t):
    soft = F.kl_div(F.log_softmax(s / TEMPERATURE, 1), F.softmax(t / TEMPERATURE, 1),
                    reduction="batchmean")
    return ALPHA * TEMPERATURE ** 2 * soft + (1 - ALPHA) * F.cross_entropy(s, y)

  loss_fns = {}
  if "torch" in impls:
    loss_fns["torch"] = plain_loss
  if "torchdistill" in impls:
    try:
      from torchdistill.losses.mid_level import KDLoss
    except ImportError:
      KDLoss = None
    if KDLoss is not None:
      kd = KDLoss("fc", "output", "fc", "output", temperature=TEMPERATURE, alpha=1 - ALPHA,
                  beta=ALPHA, reduction="batchmean")
      loss_fns["torchdistill"] = lambda s, t: kd({"fc": {"output": s}}, {"fc": {"output": t}}, y)

  def runner(loss_fn):
    def run():
      for _ in range(block):
        with torch.no_grad():
          t = t_fwd(x)
        loss = loss_fn(s_fwd(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    run()  # warm-up
    return run

  return {k: runner(f) for k, f in loss_fns.items()}


# --------------------------------------------------------------------------------- main


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workloads", nargs="+", default=None)
  parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
  parser.add_argument("--chunk", type=int, default=25, help="steps per kdjax chunk call")
  parser.add_argument("--block", type=int, default=None,
                      help="steps per timed block (default: 2 chunks; 1 chunk for convnets)")
  parser.add_argument("--reps", type=int, default=5, help="interleaved rounds")
  parser.add_argument("--no-torch", action="store_true", help="kdjax rows only")
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: tiny models, chunk 2, 2 rounds")
  parser.add_argument("--out-dir", default=_bench.RESULTS_DIR)
  parser.add_argument("--name", default="step_speed",
                      help="output file stem: <out-dir>/<name>.{json,md,png}")
  parser.add_argument("--profile", default="",
                      help="write a jax.profiler trace of one kdjax block per impl here")
  args = parser.parse_args(argv)
  table_of = QUICK if args.quick else WORKLOADS
  if args.quick:
    args.chunk, args.reps = 2, 2
  names = args.workloads or list(table_of)
  unknown = set(names) - set(table_of)
  if unknown:
    raise ValueError(f"--workloads: unknown {sorted(unknown)}; known: {list(table_of)}")
  impls = [i for i in args.impls if not (args.no_torch and i in ("torch", "torchdistill"))]

  torch = None if args.no_torch else _bench.torch_or_none()
  if torch is not None:
    torch.set_num_threads(os.cpu_count())
  load0 = os.getloadavg()
  mm_n, mm_calls = (256, 2) if args.quick else (1024, 10)
  rows, loads, rate_log = [], [], []
  for name in names:
    w = table_of[name]
    conv = len(w["shape"]) == 3
    block = args.block or (args.chunk if conv else 2 * args.chunk)
    cands, flops = kdjax_candidates(w, args.chunk, block, impls)
    if torch is not None:
      cands.update(torch_candidates(w, block, impls))
    mm_blocks, mm_flops = _bench.matmul_blocks(mm_n, mm_calls, torch is not None)
    cands.update(mm_blocks)
    if args.profile:  # one extra block of each kdjax impl, traced (TensorBoard/Perfetto)
      for impl in [k for k in cands if k.startswith("kdjax")]:
        with jax.profiler.trace(os.path.join(args.profile, f"{name}_{impl}")):
          cands[impl]()
    timed = _bench.interleaved(cands, args.reps)
    loads += timed["load"]
    sec = timed["seconds"]
    rates = {f"{k[len('matmul_'):]}_matmul_gflops":
             mm_flops / float(np.median(sec.pop(k))) / 1e9
             for k in list(sec) if k.startswith("matmul_")}
    rates.setdefault("torch_matmul_gflops", None)
    rate_log.append({"workload": name, **rates})
    base = "torchdistill" if "torchdistill" in sec else ("torch" if "torch" in sec else None)
    for impl, ts in sec.items():
      per_step = np.asarray(ts) / block
      sps = _bench.spread(w["batch"] / per_step)
      step_flops = flops["cached" if impl == "kdjax_cached" else "online"]
      gflops = step_flops / float(np.median(per_step)) / 1e9
      rate = rates["torch_matmul_gflops" if impl.startswith("torch") else "jax_matmul_gflops"]
      row = {"workload": name, "impl": impl, "batch": w["batch"], "block_steps": block,
             "samples_per_s": sps, "step_ms": float(np.median(per_step)) * 1e3,
             "step_gflop": step_flops / 1e9, "gflops": gflops,
             "fraction_of_matmul": gflops / rate if rate else None, **rates,
             "load": timed["load"]}
      if base:
        row["vs"] = base
        row["ratio"] = _bench.paired_ratio(ts, sec[base])
      rows.append(row)
  meta = _bench.machine_meta(load=[tuple(load0[:1]) * 2] + loads, chunk=args.chunk,
                             reps=args.reps, quick=args.quick, matmul_n=mm_n,
                             matmul_rates=rate_log)
  header = ["workload", "impl", "samples/s median (p25-p75)", "step ms", "ratio (p25-p75)",
            "GFLOP/s", "of matmul"]
  body = []
  for r in rows:
    s = r["samples_per_s"]
    ratio = (f"{r['ratio']['median']:.2f}x {r['vs']} ({r['ratio']['p25']:.2f}-"
             f"{r['ratio']['p75']:.2f})" if "ratio" in r else "")
    frac = f"{100 * r['fraction_of_matmul']:.0f}%" if r["fraction_of_matmul"] else ""
    lo = [x for pair in r["load"] for x in pair]
    body.append([f"{r['workload']} (load {min(lo):.1f}-{max(lo):.1f})", r["impl"],
                 f"{s['median']:,.0f} ({s['p25']:,.0f}-{s['p75']:,.0f})", f"{r['step_ms']:.2f}",
                 ratio, f"{r['gflops']:.1f}", frac])
  mm = f"float32 matmul {mm_n}^3 timed in the same rounds (GFLOP/s): " + "; ".join(
      f"{r['workload']} JAX {r['jax_matmul_gflops']:.0f}"
      + (f", PyTorch {r['torch_matmul_gflops']:.0f}" if r["torch_matmul_gflops"] else "")
      for r in rate_log)
  table = (f"KD step, {_bench.meta_line(meta)}; chunk {args.chunk}; {args.reps} rounds; "
           f"{mm}\n\n" + _bench.markdown_table(header, body))

  def plot(ax):
    labels = sorted({r["workload"] for r in rows})
    kinds = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    width = 0.8 / max(len(kinds), 1)
    for j, impl in enumerate(kinds):
      vals = [next((r["samples_per_s"]["median"] for r in rows
                    if r["workload"] == lab and r["impl"] == impl), 0) for lab in labels]
      ax.bar(np.arange(len(labels)) + j * width, vals, width, label=impl)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
    ax.set_yscale("log")
    ax.set_ylabel("samples/s (median)")
    ax.set_title("KD train step, " + _bench.meta_line(meta), fontsize=8)
    ax.legend(fontsize=8)

  _bench.write_outputs(args.name, {"meta": meta, "rows": rows}, table, args.out_dir, plot)
  return rows


if __name__ == "__main__":
  main()
