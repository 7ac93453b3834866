"""The trainer on streaming data (``config.data.source`` "synthetic" / "tfds"): exact
resume of params and batches (after an in-process crash and after a SIGKILL of the CLI),
the teacher on the student's augmented view, masked streaming evaluation,
``steps_per_call`` and ``num_epochs``."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import data as kd_data
from kdjax.config import load_config
from kdjax.training import _inputs, default_config, load_params, train_and_evaluate
from kdjax.training._evaluate import evaluate_stream

NUM_CLASSES = 5


def stream_config(**overrides):
  c = default_config()
  c.data.name, c.data.source = "synthetic", "synthetic"
  c.data.synthetic = {"num_examples": 100, "eval_examples": 44, "shape": (8, 8, 3),
                      "num_classes": NUM_CLASSES}
  c.data.augment = "pad_crop_flip"
  c.model.hidden = (32,)
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 0.05
  c.batch_size, c.eval_batch_size = 16, 16
  c.num_steps, c.steps_per_call, c.log_every = 12, 2, 4
  c.eval_every, c.checkpoint_every = 12, 4
  c.progress_bar = False
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


def record_blocks(monkeypatch, crash_at=None):
  """Records the ``x`` block of every call by its first step; optionally raises at the
  call that starts at ``crash_at`` (a crash after the checkpoint of an earlier step)."""
  seen: dict[int, list[np.ndarray]] = {}
  original = _inputs.StreamBatches.chunk
  crash = [crash_at] if crash_at is not None else []

  def chunk(self, step, num):
    if crash and step >= crash[0]:
      crash.clear()
      raise RuntimeError("simulated crash")
    block = original(self, step, num)
    seen.setdefault(step, []).append(np.asarray(block["x"]))
    return block

  monkeypatch.setattr(_inputs.StreamBatches, "chunk", chunk)
  return seen


def test_stream_resume_gives_the_same_batches_and_bit_identical_params(tmp_path, monkeypatch):
  config = stream_config(**{"data.mixup_alpha": 0.4})
  full = record_blocks(monkeypatch)
  train_and_evaluate(config, str(tmp_path / "full"))
  assert sorted(full) == list(range(0, 12, 2))

  resumed = record_blocks(monkeypatch, crash_at=10)  # last checkpoint: step 8
  with pytest.raises(RuntimeError, match="simulated crash"):
    train_and_evaluate(config, str(tmp_path / "w"))
  summary = train_and_evaluate(config, str(tmp_path / "w"))
  assert summary["resumed_from"] == 8 and summary["steps"] == 12
  assert [s for s, blocks in resumed.items() if len(blocks) > 1] == [8]  # after checkpoint 8
  np.testing.assert_array_equal(*resumed[8])
  assert sorted(resumed) == sorted(full)
  for step in full:  # the resumed run read exactly the uninterrupted run's batches
    np.testing.assert_array_equal(resumed[step][-1], full[step][0])
  jax.tree.map(np.testing.assert_array_equal, load_params(tmp_path / "w"),
               load_params(tmp_path / "full"))
  saved = json.loads((tmp_path / "w/checkpoints/12/data/process_0-of-1.json").read_text())
  assert saved["meta"]["mixup_alpha"] == 0.4 and saved["meta"]["process_count"] == 1


@pytest.fixture(scope="module")
def stream_teacher(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("stream_teacher")
  train_and_evaluate(stream_config(num_steps=4, checkpoint_every=4, eval_every=4), str(workdir))
  return workdir


def test_teacher_copy_sees_the_students_augmented_view(stream_teacher, tmp_path):
  """A student initialised as a copy of its teacher, trained at lr 0: if both see the
  same (cropped, flipped, mixed) inputs, their logits agree exactly, so the KL to the
  teacher is 0 and they agree on every argmax."""
  config = stream_config(**{
      "teacher.workdir": str(stream_teacher), "teacher.cache": False, "init.from_teacher": True,
      "losses": {"soft_target_kl": {"weight": 1.0, "temperature": 1.0}},
      "optimizer.learning_rate": 0.0, "data.mixup_alpha": 0.5, "num_steps": 8,
      "checkpoint_every": 8, "eval_every": 8})
  summary = train_and_evaluate(config, str(tmp_path / "kd"))
  records = [json.loads(line) for line in (tmp_path / "kd/metrics.jsonl").read_text().splitlines()]
  assert len(records) == 2
  for r in records:
    assert r["train/teacher_agreement"] == 1.0
    assert abs(r["train/loss"]) < 1e-6
  assert summary["teacher_test"]["accuracy"] == pytest.approx(summary["test"]["accuracy"])


def test_teacher_cache_with_augmented_stream_is_a_one_line_error(stream_teacher, tmp_path):
  config = stream_config(**{"teacher.workdir": str(stream_teacher), "teacher.cache": True,
                            "losses": {"hinton_kd": {"weight": 1.0, "temperature": 4.0,
                                                     "alpha": 0.9}}})
  with pytest.raises(ValueError, match=r"config\.teacher\.cache=True.*pad_crop_flip") as e:
    train_and_evaluate(config, str(tmp_path / "kd"))
  assert "\n" not in str(e.value)


def test_streaming_evaluation_counts_real_examples_only():
  """44 examples in batches of 16: the last batch has 12 padding rows (mask False)."""
  source = kd_data.SyntheticSource(44, (4, 4, 1), num_classes=3, seed=3)
  pipeline = kd_data.make_pipeline(source, batch_size=16, seed=0, train=False, num_classes=3,
                                   image_size=4, mean=(0.5,), std=(0.25,), process_index=0,
                                   process_count=1)
  rng = np.random.default_rng(0)
  w = rng.normal(size=(16, 3)).astype(np.float32)

  def predict(weights, x):
    return x.reshape(x.shape[0], -1) @ weights

  mesh = kd_data.make_data_mesh()
  result = evaluate_stream(jax.jit(predict), jnp.asarray(w), pipeline, mesh=mesh)
  x = np.stack([kd_data.normalize(np.asarray(source[i]["image"]), (0.5,), (0.25,))
                for i in range(44)]).reshape(44, -1).astype(np.float64)
  y = np.array([source[i]["label"] for i in range(44)])
  logits = x @ w.astype(np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
  assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y), abs=1e-7)
  assert result["nll"] == pytest.approx(-np.mean(log_probs[np.arange(44), y]), rel=1e-5)


def test_num_epochs_derives_num_steps_and_disagreement_is_an_error(tmp_path):
  config = stream_config(num_epochs=2, num_steps=0, log_every=2, eval_every=12,
                         checkpoint_every=12)
  summary = train_and_evaluate(config, str(tmp_path / "a"))
  assert summary["steps"] == 2 * (100 // 16)  # 12
  with pytest.raises(ValueError, match=r"config\.num_steps=5 disagrees with config\.num_epochs=2"):
    train_and_evaluate(stream_config(num_epochs=2, num_steps=5), str(tmp_path / "b"))


@pytest.mark.parametrize("overrides, match", [
    ({"steps_per_call": 3}, r"log_every=4 must be a positive multiple of steps_per_call=3"),
    ({"num_steps": 0}, r"set num_steps > 0 or num_epochs > 0"),
    ({"eval_every": 6}, r"eval_every=6 must be a positive multiple of log_every=4"),
])
def test_bad_step_settings_are_one_line_errors(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(stream_config(**overrides), str(tmp_path / "w"))


def test_mixup_label_probs_reach_the_cross_entropy(tmp_path):
  """At lr 0 the logged loss is the soft-label cross-entropy of the initial student on
  the mixed batches (float64 NumPy reference), not the hard-label one."""
  config = stream_config(**{"data.mixup_alpha": 1.0, "optimizer.learning_rate": 0.0,
                            "num_steps": 4, "checkpoint_every": 4, "eval_every": 4})
  train_and_evaluate(config, str(tmp_path / "w"))
  logged = json.loads((tmp_path / "w/metrics.jsonl").read_text().splitlines()[0])["train/loss"]
  pipes = kd_data.pipelines_from_config(config.data, batch_size=16, eval_batch_size=16,
                                        seed=config.seed)
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), load_params(tmp_path / "w"))
  soft, hard = [], []
  for step in range(4):
    batch = pipes["train"][step]
    x = batch["x"].reshape(16, -1).astype(np.float64)
    h = np.maximum(x @ params["dense_0"]["kernel"] + params["dense_0"]["bias"], 0)
    z = h @ params["head"]["kernel"] + params["head"]["bias"]
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    soft.append(-(batch["label_probs"] * log_p).sum(1).mean())
    hard.append(-log_p[np.arange(16), batch["y"]].mean())
  assert logged == pytest.approx(np.mean(soft), rel=1e-5)
  assert abs(np.mean(soft) - np.mean(hard)) > 1e-3


def test_mixup_with_a_hard_label_term_is_a_one_line_error(tmp_path):
  config = stream_config(**{"data.mixup_alpha": 0.4, "losses": {
      "dkd": {"weight": 1.0}}, "teacher.workdir": "unused"})
  with pytest.raises(ValueError, match=r"config\.data\.mixup_alpha=0\.4 .*\['dkd'\]"):
    train_and_evaluate(config, str(tmp_path / "w"))


# A streaming run killed by SIGKILL in a subprocess (`python -m kdjax.main train`).
KILL_CONFIG = '''
from kdjax.training import default_config


def get_config():
  c = default_config()
  c.data.name = c.data.source = "synthetic"
  c.data.synthetic = {"num_examples": 200, "eval_examples": 44, "shape": (8, 8, 3),
                      "num_classes": 5}
  c.data.augment = "pad_crop_flip"
  c.data.mixup_alpha = 0.4
  c.model.hidden = (32,)
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 0.05
  c.batch_size, c.eval_batch_size = 16, 16
  c.num_steps, c.steps_per_call, c.log_every = 240, 4, 20
  c.eval_every, c.checkpoint_every = 120, 60
  c.progress_bar = False
  return c
'''


def committed_checkpoints(workdir) -> list[int]:
  """Steps of the checkpoints orbax has committed (its temporary folders left out)."""
  try:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  except OSError:
    return []


def logged_steps(workdir) -> list[int]:
  try:
    return [json.loads(line)["step"] for line in
            (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
  except (OSError, ValueError):
    return []


@pytest.mark.slow
def test_sigkill_of_a_streaming_cli_run_resumes_bit_identically(tmp_path):
  """`kdjax train` on an augmented (crop + flip + mixup) synthetic stream, killed with
  SIGKILL between two checkpoints, then rerun: the resumed run continues the data stream
  where its last checkpoint left it, so every logged metric (a function of the batches)
  and the final parameters equal an uninterrupted run's bit for bit."""
  config_file = tmp_path / "stream_kill.py"
  config_file.write_text(KILL_CONFIG)
  # The uninterrupted run (one checkpoint, at the end: saves do not change the training).
  full = train_and_evaluate(load_config(config_file, None, {"checkpoint_every": 240}),
                            str(tmp_path / "full"))

  workdir = tmp_path / "killed"
  cmd = [sys.executable, "-m", "kdjax.main", "train", "--config", str(config_file),
         "--workdir", str(workdir)]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",  # bit-exactness is asserted on the CPU
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         # the rerun loads the killed run's compiled steps instead of compiling again
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline, killed_after = time.time() + 120, None
  while time.time() < deadline and proc.poll() is None:
    ckpts, steps = committed_checkpoints(workdir), logged_steps(workdir)
    if ckpts and ckpts[-1] >= 60 and steps and steps[-1] > ckpts[-1]:
      killed_after = (ckpts[-1], steps[-1])  # between two checkpoints: data read ahead
      break
    time.sleep(0.002)
  assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  proc.stderr.close()
  assert not (workdir / "summary.json").exists()

  done = subprocess.run(cmd, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["backend"] == "cpu" and summary["steps"] == 240
  assert summary["resumed_from"] >= killed_after[0]  # a later save may have completed
  assert summary["resumed_from"] < 240
  print(f"\nSIGKILL after checkpoint {killed_after[0]}, logged step {killed_after[1]}; "
        f"resumed from {summary['resumed_from']}")
  jax.tree.map(np.testing.assert_array_equal, load_params(workdir),
               load_params(tmp_path / "full"))
  records = lambda w: [json.loads(line) for line in  # noqa: E731
                       (w / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records(workdir)] == list(range(20, 241, 20))
  assert records(workdir) == records(tmp_path / "full")  # same batches, same metrics
  assert summary["test"] == full["test"]
  stream_state = lambda w: json.loads(  # noqa: E731
      (w / "checkpoints/240/data/process_0-of-1.json").read_text())
  assert stream_state(workdir) == stream_state(tmp_path / "full")
