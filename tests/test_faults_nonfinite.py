"""Non-finite losses and gradients: stop with the step and the term, or skip and count;
never checkpoint NaN parameters."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config import load_config
from kdjax.training import NonFiniteError, load_params, train_and_evaluate
from kdjax.training._nonfinite import check_chunk, summarize_chunk

REPO = pathlib.Path(__file__).resolve().parent.parent


def smoke(**overrides):
  return load_config("mnist1d/mlp.py", "smoke", {"progress_bar": False, **overrides})


def all_finite(tree) -> bool:
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


def test_chunk_summary_finds_the_first_bad_step_and_term():
  steps = {"loss": jnp.array([1.0, 2.0, jnp.nan, 4.0]),
           "loss/kd": jnp.array([0.5, 1.0, jnp.nan, 2.0]),
           "loss/ce": jnp.array([0.5, 1.0, 3.0, 4.0]),
           "grad_norm": jnp.array([1.0, 1.0, jnp.nan, 1.0]),
           "param_norm": jnp.array([3.0, 3.0, 3.0, 3.0])}
  out = jax.jit(summarize_chunk)(steps)
  assert float(out["loss"]) == pytest.approx(7 / 3)  # mean over the finite steps 0, 1, 3
  assert int(out["nonfinite/steps"]) == 1 and int(out["nonfinite/first"]) == 2
  with pytest.raises(NonFiniteError, match=r"^step 13: non-finite loss/kd, loss, grad_norm"):
    check_chunk(out, chunk_start=10, policy="stop")
  kept = check_chunk(out, chunk_start=10, policy="skip")
  assert kept["skipped_steps"] == 1 and not any(k.startswith("nonfinite/") for k in kept)
  healthy = jax.jit(summarize_chunk)({k: jnp.ones(4) for k in steps})
  assert int(healthy["nonfinite/first"]) == -1
  assert check_chunk(healthy, chunk_start=0, policy="stop").keys() == set(steps)


def test_lr_1e12_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = tmp_path / "w"
  train_and_evaluate(smoke(num_steps=20), str(workdir))  # a good checkpoint at step 20
  good = load_params(workdir)
  with pytest.raises(NonFiniteError, match=r"^step 2[1-9]: non-finite loss/cross_entropy, loss"):
    train_and_evaluate(smoke(num_steps=40, resume="override", **{"optimizer.learning_rate": 1e12}),
                       str(workdir))
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["20"]
  jax.tree.map(np.testing.assert_array_equal, load_params(workdir), good)
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert records[-1]["step"] == 20 and all(np.isfinite(r["train/loss"]) for r in records)
  assert not (workdir / "summary.json").exists() or json.loads(
      (workdir / "summary.json").read_text())["steps"] == 20


def test_skip_policy_drops_and_counts_non_finite_updates(tmp_path):
  summary = train_and_evaluate(smoke(on_nonfinite="skip", **{"optimizer.learning_rate": 1e12}),
                               str(tmp_path / "w"))
  assert summary["steps"] == 40 and 1 <= summary["skipped_updates"] <= 40
  assert all_finite(load_params(tmp_path / "w"))
  records = [json.loads(l) for l in (tmp_path / "w/metrics.jsonl").read_text().splitlines()]
  assert sum(r.get("train/skipped_steps", 0) for r in records) == summary["skipped_updates"]


def test_cli_non_finite_run_exits_non_zero_naming_step_and_term(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "kdjax.main", "train", "--config", str(REPO / "configs/mnist1d/mlp.py:smoke"),
       "--workdir", str(tmp_path / "w"), "--config.optimizer.learning_rate=1e12",
       "--config.progress_bar=False"], capture_output=True, text=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert result.returncode == 1
  last = [l for l in result.stderr.splitlines() if l.strip()][-1]
  assert last.startswith("kdjax train: error: NonFiniteError: step ") and "loss/cross_entropy" in last
  assert not (tmp_path / "w/checkpoints").exists() or not any(
      p.name.isdigit() for p in (tmp_path / "w/checkpoints").iterdir())
