"""benchmarks/mnist1d_above_teacher.py's new code paths at toy size: the KD + true-label loss
against a float64 NumPy reference (unlabelled rows add no cross-entropy), the student loop with
the label term, the per-row student overrides and the held-out generated set. Accuracy is never asserted here;
the benchmark measures it."""

import importlib.util
import pathlib

import numpy as np

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _bench():
  spec = importlib.util.spec_from_file_location("bench_above_teacher",
                                                BENCH / "mnist1d_above_teacher.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_kd_label_loss_matches_float64_reference():
  bench = _bench()
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(6, 10)) * 3, rng.normal(size=(6, 10)) * 3
  y = np.array([3, -1, 0, -1, 9, 5])
  temp, lam = 2.0, 0.7
  log_q, log_p = _log_softmax(s / temp), _log_softmax(t / temp)
  kd = temp ** 2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)
  ce = np.where(y >= 0, -_log_softmax(s)[np.arange(6), np.maximum(y, 0)], 0.0)
  want = np.mean(kd + lam * ce)
  got = bench.kd_label_loss(s.astype(np.float32), t.astype(np.float32), y, temperature=temp,
                            alpha=1.0, label_weight=lam)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  no_label = bench.kd_label_loss(s.astype(np.float32), t.astype(np.float32), y,
                                 temperature=temp, alpha=1.0, label_weight=0.0)
  np.testing.assert_allclose(float(no_label), np.mean(kd), rtol=1e-5)


def _toy_run(bench, labels, label_weight):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(200, 40)).astype(np.float32)
  t = (rng.normal(size=(200, 10)) * 2).astype(np.float32)
  y = rng.integers(0, 10, 50)
  evals = {"test": {"x": x[:50], "y": y, "teacher": t[:50]}}
  lever = bench.Lever(members=5, extra=0, steps=20, temperature=2.0, learning_rate=3e-3,
                      batch_size=10)
  config = bench.lever_config(bench.load_config(bench.KD_CONFIG), lever)
  config.optimizer.warmup_steps, config.log_every = 2, 20
  return bench.train_student(x, t, evals, seed=0, num_steps=config.num_steps, config=config,
                             labels=labels, label_weight=label_weight)


def test_train_student_with_the_label_term():
  """The student loop runs with the label term and the row overrides (one compile: the loss
  itself is checked against float64 above) and reports every field the tables read."""
  bench = _bench()
  labels = np.where(np.arange(200) < 50, np.random.default_rng(2).integers(0, 10, 200), -1)
  r = _toy_run(bench, labels.astype(np.int32), 1.0)
  assert set(r) >= {"accuracy", "test_agreement", "final_loss", "wall_s", "load"}
  assert np.isfinite(r["final_loss"]) and r["final_loss"] > 0
  assert 0 <= r["accuracy"] <= 100 and 0 <= r["test_agreement"] <= 100


def test_lever_config_overrides_and_heldout_set():
  bench = _bench()
  base = bench.load_config(bench.KD_CONFIG)
  c = bench.lever_config(base, bench.Lever(15, 100_000, 160_000, temperature=2.0,
                                           learning_rate=3e-3, batch_size=200))
  assert (c.num_steps, c.losses.hinton_kd.temperature, c.optimizer.learning_rate,
          c.batch_size) == (160_000, 2.0, 3e-3, 200)
  assert (base.num_steps, base.losses.hinton_kd.temperature) == (40_000, 4.0)  # untouched
  assert bench.lever_config(base, bench.Lever(5, 0)).num_steps == 40_000
  bench.HELDOUT_SIZE = 2000
  x, y = bench.heldout_set()
  x2, _ = bench.heldout_set()
  assert x.shape == (2000, 40) and y.shape == (2000,) and np.array_equal(x, x2)
  assert set(np.unique(y)) == set(range(10))


def test_noisy_student_fusion_matches_float64_reference(monkeypatch):
  """benchmarks/mnist1d_noisy_student.py fuses its members as the trainer caches targets:
  tau * log of the mean of softmax(z_m / tau)."""
  monkeypatch.syspath_prepend(str(BENCH))
  spec = importlib.util.spec_from_file_location("bench_noisy_student",
                                                BENCH / "mnist1d_noisy_student.py")
  ns = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ns)
  rng = np.random.default_rng(3)
  members = [rng.normal(size=(5, 10)) * 6 for _ in range(3)]
  probs = [np.exp(_log_softmax(z / 4.0)) for z in members]
  want = 4.0 * np.log(np.mean(probs, axis=0))
  np.testing.assert_allclose(ns.fuse(members, 4.0), want, rtol=1e-5, atol=1e-5)
