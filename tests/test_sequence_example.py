"""The byte-level transformer, the fused loss on its hidden states, the stdlib byte windows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import data, losses
from kdjax.models import Transformer, apply_with_features, get_model


def test_transformer_is_causal_and_exposes_hidden_and_head():
  model = get_model("transformer", width=16, num_layers=2, num_heads=2, max_len=12)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 12)), jnp.int32)
  params = model.init(jax.random.key(0), tokens)["params"]
  logits, feats = apply_with_features(model, params, tokens)
  assert logits.shape == (2, 12, 256)
  hidden = model.apply({"params": params}, tokens, method=Transformer.hidden)
  np.testing.assert_allclose(hidden @ params["head"], logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats["hidden"], hidden, rtol=1e-6)
  changed = model.apply({"params": params}, tokens.at[:, 7].set((tokens[:, 7] + 1) % 256))
  np.testing.assert_array_equal(changed[:, :7], logits[:, :7])  # the past ignores the future
  assert not np.allclose(changed[:, 7:], logits[:, 7:])
  with pytest.raises(ValueError, match="max_len"):
    model.apply({"params": params}, jnp.zeros((1, 13), jnp.int32))


def test_fused_loss_on_transformer_hidden_equals_logit_loss():
  model = Transformer(width=16, num_layers=1, num_heads=2, max_len=8)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (3, 8)), jnp.int32)
  ps = model.init(jax.random.key(1), tokens)["params"]
  pt = model.init(jax.random.key(2), tokens)["params"]
  hs = model.apply({"params": ps}, tokens, method=Transformer.hidden).reshape(-1, 16)
  ht = model.apply({"params": pt}, tokens, method=Transformer.hidden).reshape(-1, 16)
  fused = losses.fused_distillation_loss(hs, ps["head"], ht, pt["head"], chunk_size=5)
  np.testing.assert_allclose(fused, losses.forward_kl(hs @ ps["head"], ht @ pt["head"]),
                             rtol=1e-5, atol=1e-6)


def test_stdlib_bytes_are_deterministic_windows():
  a, b = data.stdlib_bytes(5000), data.stdlib_bytes(5000)
  np.testing.assert_array_equal(a, b)
  rows = data._text.windows(a, 32)
  assert rows["x"].shape == rows["y"].shape == (5000 // 33, 32) and rows["x"].max() < 256
  np.testing.assert_array_equal(rows["x"][:, 1:], rows["y"][:, :-1])  # y is x shifted by one
  np.testing.assert_array_equal(rows["x"][0], a[:32])
