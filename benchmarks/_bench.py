"""Shared helpers of the speed benchmarks: machine facts, load, interleaved timing, matmul
rate, and the three outputs every benchmark writes (markdown table, JSON, PNG).

Timing protocol (used by step_speed, ensemble_speed, teacher_cache): every candidate is
compiled and run before timing; then ``reps`` rounds run each candidate for one *block*
(a fixed number of calls) in turn, so a change of machine load hits all candidates alike.
A candidate's speed is the median over blocks; ratios are medians of per-round ratios of
adjacent blocks. ``os.getloadavg()`` is recorded before and after every round.
"""

import json
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def torch_or_none():
  """``torch`` if it imports, else ``None`` (PyTorch is optional in every benchmark)."""
  try:
    import torch
  except ImportError:
    return None
  return torch


def machine_meta(**extra) -> dict:
  """Machine, versions, date and thread settings, for the JSON and the README."""
  import jax
  meta = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
          "platform": platform.platform(), "cpu_count": os.cpu_count(),
          "python": platform.python_version(), "jax": jax.__version__,
          "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}
  try:
    import flax
    meta["flax"] = flax.__version__
  except ImportError:
    pass
  torch = sys.modules.get("torch")  # only when the benchmark used it
  if torch is not None:
    meta["torch"] = torch.__version__
    meta["torch_threads"] = torch.get_num_threads()
    try:
      import torchdistill
      meta["torchdistill"] = torchdistill.__version__
    except ImportError:
      meta["torchdistill"] = None
  meta.update(extra)
  return meta


def interleaved(blocks: dict[str, Callable[[], None]], reps: int) -> dict:
  """Runs each ``blocks[name]()`` once per round, ``reps`` rounds, in turn.

  Returns ``{"seconds": {name: [reps floats]}, "load": [(before, after) per round]}``.
  """
  seconds = {k: [] for k in blocks}
  load = []
  for _ in range(reps):
    before = os.getloadavg()[0]
    for k, block in blocks.items():
      t0 = time.perf_counter()
      block()
      seconds[k].append(time.perf_counter() - t0)
    load.append((before, os.getloadavg()[0]))
  return {"seconds": seconds, "load": load}


def spread(values) -> dict:
  """Median and 25th/75th percentiles of ``values``."""
  v = np.asarray(values, float)
  return {"median": float(np.median(v)), "p25": float(np.percentile(v, 25)),
          "p75": float(np.percentile(v, 75))}


def paired_ratio(num_seconds, den_seconds) -> dict:
  """Speed of ``num`` relative to ``den`` (``den_time / num_time``) per round, as a spread."""
  return spread(np.asarray(den_seconds) / np.asarray(num_seconds))


def matmul_blocks(n: int, calls: int, with_torch: bool) -> tuple[dict, float]:
  """``({"matmul_jax": run, ["matmul_torch": run]}, flops of one block)``: float32
  ``[n, n] @ [n, n]`` ``calls`` times, to time *inside* the interleaved rounds so the matmul
  rate sees the same load as the steps it is compared with."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()

  def run_jax():
    for _ in range(calls):
      out = f(a)
    out.block_until_ready()

  blocks = {"matmul_jax": run_jax}
  torch = torch_or_none() if with_torch else None
  if torch is not None:
    t = torch.randn(n, n)

    def run_torch():
      for _ in range(calls):
        t @ t

    run_torch()
    blocks["matmul_torch"] = run_torch
  return blocks, 2.0 * n ** 3 * calls


def markdown_table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def write_outputs(name: str, payload: dict, table: str, out_dir: str = RESULTS_DIR,
                  plot: Callable | None = None, ncols: int = 1) -> dict:
  """Writes ``{name}.json``, ``{name}.md`` (the table) and, given ``plot(ax)``,
  ``{name}.png`` (``plot(axes)`` with ``ncols`` panels side by side); prints the table.
  Returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, f"{name}.json"),
           "md": os.path.join(out_dir, f"{name}.md")}
  with open(paths["json"], "w") as f:
    json.dump(payload, f, indent=1)
  with open(paths["md"], "w") as f:
    f.write(table + "\n")
  if plot is not None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, ncols, figsize=(8 if ncols == 1 else 5.5 * ncols, 4.5))
    plot(ax)
    fig.tight_layout()
    paths["png"] = os.path.join(out_dir, f"{name}.png")
    fig.savefig(paths["png"], dpi=90)
    plt.close(fig)
  print(table)
  return paths


def meta_line(meta: dict) -> str:
  """One line for the table's caption: machine, versions, load."""
  parts = [f"{meta['date_utc']} UTC", f"{meta['backend']} {meta['cpu_count']} cores",
           f"jax {meta['jax']}"]
  if "torch" in meta:
    parts.append(f"torch {meta['torch']} ({meta['torch_threads']} threads)")
    if meta.get("torchdistill"):
      parts.append(f"torchdistill {meta['torchdistill']}")
  if "load" in meta:
    lo = [x for pair in meta["load"] for x in pair]
    parts.append(f"load {min(lo):.1f}-{max(lo):.1f}")
  return ", ".join(parts)
