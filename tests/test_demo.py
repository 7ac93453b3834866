"""End-to-end smoke tests of `kdjax demo` (with its fusion stage) and `kdjax fuse`;
config docstrings point to measured numbers instead of retyping them."""

import ast
import json
import os
import pathlib
import re

import pytest

from kdjax.programs.demo import format_spread, run_demo

REPO = pathlib.Path(__file__).resolve().parent.parent
CPU_ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  rows = run_demo(str(root), seeds=1, fusion=True, smoke=True)
  return root, rows


def test_demo_writes_report_table_and_plot(demo_dir):
  root, rows = demo_dir
  stages = [r["stage"] for r in rows]
  for stage in ("teacher_cnn", "mlp", "kd_labelled", "kd_transfer", "kd_ensemble",
                "ensemble_average", "ensemble_fitted", "ensemble_deep"):
    assert stage in stages
  report = json.loads((root / "report.json").read_text())
  assert report == rows
  assert all(0.0 <= r["accuracy_mean"] <= 100.0 for r in rows)
  md = (root / "report.md").read_text()
  assert "| kd_transfer |" in md and "accuracy.png" in md
  assert "(n=1)" in md and "+- 0.0" not in md  # one seed has no spread to show
  assert all(r["accuracy_std"] is None for r in rows)
  assert (root / "accuracy.png").stat().st_size > 10_000


def test_demo_fuse_report(demo_dir):
  root, _ = demo_dir
  report = json.loads((root / "fuse/seed0/report.json").read_text())
  assert report["num_members"] == 5
  rows = report["test"]
  for key in ("average (prob)", "average (logit)", "average (log_prob)", "fitted weights (nll)",
              "fitted weights (random)", "deep fusion"):
    assert 0.0 <= rows[key]["accuracy"] <= 1.0 and rows[key]["nll"] > 0
  assert any(k.startswith("uniform soup") for k in rows)
  assert any(k.startswith("greedy soup") for k in rows)
  weights = report["fitted_weights"]["nll"]
  assert len(weights) == 5 and abs(sum(weights) - 1) < 1e-3
  assert (root / "fuse/seed0/reliability.png").exists()


def test_demo_rerun_reuses_finished_stages(demo_dir, capsys):
  root, rows = demo_dir
  reports = {p: p.read_bytes() for p in root.iterdir() if p.is_file()}
  try:
    again = run_demo(str(root), seeds=1, fusion=False, smoke=True)
  finally:  # the other tests read the full demo's report
    for path, data in reports.items():
      path.write_bytes(data)
  out = capsys.readouterr().out
  assert out.count("reusing") == 4 and "training in" not in out
  assert [r["accuracy_mean"] for r in again] == [r["accuracy_mean"] for r in rows[:4]]


def test_fuse_cli_on_demo_members(demo_dir, tmp_path):
  import subprocess
  import sys
  root, _ = demo_dir
  repo = REPO
  members = ",".join(str(root / "members/seed0" / f"cnn{i}") for i in range(3))
  result = subprocess.run(
      [sys.executable, "-m", "kdjax.main", "fuse", "--config", str(repo / "configs/mnist1d/fuse_cnn5.py"),
       "--workdir", str(tmp_path / "fuse"), f"--config.members={members}", "--config.deep.steps=20"],
      capture_output=True, text=True, env=CPU_ENV)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads((tmp_path / "fuse/report.json").read_text())
  assert report["num_members"] == 3 and "| average (prob) |" in result.stdout
  missing = subprocess.run(
      [sys.executable, "-m", "kdjax.main", "fuse", "--config", str(repo / "configs/mnist1d/fuse_cnn5.py"),
       "--workdir", str(tmp_path / "fuse2"), f"--config.members={tmp_path}/nope"],
      capture_output=True, text=True, env=CPU_ENV)
  assert missing.returncode == 1 and "does not exist" in missing.stderr.splitlines()[-1]


