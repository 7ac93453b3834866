"""A small decoder-only (GPT-style) transformer for next-token distillation."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class Block(nn.Module):
  """Pre-LayerNorm block: causal self-attention and a GELU MLP, each residual."""

  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
    h = nn.LayerNorm(name="ln_attn")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attn")(h, mask=mask)
    h = nn.LayerNorm(name="ln_mlp")(x)
    h = nn.Dense(self.mlp_ratio * x.shape[-1], name="mlp_in")(h)
    return x + nn.Dense(x.shape[-1], name="mlp_out")(nn.gelu(h))


class Transformer(nn.Module):
  """Decoder-only transformer: ``tokens [B, T] int -> logits [B, T, V]``.

  Token and learned position embeddings, ``num_layers`` pre-LN blocks, a final
  LayerNorm, and an untied output projection ``head [width, V]`` kept as a plain
  parameter, so that :func:`kdjax.losses.fused_distillation_loss` can take the final
  hidden states (``method=Transformer.hidden``) and ``params["head"]`` without ever
  building ``[B, T, V]`` logits. Sows ``"hidden"`` and ``"logits"`` into
  ``"intermediates"``.
  """

  vocab_size: int = 256
  width: int = 128
  num_layers: int = 2
  num_heads: int = 4
  max_len: int = 256

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.width)
    self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.02),
                                (self.max_len, self.width))
    self.blocks = [Block(self.num_heads, name=f"block_{i}") for i in range(self.num_layers)]
    self.ln_final = nn.LayerNorm()
    self.head = self.param("head", nn.initializers.normal(self.width**-0.5),
                           (self.width, self.vocab_size))

  def hidden(self, tokens: jax.Array) -> jax.Array:
    """``[B, T, width]`` final (normalised) hidden states."""
    if tokens.shape[-1] > self.max_len:
      raise ValueError(f"Transformer: sequence length {tokens.shape[-1]} exceeds max_len "
                       f"{self.max_len}")
    x = self.embed(tokens) + self.pos_embed[None, : tokens.shape[-1]]  # [B, T, W] + [1, T, W]
    for block in self.blocks:
      x = block(x)
    return self.ln_final(x)

  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout
    h = self.hidden(tokens)
    self.sow("intermediates", "hidden", h)
    logits = h @ self.head
    self.sow("intermediates", "logits", logits)
    return logits
