"""Where the time goes in the issue-12 workloads that miss their targets.

For each workload, in one process (``--what``):

* ``W1_b128`` (also ``W1_b1024``): the KD step of ``step_speed.py`` (``kdjax_chunk``: 25 steps
  per ``lax.scan`` call; ``kdjax_1``: one step per call) against PyTorch + torchdistill, and
  the step's own matmuls (GEMMs) timed alone: teacher forward, student forward, student
  weight gradients and input gradients (all but the first layer), each shape once per step,
  in JAX (one jitted call per step) and in PyTorch (``torch.mm``);
* ``ens_mlp``: 8 Hinton-ish MLP members (784-1200-1200-10), batch 256, inference,
  ``kdjax.ensemble.apply`` (default strategy) against the PyTorch loop / ``torch.func`` vmap
  and the members' GEMMs alone (8 x 3 shapes);
* ``ens_resnet20``: 8 ResNet-20 members, batch 256, ``apply`` with the models' default
  ``conv_impl="auto"`` (oneDNN on one CPU device when it loads) and with ``"xla"``, against
  the PyTorch loop.

Every candidate is timed in interleaved rounds (``_bench.interleaved``); then one block of
each kdjax candidate runs under ``jax.profiler.trace`` and its XLA:CPU thunks (trace events
that carry an ``hlo_op``) are summed by category: ``ynn_fusion/dot`` (XLA:CPU hands its GEMMs
-- and, in XLA-convolution models, its convolutions -- to YNNPACK as ``ynn_fusion`` thunks;
small dots run as ``dot``), ``XLA conv`` (convolutions XLA keeps),  ``oneDNN conv (FFI)``, ``copy/transpose``,
``slicing`` (scan inputs/outputs), ``elementwise/reduce`` (every other fusion). The categories
are thread time summed over XLA's executor threads (thunks run concurrently), shown as ms
per step and as a share; ``wall`` is the traced block's own wall time per step.

Derived numbers: ``step / own GEMMs`` = how far the step is from its matmul floor (1.0 =
nothing but its GEMMs); ``torchdistill / JAX GEMMs`` = the best ratio to torchdistill any
step built from these GEMMs could reach on this machine; ``dispatch`` = ``kdjax_1`` minus
``kdjax_chunk`` per step.

  python benchmarks/profile_breakdown.py                        # about 4 min quiet
  python benchmarks/profile_breakdown.py --what W1_b128 --reps 5
  python benchmarks/profile_breakdown.py --quick --no-torch --out-dir /tmp/x   # smoke

Writes ``profile_breakdown.{json,md,png}`` to ``benchmarks/results/`` (or ``--out-dir``).
"""

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402
import ensemble_vs_torch  # noqa: E402
import step_speed  # noqa: E402

from kdjax import ensemble  # noqa: E402
from kdjax.models import get_model  # noqa: E402

WHAT = ("W1_b128", "W1_b1024", "ens_mlp", "ens_resnet20")
DEFAULT_WHAT = ("W1_b128", "ens_mlp", "ens_resnet20")
CATEGORIES = ("ynn_fusion/dot", "XLA conv", "oneDNN conv (FFI)", "copy/transpose", "slicing",
              "elementwise/reduce")


# ------------------------------------------------------------------------------- traces


def _base(hlo_op: str) -> str:
  """``"ynn_fusion.3"`` -> ``"ynn_fusion"``."""
  head, _, tail = hlo_op.rpartition(".")
  return head if head and tail.isdigit() else hlo_op


def category(hlo_op: str) -> str:
  """The category of an XLA:CPU thunk from its HLO op name (``ynn_fusion.3`` -> ``ynn_fusion/dot``)."""
  name = _base(hlo_op)
  if name in ("ynn_fusion", "xnn_fusion", "dot") or name.startswith("dot") or "gemm" in name:
    return "ynn_fusion/dot"
  if "convolution" in name or name.startswith("conv"):
    return "XLA conv"
  if "custom-call" in name or "custom_call" in name or name.startswith("ffi"):
    return "oneDNN conv (FFI)"
  if name.startswith(("copy", "transpose")) or "transpose" in name:
    return "copy/transpose"
  if "dynamic-slice" in name or "dynamic-update-slice" in name or name == "slice":
    return "slicing"
  return "elementwise/reduce"


