"""Smoke tests of the speed benchmarks (benchmarks/step_speed.py, ensemble_vs_torch.py,
teacher_online_vs_cached.py, gpu_check.sh) at tiny sizes, kdjax rows only: PyTorch is never a test
dependency. Speed itself is never asserted here; the benchmarks measure it."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
  spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _outputs(out_dir, name):
  for ext in ("json", "md", "png"):
    assert (out_dir / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext} missing"
  return json.loads((out_dir / f"{name}.json").read_text())


def test_step_speed_quick_kdjax_rows(tmp_path):
  bench = _load("step_speed")
  rows = bench.main(["--quick", "--no-torch", "--workloads", "W1_tiny", "--out-dir",
                     str(tmp_path)])
  assert {r["impl"] for r in rows} == {"kdjax_chunk", "kdjax_1", "kdjax_cached"}
  payload = _outputs(tmp_path, "step_speed")
  assert payload["meta"]["quick"] and len(payload["rows"]) == 3
  # XLA's FLOP count of one step covers at least the matmuls of teacher forward (1x) and
  # student forward + backward (3x; no gradient for the inputs), and not wildly more.
  w = bench.QUICK["W1_tiny"]
  b = w["batch"]

  def dense_flops(hidden):
    dims = [int(np.prod(w["shape"])), *hidden, w["classes"]]
    return sum(2 * b * i * o for i, o in zip(dims[:-1], dims[1:]))

  first = 2 * b * int(np.prod(w["shape"])) * w["student"][1]["hidden"][0]
  teacher = dense_flops(w["teacher"][1]["hidden"])
  student = 3 * dense_flops(w["student"][1]["hidden"]) - first
  flops = {r["impl"]: r["step_gflop"] * 1e9 for r in rows}
  for impl in ("kdjax_chunk", "kdjax_1"):
    assert teacher + student <= flops[impl] < 4 * (teacher + student), (impl, flops)
  # The cached step runs no teacher forward: its count is lower by about that forward.
  assert student <= flops["kdjax_cached"] < 4 * student, flops
  assert teacher <= flops["kdjax_chunk"] - flops["kdjax_cached"] < 2 * teacher, flops
  table = (tmp_path / "step_speed.md").read_text()
  for r in rows:  # the spread is ordered and the table prints each row's own numbers
    s = r["samples_per_s"]
    assert s["p25"] <= s["median"] <= s["p75"] and "ratio" not in r  # no PyTorch baseline
    assert f"{s['median']:,.0f} ({s['p25']:,.0f}-{s['p75']:,.0f})" in table
  assert "kdjax_chunk" in table and "load" in table


def test_step_speed_rejects_unknown_workload(tmp_path):
  with pytest.raises(ValueError, match="W9"):
    _load("step_speed").main(["--workloads", "W9", "--no-torch", "--out-dir", str(tmp_path)])


def test_ensemble_vs_torch_quick_mlp(tmp_path):
  rows = _load("ensemble_vs_torch").main(["--quick", "--no-torch", "--models", "mlp",
                                          "--out-dir", str(tmp_path)])
  assert {r["impl"] for r in rows} == {"apply[auto]", "apply[vmap]", "apply[map]", "jax_loop"}
  loop = next(r for r in rows if r["impl"] == "jax_loop")
  assert loop["vs_jax_loop"]["median"] == pytest.approx(1.0)
  assert _outputs(tmp_path, "ensemble_vs_torch")["meta"]["members"] == 3


def test_teacher_cache_quick_same_accuracy(tmp_path):
  payload = _load("teacher_online_vs_cached").main(["--quick", "--out-dir", str(tmp_path)])
  acc = {r["impl"]: r["test_accuracy"] for r in payload["rows"]}
  # Cached targets are the online teacher's logits: both students see the same loss.
  assert abs(acc["online"] - acc["cached"]) <= 0.01, acc
  table = (tmp_path / "teacher_online_vs_cached.md").read_text()
  for r in payload["rows"]:
    e = r["epoch_s"]
    assert e["p25"] <= e["median"] <= e["p75"]
    assert f"{e['median'] * 1e3:.1f} ({e['p25'] * 1e3:.1f}-" in table
  _outputs(tmp_path, "teacher_online_vs_cached")


def test_gpu_check_cpu_smoke(tmp_path):
  env = {**os.environ, "PYTHON": sys.executable}
  env.pop("XLA_FLAGS", None)
  # bfloat16 only: the cast path (float32 runs the same code without the cast).
  proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--cpu-smoke", "--dtypes",
                         "bfloat16", "--out-dir", str(tmp_path)], env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  payload = _outputs(tmp_path, "gpu_check_cpu_smoke")
  assert [r["dtype"] for r in payload["rows"]] == ["bfloat16"]
  for r in payload["rows"]:
    assert np.isfinite(r["final_loss"]) and r["step_gflop"] > 0
  assert payload["meta"]["backend"] == "cpu"


def test_profile_breakdown_quick_w1(tmp_path):
  """benchmarks/profile_breakdown.py: the KD step's GEMM list has the step's matmul FLOPs
  (teacher forward + student forward, weight and input gradients, no input gradient of the
  first layer); thunk names map to categories; a trace finds a jitted function's thunks."""
  bench = _load("profile_breakdown")
  gemms = bench.kd_step_gemms([20, 32, 32, 10], [20, 16, 10], 8)
  assert [g[0] for g in gemms] == ["fwd"] * 5 + ["dW"] * 2 + ["dX"]
  assert sum(2 * m * k * n for _, m, k, n in gemms) == 2 * 8 * (
      (20 * 32 + 32 * 32 + 32 * 10) + 3 * (20 * 16 + 16 * 10) - 20 * 16)
  assert bench.category("ynn_fusion.12") == "ynn_fusion/dot"
  assert bench.category("transpose_copy_fusion") == "copy/transpose"
  assert bench.category("custom-call.3") == "oneDNN conv (FFI)"
  assert bench.category("conv_general_dilated.7") == "XLA conv"
  # The trace of a jitted matmul chain finds its thunks (the whole script: `--quick`, about
  # 13 CPU-seconds, left to the benchmark run itself).
  import jax
  import jax.numpy as jnp
  a = jnp.ones((64, 64), jnp.float32)
  f = jax.jit(lambda a: jax.nn.relu(a @ a) @ a)
  f(a).block_until_ready()
  trace = bench.trace_breakdown(lambda: [f(a) for _ in range(4)][-1].block_until_ready(), 4)
  assert set(trace["thunk_ms"]) <= set(bench.CATEGORIES)
  assert sum(trace["thunk_ms"].values()) == pytest.approx(trace["thunk_total_ms"], rel=1e-6)
  assert trace["thunk_ms"].get("ynn_fusion/dot", 0) > 0, trace
  blocks, flops = bench.gemm_blocks([("fwd", 4, 3, 2)], calls=2, with_torch=False)
  assert set(blocks) == {"gemms_jax"} and flops == 2 * 4 * 3 * 2
  blocks["gemms_jax"]()


