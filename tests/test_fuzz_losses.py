"""Property (fuzz) tests of every public loss: random shapes, float32 and bfloat16, random
temperatures, weights, masks and labels (out-of-range ones too), values up to |x| = 1e4.

Each case checks that the value and the gradients are finite and within tolerance of the
float64 NumPy references of tests/losses/references.py (gradients: central finite
differences of those references), and that masks and ignored labels behave as documented.
Shapes come from a few buckets per loss, so each loss compiles a handful of times, not once
per case. The number of cases that ran is printed at the end of the module.
"""

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdjax import losses
from losses.references import (  # tests/losses/references.py
    ref_attention_transfer, ref_cross_entropy, ref_dist, ref_dkd_exact, ref_hint, ref_pkt,
    ref_rkd_angle, ref_rkd_distance, ref_similarity_preserving, ref_soft_target_kl)

FUZZ = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
CASES = collections.Counter()
SCALES = (1e-3, 1.0, 30.0, 1e4)  # |x| up to 1e4


@pytest.fixture(scope="module", autouse=True)
def _report_case_count(request):
  yield
  reporter = request.config.pluginmanager.get_plugin("terminalreporter")
  line = f"{__name__}: {sum(CASES.values())} hypothesis cases {dict(CASES)}"
  if reporter is not None:
    reporter.write_line(line)
  else:
    print(line)


def _x(seed, shape, scale):
  return np.random.default_rng(seed).normal(size=shape) * scale


def _cast(x, dtype):
  """Input in ``dtype`` and the float64 values it really holds (bf16 rounds)."""
  a = jnp.asarray(x, dtype)
  return a, np.asarray(a.astype(jnp.float32), np.float64)


def _numeric_grad(f, x):
  """Central finite differences of a float64 NumPy function, step relative to |x|."""
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    h = 1e-6 * max(1.0, abs(x[i]))
    d = np.zeros_like(x)
    d[i] = h
    g[i] = (f(x + d) - f(x - d)) / (2 * h)
  return g


def _value_and_grads(fn, num_inputs):
  """``(values, grads)`` of ``fn``; the gradient is of ``sum(arange * values)``."""
  def loss(*args):
    values = fn(*args)
    w = jnp.arange(1.0, values.size + 1.0, dtype=values.dtype).reshape(values.shape)
    return jnp.sum(w * values), values
  return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(num_inputs)), has_aux=True))


def _check(name, jitted, ref, inputs64, args, *, rtol, atol, grad_tol=2e-3):
  """Compares ``jitted(*args)`` with ``ref(*inputs64)``, values and gradients."""
  (_, values), grads = jitted(*args)
  values = np.asarray(values, np.float64)
  want = np.asarray(ref(*inputs64), np.float64)
  assert values.shape == want.shape, name
  assert np.all(np.isfinite(values)), (name, values)
  np.testing.assert_allclose(values, want, rtol=rtol, atol=atol, err_msg=name)
  w = np.arange(1.0, want.size + 1.0).reshape(want.shape)
  for k, g in enumerate(grads):
    # Gradients come back in the input's dtype: bf16 keeps 8 bits of mantissa.
    grad_rtol = 2.0**-7 if g.dtype == jnp.bfloat16 else 0.0
    g = np.asarray(g.astype(jnp.float32), np.float64)
    assert np.all(np.isfinite(g)), (name, k)
    ref_sum = lambda x, k=k: np.sum(w * ref(*inputs64[:k], x, *inputs64[k + 1:]))  # noqa: E731
    g_ref = _numeric_grad(ref_sum, inputs64[k])
    tol = grad_tol * (np.max(np.abs(g_ref)) + 1e-3)
    np.testing.assert_allclose(g, g_ref, rtol=grad_rtol, atol=tol, err_msg=f"{name} grad {k}")
  CASES[name] += 1


DTYPES = st.sampled_from([jnp.float32, jnp.bfloat16])
SEEDS = st.integers(0, 2**31 - 1)
TEMPERATURES = st.floats(0.25, 20.0)


def _logit_atol(scale, temperature):
  """float32 rounding of logits of size ``scale`` at temperature ``T``, in loss units."""
  return 2e-6 * (1.0 + scale / temperature) * max(1.0, temperature**2) * 10


# ------------------------------------------------------------- per-example logit losses
LOGIT_SHAPES = ((4, 5), (7, 2))


SOFT_KL = _value_and_grads(
    lambda s, t, temp, w: losses.soft_target_kl(s, t, temperature=temp, where=w), 2)
