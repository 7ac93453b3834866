"""Property (fuzz) tests of every public fusion and metric function: random shapes, float32
and bfloat16, weights (with exact zeros), spaces, labels (out-of-range ones too) and logits
up to |x| = 1e4, against float64 NumPy references; bad input raises the documented error.
The number of cases that ran is printed at the end of the module."""

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdjax import fusion, metrics

FUZZ = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
CASES = collections.Counter()
SCALES = (1e-3, 1.0, 30.0, 1e4)
DTYPES = st.sampled_from([jnp.float32, jnp.bfloat16])
SEEDS = st.integers(0, 2**31 - 1)


@pytest.fixture(scope="module", autouse=True)
def _report_case_count(request):
  yield
  reporter = request.config.pluginmanager.get_plugin("terminalreporter")
  line = f"{__name__}: {sum(CASES.values())} hypothesis cases {dict(CASES)}"
  if reporter is not None:
    reporter.write_line(line)
  else:
    print(line)


def _cast(x, dtype):
  a = jnp.asarray(x, dtype)
  return a, np.asarray(a.astype(jnp.float32), np.float64)


# ------------------------------------------------------------------ float64 references
def np_log_softmax(z):
  return z - scipy.special.logsumexp(z, axis=-1, keepdims=True)


def np_fuse(z, w, space):
  """Weighted fusion in float64 (``w`` may hold exact zeros)."""
  w = np.asarray(w, np.float64)
  if space == "prob":
    return scipy.special.logsumexp(np_log_softmax(z), axis=0, b=w[:, None, None])
  if space == "logit":
    return np_log_softmax(np.tensordot(w, z, 1))
  return np_log_softmax(np.tensordot(w, np_log_softmax(z), 1))


