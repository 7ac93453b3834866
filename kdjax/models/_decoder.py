r"""A decoder-only language model covering the Llama 3, Qwen 2/2.5/3 and Gemma 2/3 families.

One linen module; the families differ only in fields (:func:`kdjax.convert.from_hf` sets
them from a Hugging Face ``config.json``):

* a layer is ``x + attn(norm(x))`` then ``x + mlp(norm(x))`` (Llama, Qwen); with
  ``sandwich_norm`` the branch outputs are normalised too,
  ``x + norm(attn(norm(x)))`` (Gemma 2/3);
* RMSNorm :math:`y = x / \sqrt{\overline{x^2} + \epsilon} \cdot w` computed in float32,
  or :math:`\cdot (1 + w)` with ``norm_plus_one`` (Gemma);
* attention with grouped key/value heads (``num_kv_heads`` divides ``num_heads``), rotary
  position embedding in the rotate-half layout of Hugging Face checkpoints, optional
  biases on q/k/v (Qwen 2), RMSNorm of q and k per head (Qwen 3, Gemma 3), scores scaled by
  ``attn_scale`` (default ``head_dim ** -0.5``) and soft-capped
  :math:`c \tanh(s / c)` (Gemma 2), full causal or sliding-window layers
  (``layer_types``: a key at distance :math:`q - k < w` is seen);
* RoPE inverse frequencies :math:`\theta^{-2i/d}`, divided by ``rope_factor`` for
  ``"linear"`` scaling or smoothly rescaled by wavelength for ``"llama3"`` scaling; sliding
  layers use ``local_rope_theta`` (unscaled) when it is set (Gemma 3);
* a gated MLP ``down(act(gate(x)) * up(x))`` with SiLU or tanh-GELU;
* embeddings multiplied by :math:`\sqrt{d}` (``embed_scale``, Gemma), a head tied to the
  embedding or its own, logits soft-capped by ``final_softcap`` (Gemma 2).

Inputs are ``tokens [B, T]`` (int) with an optional ``attention_mask [B, T]`` (1: a real
token, 0: padding, which no query attends to; positions are ``0..T-1`` as in
``transformers``), or *packed* rows ``[B, 2, T]``: tokens and segment ids (several
documents per row, id 0 = padding), where attention never crosses a document and positions
restart at each. Output: logits ``[B, T, V]``. The final normalised hidden states are sown
as feature ``"hidden"`` ``[B, T, D]`` and :meth:`Decoder.output_head` gives the
``[D, V]`` head, so :func:`kdjax.losses.fused_distillation_loss` never builds the logits.

References:
  Touvron et al., "LLaMA", 2023; Grattafiori et al., "The Llama 3 Herd of Models", 2024;
  Qwen Team, "Qwen2.5 Technical Report", 2024, "Qwen3 Technical Report", 2025;
  Gemma Team, "Gemma 2", 2024, "Gemma 3 Technical Report", 2025; Su et al.,
  "RoFormer", 2021; Ainslie et al., "GQA", 2023. The layouts follow the ``transformers``
  PyTorch modelling files of these families.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3")
LAYER_TYPES = ("full", "sliding")
ROPE_TYPES = ("default", "linear", "llama3")
ACTIVATIONS = {"silu": nn.silu, "gelu_tanh": lambda x: nn.gelu(x, approximate=True)}
_MASKED = -1e30  # a masked score: a fully masked query row stays finite (uniform weights)


def rope_inverse_frequencies(head_dim: int, theta: float, rope_type: str = "default",
                             factor: float = 1.0, low_freq_factor: float = 1.0,
                             high_freq_factor: float = 4.0,
                             original_max: int = 8192) -> jax.Array:
  r"""``[head_dim // 2]`` float32 inverse frequencies :math:`\theta^{-2i/d}`, scaled.

  ``"linear"``: divided by ``factor``. ``"llama3"`` (Llama 3.1): wavelengths
  :math:`\lambda = 2\pi / f` longer than ``original_max / low_freq_factor`` are divided by
  ``factor``, shorter than ``original_max / high_freq_factor`` kept, and those between
  interpolated with :math:`s = (\text{original\_max} / \lambda - l) / (h - l)`:
  :math:`f' = (1 - s) f / \text{factor} + s f`.
  """
  inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if rope_type == "linear":
    return inv / factor
  if rope_type == "llama3":
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = original_max / low_freq_factor, original_max / high_freq_factor
    scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original_max / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)
  if rope_type != "default":
    raise ValueError(f"unknown rope_type {rope_type!r}; known: {ROPE_TYPES}")
  return inv


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotary embedding of ``x [B, T, N, hd]`` at ``positions [B, T]`` (rotate-half layout:
  ``x * cos + rotate_half(x) * sin`` with ``rotate_half([a, b]) = [-b, a]``)."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq[None, None]  # [B, T, hd/2]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[:, :, None, :]  # [B, T, 1, hd]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[:, :, None, :]
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
  return (x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)).astype(x.dtype)


def packed_positions(segments: jax.Array) -> jax.Array:
  """``[B, T]`` position of each token in its segment (0 at each segment's first token)."""
  t = jnp.arange(segments.shape[-1])
  starts = jnp.concatenate([jnp.ones_like(segments[:, :1], bool),
                            segments[:, 1:] != segments[:, :-1]], -1)
  return t[None] - jax.lax.cummax(jnp.where(starts, t[None], 0), axis=1)


class RMSNorm(nn.Module):
  """``x / sqrt(mean(x^2) + eps) * w`` in float32 (``plus_one``: ``* (1 + w)``)."""

  eps: float = 1e-6
  plus_one: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param("scale", init, (x.shape[-1],))
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + self.eps)
    scale = scale.reshape((1,) * (x.ndim - 1) + scale.shape)
    if self.plus_one:  # Gemma: the product in float32, then the cast
      return (h * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
    return scale * h.astype(x.dtype)  # Llama / Qwen: cast, then the product


class Attention(nn.Module):
  """Grouped-query causal self-attention with RoPE (see the module docstring)."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False
  norm_eps: float = 1e-6
  norm_plus_one: bool = False
  scale: float = 0.0
  softcap: float = 0.0

  @nn.compact
  def __call__(self, x, positions, allowed, inv_freq, kv=None, index=None):
    """``kv``: this layer's cache ``{"k", "v": [B, S, K, d]}``; the new keys and values
    are written at slots ``index ... index + T - 1`` and the queries attend over all ``S``
    slots (``allowed [B, T, S]``); returns ``(out, new kv)`` then."""
    b, t, width = x.shape
    h, k, d = self.num_heads, self.num_kv_heads, self.head_dim
    dense = lambda n, name, bias: nn.Dense(n, use_bias=bias, name=name)  # noqa: E731
    q = dense(h * d, "q_proj", self.qkv_bias)(x).reshape(b, t, h, d)
    key = dense(k * d, "k_proj", self.qkv_bias)(x).reshape(b, t, k, d)
    value = dense(k * d, "v_proj", self.qkv_bias)(x).reshape(b, t, k, d)
    if self.qk_norm:
      q = RMSNorm(self.norm_eps, self.norm_plus_one, name="q_norm")(q)
      key = RMSNorm(self.norm_eps, self.norm_plus_one, name="k_norm")(key)
    q, key = apply_rope(q, positions, inv_freq), apply_rope(key, positions, inv_freq)
    if kv is not None:
      start = (0, index, 0, 0)
      kv = {"k": jax.lax.dynamic_update_slice(kv["k"], key.astype(kv["k"].dtype), start),
            "v": jax.lax.dynamic_update_slice(kv["v"], value.astype(kv["v"].dtype), start)}
      key, value = kv["k"].astype(key.dtype), kv["v"].astype(value.dtype)
    q = q.reshape(b, t, k, h // k, d)  # [B, T, K, G, d]: G query heads per key/value head
    scores = jnp.einsum("btkgd,bskd->bkgts", q, key).astype(jnp.float32)
    scores = scores * (self.scale or d ** -0.5)
    if self.softcap:
      scores = self.softcap * jnp.tanh(scores / self.softcap)
    scores = jnp.where(allowed[:, None, None], scores, _MASKED)  # allowed: [B, T, S]
    weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, value).reshape(b, t, h * d)
    out = nn.Dense(width, use_bias=self.out_bias, name="o_proj")(out)
    return out if kv is None else (out, kv)


class MLP(nn.Module):
  """``down(act(gate(x)) * up(x))``."""

  width: int
  activation: str = "silu"
  bias: bool = False

  @nn.compact
  def __call__(self, x):
    gate = nn.Dense(self.width, use_bias=self.bias, name="gate_proj")(x)
    up = nn.Dense(self.width, use_bias=self.bias, name="up_proj")(x)
    return nn.Dense(x.shape[-1], use_bias=self.bias, name="down_proj")(
        ACTIVATIONS[self.activation](gate) * up)


class Decoder(nn.Module):
  """Decoder-only LM: ``tokens [B, T]`` (or packed ``[B, 2, T]``) -> logits ``[B, T, V]``.

  Fields are those of a Hugging Face config (module docstring); ``num_classes`` is the
  vocabulary size ``V``. ``family`` names the ``transformers`` architecture the weights
  are exported as (:func:`kdjax.convert.to_hf`).
  """

  num_classes: int = 256
  width: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 0  # 0: width // num_heads
  mlp_width: int = 256
  family: str = "llama"
  activation: str = "silu"
  norm_eps: float = 1e-6
  norm_plus_one: bool = False
  sandwich_norm: bool = False
  embed_scale: bool = False
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  tie_embeddings: bool = False
  attn_scale: float = 0.0  # 0: head_dim ** -0.5
  attn_softcap: float = 0.0
  final_softcap: float = 0.0
  layer_types: tuple[str, ...] = ()  # "full" | "sliding" per layer; (): all "full"
  sliding_window: int = 0
  rope_theta: float = 10_000.0
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max: int = 8192
  local_rope_theta: float = 0.0  # sliding layers' own unscaled RoPE base (0: the global one)

  @property
  def dims(self) -> int:
    return self.head_dim or self.width // self.num_heads

  def _layer_types(self) -> tuple[str, ...]:
    types = tuple(self.layer_types) or ("full",) * self.num_layers
    if len(types) != self.num_layers or set(types) - set(LAYER_TYPES):
      raise ValueError(f"Decoder.layer_types {types} must give one of {LAYER_TYPES} for each "
                       f"of the {self.num_layers} layers")
    if "sliding" in types and self.sliding_window < 1:
      raise ValueError("Decoder: sliding layers need sliding_window >= 1")
    return types

  def _inv_freq(self, layer_type: str) -> jax.Array:
    if layer_type == "sliding" and self.local_rope_theta:
      return rope_inverse_frequencies(self.dims, self.local_rope_theta)
    return rope_inverse_frequencies(self.dims, self.rope_theta, self.rope_type,
                                    self.rope_factor, self.rope_low_freq_factor,
                                    self.rope_high_freq_factor, self.rope_original_max)

  def output_head(self, params: Any) -> jax.Array:
    """The ``[D, V]`` output projection in ``params`` (the embedding's transpose if tied):
    ``logits = hidden @ head`` (feature ``"hidden"``).

    Raises:
      ValueError: with ``final_softcap`` (the logits are not ``hidden @ head``).
    """
    if self.final_softcap:
      raise ValueError(f"Decoder.final_softcap={self.final_softcap}: its logits are soft-capped "
                       "after the head, which the fused losses do not model; use logit terms "
                       "(forward_kl, cross_entropy) for this model")
    if "lm_head" in params:
      return params["lm_head"]["kernel"]
    return params["embed"]["embedding"].T

  def init_cache(self, batch: int, length: int, dtype: Any = jnp.float32) -> dict[str, Any]:
    """An empty key/value cache for ``length`` slots: ``{"index": 0, "valid": [B, S] bool,
    "layer_i": {"k", "v": [B, S, K, d]}}`` (see :meth:`__call__`'s ``cache``)."""
    shape = (batch, length, self.num_kv_heads, self.dims)
    cache: dict[str, Any] = {"index": jnp.zeros((), jnp.int32),
                             "valid": jnp.zeros((batch, length), bool)}
    for i in range(self.num_layers):
      cache[f"layer_{i}"] = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
    return cache

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               attention_mask: jax.Array | None = None, cache: dict[str, Any] | None = None,
               positions: jax.Array | None = None) -> Any:
    """Logits ``[B, T, V]``; with a ``cache`` (:meth:`init_cache`) ``(logits, new cache)``.

    With a cache (incremental decoding, :func:`kdjax.models.sample`): ``x`` are the next
    ``T`` tokens of every row (a prompt's prefill, or one sampled token), written at cache
    slots ``index ... index + T - 1``; ``attention_mask [B, T]`` marks which of them are
    real (left padding: 0), ``positions [B, T]`` their RoPE positions (default: the slots;
    without a cache, ``0 .. T-1``, or each document's own in packed rows).
    A query at slot ``q`` sees the valid slots ``s <= q`` (and ``q - s < sliding_window``
    in sliding layers).
    """
    del train  # no dropout
    if cache is not None:
      return self._decode(x, attention_mask, cache, positions)
    if positions is not None:
      raise ValueError("Decoder: positions= is for incremental decoding (with cache=); a full "
                       "forward numbers tokens 0..T-1 (packed rows: per document)")
    if x.ndim == 3:  # packed rows: tokens, segment ids
      if attention_mask is not None:
        raise ValueError("Decoder: packed rows [B, 2, T] carry their own mask (segment id 0); "
                         "attention_mask is for tokens [B, T]")
      tokens, segments = x[:, 0], x[:, 1]
      positions = packed_positions(segments)
      same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
    elif x.ndim == 2:
      tokens = x
      positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape)
      keys = (jnp.ones(x.shape, bool) if attention_mask is None
              else jnp.asarray(attention_mask) > 0)
      same = jnp.broadcast_to(keys[:, None, :], (*x.shape, x.shape[1]))
    else:
      raise ValueError(f"Decoder: tokens must be [B, T] or packed [B, 2, T], got shape {x.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"Decoder: tokens must be integers, got {tokens.dtype}")
    t = tokens.shape[1]
    distance = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]  # q - k
    causal = (distance >= 0)[None] & same
    local = causal & (distance < max(self.sliding_window, 1))[None]
    return self._layers(tokens, positions, causal, local)[0]

  def _decode(self, tokens, attention_mask, cache, positions):
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"Decoder: with a cache, tokens must be integer [B, T], got "
                       f"{tokens.dtype} {tokens.shape}")
    b, t = tokens.shape
    index = cache["index"]
    slots = cache["valid"].shape[1]
    if positions is None:
      positions = jnp.broadcast_to(index + jnp.arange(t), (b, t))
    new = jnp.ones((b, t), bool) if attention_mask is None else jnp.asarray(attention_mask) > 0
    valid = jax.lax.dynamic_update_slice(cache["valid"], new, (0, index))
    distance = (index + jnp.arange(t))[:, None] - jnp.arange(slots)[None, :]  # q - k slots
    causal = (distance >= 0)[None] & valid[:, None, :]
    local = causal & (distance < max(self.sliding_window, 1))[None]
    kvs = [cache[f"layer_{i}"] for i in range(self.num_layers)]
    logits, kvs = self._layers(tokens, positions, causal, local, kvs, index)
    new_cache = {"index": index + t, "valid": valid,
                 **{f"layer_{i}": kv for i, kv in enumerate(kvs)}}
    return logits, new_cache

  def _layers(self, tokens, positions, causal, local, kvs=None, index=None):
    embed = nn.Embed(self.num_classes, self.width, name="embed")
    h = embed(tokens)
    new_kvs = []
    if self.embed_scale:
      h = h * jnp.asarray(self.width ** 0.5, h.dtype)
    norm = lambda name: RMSNorm(self.norm_eps, self.norm_plus_one, name=name)  # noqa: E731
    for i, layer_type in enumerate(self._layer_types()):
      attn = Attention(self.num_heads, self.num_kv_heads, self.dims, qkv_bias=self.qkv_bias,
                       out_bias=self.out_bias, qk_norm=self.qk_norm, norm_eps=self.norm_eps,
                       norm_plus_one=self.norm_plus_one, scale=self.attn_scale,
                       softcap=self.attn_softcap, name=f"layer_{i}_attn")
      a = attn(norm(f"layer_{i}_input_norm")(h), positions,
               local if layer_type == "sliding" else causal, self._inv_freq(layer_type),
               None if kvs is None else kvs[i], index)
      if kvs is not None:
        a, kv = a
        new_kvs.append(kv)
      h = h + (norm(f"layer_{i}_post_attn_norm")(a) if self.sandwich_norm else a)
      m = MLP(self.mlp_width, self.activation, self.mlp_bias, name=f"layer_{i}_mlp")(
          norm(f"layer_{i}_pre_mlp_norm")(h))
      h = h + (norm(f"layer_{i}_post_mlp_norm")(m) if self.sandwich_norm else m)
    h = norm("norm")(h)
    self.sow("intermediates", "hidden", h)
    if self.tie_embeddings:
      logits = embed.attend(h)
    else:
      logits = nn.Dense(self.num_classes, use_bias=False, name="lm_head")(h)
    if self.final_softcap:
      logits = self.final_softcap * jnp.tanh(logits / self.final_softcap)
    return logits, new_kvs


def decoder_sharding_rules(fsdp: str = "data", tensor: str = "model") -> tuple:
  """Sharding rules (:mod:`kdjax.training._sharding`) for :class:`Decoder` params, in the
  train state (``student/...``) and in teacher variables (``params/...``):

  * q/k/v, gate and up kernels ``[D, out]``: ``D`` over ``fsdp`` (FSDP / ZeRO-3), the
    heads / MLP features over ``tensor`` (Megatron column parallel);
  * o and down kernels ``[in, D]``: ``in`` over ``tensor`` (row parallel), ``D`` over ``fsdp``;
  * the embedding ``[V, D]`` and the head ``[D, V]``: the vocabulary over ``tensor``
    (:func:`kdjax.losses.fused_distillation_loss` takes a vocabulary-sharded head), ``D``
    over ``fsdp``; norms and biases of the row-parallel layers replicated.

  Every sharded dimension must divide by its axis size (a one-line error names the rule).
  """
  column, row = (fsdp, tensor), (tensor, fsdp)
  return ((r"attn/(q_proj|k_proj|v_proj)/kernel$", column),
          (r"attn/(q_proj|k_proj|v_proj)/bias$", (tensor,)),
          (r"attn/o_proj/kernel$", row),
          (r"mlp/(gate_proj|up_proj)/kernel$", column),
          (r"mlp/down_proj/kernel$", row),
          (r"embed/embedding$", row),
          (r"lm_head/kernel$", column))
