"""Sequence-distillation divergences and sparse_kl against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.test_util import check_grads

from kdjax import losses


# ---------------------------------------------------------------- float64 NumPy references
# In log space (float64), so that logits of magnitude 1e4 have exact references too.
def _log_probs(s, t, T):
  return scipy.special.log_softmax(t / T, -1), scipy.special.log_softmax(s / T, -1)


def _kl(lp, lq):  # sum p (log p - log q), 0 log 0 = 0
  p = np.exp(lp)
  return np.sum(np.where(p > 0, p * (lp - np.where(p > 0, lq, 0.0)), 0.0), -1)


def _mix(w, lp, lq):  # log(w p + (1 - w) q)
  return np.logaddexp(np.log(w) + lp, np.log1p(-w) + lq)


def ref_forward_kl(s, t, T=1.0):
  lt, ls = _log_probs(s, t, T)
  return T**2 * _kl(lt, ls)


def ref_reverse_kl(s, t, T=1.0):
  lt, ls = _log_probs(s, t, T)
  return T**2 * _kl(ls, lt)


def ref_jsd(s, t, beta, T=1.0):
  """TRL GKDTrainer.generalized_jsd_loss, per token."""
  lt, ls = _log_probs(s, t, T)
  if beta == 0:
    return T**2 * _kl(lt, ls)
  if beta == 1:
    return T**2 * _kl(ls, lt)
  lm = _mix(beta, lt, ls)
  return T**2 * (beta * _kl(lt, lm) + (1 - beta) * _kl(ls, lm))


def ref_skew_kl(s, t, alpha, T=1.0):
  lt, ls = _log_probs(s, t, T)
  return T**2 * _kl(lt, _mix(alpha, lt, ls))


def ref_skew_reverse_kl(s, t, alpha, T=1.0):
  lt, ls = _log_probs(s, t, T)
  return T**2 * _kl(ls, _mix(alpha, ls, lt))


def ref_tv(s, t, T=1.0):
  pt, ps = scipy.special.softmax(t / T, -1), scipy.special.softmax(s / T, -1)
  return 0.5 * np.sum(np.abs(pt - ps), -1)


# name -> (kdjax function, its keyword arguments, numpy ref(s, t, T))
PARAMS = {
    "forward_kl": (losses.forward_kl, {}, ref_forward_kl),
    "reverse_kl": (losses.reverse_kl, {}, ref_reverse_kl),
    "jsd_0.5": (losses.generalized_jsd, {"beta": 0.5}, lambda s, t, T: ref_jsd(s, t, 0.5, T)),
    "jsd_0.1": (losses.generalized_jsd, {"beta": 0.1}, lambda s, t, T: ref_jsd(s, t, 0.1, T)),
    "jsd_0": (losses.generalized_jsd, {"beta": 0.0}, lambda s, t, T: ref_jsd(s, t, 0.0, T)),
    "jsd_1": (losses.generalized_jsd, {"beta": 1.0}, lambda s, t, T: ref_jsd(s, t, 1.0, T)),
    "skew_kl": (losses.skew_kl, {"alpha": 0.1}, lambda s, t, T: ref_skew_kl(s, t, 0.1, T)),
    "skew_reverse_kl": (losses.skew_reverse_kl, {"alpha": 0.3},
                        lambda s, t, T: ref_skew_reverse_kl(s, t, 0.3, T)),
    "total_variation": (losses.total_variation, {}, ref_tv),
}


def _bind(fn, kw):
  return lambda s, t, T, w=None, **more: fn(s, t, temperature=T, where=w, **kw, **more)


CASES = {n: (_bind(fn, kw), ref) for n, (fn, kw, ref) in PARAMS.items()}
JITTED = {n: jax.jit(fn) for n, (fn, _) in CASES.items()}


def _logits(shape, seed, scale=3.0):
  return np.random.default_rng(seed).normal(size=shape) * scale


@pytest.mark.parametrize("temperature", (0.5, 4.0))
@pytest.mark.parametrize("shape", ((5, 7), (2, 3, 11)))
@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference_under_jit(name, shape, temperature):
  _, ref = CASES[name]
  s, t = _logits(shape, 0), _logits(shape, 1)
  got = JITTED[name](jnp.float32(s), jnp.float32(t), jnp.float32(temperature))
  want = ref(s, t, temperature)
  assert got.dtype == jnp.float32 and got.shape == shape[:-1]
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * max(1.0, temperature**2))


def numeric_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[i] = eps
    g[i] = (f(x + d) - f(x - d)) / (2 * eps)
  return g


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_float64_finite_differences(name):
  fn, ref = CASES[name]
  s, t, T = _logits((3, 5), 3), _logits((3, 5), 4), 2.0
  w = np.arange(1.0, 4.0)
  with jax.enable_x64(True):
    gs, gt = jax.jit(jax.grad(lambda s, t: jnp.sum(w * fn(s, t, T)), argnums=(0, 1)))(
        jnp.asarray(s), jnp.asarray(t))
    assert gs.dtype == jnp.float64
  np.testing.assert_allclose(gs, numeric_grad(lambda x: np.sum(w * ref(x, t, T)), s),
                             rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(gt, numeric_grad(lambda x: np.sum(w * ref(s, x, T)), t),
                             rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["forward_kl", "jsd_0.5", "skew_reverse_kl"])
def test_check_grads_float64(name):
  fn, _ = CASES[name]
  with jax.enable_x64(True):
    s, t = jnp.asarray(_logits((3, 4), 5)), jnp.asarray(_logits((3, 4), 6))
    check_grads(jax.jit(lambda s, t: jnp.sum(fn(s, t, 1.5) ** 2)), (s, t), order=2,
                modes=("fwd", "rev"))


@pytest.mark.parametrize("name", list(CASES))
def test_vmap_equals_loop(name):
  fn, _ = CASES[name]
  s, t = jnp.float32(_logits((3, 4, 6), 7)), jnp.float32(_logits((3, 4, 6), 8))
  f = jax.jit(lambda s, t: fn(s, t, 2.0))
  want = jnp.stack([f(s[k], t[k]) for k in range(3)])
  np.testing.assert_allclose(jax.jit(jax.vmap(f))(s, t), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(CASES))
def test_where_equals_slicing_classes_and_rows(name):
  fn, _ = CASES[name]
  s, t = _logits((4, 7), 9), _logits((4, 7), 10)
  keep_cls = np.array([True, False, True, True, False, True, True])
  keep_row = np.array([True, False, True, True])
  s[~keep_row] = np.nan  # padding tokens with garbage logits
  s[:, ~keep_cls] = np.inf
  where = keep_row[:, None] & keep_cls[None, :]
  s, t = jnp.float32(s), jnp.float32(t)
  got = jax.jit(lambda s, t: fn(s, t, 2.0, jnp.asarray(where)))(s, t)
  want = fn(s[keep_row][:, keep_cls], t[keep_row][:, keep_cls], 2.0)
  np.testing.assert_allclose(got[keep_row], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[~keep_row], 0.0)
  grads = jax.jit(jax.grad(lambda s, t: jnp.sum(fn(s, t, 2.0, jnp.asarray(where))),
                           argnums=(0, 1)))(s, t)
  for g in grads:
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[~where], 0.0)


@pytest.mark.parametrize("name", list(CASES))
def test_axis_equals_moveaxis(name):
  fn, _ = CASES[name]
  s, t = jnp.float32(_logits((6, 3, 2), 11)), jnp.float32(_logits((6, 3, 2), 12))
  got = fn(s, t, 2.0, axis=0)
  want = fn(jnp.moveaxis(s, 0, -1), jnp.moveaxis(t, 0, -1), 2.0)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(CASES))
def test_zero_on_equal_and_nonnegative(name):
  f = JITTED[name]
  s, t = jnp.float32(_logits((20, 9), 13)), jnp.float32(_logits((20, 9), 14))
  for temperature in (0.5, 4.0):
    np.testing.assert_allclose(f(s, s, temperature), 0.0, atol=1e-6)
    assert np.all(f(s, t, temperature) >= 0)


@pytest.mark.parametrize("name", list(CASES))
def test_extreme_logits_finite(name):
  fn, ref = CASES[name]
  s, t = _logits((6, 5), 15, scale=1e4), _logits((6, 5), 16, scale=1e4)
  f = jax.jit(lambda s, t: jnp.sum(fn(s, t, 1.0)))
  value = jax.jit(lambda s, t: fn(s, t, 1.0))(jnp.float32(s), jnp.float32(t))
  grads = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.float32(s), jnp.float32(t))
  assert np.all(np.isfinite(value)) and all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_allclose(value, ref(s, t, 1.0), rtol=1e-3, atol=1e-3)


def test_jsd_beta_conventions():
  s, t = jnp.float32(_logits((8, 6), 17)), jnp.float32(_logits((8, 6), 18))
  fwd, rev = losses.forward_kl(s, t), losses.reverse_kl(s, t)
  # TRL: beta = 0 is exactly forward KL(p_T || p_S), beta = 1 exactly reverse KL(p_S || p_T).
  np.testing.assert_array_equal(losses.generalized_jsd(s, t, beta=0.0), fwd)
  np.testing.assert_array_equal(losses.generalized_jsd(s, t, beta=1.0), rev)
  # The interior tends to 0 at both ends (the ends are a switch, not a limit).
  for b in (1e-6, 1 - 1e-6):
    assert np.all(losses.generalized_jsd(s, t, beta=b) < 1e-4)
  # Swapping student and teacher maps beta to 1 - beta (EasyDeL's convention is 1 - beta).
  np.testing.assert_allclose(losses.generalized_jsd(s, t, beta=0.2),
                             losses.generalized_jsd(t, s, beta=0.8), rtol=1e-5, atol=1e-7)
  # A traced beta gives the same three cases as a concrete one.
  traced = jax.jit(lambda b: losses.generalized_jsd(s, t, beta=b))
  for b in (0.0, 0.3, 1.0):
    np.testing.assert_allclose(traced(jnp.float32(b)), losses.generalized_jsd(s, t, beta=b),
                               rtol=1e-6, atol=1e-7)
  # Symmetric JSD is bounded by log 2; skews at alpha = 0 are the plain KLs.
  assert np.all(losses.generalized_jsd(s, t) <= np.log(2) + 1e-6)
  np.testing.assert_allclose(losses.skew_kl(s, t, alpha=0.0), fwd, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.skew_reverse_kl(s, t, alpha=0.0), rev, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call,error,match", [
    (lambda: losses.generalized_jsd(jnp.zeros((2, 3)), jnp.zeros((2, 3)), beta=1.5),
     ValueError, "beta must be in"),
    (lambda: losses.skew_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), alpha=-0.1),
     ValueError, "alpha must be in"),
    (lambda: losses.reverse_kl(jnp.zeros((2, 3)), jnp.zeros((2, 4))), ValueError, "same shape"),
    (lambda: losses.total_variation(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3))),
     TypeError, "floating"),
    (lambda: losses.forward_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=0.0),
     ValueError, "temperature"),
])
def test_bad_input_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()


# ------------------------------------------------------------------------------ sparse_kl
def ref_sparse_kl(s, lt, idx, variant):
  """Float64, probability space, straight from the definitions in the docstring."""
  q = scipy.special.softmax(s, -1)
  qk = np.take_along_axis(q, idx, -1)
  pk = np.exp(lt)
  if variant == "renormalized":
    return np.sum(scipy.special.rel_entr(pk / pk.sum(-1, keepdims=True),
                                         qk / qk.sum(-1, keepdims=True)), -1)
  if variant == "partial":
    return np.sum(pk * (lt - np.log(qk)), -1)
  p_bins = np.concatenate([pk, 1 - pk.sum(-1, keepdims=True)], -1)
  q_bins = np.concatenate([qk, 1 - qk.sum(-1, keepdims=True)], -1)
  return np.sum(scipy.special.rel_entr(np.maximum(p_bins, 0), q_bins), -1)


def _topk_teacher(shape, k, seed):
  lt = scipy.special.log_softmax(_logits(shape, seed), -1)
  idx = np.argsort(-lt, -1)[..., :k]
  return np.take_along_axis(lt, idx, -1), idx


VARIANTS = ("renormalized", "partial", "tail")
SPARSE = jax.jit(lambda s, lt, idx, variant, w=None: losses.sparse_kl(s, lt, idx, variant=variant,
                                                                       where=w),
                 static_argnames="variant")


@pytest.mark.parametrize("k", (1, 4, 12))
@pytest.mark.parametrize("variant", VARIANTS)
def test_sparse_kl_matches_float64_reference(variant, k):
  s = _logits((2, 3, 16), 20)
  lt, idx = _topk_teacher((2, 3, 16), k, 21)
  got = SPARSE(jnp.float32(s), jnp.float32(lt), jnp.asarray(idx, jnp.int32), variant)
  assert got.shape == (2, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_sparse_kl(s, lt, idx, variant), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sparse_kl_gradients_match_finite_differences(variant):
  s = _logits((3, 7), 22)
  lt, idx = _topk_teacher((3, 7), 3, 23)
  w = np.arange(1.0, 4.0)
  with jax.enable_x64(True):
    g = jax.jit(jax.grad(lambda s: jnp.sum(w * losses.sparse_kl(s, jnp.asarray(lt), jnp.asarray(
        idx), variant=variant))))(jnp.asarray(s))
    check_grads(lambda s: losses.sparse_kl(s, jnp.asarray(lt), jnp.asarray(idx), variant=variant),
                (jnp.asarray(s),), order=1, modes=("rev",))
  want = numeric_grad(lambda x: np.sum(w * ref_sparse_kl(x, lt, idx, variant)), s)
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sparse_kl_with_all_tokens_is_the_full_forward_kl(variant):
  """k = V, indices in a shuffled order: every variant is the full forward KL."""
  s, t = _logits((5, 9), 24), _logits((5, 9), 25)
  lt_full = scipy.special.log_softmax(t, -1)
  idx = np.stack([np.random.default_rng(i).permutation(9) for i in range(5)])
  lt = np.take_along_axis(lt_full, idx, -1)
  args = jnp.float32(s), jnp.float32(lt), jnp.asarray(idx, jnp.int32)
  full = losses.forward_kl(jnp.float32(s), jnp.float32(t))
  np.testing.assert_allclose(SPARSE(*args, variant), full, rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda s: jnp.sum(losses.sparse_kl(s, *args[1:], variant=variant)))(args[0])
  g_full = jax.grad(lambda s: jnp.sum(losses.forward_kl(s, jnp.float32(t))))(args[0])
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(g, g_full, rtol=1e-4, atol=1e-6)


def test_sparse_kl_zero_when_student_is_teacher():
  t = _logits((4, 10), 26)
  lt, idx = _topk_teacher((4, 10), 3, 26)
  for variant in VARIANTS:
    np.testing.assert_allclose(SPARSE(jnp.float32(t), jnp.float32(lt), jnp.asarray(idx), variant),
                               0.0, atol=1e-6)
  # "partial" is not a divergence: a student with all its mass on the teacher's top-k,
  # renormalised, reaches P log P < 0 (P: the teacher's top-k mass).
  on_topk = np.full((4, 10), -1e4)
  np.put_along_axis(on_topk, idx, lt, -1)
  mass = np.exp(lt).sum(-1)
  np.testing.assert_allclose(SPARSE(jnp.float32(on_topk), jnp.float32(lt), jnp.asarray(idx),
                                    "partial"), mass * np.log(mass), rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sparse_kl_where_masks_tokens(variant):
  s = _logits((5, 8), 27)
  lt, idx = _topk_teacher((5, 8), 3, 28)
  keep = np.array([True, False, True, True, False])
  s[~keep] = np.nan
  lt = np.array(lt, np.float16)  # float16 storage is upcast
  got = SPARSE(jnp.float32(s), jnp.asarray(lt), jnp.asarray(idx), variant, jnp.asarray(keep))
  want = SPARSE(jnp.float32(s[keep]), jnp.asarray(lt[keep]), jnp.asarray(idx[keep]), variant)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got[keep], want, rtol=1e-6)
  np.testing.assert_array_equal(got[~keep], 0.0)
  g = jax.grad(lambda s: jnp.sum(losses.sparse_kl(s, jnp.asarray(lt), jnp.asarray(idx),
                                                  variant=variant, where=jnp.asarray(keep))))(
      jnp.float32(s))
  assert np.all(np.isfinite(g)) and np.all(g[~keep] == 0)


def test_sparse_kl_extreme_logits_finite():
  s = _logits((4, 12), 29, scale=1e4)
  lt, idx = _topk_teacher((4, 12), 4, 30)
  for variant in VARIANTS:
    f = lambda s: losses.sparse_kl(s, jnp.float32(lt), jnp.asarray(idx), variant=variant)
    value, g = f(jnp.float32(s)), jax.grad(lambda s: jnp.sum(f(s)))(jnp.float32(s))
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(g)), variant


@pytest.mark.parametrize("call,error,match", [
    (lambda: losses.sparse_kl(jnp.zeros((2, 5)), jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32),
                              variant="topk"), ValueError, "variant must be one of"),
    (lambda: losses.sparse_kl(jnp.zeros((2, 5)), jnp.zeros((2, 3)), jnp.zeros((2, 3))),
     TypeError, "teacher_topk_indices must have an integer dtype"),
    (lambda: losses.sparse_kl(jnp.zeros((2, 5)), jnp.zeros((2, 6)), jnp.zeros((2, 6), jnp.int32)),
     ValueError, "k <= V"),
    (lambda: losses.sparse_kl(jnp.zeros((2, 5)), jnp.zeros((3, 2)), jnp.zeros((3, 2), jnp.int32)),
     ValueError, "leading shape"),
    (lambda: losses.sparse_kl(jnp.zeros((2, 5)), jnp.zeros((2, 2)), jnp.zeros((2, 2), jnp.int32),
                              where=jnp.ones((3,), bool)), ValueError, "where"),
])
def test_sparse_kl_bad_input_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()


# ------------------------------------------------------------------------ make_objective
def test_divergences_are_objective_terms():
  s, t = jnp.float32(_logits((6, 9), 31)), jnp.float32(_logits((6, 9), 32))
  where = jnp.array([True, True, False, True, True, True])
  terms = {"forward_kl": {"weight": 1.0, "temperature": 2.0},
           "reverse_kl": {"weight": 0.5},
           "generalized_jsd": {"weight": 2.0, "beta": 0.3},
           "skew_kl": {"weight": 1.0, "alpha": 0.2},
           "skew_reverse_kl": {"weight": 1.0},
           "total_variation": {"weight": 3.0}}
  objective = losses.make_objective(terms)
  inputs = losses.LossInputs(student_logits=s, teacher_logits=t, where=where)
  loss, metrics = jax.jit(lambda i: objective({}, i))(inputs)
  keep = np.asarray(where)
  want = {"forward_kl": ref_forward_kl(np.float64(s)[keep], np.float64(t)[keep], 2.0),
          "reverse_kl": ref_reverse_kl(np.float64(s)[keep], np.float64(t)[keep]),
          "generalized_jsd": ref_jsd(np.float64(s)[keep], np.float64(t)[keep], 0.3),
          "skew_kl": ref_skew_kl(np.float64(s)[keep], np.float64(t)[keep], 0.2),
          "skew_reverse_kl": ref_skew_reverse_kl(np.float64(s)[keep], np.float64(t)[keep], 0.1),
          "total_variation": ref_tv(np.float64(s)[keep], np.float64(t)[keep])}
  for name, value in want.items():
    np.testing.assert_allclose(metrics[f"loss/{name}"], value.mean(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loss, sum(terms[n]["weight"] * v.mean() for n, v in want.items()),
                             rtol=1e-4)
  with pytest.raises(ValueError):
    losses.make_objective({"generalized_jsd": {"weight": 1.0, "alpha": 0.1}})