def np_metrics(z, y, num_bins=15):
  """accuracy, NLL, Brier, ECE over the rows whose label is in [0, C)."""
  valid = (y >= 0) & (y < z.shape[-1])
  if not valid.any():
    return dict(accuracy=0.0, nll=0.0, brier=0.0, ece=0.0)
  z, y = z[valid], y[valid]
  lp = np_log_softmax(z)
  p = np.exp(lp)
  correct = (p.argmax(-1) == y).astype(float)
  conf = p.max(-1)
  ece = 0.0
  edges = np.linspace(0, 1, num_bins + 1)
  for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
    in_bin = (conf > lo) & (conf <= hi) if i else (conf <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
  return dict(accuracy=correct.mean(), nll=-lp[np.arange(len(y)), y].mean(),
              brier=np.mean(np.sum((p - np.eye(z.shape[-1])[y]) ** 2, -1)), ece=ece)


def _numeric_grad(f, x):
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    h = 1e-6 * max(1.0, abs(x[i]))
    d = np.zeros_like(x)
    d[i] = h
    g[i] = (f(x + d) - f(x - d)) / (2 * h)
  return g


def _weights(rng, m):
  w = rng.dirichlet(np.ones(m))
  w[rng.uniform(size=m) < 0.25] = 0.0  # exact zeros
  if w.sum() == 0:
    w[0] = 1.0
  return w / w.sum()


# ------------------------------------------------------------------- average / weighted
FUSE = {space: jax.jit(jax.value_and_grad(
    lambda z, w, space=space: (jnp.sum(jnp.arange(1.0, 13.0).reshape(3, 4)
                                       * fusion.weighted(z, w, space=space)),
                               fusion.weighted(z, w, space=space)), has_aux=True))
    for space in fusion.SPACES}
AVERAGE = jax.jit(fusion.average, static_argnames="space")


@FUZZ
@given(m=st.sampled_from((2, 4)), space=st.sampled_from(fusion.SPACES), dtype=DTYPES,
       seed=SEEDS, scale=st.sampled_from(SCALES))
def test_fuzz_weighted_and_average(m, space, dtype, seed, scale):
  rng = np.random.default_rng(seed)
  z, z64 = _cast(rng.normal(size=(m, 3, 4)) * scale, dtype)
  w = _weights(rng, m)
  (_, fused), grad = FUSE[space](z, jnp.asarray(w, jnp.float32))
  chex.assert_shape(fused, (3, 4))
  chex.assert_type(fused, jnp.float32)  # bf16 members are fused in float32
  want = np_fuse(z64, w, space)
  atol = 1e-5 * (1 + scale)
  np.testing.assert_allclose(fused, want, rtol=1e-4, atol=atol)
  np.testing.assert_allclose(jax.nn.logsumexp(fused, axis=-1), 0.0, atol=1e-4)
  weights = np.arange(1.0, 13.0).reshape(3, 4)
  g_ref = _numeric_grad(lambda x: np.sum(weights * np_fuse(x, w, space)), z64)
  g = np.asarray(grad.astype(jnp.float32), np.float64)
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(g, g_ref, rtol=2.0**-7 if dtype == jnp.bfloat16 else 0,
                             atol=2e-3 * (np.max(np.abs(g_ref)) + 1e-3))
  np.testing.assert_allclose(AVERAGE(z, space=space), np_fuse(z64, np.full(m, 1 / m), space),
                             rtol=1e-4, atol=atol)
  CASES["weighted/average"] += 1


# --------------------------------------------------------------------------- metrics
METRICS = jax.jit(lambda z, y: dict(
    accuracy=metrics.accuracy(z, y), nll=metrics.nll(z, y), brier=metrics.brier_score(z, y),
    ece=metrics.expected_calibration_error(z, y)))
NLL_GRAD = jax.jit(jax.grad(metrics.nll))


@FUZZ
@given(shape=st.sampled_from(((50, 3), (20, 10))), dtype=DTYPES, seed=SEEDS,
       scale=st.sampled_from(SCALES), ignored=st.sampled_from((0.0, 0.3, 1.0)))
def test_fuzz_metrics(shape, dtype, seed, scale, ignored):
  rng = np.random.default_rng(seed)
  z, z64 = _cast(rng.normal(size=shape) * scale, dtype)
  y = rng.integers(0, shape[1], size=shape[0])
  y = np.where(rng.uniform(size=shape[0]) < ignored, rng.choice([-1, -100, shape[1]]), y)
  got = METRICS(z, jnp.asarray(y))
  want = np_metrics(z64, y)
  for key, value in got.items():
    assert np.isfinite(value), key
    np.testing.assert_allclose(value, want[key], rtol=1e-4,
                               atol=1e-5 * (1 + scale) if key == "nll" else 1e-5, err_msg=key)
  g = np.asarray(NLL_GRAD(z, jnp.asarray(y)).astype(jnp.float32), np.float64)
  g_ref = _numeric_grad(lambda x: np_metrics(x, y)["nll"], z64)
  np.testing.assert_allclose(g, g_ref, rtol=2.0**-7 if dtype == jnp.bfloat16 else 0,
                             atol=2e-3 * (np.max(np.abs(g_ref)) + 1e-3))
  CASES["metrics"] += 1


@FUZZ
@given(m=st.sampled_from((1, 3)), seed=SEEDS, scale=st.sampled_from(SCALES),
       pairwise=st.booleans())
def test_fuzz_member_disagreement(m, seed, scale, pairwise):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(m, 30, 4)) * scale
  z32 = jnp.asarray(z, jnp.float32)
  preds = np.asarray(z32).argmax(-1)
  if pairwise:
    pairs = [np.mean(preds[i] != preds[j]) for i in range(m) for j in range(i + 1, m)]
    want = np.mean(pairs) if pairs else 0.0
  else:
    ens = np.exp(np_log_softmax(np.asarray(z32, np.float64))).mean(0).argmax(-1)
    want = np.mean(preds != ens[None])
  got = metrics.member_disagreement(z32, pairwise=pairwise)
  # Argmax ties between float32 and float64 averages are possible only at exact ties.
  np.testing.assert_allclose(got, want, atol=1.5 / 30)
  CASES["member_disagreement"] += 1


# --------------------------------------------------------------- fitted combiners, soups
@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(space=st.sampled_from(fusion.SPACES), seed=SEEDS, scale=st.sampled_from(SCALES),
       fit_temperature=st.booleans())
