"""DeepFusion: untrained equals the average; K-fold cross-fit beats the members it fuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import fusion


def _np_nll(log_probs_or_logits, y):
  z = np.asarray(log_probs_or_logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -lp[np.arange(len(y)), y].mean()


def _miscalibrated_members(b=600, c=4, seed=0):
  """Three views of one true model: overconfident, class-biased, and noisy."""
  rng = np.random.default_rng(seed)
  true = 1.5 * rng.normal(size=(b, c))
  p = np.exp(true) / np.exp(true).sum(-1, keepdims=True)
  y = (p.cumsum(-1) > rng.uniform(size=(b, 1))).argmax(-1)
  members = np.stack([
      4.0 * true,                                   # overconfident (T = 1/4)
      true + np.array([3.0, 0.0, 0.0, -2.0]),       # biased towards class 0
      true + 2.0 * rng.normal(size=(b, c)),         # noisy
  ])
  return jnp.asarray(members, jnp.float32), jnp.asarray(y)


@pytest.fixture(scope="module")
def task():
  return _miscalibrated_members()


def test_untrained_module_equals_average(task):
  z, _ = task
  for hidden in [(), (8,)]:
    module = fusion.DeepFusion(num_members=3, num_classes=4, space="prob", hidden=hidden)
    params = jax.jit(module.init)(jax.random.key(0), z)["params"]
    np.testing.assert_allclose(jax.jit(module.apply)({"params": params}, z),
                               fusion.average(z, space="prob"), rtol=1e-5, atol=1e-5)


def test_cross_fit_beats_members(task):
  z, y = task
  fit = fusion.fit_deep_fusion(z, y, folds=5, steps=200)
  member_nll = [_np_nll(z[m], np.asarray(y)) for m in range(3)]
  member_acc = [float(np.mean(np.argmax(z[m], -1) == np.asarray(y))) for m in range(3)]
  assert fit.oof_log_probs.shape == (600, 4)
  # oof numbers recomputed by hand from the out-of-fold predictions.
  np.testing.assert_allclose(fit.oof_nll, _np_nll(fit.oof_log_probs, np.asarray(y)), rtol=1e-5)
  # Out of fold, the learned combiner (per-member temperature + bias + weights) beats every
  # member's NLL, and the plain average's, and is at least as accurate as the worst member.
  assert fit.oof_nll < min(member_nll), (fit.oof_nll, member_nll)
  assert fit.oof_nll < _np_nll(fusion.average(z), np.asarray(y))
  assert fit.oof_accuracy >= min(member_acc)
  # It learned to cool the overconfident member.
  assert float(fit.params["scale"][0]) < 0.6
  assert jax.tree.leaves(fit.fold_params)[0].shape[0] == 5
  assert fit.predict(z).shape == (600, 4)


def test_cross_fit_with_mlp_and_features(task):
  z, y = task
  feats = jnp.asarray(np.random.default_rng(1).normal(size=(600, 6)), jnp.float32)
  # Features are pure noise here: weight decay must keep the MLP from fitting them.
  fit = fusion.fit_deep_fusion(z, y, folds=3, features=feats, hidden=(16,), steps=100)
  member_nll = [_np_nll(z[m], np.asarray(y)) for m in range(3)]
  assert fit.oof_nll < min(member_nll)
  assert fit.oof_nll < _np_nll(fusion.average(z), np.asarray(y))
  assert fit.predict(z, feats).shape == (600, 4)


@pytest.mark.parametrize("space", ["prob", "logit"])
def test_huge_regularisation_gives_the_plain_average_of_unchanged_members(task, space):
  """Defect 6: the prior is the members as they are (scale 1), uniformly averaged, so a huge
  weight decay fits exactly that; the old prior (scale -> 0) gave uniform predictions."""
  z, y = task
  fit = fusion.fit_deep_fusion(z, y, folds=2, steps=300, weight_decay=1e4, space=space)
  np.testing.assert_allclose(fit.params["scale"], 1.0, atol=1e-3)
  np.testing.assert_allclose(fit.params["weight_logits"], 0.0, atol=1e-3)
  np.testing.assert_allclose(fit.params["bias"], 0.0, atol=1e-3)
  np.testing.assert_allclose(fit.predict(z), fusion.average(z, space=space), atol=2e-2)
  # The NLL is the average's (not the 1.386 = log 4 of a uniform prediction).
  np.testing.assert_allclose(fit.oof_nll, _np_nll(fusion.average(z, space=space), np.asarray(y)),
                             rtol=2e-3)
  leaves = jax.tree.leaves(fusion.prior_params(fit.params))
  assert len(leaves) == len(jax.tree.leaves(fit.params))


def test_errors(task):
  z, y = task
  with pytest.raises(ValueError, match="folds"):
    fusion.fit_deep_fusion(z, y, folds=1)
  with pytest.raises(ValueError, match="hidden"):
    fusion.fit_deep_fusion(z, y, features=jnp.zeros((600, 2)))
  with pytest.raises(ValueError, match="known spaces"):
    fusion.fit_deep_fusion(z, y, space="median")
