"""Optimizers and schedules against float64 NumPy transcriptions of their update rules."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from kdjax.config import override
from kdjax.training import default_config, make_optimizer
from kdjax.training._optim import make_schedule


def opt_config(**fields) -> ml_collections.ConfigDict:
  c = default_config().optimizer
  for k, v in fields.items():
    c[k] = v
  return c


def schedule_values(config, num_steps, steps, **kw):
  schedule = make_schedule(config, num_steps, **kw)
  return np.array([float(schedule(jnp.asarray(s))) for s in steps])


STEPS = [0, 1, 5, 9, 10, 11, 49, 50, 51, 99, 100]


def test_constant_schedule():
  np.testing.assert_allclose(schedule_values(opt_config(learning_rate=0.3), 100, STEPS), 0.3)


def test_cosine_schedule():
  expected = [0.5 * 0.3 * (1 + math.cos(math.pi * min(s, 100) / 100)) for s in STEPS]
  got = schedule_values(opt_config(learning_rate=0.3, schedule="cosine"), 100, STEPS)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)


def test_warmup_cosine_schedule():
  def reference(s, lr=0.3, w=10, total=100):
    if s < w:
      return lr * s / w
    return 0.5 * lr * (1 + math.cos(math.pi * min(s - w, total - w) / (total - w)))
  got = schedule_values(opt_config(learning_rate=0.3, schedule="warmup_cosine", warmup_steps=10),
                        100, STEPS)
  np.testing.assert_allclose(got, [reference(s) for s in STEPS], rtol=1e-6, atol=1e-8)


def test_multistep_schedule_in_steps_and_epochs():
  # PyTorch MultiStepLR: lr * gamma ** (number of milestones <= step).
  reference = [0.1 * 0.2 ** sum(s >= b for b in (10, 50)) for s in STEPS]
  config = opt_config(learning_rate=0.1, schedule="multistep", boundaries=(10, 50), decay_factor=0.2)
  np.testing.assert_allclose(schedule_values(config, 100, STEPS), reference, rtol=1e-6)
  config = opt_config(learning_rate=0.1, schedule="multistep", boundary_epochs=(2, 10),
                      decay_factor=0.2)
  np.testing.assert_allclose(schedule_values(config, 100, STEPS, steps_per_epoch=5), reference,
                             rtol=1e-6)


def test_multistep_with_warmup_keeps_absolute_boundaries():
  def reference(s):
    return 0.1 * s / 5 if s < 5 else 0.1 * 0.1 ** sum(s >= b for b in (10, 50))
  config = opt_config(learning_rate=0.1, schedule="multistep", boundaries=(10, 50), warmup_steps=5)
  np.testing.assert_allclose(schedule_values(config, 100, STEPS), [reference(s) for s in STEPS],
                             rtol=1e-6)


@pytest.mark.parametrize("fields, match", [
    ({"schedule": "step"}, "Unknown schedule 'step'"),
    ({"schedule": "multistep"}, "needs optimizer.boundaries"),
    ({"schedule": "multistep", "boundaries": (50, 10)}, "increasing positive steps"),
    ({"schedule": "multistep", "boundaries": (10,), "boundary_epochs": (1,)}, "not both"),
    ({"schedule": "cosine", "warmup_steps": 5}, "use schedule 'warmup_cosine'"),
    ({"name": "lamb"}, "Unknown optimizer 'lamb'"),
    ({"name": "adamw", "weight_decay_mode": "l2"}, "decoupled weight decay"),
    ({"weight_decay_mode": "l1"}, "Unknown optimizer.weight_decay_mode 'l1'"),
])
def test_bad_optimizer_settings_are_clear_errors(fields, match):
  with pytest.raises(ValueError, match=match):
    make_optimizer(opt_config(**fields), 100)


def run_optimizer(config, params, grads_seq, num_steps=100):
  tx = make_optimizer(config, num_steps)
  state = tx.init(params)
  for g in grads_seq:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def problem(seed=0, steps=6):
  rng = np.random.default_rng(seed)
  theta = rng.normal(size=(3, 4))
  grads = [rng.normal(size=(3, 4)) for _ in range(steps)]
  return theta, grads


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_l2_weight_decay_matches_torch_sgd_rule(nesterov):
  """torch.optim.SGD(lr, momentum, weight_decay, nesterov), dampening 0:
  d = g + wd * p;  b = mu * b + d (b = d at the first step);
  d = d + mu * b if nesterov else b;  p = p - lr * d."""
  lr, mu, wd = 0.05, 0.9, 5e-4
  theta, grads = problem()
  p, b = theta.copy(), None
  for g in grads:
    d = g + wd * p
    b = d if b is None else mu * b + d
    p = p - lr * (d + mu * b if nesterov else b)
  config = opt_config(name="sgd", learning_rate=lr, momentum=mu, nesterov=nesterov,
                      weight_decay=wd)
  got = run_optimizer(config, jnp.asarray(theta, jnp.float32),
                      [jnp.asarray(g, jnp.float32) for g in grads])
  np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-6)
  assert not np.allclose(p, run_optimizer(opt_config(name="sgd", learning_rate=lr, momentum=mu,
                                                     nesterov=nesterov), theta, grads))


def test_sgd_decoupled_weight_decay_and_plain_sgd():
  lr, mu, wd = 0.05, 0.9, 1e-2
  theta, grads = problem(1)
  p, b = theta.copy(), np.zeros_like(theta)
  for g in grads:
    b = mu * b + g
    p = p - lr * (b + wd * p)
  config = opt_config(name="sgd", learning_rate=lr, momentum=mu, weight_decay=wd,
                      weight_decay_mode="decoupled")
  np.testing.assert_allclose(run_optimizer(config, theta.astype(np.float32), grads), p,
                             rtol=1e-5, atol=1e-6)
  p = theta - lr * np.sum(grads, axis=0)
  np.testing.assert_allclose(run_optimizer(opt_config(name="sgd", learning_rate=lr, momentum=0.0),
                                           theta.astype(np.float32), grads), p, rtol=1e-5, atol=1e-6)


def adam_reference(theta, grads, *, lr, wd, decoupled, b1=0.9, b2=0.999, eps=1e-8):
  p, m, v = theta.copy(), np.zeros_like(theta), np.zeros_like(theta)
  for t, g in enumerate(grads, start=1):
    if not decoupled:
      g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    u = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    p = p - lr * (u + (wd * p if decoupled else 0.0))
  return p


@pytest.mark.parametrize("name, mode, decoupled", [("adam", "", False), ("adamw", "", True),
                                                   ("adam", "decoupled", True)])
def test_adam_and_adamw_weight_decay(name, mode, decoupled):
  theta, grads = problem(2)
  expected = adam_reference(theta, grads, lr=1e-2, wd=0.1, decoupled=decoupled)
  config = opt_config(name=name, learning_rate=1e-2, weight_decay=0.1, weight_decay_mode=mode)
  np.testing.assert_allclose(run_optimizer(config, theta.astype(np.float32), grads), expected,
                             rtol=1e-5, atol=1e-6)


def test_schedule_drives_the_update():
  """SGD without momentum: each step moves by exactly lr_t * g under a multistep schedule."""
  config = opt_config(name="sgd", momentum=0.0, learning_rate=0.5, schedule="multistep",
                      boundaries=(2, 4), decay_factor=0.1)
  tx = make_optimizer(config, 10)
  params, state = jnp.zeros(()), tx.init(jnp.zeros(()))
  moves = []
  for _ in range(6):
    updates, state = tx.update(jnp.ones(()), state, params)
    moves.append(-float(updates))
  np.testing.assert_allclose(moves, [0.5, 0.5, 0.05, 0.05, 0.005, 0.005], rtol=1e-6)


def test_documented_optimizer_fields_are_config_fields(tmp_path):
  """`--config.optimizer.weight_decay` and `.momentum` used to be unknown fields."""
  from kdjax.config import load_config
  from kdjax.training import load_params, train_and_evaluate
  config = load_config("mnist1d/mlp.py", "smoke", {"progress_bar": False, "num_steps": 20})
  override(config, {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1,
                    "optimizer.momentum": 0.9, "optimizer.nesterov": True,
                    "optimizer.weight_decay": 5e-4, "optimizer.schedule": "multistep",
                    "optimizer.boundary_epochs": (0.2,)})
  summary = train_and_evaluate(config, str(tmp_path / "w"))
  assert summary["steps"] == 20 and summary["test"]["accuracy"] > 0.15
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(load_params(tmp_path / "w")))