def trace_breakdown(run, units: int) -> dict:
  """Runs ``run()`` once under ``jax.profiler.trace``; ms per unit (step or call) of thunk
  time by category, the block's wall ms per unit, and the top thunk names."""
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      t0 = time.perf_counter()
      run()
      wall = time.perf_counter() - t0
    (path,) = glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  by_cat, by_name = collections.Counter(), collections.Counter()
  for e in events:
    op = (e.get("args") or {}).get("hlo_op")
    if e.get("ph") != "X" or not op or e["name"].startswith("end:") or _base(op) in (
        "while", "call", "conditional"):  # control flow: its time is its body's thunks
      continue
    ms = e.get("dur", 0) / 1e3 / units
    by_cat[category(op)] += ms
    by_name[_base(op)] += ms
  return {"wall_ms": wall * 1e3 / units, "thunk_ms": dict(by_cat),
          "thunk_total_ms": float(sum(by_cat.values())),
          "top_thunks_ms": dict(by_name.most_common(6))}


# -------------------------------------------------------------------------------- GEMMs


def kd_step_gemms(teacher_dims, student_dims, batch) -> list[tuple[str, int, int, int]]:
  """``(kind, m, k, n)`` of every GEMM in an MLP KD step (``[m, k] @ [k, n]``)."""
  gemms = [("fwd", batch, k, n) for dims in (teacher_dims, student_dims)
           for k, n in zip(dims[:-1], dims[1:])]
  layers = list(zip(student_dims[:-1], student_dims[1:]))
  gemms += [("dW", k, batch, n) for k, n in layers]          # x^T [k, B] @ dy [B, n]
  gemms += [("dX", batch, n, k) for k, n in layers[1:]]      # dy [B, n] @ W^T [n, k]
  return gemms


def gemm_blocks(gemms, calls: int, with_torch: bool, seed: int = 0) -> tuple[dict, float]:
  """``({"gemms_jax": run, ["gemms_torch": run]}, flops of one call)``: every GEMM of
  ``gemms`` once per call, ``calls`` calls per block (JAX: one jitted call each)."""
  rng = np.random.default_rng(seed)
  pairs = [(rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32))
           for _, m, k, n in gemms]
  flops = float(sum(2 * m * k * n for _, m, k, n in gemms))
  jpairs = [(jnp.asarray(a), jnp.asarray(b)) for a, b in pairs]
  f = jax.jit(lambda ps: [a @ b for a, b in ps])
  jax.block_until_ready(f(jpairs))

  def run_jax():
    for _ in range(calls):
      out = f(jpairs)
    jax.block_until_ready(out)

  blocks = {"gemms_jax": run_jax}
  torch = _bench.torch_or_none() if with_torch else None
  if torch is not None:
    tpairs = [(torch.as_tensor(a), torch.as_tensor(b)) for a, b in pairs]

    def run_torch():
      for _ in range(calls):
        for a, b in tpairs:
          torch.mm(a, b)

    run_torch()
    blocks["gemms_torch"] = run_torch
  return blocks, flops


# ---------------------------------------------------------------------------- workloads


def _mlp_dims(spec_model, shape, classes):
  _, kw = spec_model
  return [int(np.prod(shape)), *kw["hidden"], classes]


def kd_workload(name, w, args, with_torch):
  """Candidates, per-block step counts and the GEMM list of a W1 KD step workload."""
  chunk = 2 if args.quick else 25
  block = 2 * chunk
  cands, flops = step_speed.kdjax_candidates(w, chunk, block, ["kdjax_chunk", "kdjax_1"])
  if with_torch:
    cands.update(step_speed.torch_candidates(w, block, ["torchdistill", "torch"]))
  gemms = kd_step_gemms(_mlp_dims(w["teacher"], w["shape"], w["classes"]),
                        _mlp_dims(w["student"], w["shape"], w["classes"]), w["batch"])
  g, gflops = gemm_blocks(gemms, block, with_torch)
  cands.update(g)
  return cands, block, {"step_flops": flops["online"], "gemm_flops": gflops, "gemms": gemms}


