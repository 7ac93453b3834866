"""Soft targets (``LossInputs.label_probs``, mixup) and label smoothing, against float64
NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses
from references import np_log_softmax, ref_cross_entropy, ref_soft_target_kl

B, C = 6, 5


def ref_soft_ce(z, p):
  return -np.sum(p * np_log_softmax(z), -1)


def ref_soft_ce_grad(z, p):
  """d/dz of sum_i w_i CE(z_i, p_i) = w_i (sum_c p_ic softmax(z_i) - p_i)."""
  q = np.exp(np_log_softmax(z))
  return q * p.sum(-1, keepdims=True) - p


def _data(seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(B, C)) * 3
  a, b = rng.integers(0, C, size=B), rng.integers(0, C, size=B)
  lam = rng.uniform(size=(B, 1))
  return z, a, b, lam


def _mixed(a, b, lam):
  eye = np.eye(C)
  return lam * eye[a] + (1 - lam) * eye[b]


def _objective_grad(objective, z, **fields):
  """(loss, d loss / d student_logits) of ``objective`` at float64."""
  def f(z):
    return objective({}, losses.LossInputs(student_logits=z, **fields))[0]
  return jax.jit(jax.value_and_grad(f))(z)


def test_one_hot_label_probs_equal_hard_label_cross_entropy():
  z, a, _, _ = _data(0)
  objective = losses.make_objective([("cross_entropy", 1.0, {})])
  with jax.enable_x64(True):
    zj = jnp.asarray(z)
    hard, g_hard = _objective_grad(objective, zj, labels=jnp.asarray(a))
    soft, g_soft = _objective_grad(objective, zj, label_probs=jnp.asarray(np.eye(C)[a]))
    assert soft.dtype == jnp.float64
  want = np.mean(ref_cross_entropy(z, a))
  want_grad = ref_soft_ce_grad(z, np.eye(C)[a]) / B
  for value, grad in ((hard, g_hard), (soft, g_soft)):
    np.testing.assert_allclose(value, want, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)


def test_mixup_targets_equal_the_mixed_cross_entropies():
  z, a, b, lam = _data(1)
  p = _mixed(a, b, lam)
  want = lam[:, 0] * ref_cross_entropy(z, a) + (1 - lam[:, 0]) * ref_cross_entropy(z, b)
  np.testing.assert_allclose(ref_soft_ce(z, p), want, rtol=1e-12)
  with jax.enable_x64(True):
    got = jax.jit(losses.soft_cross_entropy)(jnp.asarray(z), jnp.asarray(p))
    objective = losses.make_objective([("cross_entropy", 1.0, {})])
    value, grad = _objective_grad(objective, jnp.asarray(z), label_probs=jnp.asarray(p))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  np.testing.assert_allclose(value, np.mean(want), rtol=1e-12)
  np.testing.assert_allclose(grad, ref_soft_ce_grad(z, p) / B, rtol=1e-10, atol=1e-14)
  # float32 inputs: float32 result, close to the reference.
  got32 = losses.soft_cross_entropy(jnp.float32(z), jnp.float32(p))
  assert got32.dtype == jnp.float32
  np.testing.assert_allclose(got32, want, rtol=1e-5)


def test_row_policy_with_labels_padding_and_ignored_rows():
  """label_probs + labels: rows with an ignored label give 0 and are left out of the mean;
  label_probs alone: every non-padding row counts; NaN on padding reaches nothing."""
  z, a, b, lam = _data(2)
  p = _mixed(a, b, lam)
  per_row = ref_soft_ce(z, p)
  labels = a.copy()
  labels[1] = -1
  where = np.ones(B, bool)
  where[4] = False
  z_bad, p_bad = z.copy(), p.copy()
  z_bad[4], p_bad[4] = np.nan, np.nan
  objective = losses.make_objective([("cross_entropy", 1.0, {})])
  with jax.enable_x64(True):
    zj = jnp.asarray(z_bad)
    v1, g1 = _objective_grad(objective, zj, labels=jnp.asarray(labels),
                             label_probs=jnp.asarray(p_bad), where=jnp.asarray(where))
    v2, g2 = _objective_grad(objective, zj, label_probs=jnp.asarray(p_bad),
                             where=jnp.asarray(where))
  used1 = where & (labels >= 0)
  np.testing.assert_allclose(v1, per_row[used1].mean(), rtol=1e-12)
  np.testing.assert_allclose(v2, per_row[where].mean(), rtol=1e-12)
  ref_g = ref_soft_ce_grad(z, p)
  np.testing.assert_allclose(g1, np.where(used1[:, None], ref_g / used1.sum(), 0), atol=1e-14)
  np.testing.assert_allclose(g2, np.where(where[:, None], ref_g / where.sum(), 0), atol=1e-14)


def test_hinton_kd_uses_label_probs_for_its_hard_part():
  z, a, b, lam = _data(3)
  t = np_log_softmax(np.random.default_rng(9).normal(size=(B, C)) * 2)
  p = _mixed(a, b, lam)
  alpha, temp = 0.3, 4.0
  want = alpha * ref_soft_target_kl(z, t, temp) + (1 - alpha) * ref_soft_ce(z, p)
  objective = losses.make_objective([("hinton_kd", 1.0, {"temperature": temp, "alpha": alpha})])
  with jax.enable_x64(True):
    got = losses.hinton_kd(jnp.asarray(z), jnp.asarray(t), None, jnp.asarray(p),
                           temperature=temp, alpha=alpha)
    value, _ = _objective_grad(objective, jnp.asarray(z), teacher_logits=jnp.asarray(t),
                               label_probs=jnp.asarray(p))
    one_hot = losses.hinton_kd(jnp.asarray(z), jnp.asarray(t), None, jnp.asarray(np.eye(C)[a]),
                               temperature=temp, alpha=alpha)
    hard = losses.hinton_kd(jnp.asarray(z), jnp.asarray(t), jnp.asarray(a), temperature=temp,
                            alpha=alpha)
  np.testing.assert_allclose(got, want, rtol=1e-12)
  np.testing.assert_allclose(value, np.mean(want), rtol=1e-12)
  np.testing.assert_allclose(one_hot, hard, rtol=1e-12)
  assert objective.accepts_label_probs


def test_terms_needing_hard_labels_raise_on_label_probs_only():
  z, a, _, _ = _data(4)
  objective = losses.make_objective([("cross_entropy", 1.0, {}), ("dkd", 1.0, {})])
  assert not objective.accepts_label_probs
  inputs = losses.LossInputs(student_logits=jnp.float32(z), teacher_logits=jnp.float32(z),
                             label_probs=jnp.float32(np.eye(C)[a]))
  with pytest.raises(ValueError, match=r"term 'dkd' \(dkd\) needs hard inputs.labels"):
    objective({}, inputs)
  with pytest.raises(ValueError, match=r"label_probs must have the same shape"):
    losses.soft_cross_entropy(jnp.float32(z), jnp.float32(np.eye(C + 1)[a]))
  with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\]"):
    losses.cross_entropy(jnp.float32(z), jnp.asarray(a), label_smoothing=1.5)


def ref_smoothed_ce(z, y, eps):
  q = (1 - eps) * np.eye(z.shape[-1])[y] + eps / z.shape[-1]
  return ref_soft_ce(z, q)


@pytest.mark.parametrize("eps", (0.0, 0.1, 0.5))
def test_label_smoothing_matches_float64_reference(eps):
  z, a, b, lam = _data(5)
  labels = a.copy()
  labels[0] = -100
  want = np.where(labels >= 0, ref_smoothed_ce(z, np.maximum(labels, 0), eps), 0)
  q = (1 - eps) * np.eye(C)[np.maximum(labels, 0)] + eps / C
  want_grad = np.where((labels >= 0)[:, None], ref_soft_ce_grad(z, q), 0)
  with jax.enable_x64(True):
    f = jax.jit(lambda z, y: losses.cross_entropy(z, y, label_smoothing=eps))
    got = f(jnp.asarray(z), jnp.asarray(labels))
    grad = jax.grad(lambda z: jnp.sum(f(z, jnp.asarray(labels))))(jnp.asarray(z))
    # Smoothing applies to soft targets too: (1 - eps) p + eps / C, as timm's mixup target.
    p = _mixed(a, b, lam)
    soft = losses.soft_cross_entropy(jnp.asarray(z), jnp.asarray(p), label_smoothing=eps)
  np.testing.assert_allclose(got, want, rtol=1e-12)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(soft, ref_soft_ce(z, (1 - eps) * p + eps / C), rtol=1e-12)


def test_label_smoothing_from_config_and_in_hinton_kd():
  import ml_collections
  z, a, _, _ = _data(6)
  t = np_log_softmax(np.random.default_rng(7).normal(size=(B, C)))
  eps, alpha, temp = 0.1, 0.5, 2.0
  config = ml_collections.ConfigDict({
      "cross_entropy": {"weight": 1, "label_smoothing": eps},
      "kd": {"loss": "hinton_kd", "weight": 2.0, "temperature": temp, "alpha": alpha,
             "label_smoothing": eps}})
  objective = losses.make_objective(config)
  with jax.enable_x64(True):
    _, metrics = objective({}, losses.LossInputs(student_logits=jnp.asarray(z),
                                                 labels=jnp.asarray(a),
                                                 teacher_logits=jnp.asarray(t)))
  ce = ref_smoothed_ce(z, a, eps)
  np.testing.assert_allclose(metrics["loss/cross_entropy"], ce.mean(), rtol=1e-12)
  kd = alpha * ref_soft_target_kl(z, t, temp) + (1 - alpha) * ce
  np.testing.assert_allclose(metrics["loss/kd"], kd.mean(), rtol=1e-12)
  np.testing.assert_allclose(metrics["loss"], ce.mean() + 2 * kd.mean(), rtol=1e-12)
