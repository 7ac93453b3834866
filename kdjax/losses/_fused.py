"""Distillation divergence fused with the output projections, over chunks of tokens."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
  in chunks of ``chunk_size``; a ``jax.custom_vjp`` saves only the inputs and ``[N]``
  statistics, and its backward pass recomputes each chunk's logits once and, one interleaved
  vocabulary block at a time, accumulates the chunk's hidden-state gradient
  :math:`\partial z\, W^\top` and adds :math:`h^\top \partial z` to the head gradient in
  place, so the head gradient lives only in the output buffer
  and forward and backward peak memory grow with ``chunk_size * V`` instead of ``N * V``.
  Forward KL, reverse KL, the generalised JSD and total variation (Python numbers) use
  closed-form gradients from the saved log-normalisers; the other divergences, and array
  hyperparameters, take the divergence's own VJP on each chunk. The backward pass runs the
  two projections again: 6 instead of 4 ``N d V`` matmuls (8 instead of 6 when the teacher's
  gradients are asked for too; unrequested ones are pruned by XLA).

  Low-precision inputs (bfloat16, float16) stay low precision in the matmuls, which
  accumulate in float32 (``preferred_element_type``); logits, softmax statistics, values
  and the gradient accumulators are float32, and the gradients are cast to the inputs'
  dtypes once at the end (the head gradients thus take a float32 ``[d, V]`` buffer each).
  As in the unfused divergence after ``autodiff``, the logit cotangent is rounded to the
  inputs' dtype before the backward matmuls.

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
    ``[N]`` per-token values, float32 (float64 for float64 inputs); ``N = 0`` tokens give
    an empty ``[0]`` array, as the unfused divergence does on ``[0, V]`` logits.

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
  acc = _checks.compute_dtype(hs, ws, ht, wt)  # float32, or float64 for float64 inputs
  if where is not None:
    where = _checks.check_where(fn, where, (n,), "the tokens (student_hidden.shape[0])")
    hs = jnp.where(where[:, None], hs, 0)  # select: NaN rows never reach a matmul
    ht = jnp.where(where[:, None], ht, 0)
  if n == 0:  # no chunks to form; the gradient of an empty result is zero
    return jnp.zeros((0,), acc)

  c = min(chunk_size, n)
  chunks = -(-n // c)
  pad = chunks * c - n
  # Padded tokens have zero hidden states: equal (uniform) distributions, value and gradient 0.
  hs_p = jnp.pad(hs, ((0, pad), (0, 0)))
  ht_p = jnp.pad(ht, ((0, pad), (0, 0)))
  # Token j * chunks + i -> chunk i, row j (interleaved: a token sharding stays on the rows).
  # [c, chunks, d] is a free reshape; chunk i is a slice along axis 1, read and written in place.
  hs_c = hs_p.reshape(c, chunks, -1)
  ht_c = ht_p.reshape(c, chunks, -1)
  # Array-valued hyperparameters are differentiable arguments; Python numbers stay static.
  params = {"temperature": temperature, **divergence_kwargs}
  traced = {k: v for k, v in params.items() if isinstance(v, (jax.Array, np.ndarray))}
  static = {k: v for k, v in params.items() if k not in traced}
  v_blocks = _vocab_blocks(ws.shape[1], max(ws.shape[0], wt.shape[0]), c)
  rule = None if traced else _closed_form_rule(divergence, static)
  if rule is not None:
    out = _chunked_closed_form(rule, static["temperature"], v_blocks, acc)(hs_c, ws, ht_c, wt)
  else:
    out = _chunked(DIVERGENCES[divergence], static, v_blocks, acc)(hs_c, ws, ht_c, wt, traced)
  out = out.swapaxes(0, 1).reshape(-1)[:n]
  if where is not None:
    out = jnp.where(where, out, 0.0)
  return out


def _dot(a: jax.Array, b: jax.Array, acc: jnp.dtype) -> jax.Array:
  """``a @ b``, accumulated and returned in ``acc``."""
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=acc)


def _dot_t(a: jax.Array, b: jax.Array, acc: jnp.dtype) -> jax.Array:
  """``a @ b.T`` without materialising ``b.T``, accumulated and returned in ``acc``."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=acc)


def _t_dot(a: jax.Array, b: jax.Array, acc: jnp.dtype) -> jax.Array:
  """``a.T @ b`` without materialising ``a.T``, accumulated and returned in ``acc``."""
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=acc)


