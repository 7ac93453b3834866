"""kdjax.models.sample: the cache equals full forwards, greedy decoding equals argmax of
repeated full forwards, sampled tokens follow the model's (filtered) softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from kdjax import models

CONFIGS = {  # the families' features that touch the cache path
    "llama": {},
    "gemma2": {"layer_types": ("sliding", "full"), "sliding_window": 3, "attn_softcap": 5.0,
               "final_softcap": 10.0, "sandwich_norm": True, "norm_plus_one": True,
               "embed_scale": True, "tie_embeddings": True},
    "qwen3": {"qk_norm": True, "num_kv_heads": 1},
}


def tiny(name="llama", vocab=32):
  fields = {"num_classes": vocab, "width": 32, "num_layers": 2, "num_heads": 4,
            "num_kv_heads": 2, "mlp_width": 64, **CONFIGS[name]}
  return models.Decoder(**fields)


def init(model, seed=0, scale=3.0):
  v = model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))
  # Larger weights than the init's: sharper distributions, so errors would show.
  return jax.tree.map(lambda a: a * scale, v)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_cache_equals_full_forwards(name):
  """Prefill of 5 tokens, then one at a time: every logit equals the full forward's."""
  model = tiny(name)
  variables = init(model)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (3, 9)), jnp.int32)
  full = model.apply(variables, tokens)
  cache = model.init_cache(3, 11)
  logits, cache = model.apply(variables, tokens[:, :5], cache=cache)
  out = [logits]
  for t in range(5, 9):
    logits, cache = model.apply(variables, tokens[:, t:t + 1], cache=cache)
    out.append(logits)
  np.testing.assert_allclose(jnp.concatenate(out, 1), full, rtol=1e-5, atol=2e-5)
  assert int(cache["index"]) == 9


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_equals_argmax_of_repeated_full_forwards(name):
  """Left-padded prompts of different lengths: each row's greedy completion equals the
  argmax loop over full forwards of that row alone (no padding, no cache)."""
  model = tiny(name)
  variables = init(model, 1)
  rng = np.random.default_rng(1)
  lengths = [4, 2, 3]
  p, n = max(lengths), 6
  prompts = np.zeros((3, p), np.int32)
  mask = np.zeros((3, p), np.int32)
  rows = []
  for r, length in enumerate(lengths):
    row = rng.integers(1, 32, length)
    prompts[r, p - length:], mask[r, p - length:] = row, 1
    rows.append(list(row))
  out = models.sample(model, variables, jnp.asarray(prompts), jnp.asarray(mask),
                      key=jax.random.key(0), max_new_tokens=n, temperature=0.0)
  forward = jax.jit(model.apply)
  for r, row in enumerate(rows):
    seq = list(row)
    for _ in range(n):
      logits = forward(variables, jnp.asarray([seq], jnp.int32))
      seq.append(int(jnp.argmax(logits[0, -1])))
    np.testing.assert_array_equal(out.tokens[r, p:], seq[len(row):])
  np.testing.assert_array_equal(out.tokens[:, :p], prompts)
  np.testing.assert_array_equal(out.prompt_mask[:, :p], mask > 0)
  assert out.completion_mask[:, p:].all() and not out.completion_mask[:, :p].any()


def test_rows_stop_at_eos():
  """A row that emits eos_id keeps it in its completion, then pads outside the mask; the
  loop ends when every row has stopped."""
  model = tiny()
  variables = init(model, 2)
  prompts = jnp.asarray(np.random.default_rng(2).integers(1, 32, (8, 3)), jnp.int32)
  greedy = models.sample(model, variables, prompts, key=jax.random.key(0), max_new_tokens=5,
                         temperature=0.0)
  eos = int(greedy.tokens[0, 4])  # row 0's second token: it stops there
  out = models.sample(model, variables, prompts, key=jax.random.key(0), max_new_tokens=5,
                      temperature=0.0, eos_id=eos, pad_id=-1)
  for r in range(8):
    comp = np.asarray(greedy.tokens[r, 3:])
    stop = int(np.argmax(comp == eos)) + 1 if (comp == eos).any() else 5
    np.testing.assert_array_equal(out.tokens[r, 3:3 + stop], comp[:stop])
    assert (np.asarray(out.tokens[r, 3 + stop:]) == -1).all()
    assert int(out.lengths[r]) == stop == int(out.completion_mask[r].sum())
  assert int(out.lengths[0]) == 2


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 1.0), (0, 0.6)])
def test_sampled_tokens_follow_the_filtered_softmax(top_k, top_p):
  """4,000 rows of one prompt, one new token at temperature 1.5: the token counts pass a
  chi-square test against softmax(z / 1.5) restricted to the top-k / nucleus set (NumPy)."""
  model = tiny(vocab=8)
  variables = init(model, 3, scale=1.0)  # a flat distribution: most tokens are seen
  prompt = jnp.asarray([[3, 1, 4]], jnp.int32)
  z = np.asarray(model.apply(variables, prompt)[0, -1], np.float64) / 1.5
  probs = np.exp(z - z.max())
  probs /= probs.sum()
  keep = np.ones(8, bool)
  if top_k:
    keep = z >= np.sort(z)[-top_k]
  if top_p < 1:
    order = np.argsort(-probs)
    before = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros(8, bool)
    keep[order[before < top_p]] = True
  want = np.where(keep, probs, 0)
  want /= want.sum()
  n = 4000
  out = models.sample(model, variables, jnp.repeat(prompt, n, 0), key=jax.random.key(7),
                      max_new_tokens=1, temperature=1.5, top_k=top_k, top_p=top_p)
  counts = np.bincount(np.asarray(out.tokens[:, -1]), minlength=8)
  assert counts[~keep].sum() == 0
  kept = keep & (want * n >= 5)
  assert kept.sum() >= 2
  expected = want[kept] * n * counts[kept].sum() / (want[kept] * n).sum()
  assert stats.chisquare(counts[kept], expected).pvalue > 1e-3


def test_a_sample_is_a_function_of_its_key():
  model = tiny()
  variables = init(model)
  prompts = jnp.ones((4, 2), jnp.int32)
  a, b, c = (models.sample(model, variables, prompts, key=jax.random.key(k), max_new_tokens=6)
             for k in (0, 0, 1))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_positions_without_a_cache_is_a_one_line_error():
  model = tiny()
  variables = init(model)
  tokens = jnp.ones((1, 3), jnp.int32)
  with pytest.raises(ValueError, match="positions= is for incremental decoding"):
    model.apply(variables, tokens, positions=jnp.zeros((1, 3), jnp.int32))
