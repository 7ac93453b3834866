"""Sampler throughput: kdjax.models.sample (key/value cache) vs a loop of full forwards
without a cache (the same model and batch), and vs transformers' PyTorch ``generate`` of
the same weights (exported with kdjax.convert.to_hf), on this CPU, side by side.

  python benchmarks/sampler_speed.py [--new-tokens 256] [--batch 8] [--reps 3]

A Llama-layout decoder (random weights; 4 layers, width 256, 8 heads / 4 key-value heads,
MLP 1,024, vocabulary 512), prompts of 32 tokens, greedy decoding (every method emits the
same number of tokens; no row stops). The no-cache loop runs one jitted forward of a fixed
``[B, P + N]`` buffer per new token (one compile; causal attention makes the unwritten
slots irrelevant). The methods run in turn, ``--reps`` rounds (``_bench.interleaved``);
tokens/s = B * N / median seconds; compiles excluded (a warm-up run of each).
Writes benchmarks/results/sampler_speed.json / .md.
"""

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import _bench  # noqa: E402

from kdjax import convert, models  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--new-tokens", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args(argv)
  b, p, n = args.batch, args.prompt, args.new_tokens
  model = models.Decoder(num_classes=512, width=256, num_layers=4, num_heads=8,
                         num_kv_heads=4, mlp_width=1024)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  prompts = jnp.asarray(np.random.default_rng(0).integers(0, 512, (b, p)), jnp.int32)

  def cached():
    return models.sample(model, variables, prompts, key=jax.random.key(0), max_new_tokens=n,
                         temperature=0.0).tokens

  forward = jax.jit(model.apply)

  def no_cache():
    buf = jnp.concatenate([prompts, jnp.zeros((b, n), jnp.int32)], 1)
    for i in range(n):
      logits = forward(variables, buf)
      buf = buf.at[:, p + i].set(jnp.argmax(logits[:, p + i - 1], -1).astype(jnp.int32))
    return buf

  blocks = {"kdjax sample (cache)": lambda: np.asarray(cached()),
            "loop of full forwards (no cache)": lambda: np.asarray(no_cache())}
  ref = np.asarray(cached())  # also the warm-up (compiles) of both
  same_as_loop = bool(np.array_equal(np.asarray(no_cache()), ref))
  extra = {"no_cache_tokens_equal": same_as_loop}
  if not args.no_torch:
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count())
    with tempfile.TemporaryDirectory() as folder:
      convert.to_hf(model, variables, folder)
      hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor(np.asarray(prompts), dtype=torch.long)

    def generate():
      with torch.no_grad():
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, use_cache=True,
                           pad_token_id=0).numpy()

    blocks["transformers generate (PyTorch, cache)"] = generate
    extra["torch_tokens_equal_first_16"] = bool(
        np.array_equal(generate()[:, p:p + 16], ref[:, p:p + 16]))
  timing = _bench.interleaved(blocks, args.reps)
  spreads = {k: _bench.spread(v) for k, v in timing["seconds"].items()}
  base = spreads["kdjax sample (cache)"]["median"]
  rows = [[k, f"{v['median']:.2f} ({v['p25']:.2f}-{v['p75']:.2f})",
           f"{b * n / v['median']:,.0f}", f"{v['median'] / base:.2f}"]
          for k, v in spreads.items()]
  same = same_as_loop
  meta = _bench.machine_meta(batch=b, prompt=p, new_tokens=n, reps=args.reps)
  table = (f"Greedy decoding, batch {b}, prompt {p}, {n} new tokens, Llama-layout decoder "
           f"4 x 256 (vocabulary 512); no-cache loop gives the same tokens: {same}; "
           f"{_bench.meta_line(meta)}\n\n" + _bench.markdown_table(
               ["method", "seconds, median (p25-p75)", "tokens/s",
                "time / kdjax sample"], rows))
  _bench.write_outputs("sampler_speed", {"meta": meta, "timing": timing, "seconds": spreads,
                                         **extra}, table)


if __name__ == "__main__":
  main()
