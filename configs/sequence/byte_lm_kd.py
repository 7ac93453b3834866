"""Byte-level language-model distillation on the standard library's source bytes (no
download): a 2-layer Llama-style decoder teacher, a 1-layer student, through the one trainer.

Launch:
  kdjax train --config configs/sequence/byte_lm_kd.py:teacher --workdir runs/byte_teacher
  kdjax train --config configs/sequence/byte_lm_kd.py:fused --workdir runs/byte_fused \\
      --config.teacher.workdir=runs/byte_teacher
Expected: see benchmarks/results/sequence_kd.json (student perplexity alone, with
full-logit KD and with the fused loss, 3 seeds).
Args (comma-separated): "teacher" (the teacher, cross-entropy), "none" (the student alone),
"full" (0.5 cross-entropy + 0.5 forward KL on the [B*T, V] logits), "fused" (the same two
terms fused with the output heads: fused_cross_entropy + fused_kd, no [B*T, V] logits),
"topk" with "k=<int>" (default 8: the teacher's top-k log-probabilities of every training
token written once to an ArrayRecord store, then 0.5 cross-entropy + 0.5 sparse_kl "tail";
the teacher never runs in the step), "smoke" (tiny sizes, seconds). The distilling variants need --config.teacher.workdir (a
teacher run) or --config.teacher.hf_path (a Hugging Face folder with a 256-token vocabulary).
"""

from kdjax.training import default_config, smoke_variant

# The words --config sequence/byte_lm_kd.py:ARG accepts, comma-separated.
ARGS = ("teacher", "none", "full", "fused", "topk", "k=", "smoke")


def _decoder(width: int, layers: int, heads: int, kv_heads: int) -> dict:
  return {"name": "decoder", "width": width, "num_layers": layers, "num_heads": heads,
          "num_kv_heads": kv_heads, "mlp_width": 4 * width, "rope_theta": 10_000.0}


def get_config(arg: str | None = None):
  words = [a for a in (arg or "").split(",") if a]
  k = next((int(a[2:]) for a in words if a.startswith("k=")), 8)
  args = set(a for a in words if not a.startswith("k="))
  methods = args & {"teacher", "none", "full", "fused", "topk"}
  if len(methods) > 1:
    raise ValueError(f"byte_lm_kd: pick one of teacher|none|full|fused|topk, got "
                     f"{sorted(methods)}")
  method = next(iter(methods), "none")
  c = default_config()
  c.data.name = "stdlib_bytes"
  c.data.kwargs = {"seq_len": 64, "train_bytes": 200_000, "test_bytes": 30_000}
  c.model = _decoder(64, 2, 4, 2) if method == "teacher" else _decoder(32, 1, 2, 1)
  ce = {"weight": 1.0 if method in ("teacher", "none") else 0.5}
  if method in ("teacher", "none"):
    c.losses = {"cross_entropy": ce}
  elif method == "full":
    c.losses = {"cross_entropy": ce, "forward_kl": {"weight": 0.5}}
  elif method == "topk":
    c.losses = {"cross_entropy": ce, "sparse_kl": {"weight": 0.5, "variant": "tail"}}
    c.teacher.topk = k
  else:
    c.losses = {"fused_cross_entropy": {**ce, "chunk_size": 512},
                "fused_kd": {"weight": 0.5, "divergence": "forward_kl", "chunk_size": 512}}
  c.teacher.cache = False  # token rows: the teacher runs in the step
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.batch_size = 32  # rows of 64 bytes: 2,048 tokens a step
  c.num_steps = 1000 if method == "teacher" else 600
  c.log_every = c.eval_every = c.checkpoint_every = 100
  c.eval_batch_size = 64
  if "smoke" in args:
    smoke_variant(c)
    c.data.kwargs = {"seq_len": 32, "train_bytes": 20_000, "test_bytes": 5_000}
    c.batch_size = 16
    c.model = _decoder(32, 1, 2, 1) if method == "teacher" else _decoder(16, 1, 2, 1)
    c.eval_batch_size = 16
  return c
