"""Test setup: 8 virtual CPU devices, so sharded and multi-device code runs for real."""

import os

# Must happen before JAX initialises its backends.
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("KDJAX_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_data"))

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
