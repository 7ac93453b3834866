"""average / weighted against float64 NumPy references, in all three spaces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import fusion

SPACES = ["prob", "logit", "log_prob"]


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_weighted(member_logits, w, space):
  z = np.asarray(member_logits, np.float64)
  w = np.asarray(w, np.float64)[:, None, None]
  if space == "prob":
    return np.log((w * np.exp(_np_log_softmax(z))).sum(0))
  if space == "logit":
    return _np_log_softmax((w * z).sum(0))
  return _np_log_softmax((w * _np_log_softmax(z)).sum(0))


def _logits(m=4, b=32, c=7, scale=3.0, seed=0):
  return jnp.asarray(scale * np.random.default_rng(seed).normal(size=(m, b, c)), jnp.float32)


@pytest.mark.parametrize("space", SPACES)
def test_average_matches_numpy(space):
  z = _logits()
  out = jax.jit(lambda z: fusion.average(z, space=space))(z)
  assert out.shape == (32, 7)
  np.testing.assert_allclose(out, _np_weighted(z, np.full(4, 0.25), space), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.nn.logsumexp(out, axis=-1), 0.0, atol=1e-5)


@pytest.mark.parametrize("space", SPACES)
def test_weighted_matches_numpy(space):
  z = _logits(seed=1)
  w = jnp.asarray([0.1, 0.0, 0.6, 0.3])  # a zero weight is exact
  out = jax.jit(lambda z, w: fusion.weighted(z, w, space=space))(z, w)
  np.testing.assert_allclose(out, _np_weighted(z, w, space), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("space", SPACES)
def test_equal_weights_equal_average(space):
  z = _logits(m=5, seed=2)
  np.testing.assert_allclose(fusion.weighted(z, jnp.full(5, 0.2), space=space),
                             fusion.average(z, space=space), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("space", SPACES)
def test_one_hot_weights_select_member(space):
  z = _logits(seed=3)
  np.testing.assert_allclose(fusion.weighted(z, jnp.asarray([0.0, 0.0, 1.0, 0.0]), space=space),
                             jax.nn.log_softmax(z[2]), rtol=1e-5, atol=1e-5)


def test_prob_space_is_stable_for_huge_logits():
  z = _logits(scale=1e3, seed=4)
  out = fusion.average(z, space="prob")
  assert np.all(np.isfinite(out))
  # Naive exp underflows to log(0) = -inf here; the reference works in log space.
  ref = np.logaddexp.reduce(_np_log_softmax(np.asarray(z, np.float64)), axis=0) - np.log(4)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("space", SPACES)
def test_gradients(space):
  z = _logits(m=3, b=4, c=5, scale=1.0, seed=5)
  w = jnp.asarray([0.2, 0.5, 0.3])
  check_grads(jax.jit(lambda z: fusion.average(z, space=space)), (z,), order=1, modes=["rev"],
              atol=1e-2, rtol=1e-2)
  # jit: finite differences move the weights off the simplex, which only eager calls check.
  check_grads(jax.jit(lambda z, w: fusion.weighted(z, w, space=space)), (z, w), order=1,
              modes=["rev"], atol=1e-2, rtol=1e-2)


def test_bad_arguments():
  z = _logits()
  with pytest.raises(ValueError, match=r"known spaces: \['prob', 'logit', 'log_prob'\]"):
    fusion.average(z, space="probs")
  with pytest.raises(ValueError, match="known spaces"):
    fusion.weighted(z, jnp.full(4, 0.25), space="geometric")
  with pytest.raises(ValueError, match=r"shape \[M\] = \(4,\)"):
    fusion.weighted(z, jnp.full(3, 1 / 3))
  with pytest.raises(ValueError, match="non-negative"):
    fusion.weighted(z, jnp.asarray([0.5, 0.6, -0.2, 0.1]))
  with pytest.raises(ValueError, match="sum to 1"):
    fusion.weighted(z, jnp.asarray([0.5, 0.5, 0.5, 0.5]))
  with pytest.raises(ValueError, match="member_logits must be"):
    fusion.average(z[0, 0])


def test_value_checks_skipped_under_jit():
  # Under tracing the values are unknown: no error, the caller owns the check.
  z = _logits()
  out = jax.jit(fusion.weighted)(z, jnp.full(4, 0.5))
  assert out.shape == (32, 7)