def test_fuzz_fit_weights(space, seed, scale, fit_temperature):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.normal(size=(3, 64, 4)) * scale, jnp.float32)
  y = rng.integers(0, 4, size=64)
  y[:4] = -1  # ignored rows
  fit = fusion.fit_weights(z, jnp.asarray(y), space=space, steps=50,
                           fit_temperature=fit_temperature)
  w = np.asarray(fit.weights, np.float64)
  assert np.all(np.isfinite(w)) and np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
  assert np.isfinite(float(fit.temperature)) and float(fit.temperature) > 0
  fused = fit.apply(z)
  want = np_fuse(np.asarray(z, np.float64) / float(fit.temperature), w, space)
  np.testing.assert_allclose(fused, want, rtol=1e-4, atol=1e-4 * (1 + scale))
  CASES["fit_weights"] += 1


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=SEEDS, scale=st.sampled_from(SCALES))
def test_fuzz_fit_deep_fusion(seed, scale):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.normal(size=(3, 40, 4)) * scale, jnp.float32)
  y = rng.integers(0, 4, size=40)
  fit = fusion.fit_deep_fusion(z, jnp.asarray(y), folds=2, steps=20)
  oof = np.asarray(fit.oof_log_probs, np.float64)
  assert np.all(np.isfinite(oof)) and np.all(np.isfinite(np.asarray(fit.predict(z))))
  np.testing.assert_allclose(fit.oof_nll, np_metrics(oof, y)["nll"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(fit.oof_accuracy, np_metrics(oof, y)["accuracy"], atol=1e-6)
  CASES["fit_deep_fusion"] += 1


@FUZZ
@given(m=st.integers(1, 4), seed=SEEDS, scale=st.sampled_from(SCALES))
def test_fuzz_soups(m, seed, scale):
  rng = np.random.default_rng(seed)
  params = [{"w": rng.normal(size=(3, 2)) * scale, "b": rng.normal(size=2) * scale}
            for _ in range(m)]
  stacked = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs), jnp.float32), *params)
  soup = fusion.uniform_soup(stacked)
  np.testing.assert_allclose(soup["w"], np.mean([p["w"] for p in params], 0), rtol=1e-5,
                             atol=1e-6 * scale)
  score = lambda p: -jnp.sum(jnp.square(p["w"] - 0.1 * scale))  # noqa: E731
  greedy = fusion.greedy_soup(stacked, score)
  best_single = max(float(score(jax.tree.map(lambda x, i=i: x[i], stacked))) for i in range(m))
  assert float(greedy.score) >= best_single - 1e-6 * (1 + abs(best_single))
  CASES["soups"] += 1


# ------------------------------------------------------------------------ bad input
@settings(max_examples=30, deadline=None, derandomize=True)
@given(m=st.integers(1, 4), defect=st.sampled_from(
    ("weights_shape", "negative", "sum", "nan_weight", "space", "labels", "rank", "int_logits")))
def test_fuzz_invalid_input_raises_the_documented_error(m, defect):
  z, y = jnp.zeros((m, 3, 4)), jnp.zeros((3,), jnp.int32)
  w = np.full(m, 1.0 / m)
  if defect == "weights_shape":
    call, match = lambda: fusion.weighted(z, np.ones(m + 1) / (m + 1)), r"weights must have shape"
  elif defect == "negative":
    w[0] = -0.5
    call, match = lambda: fusion.weighted(z, w), "non-negative|sum to 1"
  elif defect == "sum":
    call, match = lambda: fusion.weighted(z, w * 2), "sum to 1"
  elif defect == "nan_weight":
    w[0] = np.nan
    call, match = lambda: fusion.weighted(z, w), "finite"
  elif defect == "space":
    call, match = lambda: fusion.average(z, space="median"), "known spaces"
  elif defect == "labels":
    call, match = lambda: metrics.nll(z[0], y[:2]), r"labels must be integer \[B\]"
  elif defect == "rank":
    call, match = lambda: metrics.member_disagreement(z[0]), r"\[M, B, C\]"
  else:
    call, match = lambda: metrics.accuracy(jnp.zeros((3, 4), jnp.int32), y), "floating"
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert "\n" not in str(info.value)
  CASES["invalid input"] += 1
