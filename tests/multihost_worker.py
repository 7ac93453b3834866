"""One process of the multi-process training test (``tests/test_multihost.py``).

Usage: ``python tests/multihost_worker.py ADDRESS NUM_PROCESSES PROCESS_ID WORKDIR
DEVICES_PER_PROCESS CONFIG[:ARG] CONFIG_OVERRIDES_JSON``. Runs on the CPU with virtual
devices.
"""

import json
import os
import sys


def main(address: str, num_processes: str, process_id: str, workdir: str, devices: str,
         config_name: str, overrides: str) -> None:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  from kdjax.training import _distributed

  assert _distributed.initialize(address, int(num_processes), int(process_id), timeout_s=60)
  try:
    import jax

    from kdjax.config import load_config
    from kdjax.training import train_and_evaluate

    assert jax.process_count() == int(num_processes) and jax.device_count() == int(
        num_processes) * int(devices), (jax.process_count(), jax.device_count())
    path, _, arg = config_name.partition(":")
    config = load_config(path, arg or None, json.loads(overrides))
    summary = train_and_evaluate(config, workdir)
    print(json.dumps({"process": jax.process_index(), "test": summary["test"]}))
  finally:
    _distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
