"""Distil a Hugging Face causal LM into another (same vocabulary) on JSON-lines text.

Launch:
  kdjax train --config configs/sequence/hf_distill.py --workdir runs/hf \\
      --config.teacher.hf_path=/models/Llama-3.1-8B --config.model.hf_path=/models/Llama-3.2-1B \\
      --config.data.kwargs.files='/data/*.jsonl' --config.data.kwargs.tokenizer=/models/Llama-3.2-1B
Export the student: ``kdjax.convert.to_hf(*kdjax.training.load_run("runs/hf")[:2], "out")``.
Loss: 0.5 next-token cross-entropy + 0.5 forward KL, both fused with the output heads (no
[tokens, V] logits); bfloat16 compute, float32 master weights; teacher and student sharded by
kdjax.models.decoder_sharding_rules() (FSDP over "data", heads/MLP/vocabulary over "model";
set --config.mesh.model=N for tensor parallelism). Size a pair before buying the slice:
``kdjax.training.memory_report(config)``.
Expected: no measured result yet (no real checkpoint can be downloaded where kdjax is
developed); tests/test_lm_training.py runs the smoke variant on tiny local folders.
Args: "forward_kl" (the KD term on full logits instead of fused), "smoke" (seq_len 32,
batch 16, 40 steps).
The smoke variant needs a teacher as the full one does (--config.teacher.hf_path=, a student
--config.model.hf_path= and data --config.data.kwargs.files= / tokenizer=).
"""

from kdjax.models import decoder_sharding_rules
from kdjax.training import default_config, smoke_variant

# The words --config sequence/hf_distill.py:ARG accepts, comma-separated.
ARGS = ("forward_kl", "smoke")


def get_config(arg: str | None = None):
  args = set((arg or "").split(","))
  c = default_config()
  c.data.name = "jsonl"
  c.data.kwargs = {"files": "", "tokenizer": "", "seq_len": 1024, "test_fraction": 0.01}
  c.model = {"name": "decoder", "hf_path": ""}
  c.teacher.hf_path = ""
  c.teacher.cache = False  # token rows: the teacher runs in the step
  if "forward_kl" in args:
    c.losses = {"cross_entropy": {"weight": 0.5}, "forward_kl": {"weight": 0.5}}
  else:
    c.losses = {"fused_cross_entropy": {"weight": 0.5, "chunk_size": 1024},
                "fused_kd": {"weight": 0.5, "divergence": "forward_kl", "chunk_size": 1024}}
  c.dtype = "bfloat16"
  c.sharding.student = decoder_sharding_rules()
  c.sharding.teacher = decoder_sharding_rules()
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-5
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0
  c.batch_size = 32
  c.num_steps = 2000
  c.log_every, c.eval_every, c.checkpoint_every = 50, 500, 500
  c.eval_batch_size = 32
  if "smoke" in args:
    smoke_variant(c)
    c.data.kwargs.seq_len = 32
    c.batch_size = c.eval_batch_size = 16
    c.optimizer.learning_rate = 1e-3
  return c