def test_status_table_from_results(tmp_path):
  """benchmarks/status_table.py: verdicts from the medians of the results JSON, missing
  results shown as such, and only the marked block of the README replaced."""
  bench = _load("status_table")
  ratio = lambda m: {"median": m, "p25": m - 0.1, "p75": m + 0.1}  # noqa: E731
  load = [[1.0, 1.2]]
  step = {"meta": {"chunk": 25, "date_utc": "d"}, "rows": [
      {"workload": "W1_b128", "impl": "kdjax_chunk", "vs": "torchdistill", "ratio": ratio(1.31),
       "load": load, "gflops": 100.0, "fraction_of_matmul": 0.9},
      {"workload": "W1_b1024", "impl": "kdjax_chunk", "vs": "torchdistill", "ratio": ratio(1.2),
       "load": load, "gflops": 100.0, "fraction_of_matmul": 0.7}]}
  ens = {"meta": {"date_utc": "d"}, "rows": [
      {"model": "mlp", "impl": "apply[auto]", "vs_best_torch": ratio(1.1),
       "vs_jax_loop": ratio(1.0), "load": load}]}
  (tmp_path / "step_speed.json").write_text(json.dumps(step))
  (tmp_path / "ensemble_vs_torch.json").write_text(json.dumps(ens))
  rows = {r[0]: r for r in bench.rows_from_results(str(tmp_path))}
  assert rows["KD step >= 1.3x torchdistill, W1 b128"][2] == "met"
  w1024 = rows["KD step >= 1.1x torchdistill and >= 80% of the matmul rate, W1 b1024"]
  assert w1024[2] == "**missed**" and "70% of the matmul rate" in w1024[1]  # ratio ok, rate not
  assert rows["KD step >= 1.0x torchdistill, W2 resnet56 -> resnet20 b64"][1] == "not measured"
  assert rows["`ensemble.apply` >= 1.2x best PyTorch, 8 MLP members"][2] == "**missed**"
  assert rows["`ensemble.apply` never slower than a JAX loop"][2] == "met"
  assert rows[">= 50% of the bf16 matmul rate on a GPU"][2] == "not run"
  readme = tmp_path / "README.md"
  readme.write_text(f"a\n{bench.BEGIN}\nold\n{bench.END}\nb\n")
  bench.main(["--results-dir", str(tmp_path), "--readme", str(readme)])
  text = readme.read_text()
  assert text.startswith("a\n") and text.endswith("b\n") and "old" not in text
  assert "1.31x (1.21-1.41) torchdistill" in text


