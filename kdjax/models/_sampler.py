r"""Batched autoregressive sampling from a :class:`kdjax.models.Decoder` with a key/value cache.

One jitted program: the left-padded prompts ``[B, P]`` are run once (prefill) into a
cache of ``P + N`` slots, then one token per row and step inside ``lax.while_loop`` (which
stops early once every row has emitted ``eos_id``). At each step the next-token logits
:math:`z` become a distribution

.. math:: p(y) \propto \exp(z_y / \tau) \quad \text{over the kept tokens,}

keeping the ``top_k`` largest logits (``0``: all) and then the smallest set of most
likely tokens whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al.,
"The Curious Case of Neural Text Degeneration", ICLR 2020); ``temperature=0`` is greedy
decoding (argmax). A row that has emitted ``eos_id`` emits ``pad_id`` from then on, outside
its completion mask. The key of step ``i`` is ``fold_in(key, i)``, so a sample is a
function of ``(params, prompts, key)`` alone.

Positions follow ``transformers``' ``generate`` for left padding: a row's first real token
is position 0.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Samples(NamedTuple):
  """``tokens [B, P + N]``: the prompts as given, then the completions;
  ``prompt_mask`` / ``completion_mask [B, P + N]``: 1 at real prompt tokens / at sampled
  tokens up to and including a row's ``eos_id``; ``lengths [B]``: completion lengths."""

  tokens: jax.Array
  prompt_mask: jax.Array
  completion_mask: jax.Array
  lengths: jax.Array


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """``logits [..., V]`` with the tokens outside the top-k / nucleus set at ``-inf``
  (module docstring; ties at the cut are kept)."""
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    keep = jnp.cumsum(probs, axis=-1) - probs < top_p  # the mass before a token is < p
    cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id",
    "cache_dtype"))
def sample(model: Any, variables: Any, prompts: jax.Array, prompt_mask: jax.Array | None = None,
           *, key: jax.Array, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, eos_id: int | None = None, pad_id: int = 0,
           cache_dtype: Any = jnp.float32) -> Samples:
  """Samples ``max_new_tokens`` tokens after each prompt (module docstring).

  Args:
    model: a :class:`kdjax.models.Decoder` (e.g. from :func:`kdjax.convert.from_hf`).
    variables: its ``{"params": ...}``.
    prompts: ``[B, P]`` int tokens, left-padded; every row needs one real token.
    prompt_mask: ``[B, P]``, 1 at real tokens (default: all real).
    key: the sampling key.
    max_new_tokens: ``N``.
    temperature: ``tau``; 0: greedy.
    top_k, top_p: the kept set (module docstring).
    eos_id: the end-of-sequence token (``None``: rows never stop).
    pad_id: what a stopped row emits.
    cache_dtype: the key/value cache's dtype.

  Returns:
    :class:`Samples`.
  """
  b, p = prompts.shape
  mask = (jnp.ones((b, p), bool) if prompt_mask is None else jnp.asarray(prompt_mask) > 0)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
  cache = model.init_cache(b, p + max_new_tokens, cache_dtype)
  logits, cache = model.apply(variables, prompts, attention_mask=mask, cache=cache,
                              positions=positions)

  def choose(logits, step):
    logits = logits.astype(jnp.float32)
    if temperature == 0:
      return jnp.argmax(logits, axis=-1).astype(prompts.dtype)
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(jax.random.fold_in(key, step), logits).astype(prompts.dtype)

  def cond(state):
    step, _, done, *_ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    step, out, done, last, cache, position = state
    token = choose(last, step)
    token = jnp.where(done, pad_id, token)
    out = out.at[:, step].set(token)
    if eos_id is not None:
      done = done | (token == eos_id)
    logits, cache = model.apply(variables, token[:, None], cache=cache,
                                positions=position[:, None])
    return step + 1, out, done, logits[:, -1], cache, position + 1

  # The completion mask is rebuilt from the tokens below (the loop state stays small).
  state = (jnp.zeros((), jnp.int32), jnp.full((b, max_new_tokens), pad_id, prompts.dtype),
           jnp.zeros((b,), bool), logits[:, -1], cache, jnp.sum(mask, axis=1).astype(jnp.int32))
  step, out, *_ = jax.lax.while_loop(cond, body, state)
  ran = jnp.arange(max_new_tokens)[None] < step
  if eos_id is None:
    completion = jnp.broadcast_to(ran, out.shape)
  else:
    is_eos = out == eos_id
    before = jnp.cumsum(is_eos, axis=1) - is_eos  # eos tokens strictly before each slot
    completion = ran & (before == 0)
  tokens = jnp.concatenate([prompts, out], axis=1)
  zeros = jnp.zeros((b, p), bool)
  return Samples(tokens, jnp.concatenate([mask, jnp.zeros_like(completion)], axis=1),
                 jnp.concatenate([zeros, completion], axis=1),
                 jnp.sum(completion, axis=1).astype(jnp.int32))