def ensemble_workload(name, args, torch):
  """Candidates (``calls`` calls per block) of an ensemble workload."""
  model_name = name.split("_", 1)[1]
  spec = (ensemble_vs_torch.QUICK if args.quick else ensemble_vs_torch.MODELS)[model_name]
  members = 3 if args.quick else 8
  batch = 8 if args.quick else 256
  calls = 1 if model_name == "resnet20" and not args.quick else 5
  model, variables, nets = ensemble_vs_torch.make_members(spec, members, torch)
  x = jnp.asarray(ensemble_vs_torch.inputs(spec, batch))
  stacked = ensemble.stack(variables)
  cands, info = {}, {"members": members, "batch": batch}
  impls = ["auto", "xla"] if model_name != "mlp" else [None]
  ref = None
  for impl in impls:
    m = model if impl is None else get_model(spec["name"], num_classes=spec["classes"],
                                             conv_impl=impl, **spec["kw"])
    fn = ensemble_vs_torch._apply_fn(m)
    key = "apply" if impl is None else f"apply[conv_impl={impl}]"
    out = np.asarray(ensemble.apply(fn, stacked, x))
    ref = out if ref is None else ref
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4, err_msg=key)
    cands[key] = ensemble_vs_torch._repeat(lambda fn=fn: ensemble.apply(fn, stacked, x), calls,
                                           jax.block_until_ready)
  if nets is not None:
    cands.update(ensemble_vs_torch.torch_candidates(nets, np.asarray(x), calls, ref))
  if model_name == "mlp":
    dims = [int(np.prod(spec["shape"])), *spec["kw"]["hidden"], spec["classes"]]
    gemms = [("fwd", batch, k, n) for k, n in zip(dims[:-1], dims[1:])] * members
    g, gflops = gemm_blocks(gemms, calls, torch is not None)
    cands.update(g)
    info.update(gemm_flops=gflops, step_flops=gflops, gemms=gemms[:3])
  return cands, calls, info