def test_format_spread_says_n():
  assert format_spread([93.9]) == "93.9 (n=1)"
  assert format_spread([90.0, 92.0]) == "91.0 +- 1.0 (n=2)"


DKD_WARMUP_JSON = "benchmarks/results/mnist1d_dkd_warmup.json"


def test_config_docstrings_point_to_measured_results_instead_of_numbers():
  """A result is typed in one place: the README demo table or benchmarks/results/*.json.
  Each MNIST-1D config's docstring names the row or key, and that row or key exists.
  (The reproduction configs under configs/cifar100 etc. quote *published* numbers to match,
  which is their purpose; they are checked in tests/test_pipeline_configs.py.)"""
  readme = (REPO / "README.md").read_text()
  studies = json.loads((REPO / "benchmarks/results/mnist1d_accuracy.json").read_text())
  studies.update(json.loads((REPO / DKD_WARMUP_JSON).read_text())["accuracy"])
  studies.update(json.loads((REPO / "benchmarks/results/mnist1d_above_teacher.json").read_text())["rows"])
  for path in sorted((REPO / "configs" / "mnist1d").rglob("*.py")):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert not re.search(r"\d+\.\d+ ?%|\+- ?\d", doc), f"{path.name} quotes a number"
    expected = " ".join(doc[doc.index("Expected"):].split("Args:")[0].split())
    rows = re.findall(r"\brows? ((?:\w+(?:, | and )?)+)", expected)
    keys = re.findall(r'"([^"]+)"', expected.replace('"Results: kdjax demo"', ""))
    assert rows or keys, f"{path.name}: Expected names no result"
    for names in rows:
      for row in re.split(r", | and ", names):
        assert f"| {row} |" in readme, f"{path.name}: README has no row {row!r}"
    for key in keys:
      assert key in studies, (f"{path.name}: {key!r} is in none of mnist1d_accuracy.json, "
                              "mnist1d_dkd_warmup.json, mnist1d_above_teacher.json")


def test_readme_study_table_is_the_one_generated_from_the_results_json():
  """README's studies table is benchmarks/results/mnist1d_accuracy.md verbatim, and that
  table is mean +- std of the per-seed values in mnist1d_accuracy.json."""
  import numpy as np
  table = (REPO / "benchmarks/results/mnist1d_accuracy.md").read_text().strip()
  assert table in (REPO / "README.md").read_text()
  studies = json.loads((REPO / "benchmarks/results/mnist1d_accuracy.json").read_text())
  for key, values in studies.items():
    assert f"| {key} | {np.mean(values):.1f} +- {np.std(values):.1f} | {len(values)} |" in table


def test_dkd_warmup_table_and_the_dkd_config_default_are_the_measured_ones():
  """README's DKD warm-up tables are benchmarks/results/mnist1d_dkd_warmup{,_confirm}.md
  verbatim (mean +- std of the JSONs' per-seed values), and configs/mnist1d/dkd_cnn_to_mlp.py's default
  losses are those of the variant its docstring names."""
  import importlib.util

  import numpy as np
  from kdjax.config import load_config

  for name in ("mnist1d_dkd_warmup", "mnist1d_dkd_warmup_confirm"):
    table = (REPO / f"benchmarks/results/{name}.md").read_text().strip()
    assert table in (REPO / "README.md").read_text()
    results = json.loads((REPO / f"benchmarks/results/{name}.json").read_text())
    for key, values in results["accuracy"].items():
      assert (f"| {key} | {results['description'][key]} | {np.mean(values):.1f} +- "
              f"{np.std(values):.1f} | {len(values)} |") in table
  spec = importlib.util.spec_from_file_location("dkd_warmup",
                                                REPO / "benchmarks/mnist1d_dkd_warmup.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  path = REPO / "configs/mnist1d/dkd_cnn_to_mlp.py"
  doc = ast.get_docstring(ast.parse(path.read_text()))
  (key,) = re.findall(r'mnist1d_dkd_warmup.json, "([^"]+)"', doc)
  assert load_config(str(path)).losses.to_dict() == bench.VARIANTS[key][3]
