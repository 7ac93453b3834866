"""Distillation divergence fused with the output projections, over chunks of tokens."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.losses import _checks
from kdjax.losses import _divergences

DIVERGENCES: dict[str, Callable[..., jax.Array]] = {
    "forward_kl": _divergences.forward_kl,
    "reverse_kl": _divergences.reverse_kl,
    "generalized_jsd": _divergences.generalized_jsd,
    "skew_kl": _divergences.skew_kl,
    "skew_reverse_kl": _divergences.skew_reverse_kl,
    "total_variation": _divergences.total_variation,
}


def _check_matrix(fn: str, name: str, x: Any) -> jax.Array:
  x = _checks.check_floating(name, fn, x)
  if x.ndim != 2:
    raise ValueError(f"{fn}: {name} must be a matrix, got shape {x.shape}")
  return x


def fused_distillation_loss(student_hidden: jax.Array, student_head: jax.Array,
                            teacher_hidden: jax.Array, teacher_head: jax.Array, *,
                            divergence: str = "forward_kl",
                            temperature: float | jax.Array = 1.0, chunk_size: int = 1024,
                            where: jax.Array | None = None,
                            **divergence_kwargs: Any) -> jax.Array:
  r"""A divergence between two softmaxes over a large vocabulary, never storing ``[N, V]``.

  .. math::
    \ell_n = D\big(h^S_n W^S,\; h^T_n W^T\big), \quad n = 1..N

  equal in value and gradient to ``divergence(student_hidden @ student_head,
  teacher_hidden @ teacher_head, temperature=T, **divergence_kwargs)``. Tokens are processed
  in chunks of ``chunk_size`` under ``lax.scan``; each chunk's logits are recomputed in the
  backward pass (``jax.checkpoint``), so forward and backward peak memory grow with
  ``chunk_size * V`` instead of ``N * V`` (plus the ``[d, V]`` head gradient), at the cost
  of recomputing the two projections once (6 instead of 4 ``N d V`` matmuls).

  Sharded inputs need nothing extra: under ``jit`` with hidden states sharded over tokens
  and heads over the vocabulary (``P(None, "model")``), the softmax normalisers are exact
  reductions across vocabulary shards (XLA inserts the all-reduces). The chunk layout
  interleaves tokens (chunk ``j`` holds tokens ``j, j + N/c, ...``) so a token sharding
  stays on each chunk's rows.

  Args:
    student_hidden: ``[N, d]`` final hidden states of the student (flatten ``[B, T, d]``).
    student_head: ``[d, V]`` student output projection.
    teacher_hidden: ``[N, d_t]`` teacher hidden states.
    teacher_head: ``[d_t, V]`` teacher output projection.
    divergence: one of ``forward_kl``, ``reverse_kl``, ``generalized_jsd``, ``skew_kl``,
      ``skew_reverse_kl``, ``total_variation``.
    temperature: :math:`T > 0`.
    chunk_size: tokens per chunk (``N`` is padded to a multiple of it).
    where: optional ``[N]`` boolean token mask; masked tokens give 0 and no gradient,
      even if their hidden states are NaN.
    **divergence_kwargs: e.g. ``beta`` for ``generalized_jsd``, ``alpha`` for the skews.

  Returns:
    ``[N]`` per-token values, float32 (float64 for float64 inputs).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.losses import fused_distillation_loss, forward_kl
    >>> k = jax.random.split(jax.random.key(0), 4)
    >>> hs, ws = jax.random.normal(k[0], (10, 4)), jax.random.normal(k[1], (4, 32))
    >>> ht, wt = jax.random.normal(k[2], (10, 6)), jax.random.normal(k[3], (6, 32))
    >>> fused = fused_distillation_loss(hs, ws, ht, wt, chunk_size=4)
    >>> bool(jnp.allclose(fused, forward_kl(hs @ ws, ht @ wt), atol=1e-5))
    True

  References:
    Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", 2024
    (fused linear + distillation loss). https://github.com/linkedin/Liger-Kernel
  """
  fn = "fused_distillation_loss"
  if divergence not in DIVERGENCES:
    raise ValueError(f"{fn}: divergence must be one of {sorted(DIVERGENCES)}, got "
                     f"{divergence!r}")
  hs = _check_matrix(fn, "student_hidden", student_hidden)
  ws = _check_matrix(fn, "student_head", student_head)
  ht = _check_matrix(fn, "teacher_hidden", teacher_hidden)
  wt = _check_matrix(fn, "teacher_head", teacher_head)
  if hs.shape[1] != ws.shape[0] or ht.shape[1] != wt.shape[0]:
    raise ValueError(f"{fn}: hidden width must match the head's rows, got student_hidden "
                     f"{hs.shape} @ student_head {ws.shape}, teacher_hidden {ht.shape} @ "
                     f"teacher_head {wt.shape}")
  if hs.shape[0] != ht.shape[0] or ws.shape[1] != wt.shape[1]:
    raise ValueError(f"{fn}: student and teacher need the same tokens N and vocabulary V, "
                     f"got student_hidden {hs.shape}, teacher_hidden {ht.shape}, "
                     f"student_head {ws.shape}, teacher_head {wt.shape}")
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"{fn}: chunk_size must be a positive int, got {chunk_size!r}")
  _checks.check_positive(fn, "temperature", temperature)
  n = hs.shape[0]
  if where is not None:
    where = _checks.check_where(fn, where, (n,), "the tokens (student_hidden.shape[0])")
    hs = jnp.where(where[:, None], hs, 0)  # select: NaN rows never reach a matmul
    ht = jnp.where(where[:, None], ht, 0)
  div = DIVERGENCES[divergence]

  c = min(chunk_size, n)
  chunks = -(-n // c)
  pad = chunks * c - n
  # Padded tokens have zero hidden states: equal (uniform) distributions, value and gradient 0.
  hs_p = jnp.pad(hs, ((0, pad), (0, 0)))
  ht_p = jnp.pad(ht, ((0, pad), (0, 0)))
  # Token j * chunks + i -> chunk i, row j (interleaved: a token sharding stays on the rows).
  hs_c = hs_p.reshape(c, chunks, -1).swapaxes(0, 1)
  ht_c = ht_p.reshape(c, chunks, -1).swapaxes(0, 1)

  @jax.checkpoint
  def chunk_loss(h_s, h_t, w_s, w_t):
    return div(h_s @ w_s, h_t @ w_t, temperature=temperature, **divergence_kwargs)

  def body(carry, xs):
    return carry, chunk_loss(xs[0], xs[1], ws, wt)

  _, out = jax.lax.scan(body, None, (hs_c, ht_c))
  out = out.swapaxes(0, 1).reshape(-1)[:n]
  if where is not None:
    out = jnp.where(where, out, 0.0)
  return out
