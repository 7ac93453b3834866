"""Tiny random Hugging Face causal LMs saved locally by ``transformers`` (no download),
for the parity and trainer tests. PyTorch and ``transformers`` are test dependencies only."""

import pathlib

VOCAB = 96

def _common(**kw):
  base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)
  base.update(kw)
  return base


def configs():
  """``{name: transformers config}``: one or two per family, each exercising its features."""
  import transformers as tf
  return {
      # Llama 3.1-style: GQA, llama3 RoPE scaling, untied head.
      "llama3": tf.LlamaConfig(**_common(rope_theta=500_000.0, rope_scaling={
          "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16})),
      # Llama 3.2-style: tied embeddings.
      "llama3_tied": tf.LlamaConfig(**_common(tie_word_embeddings=True)),
      "qwen2": tf.Qwen2Config(**_common()),
      "qwen3": tf.Qwen3Config(**_common(head_dim=32)),
      "gemma2": tf.Gemma2Config(**_common(head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                                          attn_logit_softcapping=5.0,
                                          final_logit_softcapping=3.0)),
      "gemma3": tf.Gemma3TextConfig(**_common(
          head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
          layer_types=["sliding_attention", "full_attention"],
          rope_scaling={"rope_type": "linear", "factor": 2.0})),
  }


def save(name: str, folder: pathlib.Path, *, seed: int = 0, config_changes=None) -> pathlib.Path:
  """Saves a randomly initialised ``name`` model (float32 safetensors) under ``folder``."""
  import torch
  import transformers as tf
  cfg = configs()[name]
  for k, v in (config_changes or {}).items():
    setattr(cfg, k, v)
  torch.manual_seed(seed)
  model = tf.AutoModelForCausalLM.from_config(cfg).eval()
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "norm" in n:  # random norms, so (1 + w) vs w would show
        p.add_(0.1 * torch.randn_like(p))
      elif "q_proj" in n or "k_proj" in n:  # attention scores large enough for soft-capping
        p.mul_(6.0)
      elif "embed" in n or "lm_head" in n:  # logits of several units: the final soft-cap bites
        p.mul_(25.0)
  path = folder / name
  model.save_pretrained(path)
  return path


def torch_logits(path, tokens, attention_mask):
  """transformers' float32 PyTorch forward: ``[B, T, V]`` NumPy logits. The "eager"
  attention is the reference: with ``sdpa`` (the default) transformers 5.12 drops Gemma 2's
  attention soft-capping (0.18 logit difference on these tiny models)."""
  import numpy as np
  import torch
  import transformers as tf
  model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                  attn_implementation="eager").eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(np.asarray(tokens), dtype=torch.long),
                attention_mask=torch.tensor(np.asarray(attention_mask), dtype=torch.long))
  return out.logits.numpy()