# --------------------------------------------------------------------------------- main


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--what", nargs="+", default=list(DEFAULT_WHAT), choices=WHAT)
  parser.add_argument("--reps", type=int, default=5, help="interleaved rounds")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds (smoke test)")
  parser.add_argument("--out-dir", default=_bench.RESULTS_DIR)
  args = parser.parse_args(argv)
  if args.quick:
    args.reps = 2
  torch = None if args.no_torch else _bench.torch_or_none()
  if torch is not None:
    torch.set_num_threads(os.cpu_count())
  results, loads = [], []
  for name in args.what:
    if name.startswith("W1"):
      w = (step_speed.QUICK["W1_tiny"] if args.quick else step_speed.WORKLOADS[name])
      cands, units, info = kd_workload(name, w, args, torch is not None)
      info["batch"] = w["batch"]
    else:
      cands, units, info = ensemble_workload(name, args, torch)
    timed = _bench.interleaved(cands, args.reps)
    loads += timed["load"]
    sec = {k: np.asarray(v) / units for k, v in timed["seconds"].items()}
    kdjax_keys = [k for k in cands if k.startswith(("kdjax", "apply"))]
    traces = {k: trace_breakdown(cands[k], units) for k in kdjax_keys}
    res = {"workload": name, "unit": "step" if name.startswith("W1") else "call",
           "ms": {k: _bench.spread(v * 1e3) for k, v in sec.items()}, "trace": traces,
           "load": timed["load"], **{k: v for k, v in info.items() if k != "gemms"},
           "gemm_shapes": info.get("gemms")}
    main_key = kdjax_keys[0]
    if "gemms_jax" in sec:
      res["step_over_own_gemms"] = _bench.spread(sec[main_key] / sec["gemms_jax"])
      res["gemm_gflops_jax"] = info["gemm_flops"] / float(np.median(sec["gemms_jax"])) / 1e9
      res["step_gflops"] = info["step_flops"] / float(np.median(sec[main_key])) / 1e9
      if "gemms_torch" in sec:
        res["gemm_gflops_torch"] = info["gemm_flops"] / float(np.median(sec["gemms_torch"])) / 1e9
      base = [k for k in ("torchdistill", "torch_loop", "torch_vmap") if k in sec]
      if base:
        best = np.min([sec[k] for k in base], axis=0)
        res["best_torch_over_jax_gemms"] = _bench.spread(best / sec["gemms_jax"])
        res["measured_ratio"] = _bench.spread(best / sec[main_key])
    if "kdjax_1" in sec:
      res["dispatch_ms_per_step"] = float(np.median(sec["kdjax_1"] - sec["kdjax_chunk"])) * 1e3
    results.append(res)

  meta = _bench.machine_meta(load=loads, reps=args.reps, quick=args.quick)
  table = _table(results, meta)

  def plot(ax):
    labels, bottoms = [], None
    rows = [(r["workload"], k, t) for r in results for k, t in r["trace"].items()]
    bottoms = np.zeros(len(rows))
    for cat in CATEGORIES:
      vals = np.array([t["thunk_ms"].get(cat, 0.0) for _, _, t in rows])
      ax.barh(range(len(rows)), vals, left=bottoms, label=cat)
      bottoms += vals
    labels = [f"{w}\n{k}" for w, k, _ in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.set_xlabel("thunk ms per step / call (summed over XLA threads)")
    ax.legend(fontsize=6)
    ax.set_title("Where the time goes, " + _bench.meta_line(meta), fontsize=8)

  _bench.write_outputs("profile_breakdown", {"meta": meta, "results": results}, table,
                       args.out_dir, plot)
  return results


def _table(results, meta) -> str:
  header = ["workload", "candidate", "wall ms/unit", "thunk ms/unit"] + list(CATEGORIES)
  body = []
  for r in results:
    lo = [x for pair in r["load"] for x in pair]
    for k, t in r["trace"].items():
      total = t["thunk_total_ms"] or 1.0
      body.append([f"{r['workload']} (load {min(lo):.1f}-{max(lo):.1f})", k,
                   f"{t['wall_ms']:.2f}", f"{t['thunk_total_ms']:.2f}"]
                  + [f"{100 * t['thunk_ms'].get(c, 0.0) / total:.0f}%" for c in CATEGORIES])
  lines = [f"Thunk time by category (jax.profiler trace of one block), {_bench.meta_line(meta)}, "
           f"{meta['reps']} rounds", "", _bench.markdown_table(header, body), ""]
  h2 = ["workload", "unit", "candidate ms (median, p25-p75)", "step / own GEMMs",
        "GEMMs alone GFLOP/s (JAX, PyTorch)", "best PyTorch / JAX GEMMs (ceiling of the ratio)",
        "measured ratio", "dispatch ms/step"]
  b2 = []
  for r in results:
    ms = "; ".join(f"{k} {v['median']:.2f} ({v['p25']:.2f}-{v['p75']:.2f})"
                   for k, v in r["ms"].items())
    f = lambda s: f"{s['median']:.2f} ({s['p25']:.2f}-{s['p75']:.2f})" if s else ""  # noqa: E731
    rates = ""
    if "gemm_gflops_jax" in r:
      rates = f"{r['gemm_gflops_jax']:.0f}" + (f", {r['gemm_gflops_torch']:.0f}"
                                              if "gemm_gflops_torch" in r else "")
    b2.append([r["workload"], r["unit"], ms, f(r.get("step_over_own_gemms")), rates,
               f(r.get("best_torch_over_jax_gemms")), f(r.get("measured_ratio")),
               f"{r['dispatch_ms_per_step']:.2f}" if "dispatch_ms_per_step" in r else ""])
  lines += [_bench.markdown_table(h2, b2)]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
