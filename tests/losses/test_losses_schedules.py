"""Schedules of a term's hyperparameters (temperature, alpha, beta) in ``make_objective``,
against float64 NumPy references at the scheduled values."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kdjax import losses
from references import np_log_softmax, ref_dkd, ref_hinton_kd, ref_soft_target_kl

B, C = 5, 6


def _data():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(B, C)) * 2, np_log_softmax(rng.normal(size=(B, C)) * 2)
  return s, t, rng.integers(0, C, size=B)


def _losses_at(objective, steps):
  """The objective's per-term metrics at each step, jitted with the step traced, float64."""
  s, t, y = _data()
  inputs = losses.LossInputs(student_logits=jnp.asarray(s), teacher_logits=jnp.asarray(t),
                             labels=jnp.asarray(y))
  run = jax.jit(lambda step: objective({}, inputs, step=step)[1])
  return [run(jnp.int32(step)) for step in steps]


def test_scheduled_hyperparameters_equal_the_fixed_values_at_each_step():
  s, t, y = _data()
  config = ml_collections.ConfigDict({
      "kd": {"loss": "hinton_kd", "weight": 1.0, "temperature": {"init": 8.0, "end": 2.0,
                                                                  "steps": 6},
             "alpha": {"init": 0.0, "end": 1.0, "steps": 10}},
      "dkd": {"weight": 1.0, "beta": {"value": 8.0, "warmup_steps": 4}, "temperature": 4.0}})
  objective = losses.make_objective(config)
  assert objective.needs_labels
  with jax.enable_x64(True):
    got = _losses_at(objective, (0, 3, 5, 100))
  # optax.linear_schedule evaluates in float32 (step count), hence rtol 1e-6.
  for metrics, (temp, alpha, beta) in zip(got, [(8.0, 0.0, 0.0), (5.0, 0.3, 6.0),
                                                (3.0, 0.5, 8.0), (2.0, 1.0, 8.0)]):
    np.testing.assert_allclose(metrics["loss/kd"], ref_hinton_kd(s, t, y, temp, alpha).mean(),
                               rtol=1e-6)
    np.testing.assert_allclose(metrics["loss/dkd"], ref_dkd(s, t, y, 1.0, beta, 4.0).mean(),
                               rtol=1e-6)


def test_callable_schedule_and_missing_step():
  s, t, _ = _data()
  objective = losses.make_objective(
      [("soft_target_kl", 1.0, {"temperature": lambda step: 1.0 + step})])
  with jax.enable_x64(True):
    (metrics,) = _losses_at(objective, (3,))
  np.testing.assert_allclose(metrics["loss/soft_target_kl"], ref_soft_target_kl(s, t, 4.0).mean(),
                             rtol=1e-12)
  inputs = losses.LossInputs(student_logits=jnp.float32(s), teacher_logits=jnp.float32(t))
  with pytest.raises(ValueError, match="term 'soft_target_kl' has a temperature schedule; call"):
    objective({}, inputs)


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": {"value": 4.0, "warmup_steps": 10}},
     "temperature cannot warm up from 0"),
    ({"temperature": {"init": 0.0, "end": 4.0, "steps": 10}},
     r"temperature schedule must stay > 0, got init=0.0"),
    ({"alpha": {"init": 0.0, "end": 1.0}},
     r"alpha schedule must be \{'value': w, 'warmup_steps': n\} or \{'init'"),
    ({"beta": {"init": 0.0, "end": 1.0, "steps": 0}}, "steps must be an int >= 1"),
    ({"beta": "big"}, "beta must be a number or a schedule"),
])
def test_schedule_errors_name_the_term_and_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.make_objective({"dkd": {"weight": 1.0, **kwargs}})
