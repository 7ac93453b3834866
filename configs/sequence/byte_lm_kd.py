"""A 2-layer byte-level transformer distilled into a 1-layer one, on stdlib source bytes.

The data are the first bytes of this Python's standard-library ``*.py`` files (no
download); see :mod:`kdjax.programs.lm_distill`. The teacher is trained once per workdir and
reused; ``topk`` stores its top-k log-probabilities (float16 + int32) in ArrayRecord files.

Launch (every hyperparameter below can be overridden with ``--config.x=y``):
  python benchmarks/sequence_kd.py                      # the 4 methods x 3 seeds table
  kdjax train --config configs/sequence/byte_lm_kd.py:topk,k=8 --workdir runs/byte_lm
  kdjax train --config configs/sequence/byte_lm_kd.py:full --workdir runs/byte_lm  # reuses the teacher
Expected: see benchmarks/results/sequence_kd.json (student perplexity alone, with
full-logit KD and with top-k KD, 3 seeds).
Args (comma-separated): "none" | "full" | "topk" (the method), "k=<int>", "seed=<int>",
"smoke" (tiny sizes, seconds).
"""

import ml_collections


def _train(steps: int, lr: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"num_steps": steps, "batch_size": 32, "learning_rate": lr,
                                    "warmup_steps": steps // 10, "weight_decay": 0.01})


# The words --config sequence/byte_lm_kd.py:ARG accepts, comma-separated ("k=" and
# "seed=" take a number).
ARGS = ("none", "full", "topk", "k=", "seed=", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = [a for a in (arg or "").split(",") if a]
  c = ml_collections.ConfigDict()
  c.trainer = "lm_distill"  # `kdjax train` runs kdjax.programs.lm_distill.run on this config
  c.seed = 0
  # Sized for a shared 2-core CPU: the whole 4 methods x 3 seeds table in minutes.
  c.data = ml_collections.ConfigDict({"train_bytes": 200_000, "val_bytes": 30_000,
                                      "seq_len": 64})
  c.teacher = ml_collections.ConfigDict({"width": 64, "num_layers": 2, "num_heads": 4,
                                         "seed": 0, "train": _train(1000, 3e-3)})
  c.student = ml_collections.ConfigDict({"width": 32, "num_layers": 1, "num_heads": 2,
                                         "train": _train(600, 3e-3)})
  c.distill = ml_collections.ConfigDict({
      "method": "none", "k": 8, "variant": "tail", "divergence": "forward_kl",
      "temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5, "chunk_size": 512,
      "num_shards": 4})
  for a in args:
    if a in ("none", "full", "topk"):
      c.distill.method = a
    elif a.startswith("k="):
      c.distill.k = int(a[2:])
    elif a.startswith("seed="):
      c.seed = int(a[5:])
    elif a != "smoke":
      raise ValueError(f"byte_lm_kd.get_config: unknown arg {a!r} (none|full|topk, k=, seed=, "
                       f"smoke)")
  if "smoke" in args:
    c.data.train_bytes, c.data.val_bytes, c.data.seq_len = 20_000, 5_000, 32
    c.teacher.width, c.teacher.num_layers = 32, 1
    c.student.width = 16
    c.teacher.train = _train(8, 3e-3)
    c.student.train = _train(6, 3e-3)
    c.distill.num_shards = 2
  return c
