"""fused_distillation_loss equals the unfused divergence (values, gradients, sharded)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax import losses
from kdjax.losses._fused import DIVERGENCES

N, D, DT, V = 37, 8, 6, 48  # N not a multiple of the chunk: exercises the padding
KWARGS = {"forward_kl": {}, "reverse_kl": {}, "generalized_jsd": {"beta": 0.3},
          "skew_kl": {"alpha": 0.1}, "skew_reverse_kl": {"alpha": 0.2}, "total_variation": {}}


def _inputs(seed, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return tuple(np.asarray(rng.normal(size=s), dtype) for s in ((N, D), (D, V), (N, DT), (DT, V)))


def _fused(name, chunk_size=8, where=None):
  return lambda hs, ws, ht, wt: losses.fused_distillation_loss(
      hs, ws, ht, wt, divergence=name, temperature=2.0, chunk_size=chunk_size, where=where,
      **KWARGS[name])


def _unfused(name):
  return lambda hs, ws, ht, wt: DIVERGENCES[name](hs @ ws, ht @ wt, temperature=2.0,
                                                  **KWARGS[name])


def _weighted(f):
  w = jnp.arange(1.0, N + 1)
  return lambda *a: jnp.sum(w.astype(a[0].dtype) * f(*a))


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_fused_equals_unfused_values_and_gradients_float64(name):
  args = tuple(jnp.asarray(x) for x in _inputs(0, np.float64))
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(np.asarray(x, np.float64)) for x in _inputs(0, np.float64))
    got = jax.jit(_fused(name))(*args)
    want = _unfused(name)(*args)
    assert got.shape == (N,) and got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    g = jax.jit(jax.grad(_weighted(_fused(name)), argnums=(0, 1, 2, 3)))(*args)
    g_want = jax.grad(_weighted(_unfused(name)), argnums=(0, 1, 2, 3))(*args)
  for a, b in zip(g, g_want):  # student hidden, student head (and the teacher's, too)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["forward_kl", "generalized_jsd"])
def test_array_hyperparameters_take_the_generic_vjp_float64(name):
  """Traced temperature and beta: the divergence's own VJP, gradient w.r.t. T included."""
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(x) for x in _inputs(7, np.float64))
    kw = lambda b: {"beta": b} if name == "generalized_jsd" else {}

    def fused(hs, ws, temp, beta):
      return jnp.sum(losses.fused_distillation_loss(hs, ws, *args[2:], divergence=name,
                                                    temperature=temp, chunk_size=8, **kw(beta)))

    def unfused(hs, ws, temp, beta):
      return jnp.sum(DIVERGENCES[name](hs @ ws, args[2] @ args[3], temperature=temp, **kw(beta)))

    hyper = (jnp.asarray(1.7), jnp.asarray(0.3))
    got = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2, 3)))(*args[:2], *hyper)
    want = jax.value_and_grad(unfused, argnums=(0, 1, 2, 3))(*args[:2], *hyper)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def test_fused_forward_kl_matches_numpy_reference():
  hs, ws, ht, wt = (np.asarray(x, np.float64) for x in _inputs(1))
  lt = scipy.special.log_softmax(ht @ wt / 2.0, -1)
  ls = scipy.special.log_softmax(hs @ ws / 2.0, -1)
  want = 4.0 * np.sum(np.exp(lt) * (lt - ls), -1)
  got = jax.jit(_fused("forward_kl", chunk_size=16))(*_inputs(1))
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4)


@pytest.mark.parametrize("chunk_size", (1, 5, 37, 64))
def test_chunk_size_does_not_change_the_result(chunk_size):
  args = _inputs(2)
  np.testing.assert_allclose(jax.jit(_fused("forward_kl", chunk_size))(*args),
                             _unfused("forward_kl")(*args), rtol=1e-5, atol=1e-5)


