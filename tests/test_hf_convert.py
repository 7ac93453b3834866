"""kdjax.convert.from_hf / to_hf against transformers' PyTorch forward (tiny random
configs built and saved locally), and the one-line errors on bad folders."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from kdjax import convert, models  # noqa: E402
from tests import hf_tiny  # noqa: E402

FAMILIES = sorted(hf_tiny.configs())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  return {name: hf_tiny.save(name, root, seed=i) for i, name in enumerate(FAMILIES)}


def _batch():
  """Two rows of 12 tokens: right-padded (8 real) and left-padded (9 real)."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, hf_tiny.VOCAB, (2, 12)).astype(np.int32)
  mask = np.ones((2, 12), np.int32)
  mask[0, 8:] = 0
  mask[1, :3] = 0
  return tokens, mask


def _kdjax_logits(model, variables, tokens, mask):
  apply = jax.jit(lambda v, t, m: models.as_model(model).apply(v, t, train=False,
                                                                attention_mask=m)[0])
  return np.asarray(apply(variables, jnp.asarray(tokens), jnp.asarray(mask)))


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(folders, name, tmp_path):
  tokens, mask = _batch()
  model, variables = convert.from_hf(folders[name])
  ours = _kdjax_logits(model, variables, tokens, mask)
  ref = hf_tiny.torch_logits(folders[name], tokens, mask)
  real = mask.astype(bool)
  assert ours.shape == ref.shape == (2, 12, hf_tiny.VOCAB)
  np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
  assert np.abs(ref[real]).max() > 2.5  # logits of several units (hf_tiny scales the weights)

  # Export: transformers loads kdjax's folder and gives the same logits; so does from_hf.
  out = convert.to_hf(model, variables, tmp_path / "export")
  back = hf_tiny.torch_logits(out, tokens, mask)
  np.testing.assert_allclose(back[real], ref[real], atol=1e-4, rtol=0)
  model2, variables2 = convert.from_hf(out)
  assert model2 == model
  jax.tree.map(np.testing.assert_array_equal, variables2, variables)


def test_family_features_are_read(folders):
  fields = {name: convert.decoder_fields(convert.read_config(folders[name])) for name in FAMILIES}
  assert fields["llama3"]["rope_type"] == "llama3" and not fields["llama3"]["tie_embeddings"]
  assert fields["llama3_tied"]["tie_embeddings"]
  assert fields["qwen2"]["qkv_bias"] and not fields["qwen2"]["out_bias"]
  assert fields["qwen3"]["qk_norm"] and fields["qwen3"]["head_dim"] == 32
  assert fields["gemma2"]["attn_softcap"] == 5.0 and fields["gemma2"]["final_softcap"] == 3.0
  assert fields["gemma2"]["layer_types"] == ("sliding", "full")
  assert fields["gemma3"]["local_rope_theta"] == 10_000.0
  assert fields["gemma3"]["rope_type"] == "linear"


def test_bfloat16_params_and_sharded_checkpoint(folders, tmp_path):
  """A checkpoint split in shards with an index reads the same; dtype casts the params."""
  import safetensors.flax
  src = folders["qwen3"]
  dst = tmp_path / "sharded"
  shutil.copytree(src, dst)
  tensors = safetensors.flax.load_file(str(dst / "model.safetensors"))
  (dst / "model.safetensors").unlink()
  names = sorted(tensors)
  weight_map = {}
  for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
    file = f"model-0000{i + 1}-of-00002.safetensors"
    safetensors.flax.save_file({n: tensors[n] for n in part}, str(dst / file),
                               metadata={"format": "pt"})
    weight_map.update({n: file for n in part})
  (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  _, a = convert.from_hf(src)
  _, b = convert.from_hf(dst, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(b)} == {jnp.dtype(jnp.bfloat16)}
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x, np.float32),
                                                          np.asarray(y.astype(jnp.bfloat16),
                                                                     np.float32)), b, a)
  (dst / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(convert.HFFormatError, match="missing.*model-00002-of-00002"):
    convert.from_hf(dst)


def test_packed_rows_equal_separate_documents(folders):
  """Two documents packed in one row give each document's own logits."""
  model, variables = convert.from_hf(folders["gemma3"])
  rng = np.random.default_rng(1)
  a, b = rng.integers(0, hf_tiny.VOCAB, 5), rng.integers(0, hf_tiny.VOCAB, 6)
  packed = np.stack([np.concatenate([a, b, [0]]), np.array([1] * 5 + [2] * 6 + [0])])[None]
  apply = lambda x: np.asarray(models.as_model(model).apply(variables, jnp.asarray(x, jnp.int32),  # noqa: E731
                                                            train=False)[0])
  out = apply(packed)
  np.testing.assert_allclose(out[0, :5], apply(a[None])[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 5:11], apply(b[None])[0], atol=1e-5)


def _broken(folders, tmp_path, edit):
  dst = tmp_path / "broken"
  shutil.copytree(folders["llama3"], dst)
  cfg = json.loads((dst / "config.json").read_text())
  edit(cfg, dst)
  (dst / "config.json").write_text(json.dumps(cfg))
  return dst


@pytest.mark.parametrize("edit, message", [
    (lambda c, d: c.update(architectures=["BertForMaskedLM"]), r"BertForMaskedLM.*not a supported causal LM"),
    (lambda c, d: c.update(hidden_act="relu"), r"hidden_act='relu' is not supported"),
    (lambda c, d: c.update(num_hidden_layers=3), r"lacks tensor\(s\).*model.layers.2"),
    (lambda c, d: c.update(intermediate_size=80), r"mlp.gate_proj.weight has shape \(96, 64\).*implies \(80, 64\)"),
    (lambda c, d: c.pop("vocab_size"), r"field 'vocab_size' is missing"),
    (lambda c, d: (d / "model.safetensors").unlink(), r"no model.safetensors"),
])
def test_bad_folders_fail_in_one_line(folders, tmp_path, edit, message):
  path = _broken(folders, tmp_path, edit)
  with pytest.raises(convert.HFFormatError, match=message) as e:
    convert.from_hf(path)
  assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_not_a_model_folder(tmp_path):
  with pytest.raises(convert.HFFormatError, match="config.json is missing"):
    convert.from_hf(tmp_path)


def test_export_refuses_fields_outside_the_family():
  model = models.Decoder(num_classes=32, width=16, num_heads=2, num_kv_heads=1, mlp_width=32,
                         family="llama", qk_norm=True)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match=r"\['qk_norm'\] cannot be expressed as a LlamaForCausalLM"):
    convert.to_hf(model, variables, "/nonexistent/never/written")