SOFT_KL_LOG = _value_and_grads(
    lambda s, t, temp, w: losses.soft_target_kl_with_log_targets(
        s, jax.nn.log_softmax(t.astype(jnp.float32)), temperature=temp, where=w), 2)


@FUZZ
@given(shape=st.sampled_from(LOGIT_SHAPES), dtype=DTYPES, seed=SEEDS,
       scale=st.sampled_from(SCALES), temperature=TEMPERATURES, log_targets=st.booleans(),
       masked=st.booleans())
def test_fuzz_soft_target_kl(shape, dtype, seed, scale, temperature, log_targets, masked):
  rng = np.random.default_rng(seed)
  keep = rng.uniform(size=shape[-1]) < 0.7 if masked else np.ones(shape[-1], bool)
  keep[rng.integers(shape[-1])] = True
  s, s64 = _cast(_x(seed, shape, scale), dtype)
  t, t64 = _cast(_x(seed + 1, shape, scale), dtype)
  where = jnp.broadcast_to(jnp.asarray(keep), shape)
  name = "soft_target_kl_with_log_targets" if log_targets else "soft_target_kl"
  fn = SOFT_KL_LOG if log_targets else SOFT_KL

  def ref(s, t):
    return ref_soft_target_kl(s[:, keep], t[:, keep], temperature)

  # The log-target variant re-tempers log_softmax(t): the same distribution as t itself.
  _check(name, lambda s, t: fn(s, t, jnp.float32(temperature), where), ref, (s64, t64),
         (s, t), rtol=1e-3, atol=_logit_atol(scale, temperature))


CE = _value_and_grads(lambda s, y, w: losses.cross_entropy(s, y, where=w), 1)
HINTON = _value_and_grads(lambda s, t, y, temp, a: losses.hinton_kd(
    s, t, y, temperature=temp, alpha=a), 2)
DKD = _value_and_grads(lambda s, t, y, temp, a, b: losses.dkd(
    s, t, y, alpha=a, beta=b, temperature=temp), 2)


def _labels(rng, shape):
  """Labels in [-3, C + 2): out-of-range ones (about a third) must ignore their row."""
  return rng.integers(-3, shape[-1] + 2, size=shape[:-1])


def _ignoring(ref, y, num_classes):
  """``ref`` on the valid rows, 0 on the rows with an out-of-range label."""
  valid = (y >= 0) & (y < num_classes)

  def wrapped(*arrays):
    out = np.zeros(y.shape)
    if valid.any():
      out[valid] = ref(*(a[valid] for a in arrays), y[valid])
    return out
  return wrapped


@FUZZ
@given(shape=st.sampled_from(LOGIT_SHAPES), dtype=DTYPES, seed=SEEDS,
       scale=st.sampled_from(SCALES), masked=st.booleans())
def test_fuzz_cross_entropy(shape, dtype, seed, scale, masked):
  rng = np.random.default_rng(seed)
  keep = rng.uniform(size=shape[-1]) < 0.7 if masked else np.ones(shape[-1], bool)
  keep[rng.integers(shape[-1])] = True
  y = _labels(rng, shape)
  s, s64 = _cast(_x(seed, shape, scale), dtype)
  # Masked classes are sliced away: labels are renumbered, a masked label ignores its row.
  renumber = np.cumsum(keep) - 1
  in_range = (y >= 0) & (y < shape[-1])
  y_sliced = np.where(in_range & keep[np.clip(y, 0, shape[-1] - 1)],
                      renumber[np.clip(y, 0, shape[-1] - 1)], -1)
  ref = _ignoring(lambda s, y: ref_cross_entropy(s[:, keep], y), y_sliced, shape[-1])
  _check("cross_entropy", lambda s: CE(s, jnp.asarray(y), jnp.broadcast_to(keep, shape)),
         ref, (s64,), (s,), rtol=1e-3, atol=_logit_atol(scale, 1.0))


@FUZZ
@given(shape=st.sampled_from(LOGIT_SHAPES), dtype=DTYPES, seed=SEEDS,
       scale=st.sampled_from(SCALES), temperature=TEMPERATURES, alpha=st.floats(0.0, 1.0))
def test_fuzz_hinton_kd(shape, dtype, seed, scale, temperature, alpha):
  rng = np.random.default_rng(seed)
  y = _labels(rng, shape)
  s, s64 = _cast(_x(seed, shape, scale), dtype)
  t, t64 = _cast(_x(seed + 1, shape, scale), dtype)
  ref = _ignoring(lambda s, t, y: alpha * ref_soft_target_kl(s, t, temperature)
                  + (1 - alpha) * ref_cross_entropy(s, y), y, shape[-1])
  _check("hinton_kd", lambda s, t: HINTON(s, t, jnp.asarray(y), jnp.float32(temperature),
                                          jnp.float32(alpha)),
         ref, (s64, t64), (s, t), rtol=1e-3, atol=_logit_atol(scale, min(temperature, 1.0)))


