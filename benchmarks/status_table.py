"""The issue-12 target status table, written from the benchmarks' JSON results.

Reads ``results/step_speed.json`` (W1 b128/b1024), ``results/step_speed_conv.json`` (W2, W4),
``results/ensemble_vs_torch.json`` and, if present, ``results/gpu_check.json``, and replaces the
text between ``<!-- status:begin -->`` and ``<!-- status:end -->`` in ``benchmarks/README.md``
(prints the table when ``--print``). A target is "met" when the median of the per-round ratios
reaches it; the 25th-75th percentiles and the load range of the rounds are shown beside it, so
a reader can see a ratio that only the median reaches. Run by ``quiet_rerun.sh``.

  python benchmarks/status_table.py            # rewrite the README's table
  python benchmarks/status_table.py --print    # only print it
"""

import argparse
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- status:begin -->", "<!-- status:end -->"


def _load(results_dir, name):
  path = os.path.join(results_dir, f"{name}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _loads(rows):
  lo = [x for r in rows for pair in r["load"] for x in pair]
  return f"load {min(lo):.1f}-{max(lo):.1f}" if lo else ""


def _ratio(r, key):
  s = r[key]
  return s["median"], f"{s['median']:.2f}x ({s['p25']:.2f}-{s['p75']:.2f})"


def _verdict(ok):
  return "met" if ok else "**missed**"


def rows_from_results(results_dir) -> list[list[str]]:
  """``[target, measured, status, source]`` rows of the issue-12 targets."""
  out = []
  step = _load(results_dir, "step_speed")
  conv = _load(results_dir, "step_speed_conv")
  for payload, name, target, extra in [
      (step, "W1_b128", 1.3, False), (step, "W1_b1024", 1.1, True),
      (conv, "W2", 1.0, False), (conv, "W4", 1.0, False)]:
    label = {"W1_b128": "KD step >= 1.3x torchdistill, W1 b128",
             "W1_b1024": "KD step >= 1.1x torchdistill and >= 80% of the matmul rate, W1 b1024",
             "W2": "KD step >= 1.0x torchdistill, W2 resnet56 -> resnet20 b64",
             "W4": "KD step >= 1.0x torchdistill, W4 resnet32x4 -> resnet8x4 b64"}[name]
    rows = [r for r in (payload or {}).get("rows", []) if r["workload"] == name]
    chunk = next((r for r in rows if r["impl"] == "kdjax_chunk" and "ratio" in r), None)
    if chunk is None:
      out.append([label, "not measured", "not shown", ""])
      continue
    med, text = _ratio(chunk, "ratio")
    ok = med >= target and chunk["vs"] == "torchdistill"
    text += f" {chunk['vs']}, kdjax chunk of {payload['meta']['chunk']}"
    if extra:
      frac = chunk["fraction_of_matmul"]
      text += f"; {chunk['gflops']:.0f} GFLOP/s = {100 * frac:.0f}% of the matmul rate"
      ok = ok and frac >= 0.8
    src = "step_speed_conv.json" if name in ("W2", "W4") else "step_speed.json"
    out.append([label, f"{text} ({_loads(rows)}, {payload['meta']['date_utc']})",
                _verdict(ok), src])
  ens = _load(results_dir, "ensemble_vs_torch")
  loop_ratios = []
  for model, label in (("mlp", "8 MLP members"), ("resnet20", "8 ResNet-20 members")):
    rows = [r for r in (ens or {}).get("rows", []) if r["model"] == model]
    auto = next((r for r in rows if r["impl"] == "apply[auto]"), None)
    name = f"`ensemble.apply` >= 1.2x best PyTorch, {label}"
    if auto is None or "vs_best_torch" not in auto:
      out.append([name, "not measured", "not shown", ""])
      continue
    med, text = _ratio(auto, "vs_best_torch")
    out.append([name, f"{text} ({_loads(rows)}, {ens['meta']['date_utc']})", _verdict(med >= 1.2),
                "ensemble_vs_torch.json"])
    loop_ratios.append((model, auto["vs_jax_loop"]))
  if loop_ratios:
    text = ", ".join(f"{m} {s['median']:.2f}x ({s['p25']:.2f}-{s['p75']:.2f})"
                     for m, s in loop_ratios)
    out.append(["`ensemble.apply` never slower than a JAX loop", text,
                _verdict(all(s["median"] >= 1.0 for _, s in loop_ratios)),
                "ensemble_vs_torch.json"])
  gpu = _load(results_dir, "gpu_check")
  gpu_rows = [r for r in (gpu or {}).get("rows", []) if r.get("fraction_of_bf16_matmul")]
  if gpu and gpu.get("meta", {}).get("backend") == "gpu" and gpu_rows:
    best = max(gpu_rows, key=lambda r: r["fraction_of_bf16_matmul"])
    out.append([">= 50% of the bf16 matmul rate on a GPU",
                f"{100 * best['fraction_of_bf16_matmul']:.0f}% ({best['dtype']}, batch "
                f"{best['batch']}, {gpu['meta']['date_utc']})",
                _verdict(best["fraction_of_bf16_matmul"] >= 0.5), "gpu_check.json"])
  else:
    out.append([">= 50% of the bf16 matmul rate on a GPU", "no GPU run recorded", "not run", ""])
  return out


def table(results_dir) -> str:
  rows = rows_from_results(results_dir)
  lines = ["| target | measured: median of per-round ratios (p25-p75) | status | results/ |",
           "|---|---|---|---|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def write_readme(readme, text) -> None:
  with open(readme) as f:
    content = f.read()
  if BEGIN not in content or END not in content:
    raise ValueError(f"{readme}: no {BEGIN} ... {END} block to replace")
  new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END),
               lambda _: f"{BEGIN}\n{text}\n{END}", content, flags=re.S)
  with open(readme, "w") as f:
    f.write(new)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results-dir", default=os.path.join(HERE, "results"))
  parser.add_argument("--readme", default=os.path.join(HERE, "README.md"))
  parser.add_argument("--print", action="store_true", help="print only")
  args = parser.parse_args(argv)
  text = table(args.results_dir)
  print(text)
  if not args.print:
    write_readme(args.readme, text)
  return text


if __name__ == "__main__":
  main()
