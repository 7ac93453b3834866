"""Metrics against float64 NumPy references (loops, written independently)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import metrics


def _np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _data(b=500, c=6, seed=0):
  rng = np.random.default_rng(seed)
  logits = 2.0 * rng.normal(size=(b, c))
  labels = np.where(rng.uniform(size=b) < 0.6, logits.argmax(-1), rng.integers(0, c, b))
  return jnp.asarray(logits, jnp.float32), jnp.asarray(labels)


def _np_ece(logits, labels, num_bins):
  p = _np_softmax(logits)
  conf, pred = p.max(-1), p.argmax(-1)
  correct = (pred == np.asarray(labels)).astype(np.float64)
  ece = 0.0
  edges = np.linspace(0, 1, num_bins + 1)
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (conf > lo) & (conf <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
  return ece


def test_accuracy_and_nll():
  logits, labels = _data()
  p = _np_softmax(logits)
  y = np.asarray(labels)
  np.testing.assert_allclose(jax.jit(metrics.accuracy)(logits, labels),
                             np.mean(p.argmax(-1) == y), rtol=1e-6)
  ref_nll = -np.mean(np.log(p[np.arange(len(y)), y]))
  np.testing.assert_allclose(jax.jit(metrics.nll)(logits, labels), ref_nll, rtol=1e-5)
  # Log-probabilities give the same NLL as their logits.
  np.testing.assert_allclose(metrics.nll(jax.nn.log_softmax(logits), labels), ref_nll, rtol=1e-5)


def test_brier():
  logits, labels = _data(seed=1)
  p = _np_softmax(logits)
  onehot = np.eye(6)[np.asarray(labels)]
  ref = np.mean(np.sum((p - onehot) ** 2, -1))
  np.testing.assert_allclose(jax.jit(metrics.brier_score)(logits, labels), ref, rtol=1e-5)


@pytest.mark.parametrize("num_bins", [15, 5])
def test_ece(num_bins):
  logits, labels = _data(seed=2)
  out = jax.jit(metrics.expected_calibration_error, static_argnums=2)(logits, labels, num_bins)
  np.testing.assert_allclose(out, _np_ece(logits, labels, num_bins), rtol=1e-5, atol=1e-6)


def test_ece_perfectly_calibrated_is_small():
  rng = np.random.default_rng(3)
  logits = 2.0 * rng.normal(size=(20000, 3))
  p = _np_softmax(logits)
  labels = (p.cumsum(-1) > rng.uniform(size=(20000, 1))).argmax(-1)  # y ~ p
  assert float(metrics.expected_calibration_error(jnp.asarray(logits, jnp.float32),
                                                  jnp.asarray(labels))) < 0.02


def test_member_disagreement():
  rng = np.random.default_rng(4)
  member_logits = jnp.asarray(rng.normal(size=(4, 300, 5)), jnp.float32)
  preds = np.asarray(member_logits).argmax(-1)
  ens = _np_softmax(member_logits).mean(0).argmax(-1)
  np.testing.assert_allclose(metrics.member_disagreement(member_logits),
                             np.mean(preds != ens[None]), rtol=1e-6)
  pairs = [np.mean(preds[i] != preds[j]) for i in range(4) for j in range(i + 1, 4)]
  np.testing.assert_allclose(metrics.member_disagreement(member_logits, pairwise=True),
                             np.mean(pairs), rtol=1e-6)
  same = jnp.broadcast_to(member_logits[:1], member_logits.shape)
  assert float(metrics.member_disagreement(same)) == 0.0
  assert float(metrics.member_disagreement(same, pairwise=True)) == 0.0


def test_shape_errors():
  logits, labels = _data()
  with pytest.raises(ValueError, match=r"labels must be integer \[B\]"):
    metrics.accuracy(logits, labels[:3])
  with pytest.raises(ValueError, match=r"logits must be \[B, C\]"):
    metrics.nll(logits[0], labels)


def test_reliability_diagram(tmp_path):
  logits, labels = _data(seed=5)
  path = os.path.join(tmp_path, "rel.png")
  info = metrics.reliability_diagram(logits, labels, path)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  np.testing.assert_allclose(info["ece"], _np_ece(logits, labels, 15), rtol=1e-5, atol=1e-6)
  assert info["count"].sum() == 500
