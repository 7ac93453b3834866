"""The byte-level transformer and the sequence distillation example (smoke configs)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import config as configs, losses
from kdjax.programs import lm_distill
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


def test_stdlib_bytes_are_deterministic_sequences():
  a, b = lm_distill.stdlib_bytes(5000), lm_distill.stdlib_bytes(5000)
  np.testing.assert_array_equal(a, b)
  seqs = lm_distill.sequences(a, 32)
  assert seqs.shape == (5000 // 33, 33) and seqs.max() < 256


def test_smoke_configs_run_every_method(tmp_path):
  """Teacher trained once; alone, full-logit (fused) and stored top-k students."""
  results = {}
  for arg in ("none", "full", "topk,k=4"):
    config = configs.load_config("sequence/byte_lm_kd.py", arg + ",smoke")
    (results[arg],) = lm_distill.run(config, str(tmp_path))
  assert os.path.exists(tmp_path / "teacher.msgpack")
  for r in results.values():
    assert np.isfinite(r["student_val_perplexity"]) and 1 < r["student_val_perplexity"] < 300
  assert len({r["teacher_val_perplexity"] for r in results.values()}) == 1  # reloaded teacher
  assert results["topk,k=4"]["store_bytes_per_token"] > 0
  with open(tmp_path / "result_topk_k4_seed0.json") as f:
    assert json.load(f)["k"] == 4
  with pytest.raises(ValueError, match="unknown word .*; accepted words"):
    configs.load_config("sequence/byte_lm_kd.py", "distil")


def test_kdjax_train_runs_the_sequence_config(tmp_path):
  """`kdjax train` dispatches configs with trainer="lm_distill" to kdjax.programs.lm_distill.run."""
  import subprocess
  import sys
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run(
      [sys.executable, "-m", "kdjax.main", "train",
       "--config", "configs/sequence/byte_lm_kd.py:topk,k=4,smoke", "--workdir", str(tmp_path)],
      capture_output=True, text=True, env=env, timeout=600,
      cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "student val perplexity" in out.stdout
  (result,) = [json.loads((tmp_path / f).read_text()) for f in os.listdir(tmp_path)
               if f.startswith("result_")]
  assert result["method"] == "topk" and result["k"] == 4 and result["store_bytes_per_token"] > 0
