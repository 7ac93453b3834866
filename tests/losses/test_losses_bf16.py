"""The logit losses on bfloat16 logits, small and large: finite, float32, and equal to the
float64 NumPy reference evaluated on the same (bf16-representable) values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses
from references import ref_cross_entropy, ref_dkd_exact, ref_hinton_kd  # tests/losses/

SCALES = (3.0, 1e3, 3e4)  # ordinary logits, and logits whose exp overflows any float


def _bf16_pair(scale, seed=0, shape=(6, 10)):
  rng = np.random.default_rng(seed)
  s = jnp.asarray(rng.normal(size=shape) * scale, jnp.bfloat16)
  t = jnp.asarray(rng.normal(size=shape) * scale, jnp.bfloat16)
  y = rng.integers(0, shape[-1], size=shape[:-1])
  # float64 copies of exactly the bf16 values: the reference sees the same inputs.
  return s, t, jnp.asarray(y), np.asarray(s, np.float64), np.asarray(t, np.float64), y


CASES = {
    "cross_entropy": (lambda s, t, y: losses.cross_entropy(s, y),
                      lambda s, t, y: ref_cross_entropy(s, y)),
    "hinton_kd": (lambda s, t, y: losses.hinton_kd(s, t, y, temperature=4.0, alpha=0.9),
                  lambda s, t, y: ref_hinton_kd(s, t, y, 4.0, 0.9)),
    "dkd": (lambda s, t, y: losses.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
            lambda s, t, y: ref_dkd_exact(s, t, y, 1.0, 8.0, 4.0)),
}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_on_bf16_logits_is_finite_float32_and_matches_float64(name, scale):
  fn, ref = CASES[name]
  s, t, y, s64, t64, y64 = _bf16_pair(scale)
  value = jax.jit(fn)(s, t, y)
  assert value.dtype == jnp.float32
  expected = ref(s64, t64, y64)
  assert np.all(np.isfinite(expected))
  # Computed in float32 from exact inputs: float32 rounding relative to the loss size
  # (large logits give losses of order scale / T).
  np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5 * max(1.0, scale))
  grads = jax.grad(lambda s: jnp.sum(fn(s, t, y)))(s)
  assert grads.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grads, np.float32)))
