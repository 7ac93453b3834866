"""SIGKILL at many moments (some during async checkpoint saves) and SIGTERM: the rerun of
the same command ends with parameters bit-identical to an uninterrupted run (CPU), and
the data order continues where it stopped."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from kdjax import data as kd_data
from kdjax.config import load_config
from kdjax.training import load_params, train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parent.parent
NUM_STEPS = 600
KILL_AT = (60, 160, 260, 360, 440)  # steps; kills 2 and 4 wait for an async save in flight
COMMON = {"num_steps": NUM_STEPS, "log_every": 10, "eval_every": NUM_STEPS,
          "checkpoint_every": 50, "progress_bar": False}
UNINTERRUPTED = {**COMMON, "checkpoint_every": NUM_STEPS}  # same params, fewer saves


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # Bit-exactness is a CPU property: pin the platform (a GPU run may differ).
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
          "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla_cache")),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def cli(config: str, workdir: pathlib.Path, overrides: dict) -> list[str]:
  return ([sys.executable, "-m", "kdjax.main", "train", "--config", str(REPO / "configs" / config),
           "--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in overrides.items()])


def last_step(workdir: pathlib.Path) -> int:
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0
  except (OSError, ValueError, IndexError):
    return 0


def unfinished_saves(workdir: pathlib.Path) -> set[str]:
  """Names of orbax's temporary folders: a save that has not been committed."""
  try:
    return {p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name}
  except OSError:
    return set()


def kill_and_resume(cmd, workdir: pathlib.Path, env) -> dict:
  """Kills the command with SIGKILL at each step of KILL_AT (reruns it after each kill),
  then lets it finish. Returns counts of kills, and of kills during an async save."""
  kills = during_save = 0
  for i, target in enumerate(KILL_AT):
    leftovers = unfinished_saves(workdir)  # from the previous kill; not this run's saves
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if last_step(workdir) >= target and (i % 2 == 0 or unfinished_saves(workdir) - leftovers
                                           or last_step(workdir) >= target + 100):
        break
      time.sleep(0.002)
    assert proc.poll() is None, f"run ended before kill point {target}: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    kills += 1
    during_save += bool(unfinished_saves(workdir) - leftovers)
    assert not (workdir / "summary.json").exists()
  subprocess.run(cmd, env=env, check=True, capture_output=True)
  return {"kills": kills, "during_save": during_save}


def check_matches(workdir: pathlib.Path, reference) -> None:
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["backend"] == "cpu"  # bit-exactness is asserted on the CPU only
  assert summary["steps"] == NUM_STEPS and summary["resumed_from"] >= KILL_AT[0]
  jax.tree.map(np.testing.assert_array_equal, load_params(workdir), reference)
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(10, NUM_STEPS + 1, 10))  # no chunk logged twice or lost


@pytest.fixture(scope="module")
def single_reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("single_full")
  train_and_evaluate(load_config("mnist1d/mlp.py", "smoke", UNINTERRUPTED), str(workdir))
  return load_params(workdir)


def test_sigkill_five_times_single_teacher_run_is_bit_identical(single_reference, tmp_path, env):
  counts = kill_and_resume(cli("mnist1d/mlp.py:smoke", tmp_path / "w", COMMON), tmp_path / "w", env)
  print(f"\nSIGKILL points: {counts}")
  assert counts["kills"] == len(KILL_AT) and counts["during_save"] >= 1
  check_matches(tmp_path / "w", single_reference)


