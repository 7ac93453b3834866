"""Feature and relational losses against float64 NumPy references (official code transcribed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses
from references import (  # tests/losses/references.py
    ref_attention_transfer, ref_conv_reg, ref_hint, ref_pkt, ref_rkd_angle, ref_rkd_distance,
    ref_similarity_preserving)


def _x(shape, seed):
  return np.random.default_rng(seed).normal(size=shape)


# name -> (jax fn, numpy ref, [(student shape, teacher shape)], batch-level?)
CASES = {
    "hint": (losses.hint, ref_hint, [((4, 6), (4, 6)), ((3, 5, 2), (3, 5, 2)),
                                      ((2, 3, 3, 4), (2, 3, 3, 4))], False),
    "attention_transfer": (losses.attention_transfer, ref_attention_transfer,
                           [((3, 6, 2), (3, 6, 4)), ((2, 3, 4, 3), (2, 3, 4, 5))], False),
    "attention_transfer_p4": (lambda s, t: losses.attention_transfer(s, t, p=4),
                              lambda s, t: ref_attention_transfer(s, t, p=4),
                              [((3, 6, 2), (3, 6, 4))], False),
    "similarity_preserving": (losses.similarity_preserving, ref_similarity_preserving,
                              [((6, 5), (6, 3)), ((5, 2, 3), (5, 4))], True),
    "rkd_distance": (losses.rkd_distance, ref_rkd_distance,
                     [((6, 5), (6, 3)), ((5, 2, 3), (5, 4))], True),
    "rkd_angle": (losses.rkd_angle, ref_rkd_angle, [((6, 5), (6, 3)), ((5, 2, 3), (5, 4))], True),
    "pkt": (losses.pkt, ref_pkt, [((6, 5), (6, 3)), ((5, 2, 3), (5, 4))], True),
}
JITTED = {name: jax.jit(c[0]) for name, c in CASES.items()}
RELATIONAL = [n for n, c in CASES.items() if c[3]]


def _weighted_sum(fn):
  def f(s, t):
    out = fn(s, t)
    return jnp.sum(out * jnp.arange(1.0, 1 + out.size, dtype=out.dtype).reshape(out.shape))
  return f


GRADS = {name: jax.jit(jax.grad(_weighted_sum(c[0]), argnums=(0, 1))) for name, c in CASES.items()}


def numeric_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[i] = eps
    g[i] = (f(x + d) - f(x - d)) / (2 * eps)
  return g


@pytest.mark.parametrize("name,shapes", [(n, sh) for n, c in CASES.items() for sh in c[2]])
def test_matches_float64_reference_under_jit(name, shapes):
  _, ref, _, batch_level = CASES[name]
  s, t = _x(shapes[0], 0), _x(shapes[1], 1)
  got = JITTED[name](jnp.float32(s), jnp.float32(t))
  assert got.dtype == jnp.float32
  assert got.shape == (() if batch_level else (s.shape[0],))
  np.testing.assert_allclose(got, ref(s, t), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_float64_finite_differences(name):
  _, ref, shapes, _ = CASES[name]
  s, t = _x(shapes[0][0], 2), _x(shapes[0][1], 3)
  weights = np.arange(1.0, 1 + np.size(ref(s, t)))
  ref_sum = lambda s, t: np.sum(weights * np.ravel(ref(s, t)))
  with jax.enable_x64(True):
    gs, gt = GRADS[name](jnp.asarray(s), jnp.asarray(t))
  np.testing.assert_allclose(gs, numeric_grad(lambda x: ref_sum(x, t), s), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gt, numeric_grad(lambda x: ref_sum(s, x), t), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(CASES))
def test_vmap_equals_loop(name):
  _, _, shapes, _ = CASES[name]
  s, t = jnp.float32(_x((3, *shapes[0][0]), 4)), jnp.float32(_x((3, *shapes[0][1]), 5))
  got = jax.jit(jax.vmap(CASES[name][0]))(s, t)
  want = jnp.stack([JITTED[name](s[k], t[k]) for k in range(3)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", RELATIONAL)
def test_relational_where_equals_slicing_rows(name):
  fn = CASES[name][0]
  s, t = jnp.float32(_x((7, 5), 6)), jnp.float32(_x((7, 3), 7))
  keep = np.array([True, False, True, True, True, False, True])
  got = jax.jit(lambda s, t, w: fn(s, t, where=w))(s, t, jnp.asarray(keep))
  np.testing.assert_allclose(got, JITTED[name](s[keep], t[keep]), rtol=1e-5, atol=1e-7)
  grads = jax.jit(jax.grad(lambda s: fn(s, t, where=jnp.asarray(keep))))(s)
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(grads[~keep], 0.0)


def test_hint_where_equals_slicing():
  s, t = jnp.float32(_x((4, 6), 8)), jnp.float32(_x((4, 6), 9))
  keep = np.array([True, True, False, True, False, True])
  got = jax.jit(lambda s, t, w: losses.hint(s, t, where=w))(s, t, jnp.asarray(keep))
  np.testing.assert_allclose(got, ref_hint(np.asarray(s)[:, keep], np.asarray(t)[:, keep]),
                             rtol=1e-5)
  np.testing.assert_array_equal(losses.hint(s, t, where=jnp.zeros((4, 6), bool)), 0.0)


@pytest.mark.parametrize("name,transform", [
    ("similarity_preserving", lambda f: 3.0 * f),
    ("rkd_distance", lambda f: 5.0 * f + 2.0),
    ("rkd_angle", lambda f: 0.5 * f - 1.0),
    ("pkt", lambda f: 4.0 * f),
])
def test_relational_invariances(name, transform):
  """Each relational loss is 0 when the teacher is an invariance-preserving map of the student."""
  f = jnp.float32(_x((6, 4), 10))
  assert abs(float(JITTED[name](f, transform(f)))) < 1e-5
  assert float(JITTED[name](f, jnp.float32(_x((6, 4), 11)))) > 1e-3


@pytest.mark.parametrize("name", RELATIONAL + ["attention_transfer"])
def test_degenerate_features_give_finite_grads(name):
  """Duplicate rows (zero distances) and all-zero examples must not produce NaN."""
  s = jnp.float32(_x((5, 3, 4), 12)).at[1].set(0.0).at[3].set(jnp.float32(_x((3, 4), 12))[0])
  s = s.at[4].set(s[2])
  t = jnp.float32(_x((5, 3, 4), 13))
  grads = jax.jit(jax.grad(lambda s: jnp.sum(CASES[name][0](s, t))))(s)
  assert np.all(np.isfinite(grads))


@pytest.mark.parametrize("name", list(CASES))
def test_bfloat16_inputs(name):
  _, ref, shapes, _ = CASES[name]
  s, t = _x(shapes[0][0], 14), _x(shapes[0][1], 15)
  got = JITTED[name](jnp.bfloat16(s), jnp.bfloat16(t))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref(s, t), rtol=5e-2, atol=5e-3)


# ----------------------------------------------------------------------------- Projector
@pytest.mark.parametrize("kind,student_shape,target_shape,norm", [
    ("dense", (4, 10), (6,), None),
    ("dense", (4, 5, 3), (2, 7), "layer"),
    ("conv", (4, 5, 3), (5, 8), None),
    ("conv", (2, 3, 3, 4), (3, 3, 6), "layer"),
])
def test_projector_maps_to_teacher_shape(kind, student_shape, target_shape, norm):
  proj = losses.Projector(target_shape=target_shape, kind=kind, norm=norm)
  x = jnp.float32(_x(student_shape, 16))
  params = jax.jit(proj.init)(jax.random.key(0), x)["params"]
  apply = jax.jit(proj.apply)
  y = apply({"params": params}, x)
  assert y.shape == (student_shape[0], *target_shape)
  assert ("norm" in params) == (norm == "layer")
  if kind == "conv":  # a 1x1 conv: each position only sees its own channels
    y2 = apply({"params": params}, x.at[:, 0].set(0.0))
    np.testing.assert_array_equal(y2[:, 1:], y[:, 1:])


def _conv_reg_params(c_in, c_out, seed):
  """ConvReg parameters with non-trivial BatchNorm scale/bias, float64 NumPy and as flax."""
  k, b, g, be = (_x(shape, seed + i) for i, shape in
                 enumerate([(c_in, c_out), (c_out,), (c_out,), (c_out,)]))
  g = 1.0 + 0.3 * g
  flax_params = {"conv1x1": {"kernel": jnp.float32(k), "bias": jnp.float32(b)},
                 "bn": {"scale": jnp.float32(g), "bias": jnp.float32(0.5 * be)}}
  return (k, b, g, 0.5 * be), flax_params


@pytest.mark.parametrize("shape,rows", [((6, 4, 4, 3), None), ((5, 7, 2), [1, 1, 0, 1, 0])])
def test_conv_reg_projector_matches_numpy(shape, rows):
  """kind="conv_reg" is mdistiller's ConvReg (1x1 conv + batch-statistics BN + ReLU), to
  float32 rounding of a float64 NumPy reference, masked rows left out of the statistics."""
  x = _x(shape, 30)
  proj = losses.Projector(target_shape=(*shape[1:-1], 5), kind="conv_reg")
  init = proj.init(jax.random.key(0), jnp.float32(x))["params"]
  (k, b, g, be), params = _conv_reg_params(shape[-1], 5, 40)
  assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, params)
  where = None if rows is None else jnp.array(rows, bool)
  got, _ = jax.jit(lambda p, v, w: proj.apply({"params": p}, v, w, mutable=["batch_stats"]))(
      params, jnp.float32(x), where)
  want = ref_conv_reg(x, k, b, g, be, rows=None if rows is None else np.array(rows, bool))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # The statistics are the batch's: scaling the student features leaves the output alone.
  scaled, _ = proj.apply({"params": params}, jnp.float32(100 * x), where,
                         mutable=["batch_stats"])
  np.testing.assert_allclose(scaled, got, rtol=1e-3, atol=1e-4)


def test_hint_term_with_conv_reg_matches_numpy():
  """The composer's hint term with projector "conv_reg" (the CIFAR FitNets recipe): value
  and gradient w.r.t. the student features against the float64 reference (finite
  differences of the NumPy loss)."""
  s, t = _x((4, 3, 3, 2), 50), np.abs(_x((4, 3, 3, 3), 51))
  objective = losses.make_objective(
      {"hint": {"weight": 1.0, "student_feature": "f", "projector": "conv_reg"}})
  inputs = lambda sf: losses.LossInputs(  # noqa: E731
      student_logits=jnp.zeros((4, 2)), student_features={"f": sf},
      teacher_features={"f": jnp.float32(t)})
  aux = objective.init(jax.random.key(0), inputs(jnp.float32(s)))
  (k, b, g, be), aux["hint"] = _conv_reg_params(2, 3, 60)
  loss_of = lambda sf: objective(aux, inputs(sf))[0]  # noqa: E731
  ref = lambda sf: ref_hint(ref_conv_reg(sf, k, b, g, be), t).mean()  # noqa: E731
  np.testing.assert_allclose(jax.jit(loss_of)(jnp.float32(s)), ref(s), rtol=1e-5)
  grad = jax.jit(jax.grad(loss_of))(jnp.float32(s))
  eps, numeric = 1e-6, np.zeros_like(s)
  for i in np.ndindex(s.shape):
    d = np.zeros_like(s)
    d[i] = eps
    numeric[i] = (ref(s + d) - ref(s - d)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


def test_hint_term_with_conv_reg_masked_rows_equal_slicing():
  """A padded row (``inputs.where`` False) changes neither the regressor's batch
  statistics nor the loss: the masked batch gives the loss of the valid rows alone."""
  s, t = _x((5, 3, 3, 2), 70), np.abs(_x((5, 3, 3, 3), 71))
  s[2], t[2] = 1e3, -1e3  # the padded row
  objective = losses.make_objective(
      {"hint": {"weight": 1.0, "student_feature": "f", "projector": "conv_reg"}})
  inputs = lambda sf, tf, where=None: losses.LossInputs(  # noqa: E731
      student_logits=jnp.zeros((len(sf), 2)), student_features={"f": jnp.float32(sf)},
      teacher_features={"f": jnp.float32(tf)}, where=where)
  aux = objective.init(jax.random.key(0), inputs(s, t))
  _, aux["hint"] = _conv_reg_params(2, 3, 80)
  keep = np.array([1, 1, 0, 1, 1], bool)
  masked = objective(aux, inputs(s, t, jnp.asarray(keep)))[0]
  np.testing.assert_allclose(masked, objective(aux, inputs(s[keep], t[keep]))[0], rtol=1e-5)


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call,exc,match", [
    (lambda: losses.hint(jnp.zeros((4, 6)), jnp.zeros((4, 5))), ValueError,
     r"student_features.shape=\(4, 6\) and teacher_features.shape=\(4, 5\)"),
    (lambda: losses.hint(jnp.zeros((4, 6), jnp.int32), jnp.zeros((4, 6))), TypeError,
     "student_features must have a floating dtype"),
    (lambda: losses.hint(jnp.zeros((4, 6)), jnp.zeros((4, 6)), where=jnp.ones((4, 5), bool)),
     ValueError, "where"),
    (lambda: losses.attention_transfer(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 2, 2, 3))),
     ValueError, r"same batch and spatial dims.*\(2, 4, 4, 3\).*\(2, 2, 2, 3\)"),
    (lambda: losses.attention_transfer(jnp.zeros((2, 4)), jnp.zeros((2, 4))), ValueError,
     r"\[B, H, W, C\] or \[B, L, C\]"),
    (lambda: losses.attention_transfer(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3)), p=0),
     ValueError, "p must be > 0"),
    (lambda: losses.similarity_preserving(jnp.zeros((4, 3)), jnp.zeros((5, 3))), ValueError,
     "same batch size"),
    (lambda: losses.rkd_distance(jnp.zeros((4,)), jnp.zeros((4,))), ValueError, "rank >= 2"),
    (lambda: losses.rkd_angle(jnp.zeros((4, 3)), jnp.zeros((4, 3), jnp.int32)), TypeError,
     "teacher_features must have a floating dtype"),
    (lambda: losses.pkt(jnp.zeros((4, 3)), jnp.zeros((4, 3)), where=jnp.ones((3,), bool)),
     ValueError, "where"),
    (lambda: losses.Projector((4, 5), kind="conv").init(jax.random.key(0), jnp.zeros((2, 3, 6))),
     ValueError, "1x1 conv keeps the spatial dims"),
    (lambda: losses.Projector((4,), kind="mlp").init(jax.random.key(0), jnp.zeros((2, 3))),
     ValueError, "unknown kind 'mlp'"),
    (lambda: losses.Projector((3, 4), kind="conv_reg", norm="layer").init(
        jax.random.key(0), jnp.zeros((2, 3, 6))), ValueError, "conv_reg.*norm must be None"),
    (lambda: losses.make_objective({"h": {"loss": "hint", "weight": 1.0, "student_feature": "f",
                                          "projector": "conv_reg", "norm": "layer"}}),
     ValueError, "'conv_reg' has its own BatchNorm"),
])
def test_bad_input_errors(call, exc, match):
  with pytest.raises(exc, match=match):
    call()