@FUZZ
@given(shape=st.sampled_from(LOGIT_SHAPES), dtype=DTYPES, seed=SEEDS,
       scale=st.sampled_from(SCALES), temperature=TEMPERATURES, alpha=st.floats(0.0, 2.0),
       beta=st.floats(0.0, 8.0))
def test_fuzz_dkd(shape, dtype, seed, scale, temperature, alpha, beta):
  rng = np.random.default_rng(seed)
  y = _labels(rng, shape)
  s, s64 = _cast(_x(seed, shape, scale), dtype)
  t, t64 = _cast(_x(seed + 1, shape, scale), dtype)
  ref = _ignoring(lambda s, t, y: ref_dkd_exact(s, t, y, alpha, beta, temperature), y, shape[-1])
  _check("dkd", lambda s, t: DKD(s, t, jnp.asarray(y), jnp.float32(temperature),
                                 jnp.float32(alpha), jnp.float32(beta)),
         ref, (s64, t64), (s, t), rtol=1e-3,
         atol=_logit_atol(scale, temperature) * (1 + alpha + beta))


# ------------------------------------------------------------ batch-level (row masks)
DIST = _value_and_grads(lambda s, t, temp, b, g, w: losses.dist(
    s, t, beta=b, gamma=g, temperature=temp, where=w)[None], 2)


def _rows(rng, batch, minimum=3):
  keep = rng.uniform(size=batch) < 0.75
  keep[rng.permutation(batch)[:minimum]] = True
  return keep


@FUZZ
@given(shape=st.sampled_from(((6, 5), (9, 3))), dtype=DTYPES, seed=SEEDS,
       scale=st.sampled_from(SCALES), temperature=TEMPERATURES, beta=st.floats(0.0, 2.0),
       gamma=st.floats(0.0, 2.0))
def test_fuzz_dist(shape, dtype, seed, scale, temperature, beta, gamma):
  rng = np.random.default_rng(seed)
  keep = _rows(rng, shape[0])
  s, s64 = _cast(_x(seed, shape, scale), dtype)
  t, t64 = _cast(_x(seed + 1, shape, scale), dtype)

  def ref(s, t):
    return np.array([ref_dist(s[keep], t[keep], beta, gamma, temperature)])

  _check("dist", lambda s, t: DIST(s, t, jnp.float32(temperature), jnp.float32(beta),
                                   jnp.float32(gamma), jnp.asarray(keep)),
         ref, (s64, t64), (s, t), rtol=2e-3, atol=1e-4 * max(1.0, temperature**2),
         grad_tol=5e-3)


RELATIONAL = {
    "similarity_preserving": (losses.similarity_preserving, ref_similarity_preserving),
    "rkd_distance": (losses.rkd_distance, ref_rkd_distance),
    "rkd_angle": (losses.rkd_angle, ref_rkd_angle),
    "pkt": (losses.pkt, ref_pkt),
}
RELATIONAL_JIT = {name: _value_and_grads(lambda s, t, w, fn=fn: fn(s, t, where=w)[None], 2)
                  for name, (fn, _) in RELATIONAL.items()}


@FUZZ
@given(name=st.sampled_from(sorted(RELATIONAL)),
       shapes=st.sampled_from((((5, 4), (5, 6)), ((6, 2, 3), (6, 5)))), dtype=DTYPES,
       seed=SEEDS, scale=st.sampled_from(SCALES))
def test_fuzz_relational(name, shapes, dtype, seed, scale):
  rng = np.random.default_rng(seed)
  keep = _rows(rng, shapes[0][0])
  s, s64 = _cast(_x(seed, shapes[0], scale), dtype)
  t, t64 = _cast(_x(seed + 1, shapes[1], scale), dtype)
  ref_fn = RELATIONAL[name][1]
  _check(name, lambda s, t: RELATIONAL_JIT[name](s, t, jnp.asarray(keep)),
         lambda s, t: np.array([ref_fn(s[keep], t[keep])]), (s64, t64), (s, t),
         rtol=2e-3, atol=1e-5, grad_tol=5e-3)


# ------------------------------------------------------------------- feature losses
HINT = _value_and_grads(lambda s, t: losses.hint(s, t), 2)
AT = _value_and_grads(lambda s, t, p: losses.attention_transfer(s, t, p=p), 2)


@FUZZ
@given(shape=st.sampled_from(((3, 4), (2, 3, 4))), dtype=DTYPES, seed=SEEDS,
       scale=st.sampled_from(SCALES))
