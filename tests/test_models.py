"""Models: registry errors, feature names, im2col conv equal to XLA's conv (float64 ref)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models


def conv1d_reference(x, kernel, stride, padding):
  """float64 NumPy 1-D convolution (cross-correlation), NWC/WIO."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (padding, padding), (0, 0)))
  k = kernel.shape[0]
  length_out = (x.shape[1] - k) // stride + 1
  out = np.zeros((x.shape[0], length_out, kernel.shape[2]))
  for l in range(length_out):
    window = x[:, l * stride:l * stride + k, :]
    out[:, l] = np.einsum("bkc,kco->bo", window, np.asarray(kernel, np.float64))
  return out


@pytest.mark.parametrize("stride,padding,k", [(1, 0, 3), (2, 1, 5), (2, 1, 3), (3, 2, 4)])
def test_conv1d_im2col_matches_float64_reference(stride, padding, k):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 40, 3)).astype(np.float32)
  kernel = rng.normal(size=(k, 3, 7)).astype(np.float32)
  got = jax.jit(models.conv1d_im2col, static_argnames=("stride", "padding"))(
      x, kernel, stride=stride, padding=padding)
  np.testing.assert_allclose(got, conv1d_reference(x, kernel, stride, padding), rtol=1e-5, atol=1e-5)


def test_cnn1d_implementations_agree_and_paper_size():
  x = jax.random.normal(jax.random.key(0), (8, 40))
  fast, native = models.get_model("cnn1d"), models.get_model("cnn1d", conv_implementation="xla")
  params = fast.init(jax.random.key(1), x)["params"]
  assert models.count_params(params) == 5210  # the MNIST-1D paper's ConvBase
  np.testing.assert_allclose(fast.apply({"params": params}, x), native.apply({"params": params}, x),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kwargs,expected", [
    ("mlp", {"hidden": (100, 100)}, {"hidden_0": (5, 100), "hidden_1": (5, 100),
                                     "penultimate": (5, 100), "logits": (5, 10)}),
    ("cnn1d", {}, {"block_0": (5, 19, 25), "block_1": (5, 10, 25), "block_2": (5, 5, 25),
                   "penultimate": (5, 125), "logits": (5, 10)}),
])
def test_named_features(name, kwargs, expected):
  model = models.get_model(name, **kwargs)
  x = jnp.ones((5, 40))
  params = model.init(jax.random.key(0), x)["params"]
  logits, features = models.apply_with_features(model, params, x)
  assert {k: v.shape for k, v in features.items()} == expected
  np.testing.assert_array_equal(features["logits"], logits)


def test_hinton_mlp_sizes():
  model = models.get_model("mlp", hidden=(1200, 1200))
  params = model.init(jax.random.key(0), jnp.ones((1, 784)))["params"]
  assert models.count_params(params) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10


def test_mlp_dropout_only_in_train_mode_and_keyed_by_the_rng():
  """Eval is deterministic and equals the dropout-free MLP; train mode with rate > 0 drops
  units (differs from eval), reproducibly per key and differently across keys."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 784)), jnp.float32)
  plain = models.as_model(models.get_model("mlp", hidden=(64, 64)))
  dropped = models.as_model(models.get_model("mlp", hidden=(64, 64), dropout_rate=0.5,
                                             input_dropout_rate=0.2))
  variables = plain.init(jax.random.key(0), x)
  assert jax.tree.structure(dropped.init(jax.random.key(0), x)) == jax.tree.structure(variables)
  k1, k2 = jax.random.key(1), jax.random.key(2)
  eval_out = dropped.apply(variables, x, train=False, rng=k1).logits
  np.testing.assert_array_equal(eval_out, dropped.apply(variables, x, train=False, rng=k2).logits)
  np.testing.assert_array_equal(eval_out, plain.apply(variables, x, train=False).logits)
  train1 = dropped.apply(variables, x, train=True, rng=k1).logits
  np.testing.assert_array_equal(train1, dropped.apply(variables, x, train=True, rng=k1).logits)
  assert not np.allclose(train1, eval_out, atol=1e-3)
  assert not np.allclose(train1, dropped.apply(variables, x, train=True, rng=k2).logits, atol=1e-3)
  # Rate 0 in train mode is the plain MLP.
  np.testing.assert_array_equal(plain.apply(variables, x, train=True, rng=k1).logits, eval_out)
  with pytest.raises(ValueError, match=r"MLP: dropout_rate must be in \[0, 1\), got 1.0"):
    models.get_model("mlp", dropout_rate=1.0).init(jax.random.key(0), x)


def test_registry_errors_name_the_problem():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet9'.*known models: \[.*'cnn1d'.*'mlp'.*\]"):
    models.get_model("resnet9")
  with pytest.raises(ValueError, match=r"no field\(s\) \['hiden'\]"):
    models.get_model("mlp", hiden=(3,))
