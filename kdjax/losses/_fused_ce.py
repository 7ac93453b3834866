"""Next-token cross-entropy fused with the output projection, over chunks of tokens."""

import jax
import jax.numpy as jnp

from kdjax.losses import _checks


def fused_cross_entropy(hidden: jax.Array, head: jax.Array, labels: jax.Array, *,
                        chunk_size: int = 1024) -> jax.Array:
  r"""Cross-entropy of ``softmax(hidden @ head)`` at ``labels``, never storing ``[N, V]``.

  .. math::
    \ell_n = \log \sum_v e^{z_{nv}} - z_{n y_n}, \qquad z_n = h_n W

  equal in value and gradient to ``cross_entropy(hidden @ head, labels)``. Tokens are
  processed ``chunk_size`` at a time by ``lax.map`` under ``jax.checkpoint``: the backward
  pass recomputes each chunk's logits, so forward and backward peak memory grow with
  ``chunk_size * V`` instead of ``N * V`` (one extra ``N d V`` matmul). Logits and the
  log-normaliser are float32 (the matmul accumulates in float32 for bfloat16 inputs). Tokens
  are interleaved over chunks (chunk ``j`` holds tokens ``j, j + N/c, ...``) so a token
  sharding stays on each chunk's rows.

  Args:
    hidden: ``[N, d]`` final hidden states (flatten ``[B, T, d]``).
    head: ``[d, V]`` output projection.
    labels: ``[N]`` integer targets; a label outside ``[0, V)`` (``-1``, ``-100``) gives 0
      and no gradient.
    chunk_size: tokens per chunk (``N`` is padded to a multiple of it).

  Returns:
    ``[N]`` float32 per-token values (float64 for float64 inputs).
  """
  fn = "fused_cross_entropy"
  h = _checks.check_floating("hidden", fn, hidden)
  w = _checks.check_floating("head", fn, head)
  y = _checks.check_integer("labels", fn, labels)
  if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[0] or y.shape != h.shape[:1]:
    raise ValueError(f"{fn}: expected hidden [N, d], head [d, V], labels [N], got "
                     f"{h.shape}, {w.shape}, {y.shape}")
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"{fn}: chunk_size must be a positive int, got {chunk_size!r}")
  n, v = h.shape[0], w.shape[1]
  acc = _checks.compute_dtype(h, w)
  if n == 0:
    return jnp.zeros((0,), acc)
  valid = (y >= 0) & (y < v)
  c = min(chunk_size, n)
  chunks = -(-n // c)
  pad = chunks * c - n
  h_c = jnp.pad(h, ((0, pad), (0, 0))).reshape(c, chunks, -1).swapaxes(0, 1)  # [chunks, c, d]
  y_c = jnp.pad(jnp.where(valid, y, 0), (0, pad)).reshape(c, chunks).swapaxes(0, 1)

  @jax.checkpoint
  def chunk_loss(args):
    hc, yc = args
    z = jnp.dot(hc, w, preferred_element_type=acc)  # [c, V]
    picked = jnp.take_along_axis(z, yc[:, None], axis=-1)[:, 0]
    return jax.nn.logsumexp(z, axis=-1) - picked

  out = jax.lax.map(chunk_loss, (h_c, y_c)).swapaxes(0, 1).reshape(-1)[:n]
  return jnp.where(valid, out, 0.0)
