"""Logit losses against float64 NumPy references (mdistiller/DIST code transcribed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.test_util import check_grads

from kdjax import losses
from references import (  # tests/losses/references.py
    np_log_softmax, ref_cross_entropy, ref_dist, ref_dkd, ref_dkd_exact, ref_hinton_kd,
    ref_soft_target_kl)

TEMPERATURES = (0.5, 1.0, 4.0, 20.0)
SHAPES = ((5, 7), (2, 3, 4))


# ------------------------------------------------------------------------------ helpers
def _logits(shape, seed, scale=3.0):
  return np.random.default_rng(seed).normal(size=shape) * scale


def _teacher(shape, seed, scale=3.0):
  """Teacher inputs are log-probabilities: valid logits for every loss (shift-invariant)."""
  return np_log_softmax(_logits(shape, seed, scale))


def _labels(shape, seed):
  return np.random.default_rng(seed).integers(0, shape[-1], size=shape[:-1])


# name -> (jax fn(s, t, y, T), numpy ref(s, t, y, T)); all take class axis last.
CASES = {
    "soft_target_kl": (lambda s, t, y, T: losses.soft_target_kl(s, t, temperature=T),
                       lambda s, t, y, T: ref_soft_target_kl(s, t, T)),
    "soft_target_kl_with_log_targets": (
        lambda s, t, y, T: losses.soft_target_kl_with_log_targets(s, t, temperature=T),
        lambda s, t, y, T: ref_soft_target_kl(s, t, T)),
    "hinton_kd": (lambda s, t, y, T: losses.hinton_kd(s, t, y, temperature=T, alpha=0.3),
                  lambda s, t, y, T: ref_hinton_kd(s, t, y, T, 0.3)),
    "dkd": (lambda s, t, y, T: losses.dkd(s, t, y, alpha=0.7, beta=2.0, temperature=T),
            lambda s, t, y, T: ref_dkd(s, t, y, 0.7, 2.0, T)),
    "cross_entropy": (lambda s, t, y, T: losses.cross_entropy(s, y),
                      lambda s, t, y, T: ref_cross_entropy(s, y)),
    "dist": (lambda s, t, y, T: losses.dist(s, t, beta=1.5, gamma=0.5, temperature=T),
             lambda s, t, y, T: ref_dist(s, t, 1.5, 0.5, T)),
}
# One jitted function per loss, temperature traced: compiled once per input shape.
JITTED = {name: jax.jit(fn) for name, (fn, _) in CASES.items()}


def _shapes_for(name):
  return [(6, 5)] if name == "dist" else SHAPES


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("name,shape", [(n, s) for n in CASES for s in _shapes_for(n)])
def test_matches_float64_reference_under_jit(name, shape, temperature):
  _, ref = CASES[name]
  s, t, y = _logits(shape, 0), _teacher(shape, 1), _labels(shape, 2)
  got = JITTED[name](jnp.float32(s), jnp.float32(t), jnp.asarray(y), jnp.float32(temperature))
  want = ref(s, t, y, temperature)
  assert got.dtype == jnp.float32
  assert got.shape == np.shape(want)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * max(1.0, temperature**2))


def numeric_grad(f, x, eps=1e-6):
  """Central finite differences of a float64 NumPy function."""
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[i] = eps
    g[i] = (f(x + d) - f(x - d)) / (2 * eps)
  return g


def _weighted_sum(fn):
  """sum(w * fn(...)) with distinct weights per output, so every output's gradient counts."""
  def f(s, t, y, T):
    out = fn(s, t, y, T)
    return jnp.sum(out * jnp.arange(1.0, 1 + out.size, dtype=out.dtype).reshape(out.shape))
  return f


GRADS = {name: jax.jit(jax.grad(_weighted_sum(fn), argnums=(0, 1)))
         for name, (fn, _) in CASES.items()}


@pytest.mark.parametrize("temperature", (0.5, 4.0))
@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_float64_finite_differences(name, temperature):
  _, ref = CASES[name]
  shape = (4, 5)
  s, t, y = _logits(shape, 3), _teacher(shape, 4), _labels(shape, 5)
  weights = np.arange(1.0, 1 + np.size(ref(s, t, y, temperature)))
  ref_sum = lambda s, t: np.sum(weights * np.ravel(ref(s, t, y, temperature)))
  with jax.enable_x64(True):
    gs, gt = GRADS[name](jnp.asarray(s), jnp.asarray(t), jnp.asarray(y),
                         jnp.float64(temperature))
    assert gs.dtype == jnp.float64
  np.testing.assert_allclose(gs, numeric_grad(lambda x: ref_sum(x, t), s), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gt, numeric_grad(lambda x: ref_sum(s, x), t), rtol=1e-5, atol=1e-7)


