"""fit_weights on a planted problem: one member is the label-generating model."""

import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import fusion

PLANTED = 2


def _planted(m=4, b=2000, c=5, seed=0):
  rng = np.random.default_rng(seed)
  true_logits = 2.0 * rng.normal(size=(b, c))
  probs = np.exp(true_logits - true_logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  labels = np.array([rng.choice(c, p=p) for p in probs])
  members = [true_logits + 2.5 * rng.normal(size=(b, c)) for _ in range(m)]  # noisy copies
  members[PLANTED] = true_logits
  return jnp.asarray(np.stack(members), jnp.float32), jnp.asarray(labels)


@pytest.fixture(scope="module")
def planted():
  return _planted()


@pytest.mark.parametrize("space", ["prob", "logit", "log_prob"])
def test_nll_method_finds_planted_member(planted, space):
  z, y = planted
  fw = fusion.fit_weights(z, y, space=space, method="nll", steps=300, learning_rate=0.1)
  w = np.asarray(fw.weights)
  assert w.shape == (4,) and abs(w.sum() - 1) < 1e-5 and np.all(w >= 0)
  assert w[PLANTED] >= 0.9, w
  assert float(fw.temperature) == 1.0
  # The fitted weights beat uniform on the data they were fitted on.
  nll = lambda lp: -float(jnp.mean(jnp.take_along_axis(lp, y[:, None], -1)))  # noqa: E731
  assert nll(fw.apply(z)) < nll(fusion.average(z, space=space))


@pytest.mark.parametrize("method,metric", [("grid", "nll"), ("grid", "accuracy"),
                                           ("random", "nll"), ("random", "accuracy")])
def test_search_methods_find_planted_member(planted, method, metric):
  z, y = planted
  fw = fusion.fit_weights(z, y, method=method, metric=metric, resolution=10, num_samples=200)
  w = np.asarray(fw.weights)
  assert int(np.argmax(w)) == PLANTED, w
  if metric == "nll":
    assert w[PLANTED] >= 0.9, w


def test_fit_temperature_recovers_scale(planted):
  z, y = planted
  hot = z * 3.0  # every member 3x overconfident: the best temperature is about 3
  fw = fusion.fit_weights(hot, y, method="nll", fit_temperature=True, steps=200,
                          learning_rate=0.1)
  assert 2.5 < float(fw.temperature) < 3.5
  assert np.asarray(fw.weights)[PLANTED] >= 0.9
  fw_grid = fusion.fit_weights(hot, y, method="grid", resolution=4, fit_temperature=True,
                               steps=200, learning_rate=0.1)
  assert 2.5 < float(fw_grid.temperature) < 3.5


def test_simplex_grid():
  g = fusion.simplex_grid(3, 4)
  assert g.shape == (15, 3)
  np.testing.assert_allclose(g.sum(1), 1.0)
  assert len({tuple(r) for r in g}) == 15 and g.min() >= 0


def test_errors(planted):
  z, y = planted
  with pytest.raises(ValueError, match="known methods"):
    fusion.fit_weights(z, y, method="em")
  with pytest.raises(ValueError, match="known metrics"):
    fusion.fit_weights(z, y, method="grid", metric="ece")
  with pytest.raises(ValueError, match="max_candidates"):
    fusion.fit_weights(z, y, method="grid", resolution=200)
  with pytest.raises(ValueError, match="labels must be integer"):
    fusion.fit_weights(z, y[:10])
