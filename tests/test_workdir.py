"""A workdir holds one run: a rerun with another config is refused before anything is
written (or accepted with ``resume=override``, keeping the old config), the smoke and the
full config never share a workdir, one run at a time holds it, and a resume survives a
kill during a metrics write and an extended ``num_steps``."""

import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from kdjax.config import load_config
from kdjax.programs import demo
from kdjax.training import WorkdirInUse, train_and_evaluate
from kdjax.training import _workdir

REPO = pathlib.Path(__file__).resolve().parent.parent
SMOKE = {"progress_bar": False, "num_steps": 20}  # mlp smoke: log 10, eval/ckpt 20


def mlp(**overrides):
  return load_config("mnist1d/mlp.py", "smoke", {**SMOKE, **overrides})


def snapshot(workdir: pathlib.Path) -> dict[str, bytes]:
  """Every file under ``workdir`` with its bytes."""
  return {str(p.relative_to(workdir)): p.read_bytes()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


def steps_logged(workdir: pathlib.Path) -> list[int]:
  return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 20-step MLP smoke run (read-only: tests copy it)."""
  workdir = tmp_path_factory.mktemp("finished") / "w"
  train_and_evaluate(mlp(), str(workdir))
  return workdir


@pytest.fixture
def run_copy(finished, tmp_path):
  import shutil
  workdir = tmp_path / "w"
  shutil.copytree(finished, workdir)
  return workdir


def test_changed_learning_rate_is_refused_before_anything_is_written(run_copy):
  before = snapshot(run_copy)
  with pytest.raises(ValueError, match=r"holds a run with another config: optimizer.learning_rate "
                     r"0.01 -> 0.5\. Use a new --workdir, or --config.resume=override"):
    train_and_evaluate(mlp(**{"optimizer.learning_rate": 0.5, "num_steps": 40}), str(run_copy))
  assert snapshot(run_copy) == before  # config.json, checkpoints, metrics untouched


def test_every_changed_field_is_named_with_both_values(run_copy):
  with pytest.raises(ValueError) as e:
    train_and_evaluate(mlp(**{"optimizer.name": "sgd", "batch_size": 40, "seed": 3}), str(run_copy))
  message = str(e.value)
  for part in ('batch_size 80 -> 40', 'optimizer.name "adam" -> "sgd"', "seed 0 -> 3"):
    assert part in message
  assert "\n" not in message


def test_override_continues_and_keeps_the_old_config_in_the_history(run_copy):
  old = json.loads((run_copy / "config.json").read_text())
  summary = train_and_evaluate(mlp(**{"optimizer.learning_rate": 0.5, "num_steps": 40,
                                      "resume": "override"}), str(run_copy))
  assert summary["resumed_from"] == 20 and summary["steps"] == 40
  history = [json.loads(line) for line in (run_copy / "config_history.jsonl").read_text().splitlines()]
  assert len(history) == 1
  assert history[0]["at_step"] == 20
  assert history[0]["changes"] == {"optimizer.learning_rate": [0.01, 0.5]}
  assert history[0]["config"] == old
  assert json.loads((run_copy / "config.json").read_text())["optimizer"]["learning_rate"] == 0.5
  # The next rerun (resume back at "check") is the new config's run.
  train_and_evaluate(mlp(**{"optimizer.learning_rate": 0.5, "num_steps": 40}), str(run_copy))


def test_extending_num_steps_resumes_with_intervals_on_multiples_of_log_every(tmp_path):
  workdir = tmp_path / "w"
  train_and_evaluate(mlp(num_steps=45), str(workdir))  # intervals end 10, 20, 30, 40, 45
  assert steps_logged(workdir) == [10, 20, 30, 40, 45]
  summary = train_and_evaluate(mlp(num_steps=100), str(workdir))
  assert summary["resumed_from"] == 45
  assert steps_logged(workdir) == [10, 20, 30, 40, 45, 50, 60, 70, 80, 90, 100]
  assert checkpoint_steps(workdir) == [80, 100]  # keep_checkpoints=2 of 60, 80, 100


def test_changing_the_length_of_a_cosine_schedule_is_refused(tmp_path):
  workdir = tmp_path / "w"
  train_and_evaluate(mlp(**{"optimizer.schedule": "cosine"}), str(workdir))
  with pytest.raises(ValueError, match=r"num_steps 20 -> 40 \(the cosine schedule reads the run's length"):
    train_and_evaluate(mlp(**{"optimizer.schedule": "cosine", "num_steps": 40}), str(workdir))


def test_safe_fields_change_without_a_word(run_copy):
  summary = train_and_evaluate(mlp(num_steps=40, log_every=20, eval_every=20, checkpoint_every=40,
                                   keep_checkpoints=3, eval_batch_size=200), str(run_copy))
  assert summary["steps"] == 40 and steps_logged(run_copy) == [10, 20, 40]


def test_smoke_and_full_config_never_share_a_workdir(run_copy):
  full = load_config("mnist1d/mlp.py", None, {"progress_bar": False})
  with pytest.raises(ValueError, match=r"smoke true -> false"):
    train_and_evaluate(full, str(run_copy))


def test_demo_smoke_then_full_is_refused_before_training(tmp_path):
  (tmp_path / demo.DEMO_FILE).write_text(json.dumps({"smoke": True}))
  with pytest.raises(ValueError, match="holds the smoke demo's runs; the full demo needs another"):
    demo.run_demo(str(tmp_path), smoke=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == [demo.DEMO_FILE]


def test_config_changes_compare_num_epochs_when_it_derives_num_steps():
  base = mlp(num_epochs=2, num_steps=0)
  saved = _workdir.as_json(base)
  saved["num_steps"] = 50  # what the run resolved and saved
  assert _workdir.config_changes(saved, base) == {}
  assert _workdir.config_changes(saved, mlp(num_epochs=3, num_steps=0)) == {}
  cosine = {"optimizer.schedule": "cosine"}
  saved = _workdir.as_json(mlp(num_epochs=2, num_steps=0, **cosine))
  assert _workdir.config_changes(saved, mlp(num_epochs=3, num_steps=0, **cosine)) == {
      "num_epochs": (2, 3)}
  older = _workdir.as_json(mlp())  # a workdir from a kdjax before the resume field
  del older["resume"]
  assert _workdir.config_changes(older, mlp()) == {}  # a missing field counts as its default


def test_metrics_line_cut_short_by_a_kill_is_dropped_with_a_warning(run_copy, caplog):
  with (run_copy / "metrics.jsonl").open("a") as f:
    f.write('{"step": 30, "train/lo')  # killed during the write
  with caplog.at_level(logging.WARNING):
    summary = train_and_evaluate(mlp(num_steps=40), str(run_copy))
  assert summary["resumed_from"] == 20
  assert "line 3 is cut short" in caplog.text
  assert steps_logged(run_copy) == [10, 20, 30, 40]


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_a_live_lock_refuses_a_second_run(run_copy):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    (run_copy / _workdir.LOCK_FILE).write_text(json.dumps(
        {"pid": sleeper.pid, "host": socket.gethostname(), "started": "then"}))
    before = snapshot(run_copy)
    with pytest.raises(WorkdirInUse, match=f"in use by another run \\(pid {sleeper.pid}"):
      train_and_evaluate(mlp(num_steps=40), str(run_copy))
    assert snapshot(run_copy) == before
  finally:
    sleeper.kill()
    sleeper.wait()


def test_a_stale_lock_is_taken_over_with_a_warning_and_released(run_copy, caplog):
  pid = dead_pid()
  (run_copy / _workdir.LOCK_FILE).write_text(json.dumps(
      {"pid": pid, "host": socket.gethostname(), "started": "then"}))
  with caplog.at_level(logging.WARNING):
    assert train_and_evaluate(mlp(num_steps=40), str(run_copy))["steps"] == 40
  assert f"from pid {pid}, which is no longer running" in caplog.text
  assert not (run_copy / _workdir.LOCK_FILE).exists()


def test_a_lock_from_another_host_names_the_file_to_delete(run_copy):
  lock = run_copy / _workdir.LOCK_FILE
  lock.write_text(json.dumps({"pid": 1, "host": "elsewhere-7", "started": "then"}))
  with pytest.raises(WorkdirInUse, match=f"on host elsewhere-7 .*; if that run is dead, delete {lock}"):
    train_and_evaluate(mlp(num_steps=40), str(run_copy))


def test_concurrent_run_into_one_workdir_is_refused(tmp_path):
  workdir = tmp_path / "w"
  cmd = [sys.executable, "-m", "kdjax.main", "train", "--config",
         str(REPO / "configs/mnist1d/mlp.py:smoke"), "--workdir", str(workdir),
         "--config.num_steps=100000", "--config.log_every=10", "--config.eval_every=100000",
         "--config.checkpoint_every=100000", "--config.progress_bar=False"]
  first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    deadline = time.time() + 120
    while not (workdir / "metrics.jsonl").exists() and time.time() < deadline:
      assert first.poll() is None, first.stderr.read()[-2000:]
      time.sleep(0.1)
    second = subprocess.run(cmd, capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert second.returncode == 1
    lines = [l for l in second.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith(f"kdjax train: error: WorkdirInUse: workdir {str(workdir)!r} "
                                f"is in use by another run (pid {first.pid}")
  finally:
    first.kill()
    first.wait()
    first.stderr.close()
  steps = steps_logged(workdir)
  assert steps == sorted(set(steps))  # no step twice