def _vocab_blocks(v: int, d: int, c: int) -> int:
  """How many interleaved vocabulary blocks the head gradient is accumulated in.

  The smallest divisor ``b`` of ``V`` with a ``[d, V / b]`` update no larger than a
  half ``[c, V]`` chunk of logits (1 when ``V`` has no such divisor below ``128 d / c``).
  """
  target = 2 * -(-d // c)
  for b in range(max(target, 1), 64 * target + 1):
    if v % b == 0:
      return b
  return 1


def _chunk(x: jax.Array, i: jax.Array) -> jax.Array:
  """Token chunk ``i`` of ``[c, chunks, ...]``: ``[c, ...]``."""
  return jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False)


def _block_grads(d_w: jax.Array, h: jax.Array, dz: jax.Array, w: jax.Array,
                 v_blocks: int) -> tuple[jax.Array, jax.Array]:
  """``(dz @ w^T, d_w + h^T dz)`` over ``v_blocks`` interleaved vocabulary blocks, ``d_w``
  updated in place; ``dz`` is read only here, so XLA materialises it once.

  ``dz`` is rounded to the matmul operands' dtype (``h`` and ``w``); the products
  accumulate in ``d_w``'s dtype, which is also the dtype of ``dz @ w^T``."""
  d, v = d_w.shape
  acc = d_w.dtype
  dz = dz.astype(jnp.result_type(h.dtype, w.dtype))
  d_w3, w3 = d_w.reshape(d, v // v_blocks, v_blocks), w.reshape(d, v // v_blocks, v_blocks)
  dz3 = dz.reshape(-1, v // v_blocks, v_blocks)
  take = lambda x, j: jax.lax.dynamic_index_in_dim(x, j, axis=2, keepdims=False)

  def block(j, carry):
    d_h, d_w3 = carry
    dz_j = take(dz3, j)
    upd = _t_dot(h, dz_j, acc) + take(d_w3, j)
    return (d_h + _dot_t(dz_j, take(w3, j), acc),
            jax.lax.dynamic_update_index_in_dim(d_w3, upd, j, 2))

  d_h, d_w3 = jax.lax.fori_loop(0, v_blocks, block, (jnp.zeros(h.shape, acc), d_w3))
  return d_h, d_w3.reshape(d, v)


def _kl(lp_a: jax.Array, lp_b: jax.Array) -> jax.Array:
  return jnp.sum(jnp.exp(lp_a) * (lp_a - lp_b), axis=-1)


def _closed_form_rule(divergence: str,
                      static: dict[str, Any]) -> tuple[Callable, Callable, int] | None:
  r"""``value(lp_s, lp_t) -> (value, stats)``, ``grads(lp_s, lp_t, stats) -> (d/ds', d/dt')``
  and ``p``: the divergence is ``T^p value`` with ``s' = s / T``, ``t' = t / T``.

  Forward and reverse KL, the interior generalised JSD and total variation (with
  :math:`\sigma = \tfrac12 \mathrm{sign}(p_S - p_T)`, gradient
  :math:`p_S \odot (\sigma - \langle p_S, \sigma \rangle)`) have short closed-form gradients
  in the log-probabilities, so the backward pass needs only the per-token log-normalisers
  and KL terms saved by the forward pass (the others take the generic VJP):

  .. math::
    \partial_{s'} \mathrm{KL}(p_T\|p_S) = p_S - p_T, \quad
    \partial_{t'} \mathrm{KL}(p_T\|p_S) = p_T \odot (\log p_T - \log p_S - \mathrm{KL}),

    \partial_{s'} \mathrm{JSD}_\beta = (1 - \beta)\, p_S \odot (\log p_S - \log M
    - \mathrm{KL}(p_S\|M)), \quad
    \partial_{t'} \mathrm{JSD}_\beta = \beta\, p_T \odot (\log p_T - \log M
    - \mathrm{KL}(p_T\|M)).
  """
  allowed = {"temperature", "beta"} if divergence == "generalized_jsd" else {"temperature"}
  if not set(static) <= allowed or np.ndim(static.get("beta", 0.5)) != 0:
    return None  # the divergence itself reports unknown or bad arguments
  beta = float(static.get("beta", 0.5))
  if divergence == "generalized_jsd":
    divergence = {0.0: "forward_kl", 1.0: "reverse_kl"}.get(beta, divergence)
  if divergence == "forward_kl":  # stats: KL(p_T || p_S)
    value = lambda lp_s, lp_t: (_kl(lp_t, lp_s),) * 2
    grads = lambda lp_s, lp_t, kl: (jnp.exp(lp_s) - jnp.exp(lp_t),
                                    jnp.exp(lp_t) * (lp_t - lp_s - kl[:, None]))
    return value, grads, 2
  if divergence == "reverse_kl":  # stats: KL(p_S || p_T)
    value = lambda lp_s, lp_t: (_kl(lp_s, lp_t),) * 2
    grads = lambda lp_s, lp_t, kl: (jnp.exp(lp_s) * (lp_s - lp_t - kl[:, None]),
                                    jnp.exp(lp_t) - jnp.exp(lp_s))
    return value, grads, 2
  if divergence == "generalized_jsd" and 0 < beta < 1:
    log_mix = lambda lp_s, lp_t: jnp.logaddexp(lp_t + np.log(beta), lp_s + np.log1p(-beta))

    def value(lp_s, lp_t):  # stats: KL(p_T || M), KL(p_S || M)
      lp_m = log_mix(lp_s, lp_t)
      k_t, k_s = _kl(lp_t, lp_m), _kl(lp_s, lp_m)
      return beta * k_t + (1 - beta) * k_s, (k_t, k_s)

    def grads(lp_s, lp_t, stats):
      lp_m = log_mix(lp_s, lp_t)
      return ((1 - beta) * jnp.exp(lp_s) * (lp_s - lp_m - stats[1][:, None]),
              beta * jnp.exp(lp_t) * (lp_t - lp_m - stats[0][:, None]))
    return value, grads, 2
  if divergence == "total_variation":  # no T^2; stats: sum_v p_v sign(p_S - p_T) / 2, both p
    half_sign = lambda lp_s, lp_t: 0.5 * jnp.sign(jnp.exp(lp_s) - jnp.exp(lp_t))

    def value(lp_s, lp_t):
      e_s, e_t, h = jnp.exp(lp_s), jnp.exp(lp_t), half_sign(lp_s, lp_t)
      return (0.5 * jnp.sum(jnp.abs(e_t - e_s), axis=-1),
              (jnp.sum(e_s * h, axis=-1), jnp.sum(e_t * h, axis=-1)))

    def grads(lp_s, lp_t, stats):
      h = half_sign(lp_s, lp_t)
      return (jnp.exp(lp_s) * (h - stats[0][:, None]), jnp.exp(lp_t) * (stats[1][:, None] - h))
    return value, grads, 0
  return None


def _chunked_closed_form(rule: Callable, temperature: float, v_blocks: int,
                         acc: jnp.dtype) -> Callable[..., jax.Array]:
  """Like :func:`_chunked` for a :func:`_closed_form_rule`: the forward pass saves ``[N]``
  statistics (both log-normalisers at temperature ``T``), the backward pass rebuilds the
  log-probabilities from them and applies the closed-form gradient, without a second pass
  through the divergence. Logits, statistics and gradient accumulators are ``acc``."""
  t = float(np.asarray(temperature))
  value_fn, grads_fn, power = rule  # the divergence is T**power * value(s / T, t / T)

  def log_probs(h_s, w_s, h_t, w_t, lse=None):
    if t == 1.0:
      z_s, z_t = _dot(h_s, w_s, acc), _dot(h_t, w_t, acc)
    elif jnp.dtype(h_s.dtype) == acc and jnp.dtype(h_t.dtype) == acc:
      z_s, z_t = _dot(h_s / t, w_s, acc), _dot(h_t / t, w_t, acc)  # scale [c, d], not [c, V]
    else:  # h / T in bfloat16 would round: scale the float32 logits instead
      z_s, z_t = _dot(h_s, w_s, acc) / t, _dot(h_t, w_t, acc) / t
    if lse is None:
      lse = (jax.nn.logsumexp(z_s, axis=-1), jax.nn.logsumexp(z_t, axis=-1))
    return z_s - lse[0][:, None], z_t - lse[1][:, None], lse

  def forward(hs_c, ws, ht_c, wt):
    def body(_, i):
      lp_s, lp_t, lse = log_probs(_chunk(hs_c, i), ws, _chunk(ht_c, i), wt)
      value, stats = value_fn(lp_s, lp_t)
      return None, (t**power * value, (lse, stats))
    return jax.lax.scan(body, None, jnp.arange(hs_c.shape[1]))[1]

  @jax.custom_vjp
  def f(hs_c, ws, ht_c, wt):
    return forward(hs_c, ws, ht_c, wt)[0]

  def fwd(hs_c, ws, ht_c, wt):
    out, saved = forward(hs_c, ws, ht_c, wt)
    return out, (hs_c, ws, ht_c, wt, saved)

  def bwd(res, g):
    hs_c, ws, ht_c, wt, saved = res

    def body(i, carry):
      d_hs, d_ws, d_ht, d_wt = carry
      lse, stats = jax.tree.map(lambda x: x[i], saved)
      h_s, h_t = _chunk(hs_c, i), _chunk(ht_c, i)
      lp_s, lp_t, _ = log_probs(h_s, ws, h_t, wt, lse)  # the chunk's logits, recomputed once
      scale = (t ** (power - 1) * g[i])[:, None]  # d(T^p value)/dz = T^(p-1) dvalue/dz
      dz_s, dz_t = (scale * dz for dz in grads_fn(lp_s, lp_t, stats))
      dh_s, d_ws = _block_grads(d_ws, h_s, dz_s, ws, v_blocks)
      dh_t, d_wt = _block_grads(d_wt, h_t, dz_t, wt, v_blocks)
      d_hs = jax.lax.dynamic_update_index_in_dim(d_hs, dh_s, i, axis=1)
      d_ht = jax.lax.dynamic_update_index_in_dim(d_ht, dh_t, i, axis=1)
      return (d_hs, d_ws, d_ht, d_wt)

    primals = (hs_c, ws, ht_c, wt)
    init = tuple(jnp.zeros(x.shape, acc) for x in primals)
    grads = jax.lax.fori_loop(0, hs_c.shape[1], body, init)
    return tuple(d.astype(x.dtype) for d, x in zip(grads, primals))

  f.defvjp(fwd, bwd)
  return f


def _chunked(div: Callable[..., jax.Array], static: dict[str, Any], v_blocks: int,
             acc: jnp.dtype) -> Callable[..., jax.Array]:
  """Per-token ``div`` of ``[c, chunks, d]`` hidden states, token chunk ``i`` = ``[:, i]``.

  The custom VJP saves nothing but the inputs; its backward pass recomputes each chunk's
  logits once, takes the divergence's VJP on the chunk, writes the chunk's hidden-state
  gradient in place and adds ``h^T dz`` to the head gradient one interleaved vocabulary
  block (columns ``j, j + b, ...``) at a time, so no ``[d, V]`` temporary besides the
  gradient itself, which XLA keeps in the output buffer. Logits and gradient accumulators
  are ``acc``.
  """

  @jax.custom_vjp
  def f(hs_c, ws, ht_c, wt, traced):
    def body(_, i):
      z_s, z_t = _dot(_chunk(hs_c, i), ws, acc), _dot(_chunk(ht_c, i), wt, acc)
      return None, div(z_s, z_t, **static, **traced)
    return jax.lax.scan(body, None, jnp.arange(hs_c.shape[1]))[1]

  def fwd(hs_c, ws, ht_c, wt, traced):
    return f(hs_c, ws, ht_c, wt, traced), (hs_c, ws, ht_c, wt, traced)

  def bwd(res, g):
    hs_c, ws, ht_c, wt, traced = res

    def body(i, carry):
      d_hs, d_ws, d_ht, d_wt, d_traced = carry
      h_s, h_t = _chunk(hs_c, i), _chunk(ht_c, i)
      z_s, z_t = _dot(h_s, ws, acc), _dot(h_t, wt, acc)  # the chunk's logits, recomputed once
      _, vjp = jax.vjp(lambda a, b, p: div(a, b, **static, **p), z_s, z_t, traced)
      dz_s, dz_t, dp = vjp(g[i])
      dh_s, d_ws = _block_grads(d_ws, h_s, dz_s, ws, v_blocks)
      dh_t, d_wt = _block_grads(d_wt, h_t, dz_t, wt, v_blocks)
      d_hs = jax.lax.dynamic_update_index_in_dim(d_hs, dh_s, i, axis=1)
      d_ht = jax.lax.dynamic_update_index_in_dim(d_ht, dh_t, i, axis=1)
      return (d_hs, d_ws, d_ht, d_wt,
              jax.tree.map(jnp.add, d_traced, dp))

    primals = (hs_c, ws, ht_c, wt)
    init = (*(jnp.zeros(x.shape, acc) for x in primals), jax.tree.map(jnp.zeros_like, traced))
    *grads, d_traced = jax.lax.fori_loop(0, hs_c.shape[1], body, init)
    return (*(d.astype(x.dtype) for d, x in zip(grads, primals)), d_traced)

  f.defvjp(fwd, bwd)
  return f