def test_where_masks_tokens_even_when_nan():
  hs, ws, ht, wt = _inputs(3)
  keep = np.arange(N) % 3 != 1
  hs[~keep] = np.nan
  f = _fused("generalized_jsd", where=jnp.asarray(keep))
  got = jax.jit(f)(hs, ws, ht, wt)
  want = _unfused("generalized_jsd")(hs[keep], ws, ht[keep], wt)
  np.testing.assert_allclose(got[keep], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[~keep], 0.0)
  g_hs, g_ws = jax.jit(jax.grad(lambda a, b: jnp.sum(f(a, b, ht, wt)), argnums=(0, 1)))(hs, ws)
  assert np.all(np.isfinite(g_hs)) and np.all(np.isfinite(g_ws))
  np.testing.assert_array_equal(g_hs[~keep], 0.0)


def test_backward_memory_is_bounded_by_the_chunk():
  """Compiled memory of forward+backward: no [N, V] buffer in the fused program."""
  n, d, v = 4096, 16, 4096
  spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  args = (spec(n, d), spec(d, v), spec(n, d), spec(d, v))

  def temp(f):
    step = jax.jit(jax.grad(lambda *a: jnp.mean(f(*a)), argnums=(0, 1)))
    return step.lower(*args).compile().memory_analysis().temp_size_in_bytes

  fused = temp(lambda *a: losses.fused_distillation_loss(*a, chunk_size=128))
  unfused = temp(_unfused("forward_kl"))
  assert unfused > n * v * 4  # at least one [N, V] float32 buffer
  assert fused < n * v * 4 / 4, (fused, unfused)


@pytest.mark.parametrize("name", ["forward_kl", "generalized_jsd", "skew_kl"])
def test_peak_memory_is_a_fraction_of_unfused(name):
  """Compiled (never run) forward+backward: arguments + outputs + temporaries - aliases."""
  n, d, v = 4096, 1024, 32768
  spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  args = (spec(n, d), spec(d, v), spec(n, d), spec(d, v))

  def analysis(f):
    step = jax.jit(jax.value_and_grad(lambda *a: jnp.mean(f(*a)), argnums=(0, 1)))
    m = step.lower(*args).compile().memory_analysis()
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)
    return peak, m.temp_size_in_bytes

  kw = {"generalized_jsd": {"beta": 0.5}, "skew_kl": {"alpha": 0.1}}.get(name, {})
  fused_peak, fused_temp = analysis(lambda *a: losses.fused_distillation_loss(
      *a, divergence=name, chunk_size=128, **kw))
  unfused_peak, _ = analysis(lambda hs, ws, ht, wt: DIVERGENCES[name](hs @ ws, ht @ wt, **kw))
  # No [d, V] temporary: the head gradient accumulates in the output buffer.
  assert fused_temp < d * v * 4, fused_temp
  # Measured 0.137 (forward KL), 0.070 (JSD), 0.117 (skew KL); the inputs and gradients alone
  # are 0.123 of the forward-KL peak here (d = 1024 is large for V = 32768).
  assert fused_peak < 0.2 * unfused_peak, (fused_peak, unfused_peak)