def test_check_grads_float64():
  """jax.test_util.check_grads on the core KL, forward and reverse mode."""
  with jax.enable_x64(True):
    s, t = jnp.asarray(_logits((3, 4), 40)), jnp.asarray(_teacher((3, 4), 41))
    f = jax.jit(lambda s, t: jnp.sum(losses.soft_target_kl(s, t, temperature=2.0) ** 2))
    check_grads(f, (s, t), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", list(CASES))
def test_vmap_equals_loop(name):
  fn, _ = CASES[name]
  shape = (3, 4, 6)  # vmapped axis first
  s, t = jnp.float32(_logits(shape, 6)), jnp.float32(_teacher(shape, 7))
  y = jnp.asarray(_labels(shape, 8))
  f = jax.jit(lambda s, t, y: fn(s, t, y, 2.0))
  got = jax.jit(jax.vmap(f))(s, t, y)
  want = jnp.stack([f(s[k], t[k], y[k]) for k in range(shape[0])])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


CLASS_MASKED = {
    "soft_target_kl": lambda s, t, y, w: losses.soft_target_kl(s, t, temperature=2.0, where=w),
    "soft_target_kl_with_log_targets": lambda s, t, y, w: losses.soft_target_kl_with_log_targets(
        s, t, temperature=2.0, where=w),
    "cross_entropy": lambda s, t, y, w: losses.cross_entropy(s, y, where=w),
}


@pytest.mark.parametrize("name", list(CLASS_MASKED))
def test_where_equals_slicing_classes(name):
  fn = CLASS_MASKED[name]
  s, t = jnp.float32(_logits((4, 7), 9)), jnp.float32(_logits((4, 7), 10))
  keep = np.array([True, False, True, True, False, True, True])
  y = jnp.array([0, 2, 3, 6])  # kept classes, indices in the full and the sliced arrays
  y_sliced = jnp.array([0, 1, 2, 4])
  got = jax.jit(fn)(s, t, y, jnp.asarray(keep))
  want = fn(s[:, keep], t[:, keep], y_sliced, None)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  grads = jax.jit(jax.grad(lambda s: jnp.sum(fn(s, t, y, jnp.asarray(keep)))))(s)
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(grads[:, ~keep], 0.0)


def test_dist_where_equals_slicing_rows():
  s, t = jnp.float32(_logits((7, 5), 11)), jnp.float32(_logits((7, 5), 12))
  keep = np.array([True, True, False, True, False, True, True])
  got = jax.jit(lambda s, t, w: losses.dist(s, t, temperature=4.0, where=w))(s, t, keep)
  want = jax.jit(lambda s, t: losses.dist(s, t, temperature=4.0))(s[keep], t[keep])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grads = jax.jit(jax.grad(lambda s: losses.dist(s, t, temperature=4.0, where=keep)))(s)
  np.testing.assert_array_equal(grads[~keep], 0.0)


@pytest.mark.parametrize("name", ["soft_target_kl", "cross_entropy"])
def test_axis_equals_moveaxis(name):
  s, t = jnp.float32(_logits((6, 3), 13)), jnp.float32(_logits((6, 3), 14))
  if name == "soft_target_kl":
    got = losses.soft_target_kl(s, t, temperature=2.0, axis=0)
    want = losses.soft_target_kl(s.T, t.T, temperature=2.0)
  else:
    y = jnp.array([0, 5, 2])
    got, want = losses.cross_entropy(s, y, axis=0), losses.cross_entropy(s.T, y)
  np.testing.assert_allclose(got, want, rtol=1e-6)


# ------------------------------------------------------------------- stability, dtypes
@pytest.mark.parametrize("temperature", (0.5, 1.0, 4.0))
@pytest.mark.parametrize("name", list(CASES))
def test_large_float32_logits_finite(name, temperature):
  fn, ref = CASES[name]
  if name == "dkd":  # mdistiller's literal code overflows here (log 0); compare to exact form
    ref = lambda s, t, y, T: ref_dkd_exact(s, t, y, 0.7, 2.0, T)
  s, t, y = _logits((6, 5), 15, scale=1e4), _logits((6, 5), 16, scale=1e4), _labels((6, 5), 17)
  args = (jnp.float32(s), jnp.float32(t), jnp.asarray(y), jnp.float32(temperature))
  value = JITTED[name](*args)
  grads = GRADS[name](*args)
  assert np.all(np.isfinite(value))
  assert all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_allclose(value, ref(s, t, y, temperature), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", list(CASES))
def test_bfloat16_inputs(name):
  fn, ref = CASES[name]
  s, t, y = _logits((6, 5), 18), _teacher((6, 5), 19), _labels((6, 5), 20)
  got = JITTED[name](jnp.bfloat16(s), jnp.bfloat16(t), jnp.asarray(y), jnp.float32(2.0))
  assert got.dtype == jnp.float32  # computed and returned in float32
  rounded = lambda x: np.asarray(jnp.bfloat16(x).astype(jnp.float32), np.float64)
  np.testing.assert_allclose(got, ref(rounded(s), rounded(t), y, 2.0), rtol=1e-4, atol=1e-5)
  # Within bf16 input precision (8 bits of mantissa) of the exact float64 value.
  np.testing.assert_allclose(got, ref(s, t, y, 2.0), rtol=5e-2, atol=5e-2)


# -------------------------------------------------------------------------- properties
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_soft_target_kl_nonnegative_and_zero_on_identical(temperature):
  s, t = jnp.float32(_logits((20, 6), 21)), jnp.float32(_logits((20, 6), 22))
  assert np.all(losses.soft_target_kl(s, t, temperature=temperature) >= 0)
  np.testing.assert_allclose(losses.soft_target_kl(s, s, temperature=temperature), 0.0,
                             atol=1e-5)


def test_soft_target_kl_at_t1_is_plain_kl():
  s, t = _logits((5, 6), 23), _logits((5, 6), 24)
  plain = scipy.special.rel_entr(scipy.special.softmax(t, -1),
                                 scipy.special.softmax(s, -1)).sum(-1)
  np.testing.assert_allclose(losses.soft_target_kl(jnp.float32(s), jnp.float32(t)), plain,
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_log_targets_are_retempered_logits(temperature):
  """log-probs are logits up to a per-example constant: same as soft_target_kl(teacher)."""
  s, t = jnp.float32(_logits((5, 6), 25)), jnp.float32(_logits((5, 6), 26))
  shift = jnp.float32(_logits((5, 1), 27) * 10)
  log_probs = jax.nn.log_softmax(t, -1) + shift
  np.testing.assert_allclose(
      losses.soft_target_kl_with_log_targets(s, log_probs, temperature=temperature),
      losses.soft_target_kl(s, t, temperature=temperature), rtol=1e-5, atol=1e-5)


def test_log_targets_with_zero_probabilities():
  s = jnp.float32(_logits((3, 4), 28))
  log_probs = jnp.log(jnp.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0, 0, 0], [0.25] * 4]))
  name = "soft_target_kl_with_log_targets"
  for temperature in TEMPERATURES:  # finite student *and* teacher gradients
    value = JITTED[name](s, log_probs, None, jnp.float32(temperature))
    grads = GRADS[name](s, log_probs, jnp.zeros(3, jnp.int32), jnp.float32(temperature))
    assert np.all(np.isfinite(value)) and all(np.all(np.isfinite(g)) for g in grads)
  # At T=1 it is the cross-entropy minus the teacher entropy.
  p = np.array([[0.5, 0.5, 0, 0], [1.0, 0, 0, 0], [0.25] * 4])
  want = scipy.special.rel_entr(p, scipy.special.softmax(np.asarray(s, np.float64), -1)).sum(-1)
  np.testing.assert_allclose(JITTED[name](s, log_probs, None, jnp.float32(1.0)), want,
                             rtol=1e-5)