def test_fuzz_hint(shape, dtype, seed, scale):
  s, s64 = _cast(_x(seed, shape, scale), dtype)
  t, t64 = _cast(_x(seed + 1, shape, scale), dtype)
  _check("hint", HINT, ref_hint, (s64, t64), (s, t), rtol=1e-4, atol=1e-6 * scale**2)


@FUZZ
@given(shapes=st.sampled_from((((2, 3, 4), (2, 3, 2)), ((2, 2, 2, 3), (2, 2, 2, 5)))),
       dtype=DTYPES, seed=SEEDS, scale=st.sampled_from(SCALES), p=st.sampled_from((1.0, 2.0)))
def test_fuzz_attention_transfer(shapes, dtype, seed, scale, p):
  s, s64 = _cast(_x(seed, shapes[0], scale), dtype)
  t, t64 = _cast(_x(seed + 1, shapes[1], scale), dtype)
  _check("attention_transfer", lambda s, t: AT(s, t, jnp.float32(p)),
         lambda s, t: ref_attention_transfer(s, t, p), (s64, t64), (s, t), rtol=2e-3,
         atol=1e-6, grad_tol=5e-3)


# ------------------------------------------------------------------ weight matching
WEIGHT_MATCHING = jax.jit(jax.value_and_grad(
    lambda s, t, normalize: losses.weight_matching(s, t, normalize=normalize),
    argnums=0), static_argnums=2)


@FUZZ
@given(dtype=DTYPES, seed=SEEDS, scale=st.sampled_from(SCALES), normalize=st.booleans())
def test_fuzz_weight_matching(dtype, seed, scale, normalize):
  shapes = {"dense_0": {"kernel": (3, 4), "bias": (4,)}, "dense_1": {"kernel": (4, 2)}}
  student = {k: {n: _x(seed + i, sh, scale) for i, (n, sh) in enumerate(v.items())}
             for k, v in shapes.items()}
  teacher = jax.tree.map(lambda x: x + _x(seed + 7, x.shape, scale), student)
  s = jax.tree.map(lambda x: jnp.asarray(x, dtype), student)
  t = jax.tree.map(lambda x: jnp.asarray(x, dtype), teacher)
  value, grads = WEIGHT_MATCHING(s, t, normalize)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, s)
  chex.assert_tree_all_finite(grads)
  s64 = jax.tree.map(lambda x: np.asarray(x.astype(jnp.float32), np.float64), s)
  t64 = jax.tree.map(lambda x: np.asarray(x.astype(jnp.float32), np.float64), t)
  leaves = list(zip(jax.tree.leaves(s64), jax.tree.leaves(t64)))
  want = sum(np.sum((a - b) ** 2) / (a.size if normalize else 1) for a, b in leaves)
  assert np.isfinite(value)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  for g, (a, b) in zip(jax.tree.leaves(grads), leaves):
    np.testing.assert_allclose(g.astype(jnp.float32), 2 * (a - b) / (a.size if normalize else 1),
                               rtol=2.0**-7 if dtype == jnp.bfloat16 else 1e-5, atol=1e-6 * scale)
  CASES["weight_matching"] += 1


# ------------------------------------------------------------------ make_objective
OBJECTIVE = losses.make_objective([
    ("cross_entropy", 0.5, {}), ("hinton_kd", 1.0, {"temperature": 4.0, "alpha": 0.5}),
    ("dkd", 0.3, {}), ("dist", 0.7, {"temperature": 2.0}),
    ("pkt", 0.8, {"student_feature": "f"}), ("hint", 2.0, {"student_feature": "f"})])
OBJECTIVE_GRAD = jax.jit(jax.value_and_grad(
    lambda s, f, inputs: OBJECTIVE({}, inputs.replace(student_logits=s,
                                                      student_features={"f": f}))[0],
    argnums=(0, 1)))


@FUZZ
@given(dtype=DTYPES, seed=SEEDS, scale=st.sampled_from(SCALES),
       poison=st.sampled_from((np.nan, np.inf, -np.inf, 1e30)))