def test_vocabulary_sharded_equals_one_device():
  """Tokens over `data` (2), vocabulary over `model` (4): exact across vocabulary shards."""
  devices = np.array(jax.devices()[:8]).reshape(2, 4)
  mesh = Mesh(devices, ("data", "model"),
              axis_types=(jax.sharding.AxisType.Auto, jax.sharding.AxisType.Auto))
  rng = np.random.default_rng(4)
  hs, ht = rng.normal(size=(64, D)).astype(np.float32), rng.normal(size=(64, DT)).astype(np.float32)
  ws, wt = rng.normal(size=(D, V)).astype(np.float32), rng.normal(size=(DT, V)).astype(np.float32)
  f = lambda hs, ws, ht, wt: losses.fused_distillation_loss(
      hs, ws, ht, wt, divergence="generalized_jsd", beta=0.5, chunk_size=16)
  step = jax.jit(jax.value_and_grad(lambda *a: jnp.mean(f(*a)), argnums=(0, 1)))
  one = jax.device_put((hs, ws, ht, wt), jax.devices()[0])
  want_val, (want_gh, want_gw) = step(*one)
  tokens, vocab = NamedSharding(mesh, P("data", None)), NamedSharding(mesh, P(None, "model"))
  sharded = (jax.device_put(hs, tokens), jax.device_put(ws, vocab), jax.device_put(ht, tokens),
             jax.device_put(wt, vocab))
  per_token = jax.jit(f)(*sharded)
  val, (gh, gw) = step(*sharded)
  assert len(per_token.sharding.device_set) == 8
  np.testing.assert_allclose(per_token, jax.jit(f)(*one), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(val, want_val, rtol=1e-5)
  np.testing.assert_allclose(gh, want_gh, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(gw, want_gw, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"divergence": "kl"}, ValueError, "divergence must be one of"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"where": jnp.ones((N + 1,), bool)}, ValueError, "where"),
    ({"temperature": -1.0}, ValueError, "temperature"),
])
def test_bad_arguments(kwargs, error, match):
  with pytest.raises(error, match=match):
    losses.fused_distillation_loss(*_inputs(5), **kwargs)


def test_bad_shapes():
  hs, ws, ht, wt = _inputs(6)
  with pytest.raises(ValueError, match="same tokens N and vocabulary V"):
    losses.fused_distillation_loss(hs, ws, ht[:-1], wt)
  with pytest.raises(ValueError, match="hidden width"):
    losses.fused_distillation_loss(hs, ws[:-1], ht, wt)
  with pytest.raises(ValueError, match="must be a matrix"):
    losses.fused_distillation_loss(hs[None], ws, ht, wt)


@pytest.mark.parametrize("name", ["forward_kl", "generalized_jsd", "total_variation"])
def test_bfloat16_inputs_give_float32_values_close_to_float64(name):
  """bfloat16 hidden states and heads, scaled so the logits reach about +-60 and the
  divergences values near 20: the result is float32 and equals the float64 divergence of
  the same (bfloat16-rounded) inputs up to float32 accumulation, 1e-4 relative; bfloat16
  arithmetic (8 bits of mantissa) would be off in the third digit. Gradients come back in
  bfloat16, within bfloat16 rounding (2**-8 relative, twice for headroom) of float64's."""
  args16 = tuple(jnp.asarray(x * 3.0, jnp.bfloat16) for x in _inputs(3))
  got = jax.jit(_fused(name))(*args16)
  assert got.dtype == jnp.float32 and got.shape == (N,)
  g = jax.jit(jax.grad(_weighted(_fused(name)), argnums=(0, 1, 2, 3)))(*args16)
  with jax.enable_x64(True):
    args64 = tuple(jnp.asarray(np.asarray(x.astype(jnp.float32), np.float64)) for x in args16)
    want = np.asarray(_unfused(name)(*args64))
    g_want = [np.asarray(x) for x in jax.grad(_weighted(_unfused(name)), argnums=(0, 1, 2, 3))(*args64)]
  if name == "forward_kl":
    assert float(np.max(want)) > 10  # large values, where bfloat16 rounding shows
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  for a, b in zip(g, g_want):
    assert a.dtype == jnp.bfloat16
    scale = float(np.max(np.abs(b)))
    np.testing.assert_allclose(np.asarray(a, np.float64), b, atol=2 * 2 ** -8 * scale)


def test_zero_tokens_give_an_empty_result():
  args = tuple(x[:0] if i in (0, 2) else x for i, x in enumerate(_inputs(4)))
  got = jax.jit(_fused("forward_kl"))(*args)
  assert got.shape == (0,) and got.dtype == jnp.float32
  want = _unfused("forward_kl")(*args)
  assert want.shape == (0,)
  g = jax.grad(lambda *a: jnp.sum(_fused("forward_kl")(*a)), argnums=(0, 1, 2, 3))(*args)
  assert [x.shape for x in g] == [x.shape for x in args]
  assert all(not np.any(np.asarray(x)) for x in g)