def test_hinton_alpha_limits():
  s, t, y = jnp.float32(_logits((5, 6), 29)), jnp.float32(_logits((5, 6), 30)), _labels((5, 6), 31)
  np.testing.assert_allclose(losses.hinton_kd(s, t, y, temperature=4.0, alpha=0.0),
                             losses.cross_entropy(s, y), rtol=1e-6)
  soft = losses.soft_target_kl(s, t, temperature=4.0)
  np.testing.assert_allclose(losses.hinton_kd(s, t, None, temperature=4.0, alpha=1.0), soft)
  np.testing.assert_allclose(losses.hinton_kd(s, t, y, temperature=4.0, alpha=1.0), soft)


def test_dkd_zero_for_identical_and_decomposes():
  s, t, y = jnp.float32(_logits((5, 6), 32)), jnp.float32(_logits((5, 6), 33)), _labels((5, 6), 34)
  dkd = jax.jit(lambda s, t, a, b: losses.dkd(s, t, y, alpha=a, beta=b))
  np.testing.assert_allclose(dkd(s, s, 1.0, 8.0), 0.0, atol=1e-5)
  tckd, nckd = dkd(s, t, 1.0, 0.0), dkd(s, t, 0.0, 1.0)
  assert np.all(tckd > 0) and np.all(nckd > 0)
  np.testing.assert_allclose(dkd(s, t, 2.0, 3.0), 2 * tckd + 3 * nckd, rtol=1e-5)