def test_sigkill_five_times_ensemble_teacher_run_is_bit_identical(teacher_dir, tmp_path_factory, env):
  mlp_teacher = tmp_path_factory.mktemp("mlp_teacher")
  train_and_evaluate(load_config("mnist1d/mlp.py", "smoke", {"progress_bar": False, "num_steps": 20}),
                     str(mlp_teacher))
  overrides = {**COMMON, "teacher.workdir": f"{teacher_dir},{mlp_teacher}"}
  full = tmp_path_factory.mktemp("ens_full")
  train_and_evaluate(load_config("mnist1d/kd_ensemble_to_mlp.py", "smoke",
                                 {**overrides, "checkpoint_every": NUM_STEPS}), str(full))
  killed = tmp_path_factory.mktemp("ens_killed")
  counts = kill_and_resume(cli("mnist1d/kd_ensemble_to_mlp.py:smoke", killed, overrides), killed, env)
  print(f"\nSIGKILL points (ensemble): {counts}")
  assert counts["kills"] == len(KILL_AT) and counts["during_save"] >= 1
  assert json.loads((killed / "summary.json").read_text())["teacher_test"]["members"] == 2
  check_matches(killed, load_params(full))


@pytest.mark.parametrize("signum, code, said", [
    (signal.SIGTERM, 0, "stopped on SIGTERM"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_checkpoint_at_the_chunk_boundary(single_reference, tmp_path, env,
                                                             signum, code, said):
  overrides = {**COMMON, "checkpoint_every": 500}  # the notice, not the schedule, saves
  workdir = tmp_path / "w"
  cmd = cli("mnist1d/mlp.py:smoke", workdir, overrides)
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 180
  while last_step(workdir) < 120 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.005)
  assert proc.poll() is None
  proc.send_signal(signum)
  sent = time.time()
  _, stderr = proc.communicate(timeout=60)
  elapsed = time.time() - sent
  print(f"\n{signal.Signals(signum).name} -> exit in {elapsed:.2f}s")
  assert proc.returncode == code, stderr[-2000:]
  stopped = last_step(workdir)
  assert 120 <= stopped < NUM_STEPS and stopped % 500  # saved because of the notice
  assert stderr.splitlines()[-1] == (f"kdjax train: {said} at step {stopped} (checkpoint saved in "
                                     f"{workdir}); rerun the same command to resume")
  assert str(stopped) in [p.name for p in (workdir / "checkpoints").iterdir()]
  assert elapsed < 30
  subprocess.run(cmd, env=env, check=True, capture_output=True)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["resumed_from"] == stopped
  jax.tree.map(np.testing.assert_array_equal, load_params(workdir), single_reference)


def test_data_order_continues_across_a_crash(tmp_path, monkeypatch):
  """Records the example ids of every step; a crash at step 70 (last checkpoint 60)
  replays steps 60..69 with the same ids, and every epoch sees each example once."""
  seen: dict[int, list[np.ndarray]] = {}
  original = kd_data.batch_indices
  crash_at = [70]

  def recording(num_examples, *, batch_size, start_step, num_steps, seed):
    if crash_at and start_step >= crash_at[0]:
      crash_at.clear()
      raise RuntimeError("simulated crash")
    idx = original(num_examples, batch_size=batch_size, start_step=start_step,
                   num_steps=num_steps, seed=seed)
    for i, row in enumerate(idx):
      seen.setdefault(start_step + i, []).append(row.copy())
    return idx

  monkeypatch.setattr(kd_data, "batch_indices", recording)
  config = load_config("mnist1d/mlp.py", "smoke", {"progress_bar": False, "num_steps": 120,
                                                    "checkpoint_every": 20, "eval_every": 120})
  with pytest.raises(RuntimeError, match="simulated crash"):
    train_and_evaluate(config, str(tmp_path / "w"))
  time.sleep(1.0)  # let the crashed run's async save of step 60 finish
  assert train_and_evaluate(config, str(tmp_path / "w"))["resumed_from"] == 60
  assert sorted(seen) == list(range(120))
  replayed = [s for s, rows in seen.items() if len(rows) > 1]
  assert replayed == list(range(60, 70))
  for s in replayed:
    np.testing.assert_array_equal(*seen[s])
  steps_per_epoch = 4000 // 80
  for epoch in range(2):
    ids = np.concatenate([seen[s][-1] for s in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)])
    assert sorted(ids.tolist()) == list(range(4000))  # none repeated, none skipped
