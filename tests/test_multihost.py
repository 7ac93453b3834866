"""Two processes on localhost (CPU, gloo collectives) train together and match one process
with the same global batch and device count: losses, evaluation, params.

Each process has 4 virtual devices and feeds 50 of the global batch of 100 examples
(padded to 52 rows for its 4 devices); the reference is this test process with 8 devices.
The objective is KD from a cached teacher, so the teacher targets, the in-loop
evaluation, metrics.jsonl / summary.json (process 0 only) and orbax checkpoints written
by both processes are all covered.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from kdjax.config import load_config
from kdjax.training import load_variables, train_and_evaluate

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, teacher_dir):
  overrides = {"progress_bar": False, "num_steps": 4, "log_every": 2, "eval_every": 2,
               "checkpoint_every": 4, "batch_size": 100, "num_devices": 0,
               "teacher.workdir": str(teacher_dir),
               "teacher.disk_cache": False}  # each run computes its teacher targets
  config_name = "mnist1d/kd_cnn_to_mlp.py:labelled"
  multi = tmp_path / "two_processes"
  address = f"127.0.0.1:{_free_port()}"
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent.parent),
                                                      os.environ.get("PYTHONPATH", "")])}
  procs = [subprocess.Popen([sys.executable, str(WORKER), address, "2", str(i), str(multi), "4",
                             config_name, json.dumps(overrides)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
           for i in range(2)]
  try:
    outputs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert [r["process"] for r in reports] == [0, 1]

  single = tmp_path / "one_process"
  config = load_config(config_name.split(":")[0], "labelled", overrides)
  assert jax.device_count() == 8
  summary = train_and_evaluate(config, str(single))

  # Every process computed the same evaluation; process 0 alone wrote the files.
  for r in reports:
    np.testing.assert_allclose(r["test"]["accuracy"], summary["test"]["accuracy"], atol=1e-6)
    np.testing.assert_allclose(r["test"]["nll"], summary["test"]["nll"], rtol=1e-5)
  written = json.loads((multi / "summary.json").read_text())
  assert written["test"] == reports[0]["test"] and written["devices"] == 8
  # The teacher targets, computed by both processes together, score like one process's.
  for key in ("accuracy", "nll"):
    np.testing.assert_allclose(written["teacher_test"][key], summary["teacher_test"][key],
                               rtol=1e-5)
  lines = [json.loads(l) for l in (multi / "metrics.jsonl").read_text().splitlines()]
  reference = [json.loads(l) for l in (single / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines] == [2, 4]
  for got, want in zip(lines, reference):
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=1e-6, err_msg=key)
  # The checkpoint both processes wrote restores in this single process.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               load_variables(multi), load_variables(single))