def test_dist_zero_for_identical():
  z = jnp.float32(_logits((6, 5), 35))
  assert abs(float(JITTED["dist"](z, z, None, jnp.float32(4.0)))) < 1e-5
  assert float(JITTED["dist"](z, z[::-1], None, jnp.float32(4.0))) > 1e-3


def test_traced_temperature_is_accepted():
  s, t = jnp.float32(_logits((3, 4), 36)), jnp.float32(_logits((3, 4), 37))
  got = jax.jit(lambda T: losses.soft_target_kl(s, t, temperature=T))(jnp.float32(4.0))
  np.testing.assert_allclose(got, losses.soft_target_kl(s, t, temperature=4.0), rtol=1e-6)


# ------------------------------------------------------------------------------ errors
S, T_, Y = jnp.zeros((4, 5)), jnp.zeros((4, 5)), jnp.zeros((4,), jnp.int32)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: losses.soft_target_kl(S, jnp.zeros((4, 6))), ValueError,
     r"student_logits.shape=\(4, 5\) and teacher_logits.shape=\(4, 6\)"),
    (lambda: losses.soft_target_kl(S, jnp.zeros((1, 5))), ValueError, "no silent broadcasting"),
    (lambda: losses.soft_target_kl(S, T_, temperature=0.0), ValueError, "temperature must be > 0"),
    (lambda: losses.soft_target_kl(S, T_, temperature=-1.0), ValueError, "temperature"),
    (lambda: losses.soft_target_kl(jnp.zeros((4, 5), jnp.int32), T_), TypeError,
     "student_logits must have a floating dtype, got int32"),
    (lambda: losses.soft_target_kl(S, T_, where=jnp.ones((3,), bool)), ValueError,
     r"where \(shape \(3,\)\)"),
    (lambda: losses.soft_target_kl_with_log_targets(S, jnp.zeros((5, 4))), ValueError,
     "teacher_log_probs.shape"),
    (lambda: losses.cross_entropy(S, jnp.zeros((5,), jnp.int32)), ValueError,
     r"labels.shape=\(5,\)"),
    (lambda: losses.cross_entropy(S, jnp.zeros((4,))), TypeError, "labels must have an integer"),
    (lambda: losses.hinton_kd(S, T_, None, temperature=2.0, alpha=0.5), ValueError,
     "only allowed when alpha == 1"),
    (lambda: losses.hinton_kd(S, T_, Y, temperature=0.0, alpha=0.5), ValueError, "temperature"),
    (lambda: losses.dkd(jnp.zeros((4, 1)), jnp.zeros((4, 1)), Y), ValueError, "at least 2"),
    (lambda: losses.dkd(S, jnp.zeros((4, 4)), Y), ValueError, "teacher_logits.shape"),
    (lambda: losses.dist(jnp.zeros((2, 4, 5)), jnp.zeros((2, 4, 5))), ValueError, r"\[B, C\]"),
    (lambda: losses.dist(S, T_, where=jnp.ones((5,), bool)), ValueError, "where"),
])
def test_bad_input_errors(call, exc, match):
  with pytest.raises(exc, match=match):
    call()