def test_fuzz_objective_padding_equals_slicing(dtype, seed, scale, poison):
  """Padded rows hold NaN/inf/huge values and any label: the loss and grads equal slicing."""
  b, c = 8, 5
  rng = np.random.default_rng(seed)
  keep = _rows(rng, b)
  y = _labels(rng, (b, c))
  arrays = {k: _x(seed + i, (b, d), scale) for i, (k, d) in
            enumerate((("s", c), ("t", c), ("f", 6), ("tf", 6)))}
  padded = {k: np.where(keep[:, None], v, poison) for k, v in arrays.items()}

  def run(a, y, where):
    inputs = losses.LossInputs(
        student_logits=jnp.asarray(a["s"], dtype), labels=jnp.asarray(y),
        teacher_logits=jnp.asarray(a["t"], dtype),
        student_features={"f": jnp.asarray(a["f"], dtype)},
        teacher_features={"f": jnp.asarray(a["tf"], dtype)}, where=where)
    return OBJECTIVE_GRAD(inputs.student_logits, inputs.student_features["f"], inputs)

  loss, (gs, gf) = run(padded, y, jnp.asarray(keep))
  want, (ws, wf) = run({k: v[keep] for k, v in arrays.items()}, y[keep], None)
  chex.assert_tree_all_finite((loss, gs, gf))
  chex.assert_shape((gs, gf), (b, None))
  assert np.isfinite(loss)
  np.testing.assert_allclose(loss, want, rtol=1e-4, atol=1e-6)
  for g, w in ((gs, ws), (gf, wf)):
    g = np.asarray(g.astype(jnp.float32), np.float64)
    np.testing.assert_array_equal(g[~keep], 0.0)
    # Same math, different summation order (tiny logits make DIST's Pearson ill-conditioned);
    # bf16 gradients are rounded to 8 bits.
    np.testing.assert_allclose(g[keep], np.asarray(w.astype(jnp.float32), np.float64),
                               rtol=2.0**-7 if dtype == jnp.bfloat16 else 1e-3,
                               atol=1e-4 * (np.max(np.abs(np.asarray(w, np.float64))) + 1e-6))
  CASES["make_objective"] += 1


# ------------------------------------------------------------------------ bad input
LOGIT_FNS = {
    "soft_target_kl": lambda s, t, y: losses.soft_target_kl(s, t),
    "soft_target_kl_with_log_targets": lambda s, t, y: losses.soft_target_kl_with_log_targets(
        s, t),
    "cross_entropy": lambda s, t, y: losses.cross_entropy(s, y),
    "hinton_kd": lambda s, t, y: losses.hinton_kd(s, t, y, temperature=2.0, alpha=0.5),
    "dkd": lambda s, t, y: losses.dkd(s, t, y),
    "dist": lambda s, t, y: losses.dist(s, t),
    "hint": lambda s, t, y: losses.hint(s, t),
    "similarity_preserving": lambda s, t, y: losses.similarity_preserving(s, t),
    "rkd_distance": lambda s, t, y: losses.rkd_distance(s, t),
    "rkd_angle": lambda s, t, y: losses.rkd_angle(s, t),
    "pkt": lambda s, t, y: losses.pkt(s, t),
}


@settings(max_examples=30, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(LOGIT_FNS)),
       defect=st.sampled_from(("batch", "int_logits", "float_labels", "label_shape")),
       b=st.integers(2, 5), c=st.integers(2, 5))
def test_fuzz_invalid_input_raises_the_documented_error(name, defect, b, c):
  """Mismatched batch sizes, integer logits, float or misshapen labels: a one-line error
  naming the argument (ValueError for shapes, TypeError for dtypes)."""
  s, t, y = jnp.zeros((b, c)), jnp.zeros((b, c)), jnp.zeros((b,), jnp.int32)
  labelled = name in ("cross_entropy", "hinton_kd", "dkd")
  if defect == "batch":
    t, exc, match = jnp.zeros((b + 1, c)), ValueError, "teacher|labels"
    if name == "cross_entropy":
      y = jnp.zeros((b + 1,), jnp.int32)
  elif defect == "int_logits":
    s, exc, match = jnp.zeros((b, c), jnp.int32), TypeError, "floating dtype"
  elif defect == "float_labels" and labelled:
    y, exc, match = jnp.zeros((b,)), TypeError, "labels must have an integer dtype"
  elif defect == "label_shape" and labelled:
    y, exc, match = jnp.zeros((b, 1), jnp.int32), ValueError, "labels must have the logits' shape"
  else:
    return
  with pytest.raises(exc, match=match) as info:
    LOGIT_FNS[name](s, t, y)
  assert "\n" not in str(info.value) and name.split("_with")[0] in str(info.value)
  CASES["invalid input"] += 1


@settings(max_examples=10, deadline=None, derandomize=True)
@given(temperature=st.floats(-5.0, 0.0))
def test_fuzz_nonpositive_temperature_raises(temperature):
  for fn in (losses.soft_target_kl, losses.dist):
    with pytest.raises(ValueError, match="temperature must be > 0"):
      fn(jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=temperature)
  CASES["invalid input"] += 1