def test_trainer_overlap_tiny(tmp_path):
  """benchmarks/trainer_overlap.py at toy size: every mode runs the real trainer and
  reaches the results files (jax is already imported here: XLA keeps its threads)."""
  bench = _load("trainer_overlap")
  result = bench.main(["--reps", "1", "--warmup", "0", "--image", "8", "--batch", "8",
                       "--hidden", "8", "--steps_per_call", "1", "--log_every", "2",
                       "--intervals", "2", "--device_threads", "all",
                       "--out", str(tmp_path / "trainer_overlap")])
  assert [r["mode"] for r in result["rows"]] == list(bench.MODES)
  md = (tmp_path / "trainer_overlap.md").read_text()
  for r in result["rows"]:  # the median lies in the range and the table prints them
    assert r["ms_min"] <= r["ms_per_step_median"] <= r["ms_max"]
    assert f"| {r['mode']} | {r['ms_per_step_median']} | {r['ms_min']} | {r['ms_max']} |" in md
  assert f"{result['meta']['host_ms_per_batch']} ms a batch" in md
  assert "prefetch=2 is" in (tmp_path / "trainer_overlap.md").read_text()
  configs = {m: bench.make_config(m, image=8, batch=8, hidden=8, steps_per_call=1,
                                  log_every=2, intervals=2) for m in bench.MODES}
  assert [configs[m].data.prefetch for m in bench.MODES] == [2, 0, 0]
  assert [configs[m].log_every for m in bench.MODES] == [2, 2, 1]


def test_lm_fused_step_smoke(tmp_path):
  """The LM step benchmark at V=4096: memory of the three steps, kdjax's from
  memory_report(config); the fused step plans less memory than the full-logit ones."""
  memory = _load("lm_fused_step").main(["--smoke", "--out-dir", str(tmp_path)])
  assert memory["fused"]["peak_estimate"] < memory["full"]["peak_estimate"]
  assert memory["fused"]["compiled_step"]["temp"] < memory["full"]["compiled_step"]["temp"]
  assert memory["fused"]["per_device_bytes"]["teacher_params"] > 0
  payload = json.loads((tmp_path / "lm_fused_step_smoke.json").read_text())
  assert set(payload["seconds"]) == {"kdjax full", "kdjax fused", "plain JAX"}
