"""Which Hugging Face teacher + student pairs fit an 8-chip slice, on paper:
``kdjax.training.memory_report`` of ``configs/sequence/hf_distill.py`` for public model
shapes (``config.json`` files written here from the published configs: no weights), compiled
for 8 virtual CPU devices with the decoder sharding rules.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/lm_pair_memory.py

Per device: params (teacher bfloat16, student float32 master weights), Adam state, and XLA's
plan for the whole step (peak = arguments + outputs - aliases + temporaries). The plan is
XLA:CPU's; TPU and GPU compilers fuse and schedule differently, so read it as an estimate.
Compare with 16 GiB of HBM per v5e chip and 80 GiB per H100. Writes
benchmarks/results/lm_pair_memory_T<seq_len>.json / .md.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import _bench  # noqa: E402

from kdjax.config import load_config  # noqa: E402
from kdjax.training import memory_report  # noqa: E402

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
# The published config.json fields of these checkpoints (Hugging Face hub, meta-llama).
MODELS = {
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         tie_word_embeddings=True),
    "Llama-3.2-3B": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                         tie_word_embeddings=True),
    "Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         tie_word_embeddings=False),
    "Llama-3.1-70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                          num_attention_heads=64, num_key_value_heads=8, head_dim=128,
                          tie_word_embeddings=False),
}
PAIRS = (("Llama-3.1-8B", "Llama-3.2-1B"), ("Llama-3.1-8B", "Llama-3.2-3B"),
         ("Llama-3.1-70B", "Llama-3.1-8B"))


def write_config(root: str, name: str) -> str:
  folder = os.path.join(root, name)
  os.makedirs(folder, exist_ok=True)
  cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
         "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": LLAMA3_ROPE,
         "hidden_act": "silu", "torch_dtype": "bfloat16", **MODELS[name]}
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(cfg, f)
  return folder


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--seq-len", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--mesh-model", type=int, default=1)
  args = parser.parse_args(argv)
  root = tempfile.mkdtemp()
  data = os.path.join(root, "d.jsonl")
  with open(data, "w") as f:  # shapes only: tokens of a byte-level tokenizer stand in
    for i in range(4 * args.batch):
      f.write(json.dumps({"tokens": [i % 256] * (args.seq_len + 1)}) + "\n")
  tok_dir = os.path.join(root, "tok")
  from tokenizers import Tokenizer, models as tok_models
  os.makedirs(tok_dir)
  Tokenizer(tok_models.WordLevel({str(i): i for i in range(256)}, unk_token="0")).save(
      os.path.join(tok_dir, "tokenizer.json"))
  rows = []
  results = {}
  for teacher, student in PAIRS:
    config = load_config("sequence/hf_distill.py", None, {
        "teacher.hf_path": write_config(root, teacher), "model.hf_path": write_config(root, student),
        "data.kwargs.files": data, "data.kwargs.tokenizer": tok_dir,
        "data.kwargs.seq_len": args.seq_len, "data.kwargs.test_fraction": 0.25,
        "batch_size": args.batch, "mesh.model": args.mesh_model, "mesh.data": -1})
    r = memory_report(config)
    results[f"{teacher} -> {student}"] = r
    gib = lambda b: f"{b / 2**30:.1f}"  # noqa: E731
    p = r["per_device_bytes"]
    rows.append([f"{teacher} -> {student}", str(r["mesh"]), gib(p["teacher_params"]),
                 gib(p["student_params"]), gib(p["optimizer_state"]),
                 gib(r["compiled_step"]["temp"]), gib(r["peak_estimate"])])
    print(rows[-1], flush=True)
  meta = _bench.machine_meta(seq_len=args.seq_len, batch=args.batch)
  table = (f"Per-device GiB, {args.batch} x {args.seq_len} tokens a step, fused loss, bfloat16 "
           f"compute; {_bench.meta_line(meta)}\n\n" + _bench.markdown_table(
               ["teacher -> student", "mesh", "teacher params", "student params", "Adam state",
                "step temporaries", "peak"], rows))
  _bench.write_outputs(f"lm_pair_memory_T{args.seq_len}", {"meta": meta, "reports": results},
                       table)


if __name__ == "__main__":
  main()
