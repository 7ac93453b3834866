"""Fused vs unfused distillation loss: compiled peak memory, time, and top-k storage.

Peak memory comes from XLA's compiled memory analysis of the forward+backward
(``value_and_grad`` w.r.t. the student's hidden states and head), so the big size is only
compiled, never run. Time is measured at a size where both run, interleaved, medians.

  python benchmarks/fused_loss_memory.py            # full: N=16384, d=2048, V=131072
  python benchmarks/fused_loss_memory.py --smoke    # tiny sizes, for the test

Writes benchmarks/results/fused_loss_memory.json (or fused_loss_memory_smoke.json) and
prints a markdown table.
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

from kdjax import losses


def make_step(fused: bool, divergence: str, chunk_size: int, kwargs: dict):
  def loss(hs, ws, ht, wt):
    if fused:
      per_token = losses.fused_distillation_loss(hs, ws, ht, wt, divergence=divergence,
                                                 chunk_size=chunk_size, **kwargs)
    else:
      per_token = losses._fused.DIVERGENCES[divergence](hs @ ws, ht @ wt, **kwargs)
    return jnp.mean(per_token)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def memory(step, n, d, v) -> dict:
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  t0 = time.perf_counter()
  compiled = step.lower(spec(n, d), spec(d, v), spec(n, d), spec(d, v)).compile()
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)
  return {"temp_bytes": int(m.temp_size_in_bytes), "argument_bytes": int(m.argument_size_in_bytes),
          "output_bytes": int(m.output_size_in_bytes), "peak_bytes": int(peak),
          "compile_s": round(time.perf_counter() - t0, 1)}


def timing(steps: dict, n, d, v, repeats: int) -> dict:
  keys = jax.random.split(jax.random.key(0), 4)
  args = (jax.random.normal(keys[0], (n, d)) / np.sqrt(d), jax.random.normal(keys[1], (d, v)),
          jax.random.normal(keys[2], (n, d)) / np.sqrt(d), jax.random.normal(keys[3], (d, v)))
  outs = {}
  for name, step in steps.items():  # compile + warm up
    outs[name] = jax.block_until_ready(step(*args))
  ref_val, (ref_gh, ref_gw) = outs["unfused"]
  val, (gh, gw) = outs["fused"]
  agree = {"value_abs_diff": float(abs(val - ref_val)),
           "grad_hidden_max_abs_diff": float(jnp.max(jnp.abs(gh - ref_gh))),
           "grad_head_max_abs_diff": float(jnp.max(jnp.abs(gw - ref_gw)))}
  times = {name: [] for name in steps}
  for _ in range(repeats):  # interleaved
    for name, step in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(step(*args))
      times[name].append(time.perf_counter() - t0)
  return {"agreement": agree,
          "seconds": {k: {"median": statistics.median(t), "min": min(t), "max": max(t)}
                      for k, t in times.items()}}


def add_memory_chunks(chunks: list[int]) -> None:
  """Adds the fused loss's compiled peak memory at other chunk sizes to the results JSON."""
  path = os.path.join(os.path.dirname(__file__), "results", "fused_loss_memory.json")
  with open(path) as f:
    result = json.load(f)
  for div, mem in result["memory"].items():
    kw = {"beta": 0.5} if div == "generalized_jsd" else {}
    big = mem["size"]
    for chunk in chunks:
      m = memory(make_step(True, div, chunk, kw), big["n"], big["d"], big["v"])
      mem[f"fused_chunk{chunk}"] = m
      mem[f"peak_ratio_chunk{chunk}"] = m["peak_bytes"] / mem["unfused"]["peak_bytes"]
      print(f"{div} chunk {chunk}: fused peak {m['peak_bytes'] / 2**30:.2f} GiB "
            f"(temp {m['temp_bytes'] / 2**30:.2f}), ratio {mem[f'peak_ratio_chunk{chunk}']:.3f}")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--memory-chunks", default="",
                      help="only compile the big size with these chunk sizes (e.g. 256,512) "
                           "and add them to the existing results JSON")
  args = parser.parse_args()
  if args.memory_chunks:
    add_memory_chunks([int(x) for x in args.memory_chunks.split(",")])
    return
  if args.smoke:
    big = dict(n=256, d=32, v=1024, chunk=64)
    small = dict(n=128, d=16, v=512, chunk=32)
    divergences = {"forward_kl": {}}
    repeats = 2
  else:
    big = dict(n=16384, d=2048, v=131072, chunk=1024)
    small = dict(n=2048, d=256, v=16384, chunk=512)
    divergences = {"forward_kl": {}, "generalized_jsd": {"beta": 0.5}}
    repeats = args.repeats
  load = os.getloadavg()
  result = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in load],
            "memory": {}, "time": {}}
  for div, kw in divergences.items():
    mem = {name: memory(make_step(name == "fused", div, big["chunk"], kw), big["n"], big["d"],
                        big["v"]) for name in ("unfused", "fused")}
    mem["size"] = big
    mem["peak_ratio"] = mem["fused"]["peak_bytes"] / mem["unfused"]["peak_bytes"]
    mem["temp_ratio"] = mem["fused"]["temp_bytes"] / mem["unfused"]["temp_bytes"]
    result["memory"][div] = mem
    steps = {name: make_step(name == "fused", div, small["chunk"], kw)
             for name in ("unfused", "fused")}
    t = timing(steps, small["n"], small["d"], small["v"], repeats)
    t["size"] = small
    t["ratio_fused_over_unfused"] = (t["seconds"]["fused"]["median"]
                                     / t["seconds"]["unfused"]["median"])
    result["time"][div] = t
  result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
  k, v = 64, big["v"]
  result["topk_storage"] = {"k": k, "vocab": v, "bytes_per_token_topk_f16_i32": k * (2 + 4),
                            "bytes_per_token_topk_f32_i32": k * (4 + 4),
                            "bytes_per_token_dense_f32": v * 4}
  name = "fused_loss_memory_smoke.json" if args.smoke else "fused_loss_memory.json"
  path = os.path.join(os.path.dirname(__file__), "results", name)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  print(f"\n| divergence | size (N, d, V, chunk) | unfused peak | fused peak | ratio | "
        f"unfused temp | fused temp | time size | unfused s | fused s | time ratio |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for div in divergences:
    m, t = result["memory"][div], result["time"][div]
    print(f"| {div} | {tuple(big.values())} | {gib(m['unfused']['peak_bytes'])} | "
          f"{gib(m['fused']['peak_bytes'])} | {m['peak_ratio']:.3f} | "
          f"{gib(m['unfused']['temp_bytes'])} | {gib(m['fused']['temp_bytes'])} | "
          f"{tuple(small.values())} | {t['seconds']['unfused']['median']:.3f} | "
          f"{t['seconds']['fused']['median']:.3f} | {t['ratio_fused_over_unfused']:.2f} |")
  s = result["topk_storage"]
  print(f"\ntop-{k} storage per token: {s['bytes_per_token_topk_f16_i32']} B (float16 + int32) "
        f"vs dense float32 {s['bytes_per_token_dense_f32']} B (V={v}); load average "
        f"{result['loadavg_at_start']} -> {result['loadavg_at_end']} on {os.cpu_count()} CPUs")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
