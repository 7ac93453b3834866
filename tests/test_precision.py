"""Mixed precision: bfloat16 compute with float32 params, optimizer state, BatchNorm
statistics and losses; bf16 and f32 training agree within bf16 tolerance."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import losses
from kdjax.models import CNN1D, MLP, get_model
from kdjax.training import create_train_state, make_train_chunk
from kdjax.training._precision import MixedPrecisionModel, parse_dtype, with_compute_dtype

BF16_EPS = 2.0**-8  # bfloat16 keeps 8 significant bits

MODELS = {"mlp": (MLP(), (40,)), "cnn1d": (CNN1D(), (40,)),
          "resnet8": (get_model("resnet8", num_classes=10), (8, 8, 3))}
# Largest allowed |params_bf16 - params_f32| / |params_f32 - params_0| after 3 steps.
# Measured (seed 0): MLP and CNN1D under 0.05; resnet8 0.18: BatchNorm's backward
# subtracts batch means, which cancels bf16-rounded activations (its loss still agrees
# to 1e-4).
PARAM_GAP = {"mlp": 0.1, "cnn1d": 0.1, "resnet8": 0.3}


def _train(model, shape, dtype, steps=3, batch=16):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(steps, batch, *shape)).astype(np.float32)
  y = rng.integers(0, 10, size=(steps, batch))
  model = with_compute_dtype(model, dtype)
  tx = optax.sgd(0.1, momentum=0.9)
  state = create_train_state(model, tx, jnp.asarray(x[0]), rng=jax.random.key(0))
  initial = jax.tree.map(np.asarray, state.params)
  objective = losses.make_objective({"cross_entropy": {"weight": 1.0}})
  chunk = make_train_chunk(model=model, objective=objective, tx=tx)
  state, metrics = chunk(state, {"x": x, "y": y})
  return initial, state, metrics


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_training_matches_f32_within_bf16_tolerance(name):
  model, shape = MODELS[name]
  initial, f32, f32_metrics = _train(model, shape, "float32")
  _, bf16, bf16_metrics = _train(model, shape, "bfloat16")
  # Params, optimizer state and BatchNorm statistics stay float32.
  for leaf in jax.tree.leaves((bf16.params, bf16.opt_state, bf16.model_state)):
    assert leaf.dtype == jnp.float32
  # The mean loss over 3 steps agrees to a couple of bf16 ulps.
  np.testing.assert_allclose(bf16_metrics["loss"], f32_metrics["loss"], rtol=2 * BF16_EPS)
  # The params moved the same way: the bf16 run's difference from the f32 run is a small
  # fraction of what training changed (3 SGD steps, lr 0.1, momentum 0.9).
  flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])  # noqa: E731
  p0, p32, p16 = flat(initial), flat(f32.params), flat(bf16.params)
  change, gap = np.linalg.norm(p32 - p0), np.linalg.norm(p16 - p32)
  assert change > 0.01 and gap < PARAM_GAP[name] * change, (name, change, gap)
  if name == "resnet8":
    stats = jax.tree.leaves(bf16.model_state)
    ref_stats = jax.tree.leaves(f32.model_state)
    for a, b in zip(stats, ref_stats):
      np.testing.assert_allclose(a, b, rtol=4 * BF16_EPS, atol=4 * BF16_EPS)


def test_bf16_model_multiplies_in_bf16_and_returns_float32():
  model = with_compute_dtype(MLP(hidden=(8,)), "bfloat16")
  assert isinstance(model, MixedPrecisionModel)
  x = jnp.ones((2, 40))
  variables = model.init(jax.random.key(0), x)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False, features=["hidden_0"]))(
      variables, x)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
  out = model.apply(variables, x, train=False, features=["hidden_0"])
  assert out.logits.dtype == jnp.float32 and out.features["hidden_0"].dtype == jnp.float32
  # float32 is the model unchanged.
  assert not isinstance(with_compute_dtype(MLP(), "float32"), MixedPrecisionModel)


def test_unknown_dtype_names_the_field():
  assert parse_dtype("bfloat16") == jnp.bfloat16
  with pytest.raises(ValueError, match=r"config.teacher.dtype='bf16' is not a compute dtype"):
    with_compute_dtype(MLP(), "bf16", field="config.teacher.dtype")
