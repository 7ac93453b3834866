"""Language-model distillation train step at Llama 3's vocabulary (V = 128,256): kdjax's
step with the fused terms vs the same kdjax step on full logits vs a plain JAX step that
materialises both logits, in one run.

Teacher: a 2-layer Llama-style decoder (width 256), student: 2 layers (width 128), both
with a 128,256-token head; 0.5 cross-entropy + 0.5 forward KL per token; adamw; one device.

* memory: XLA's compiled memory analysis of each step (``kdjax.training.memory_report``
  for the kdjax steps: from the config, before any step runs); peak = argument + output -
  alias + temp bytes;
* time: each step compiled, then ``--reps`` rounds of one step of each in turn
  (interleaved), medians and per-round ratios.

  python benchmarks/lm_fused_step.py [--tokens 2048] [--reps 3]
  python benchmarks/lm_fused_step.py --smoke   # V = 4096, seconds (the test)

Writes benchmarks/results/lm_fused_step.json / .md (smoke: lm_fused_step_smoke.*).
"""

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
import _bench  # noqa: E402

from kdjax import convert, losses, models  # noqa: E402
from kdjax.config import load_config  # noqa: E402
from kdjax.training import memory_report  # noqa: E402
from kdjax.training._memory import plan_train_step  # noqa: E402
from kdjax.training._sharding import compiled_memory  # noqa: E402


def decoder(vocab: int, width: int, layers: int) -> dict:
  return {"name": "decoder", "num_classes": vocab, "width": width, "num_layers": layers,
          "num_heads": 4, "num_kv_heads": 2, "mlp_width": 4 * width}


def configs(teacher_dir: str, vocab: int, seq_len: int, batch: int, chunk: int) -> dict:
  out = {}
  for name in ("full", "fused"):
    c = load_config("sequence/byte_lm_kd.py", name, {"teacher.hf_path": teacher_dir,
                                                      "num_devices": 1, "batch_size": batch})
    c.data.kwargs = {"seq_len": seq_len, "train_bytes": 20 * batch * (seq_len + 1),
                     "test_bytes": 2 * batch * (seq_len + 1)}
    c.model = ml_collections.ConfigDict(decoder(vocab, 128, 2))
    if name == "fused":
      c.losses.fused_kd.chunk_size = chunk
      c.losses.fused_cross_entropy.chunk_size = chunk
    out[name] = c
  return out


