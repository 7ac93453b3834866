"""Test setup: 8 virtual CPU devices, so sharded and multi-device code runs for real."""

import os
import tempfile

# Must happen before JAX initialises its backends.
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("KDJAX_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_data"))
# One persistent XLA compilation cache for the test run, shared by both xdist workers and the
# subprocesses tests launch (environment variables): programs that several tests compile
# alike (the same models' inits, steps and evaluations; every restart of the kill-and-resume
# tests) compile once. A size limit turns on JAX's file lock, so concurrent writers and
# readers never see half-written entries. Entries are keyed by the program, flags and
# devices, so a stale directory is harmless; KDJAX_TEST_XLA_CACHE= (empty) turns it off.
_cache = os.environ.get("KDJAX_TEST_XLA_CACHE",
                        os.path.join(tempfile.gettempdir(), f"kdjax-test-xla-cache-{os.getuid()}"))
if _cache:
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

# Strict numerics: an implicit rank promotion ([B] + [B, 1] silently broadcasting to
# [B, B]) raises. The environment variable carries it to the subprocesses tests launch
# (`python -m kdjax.main ...`, notebooks, benchmarks), which read it when JAX starts.
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
  """A CNN teacher trained for 60 steps (smoke config), shared by the trainer tests."""
  from kdjax.config import load_config
  from kdjax.training import train_and_evaluate

  workdir = tmp_path_factory.mktemp("teacher")
  config = load_config("mnist1d/teacher_cnn.py", "smoke", {"progress_bar": False, "num_steps": 60})
  assert train_and_evaluate(config, str(workdir))["steps"] == 60
  return workdir
