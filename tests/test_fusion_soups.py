"""Model soups: uniform mean, and the greedy soup never scores below its best ingredient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import ensemble, fusion


def test_uniform_soup_is_the_mean():
  rng = np.random.default_rng(0)
  stacked = {"w": jnp.asarray(rng.normal(size=(4, 3, 2)), jnp.float32),
             "b": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)}
  soup = fusion.uniform_soup(stacked)
  np.testing.assert_allclose(soup["w"], np.asarray(stacked["w"], np.float64).mean(0), rtol=1e-6)
  np.testing.assert_allclose(soup["b"], np.asarray(stacked["b"], np.float64).mean(0), rtol=1e-6)


def test_greedy_soup_hand_example():
  # Scores -(p)^2: members 0.9 (-0.81), -1.1 (-1.21), 5 (-25). Start at 0.9; adding -1.1 gives
  # -0.1 (-0.01, better: kept); adding 5 gives 1.6 (-2.56, worse: skipped).
  stacked = {"p": jnp.asarray([-1.1, 5.0, 0.9])}
  res = fusion.greedy_soup(stacked, lambda p: -p["p"] ** 2)
  assert res.indices == [2, 0]
  np.testing.assert_allclose(res.params["p"], -0.1, rtol=1e-6)
  np.testing.assert_allclose(res.score, -0.01, rtol=1e-5)
  np.testing.assert_allclose(res.member_scores, [-1.21, -25.0, -0.81], rtol=1e-6)


def _task(seed, n, d=20, c=4):
  rng = np.random.default_rng(seed)
  w_true = rng.normal(size=(d, c))
  x = rng.normal(size=(n, d))
  y = np.argmax(x @ w_true + rng.gumbel(size=(n, c)), -1)
  return jnp.asarray(x, jnp.float32), jnp.asarray(y)


def _nll(params, x, y):
  lp = jax.nn.log_softmax(x @ params["w"] + params["b"][None, :])
  return -jnp.mean(jnp.take_along_axis(lp, y[:, None], -1))


@functools.partial(jax.jit, static_argnames="steps")
def _sgd(params, x, y, lr, steps):
  def step(p, _):
    g = jax.grad(_nll)(p, x, y)
    return jax.tree.map(lambda a, b: a - lr * b, p, g), None
  return jax.lax.scan(step, params, None, length=steps)[0]


def test_greedy_soup_at_least_best_ingredient():
  # Linear softmax members fine-tuned from one shared init on different small subsets with
  # different learning rates (some overfit): the setting of Wortsman et al. 2022.
  x, y = _task(0, 600)
  x_val, y_val = x[400:], y[400:]
  init = _sgd({"w": jnp.zeros((20, 4)), "b": jnp.zeros(4)}, x[:400], y[:400], 0.5, 20)
  rng = np.random.default_rng(1)
  members = []
  for lr in [0.05, 0.3, 1.0, 2.0, 3.0, 0.5]:
    idx = rng.choice(400, size=60, replace=False)
    members.append(_sgd(init, x[idx], y[idx], lr, 100))
  stacked = ensemble.stack(members)

  eval_fn = jax.jit(lambda p: -_nll(p, x_val, y_val))
  res = fusion.greedy_soup(stacked, eval_fn)
  best = int(np.argmax(res.member_scores))
  assert res.indices[0] == best
  assert res.score >= res.member_scores.max()
  np.testing.assert_allclose(res.score, eval_fn(res.params), rtol=1e-6)
  # The soup equals the mean of the chosen members.
  chosen = ensemble.take_members(stacked, res.indices)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               res.params, fusion.uniform_soup(chosen))
  # Here averaging helps: more than one ingredient and a strictly better score.
  assert len(res.indices) > 1 and res.score > res.member_scores.max()