def plain_step(student, teacher, tx):
  """A plain JAX step: both [N, V] logits materialised, 0.5 CE + 0.5 forward KL."""

  def loss_fn(params, teacher_params, x, y):
    logits = student.apply({"params": params}, x)
    t_logits = jax.lax.stop_gradient(teacher.apply({"params": teacher_params}, x))
    ce = losses.cross_entropy(logits, y)
    kl = losses.forward_kl(logits, t_logits)
    return jnp.mean(0.5 * ce + 0.5 * kl)

  @jax.jit
  def step(params, opt_state, teacher_params, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, teacher_params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def concrete(tree, seed: int):
  """Random arrays for an abstract pytree (floats ~ N(0, 0.02), ints 0), with its shardings."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for key, s in zip(keys, leaves):
    value = (0.02 * jax.random.normal(key, s.shape, s.dtype)
             if jnp.issubdtype(s.dtype, jnp.floating) else jnp.zeros(s.shape, s.dtype))
    out.append(jax.device_put(value, s.sharding) if getattr(s, "sharding", None) else value)
  return jax.tree.unflatten(treedef, out)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--tokens", type=int, default=2048)
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--vocab", type=int, default=128_256)
  parser.add_argument("--chunk", type=int, default=256)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--out-dir", default=_bench.RESULTS_DIR)
  args = parser.parse_args(argv)
  if args.smoke:
    args.tokens, args.seq_len, args.vocab, args.chunk, args.reps = 128, 32, 4096, 64, 2
  batch = args.tokens // args.seq_len
  tmp = tempfile.mkdtemp()
  teacher_model = models.Decoder(**{k: v for k, v in decoder(args.vocab, 256, 2).items()
                                    if k != "name"})
  teacher_vars = teacher_model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))
  teacher_dir = str(convert.to_hf(teacher_model, teacher_vars, os.path.join(tmp, "teacher")))
  cfgs = configs(teacher_dir, args.vocab, args.seq_len, batch, args.chunk)

  rows, memory, runs = [], {}, {}
  for name, c in cfgs.items():
    memory[name] = memory_report(c)
    plan = plan_train_step(c)
    state = concrete(plan.state, 0)
    teacher = concrete(plan.teacher_variables, 1)
    rng = np.random.default_rng(0)
    batches = {"x": jnp.asarray(rng.integers(0, 256, plan.batches["x"].shape), jnp.int32),
               "y": jnp.asarray(rng.integers(0, 256, plan.batches["y"].shape), jnp.int32)}
    holder = {"state": state}

    def run(plan=plan, holder=holder, batches=batches, teacher=teacher):
      holder["state"], metrics = plan.chunk(holder["state"], batches, teacher)
      jax.block_until_ready(metrics["loss"])

    run()  # compile
    runs[f"kdjax {name}"] = run

  student = models.Decoder(**{k: v for k, v in decoder(args.vocab, 128, 2).items() if k != "name"})
  tx = optax.adamw(1e-3)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, args.seq_len)), jnp.int32)
  params = student.init(jax.random.key(0), x)["params"]
  opt_state = tx.init(params)
  step = plain_step(student, teacher_model, tx)
  compiled = step.lower(params, opt_state, teacher_vars["params"], x, x).compile()
  stats = compiled_memory(compiled)
  memory["plain JAX"] = {"compiled_step": stats,
                         "peak_estimate": stats["argument"] + stats["output"] - stats["alias"]
                         + stats["temp"]}
  plain = {"params": params, "opt": opt_state}

  def run_plain():
    plain["params"], plain["opt"], loss = step(plain["params"], plain["opt"],
                                               teacher_vars["params"], x, x)
    jax.block_until_ready(loss)

  run_plain()
  runs["plain JAX"] = run_plain

  timing = _bench.interleaved(runs, args.reps)
  sec = {k: _bench.spread(v) for k, v in timing["seconds"].items()}
  base_peak = memory["full"]["peak_estimate"]
  for label, key in (("kdjax, fused terms", "fused"), ("kdjax, full logits", "full"),
                     ("plain JAX, full logits", "plain JAX")):
    run_key = {"fused": "kdjax fused", "full": "kdjax full", "plain JAX": "plain JAX"}[key]
    peak = memory[key]["peak_estimate"]
    ratio = _bench.paired_ratio(timing["seconds"][run_key], timing["seconds"]["plain JAX"])
    rows.append([label, f"{peak / 2**20:.0f}", f"{memory[key]['compiled_step']['temp'] / 2**20:.0f}",
                 f"{peak / base_peak:.3f}", f"{sec[run_key]['median']:.3f}",
                 f"{1 / ratio['median']:.2f}"])
  meta = _bench.machine_meta(tokens=args.tokens, vocab=args.vocab, chunk=args.chunk,
                             seq_len=args.seq_len, reps=args.reps, load=timing["load"])
  table = (f"Train step, V={args.vocab:,}, {args.tokens} tokens, teacher 2x256, student 2x128, "
           f"chunk {args.chunk}; {_bench.meta_line(meta)}\n\n"
           + _bench.markdown_table(["step", "peak MiB", "temp MiB", "peak / kdjax full",
                                    "median s", "time / plain JAX"], rows))
  _bench.write_outputs("lm_fused_step_smoke" if args.smoke else "lm_fused_step",
                       {"meta": meta, "memory": memory, "seconds": timing["seconds"],
                        "spread": sec}, table, out_dir=args.out_dir)
  return memory


if __name__ == "__main__":
  main()
