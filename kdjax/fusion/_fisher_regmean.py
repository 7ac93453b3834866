r"""Data-aware weight merges: Fisher merging and RegMean.

* Fisher merging (Matena & Raffel, NeurIPS 2022): with each member's diagonal Fisher
  :math:`F_m = \mathbb{E}_x \mathbb{E}_{y \sim p_m(\cdot|x)} [(\nabla_\theta \log p_m(y|x))^2]`,
  :math:`\theta^* = \sum_m F_m \theta_m / \sum_m F_m` per entry; an entry with no Fisher mass
  (:math:`\sum_m F_m < \epsilon`) takes the members' mean.
* RegMean (Jin et al., ICLR 2023): for each dense layer :math:`y = x W` with each member's
  input Gram :math:`G_m = X_m^\top X_m`,
  :math:`W^* = (\sum_m \tilde G_m)^{-1} \sum_m \tilde G_m W_m`,
  :math:`\tilde G = \alpha G + (1 - \alpha)\,\mathrm{diag}(G)`: the least-squares merge of the
  layers' outputs on the members' own inputs (plus a ridge of 100 machine epsilons of the
  mean Gram diagonal towards the members' mean, so that inputs no data reaches take the mean).
  A convolution is the dense layer of its unfolded inputs (im2col: each output position's
  receptive field, ``[k_1 ... k_n C_in]`` in the kernel's order), so its kernel
  ``[k_1, ..., k_n, C_in, C_out]`` is merged as ``[k_1 ... k_n C_in, C_out]``. Other leaves
  (biases, norms, grouped convolutions) are averaged.
"""

from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.ensemble import num_members


def diagonal_fisher(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                    batches: Iterable, *, labels: str = "sampled",
                    key: jax.Array | None = None) -> Any:
  """The empirical diagonal Fisher of ``params``: the mean over examples of squared
  per-example gradients of ``log softmax(apply_fn(params, x))[y]``.

  Args:
    apply_fn: ``(params, x [B, ...]) -> logits [B, C]``.
    batches: ``{"x": [B, ...], "y": [B]}`` dicts (``"y"`` only for ``labels="true"``).
    labels: ``"sampled"`` (y drawn from the model's own prediction: the true Fisher) or
      ``"true"`` (the data's labels: the empirical Fisher).
    key: the sampling key (``labels="sampled"``).
  """
  if labels not in ("sampled", "true"):
    raise ValueError(f"diagonal_fisher: labels must be 'sampled' or 'true', got {labels!r}")
  if labels == "sampled" and key is None:
    raise ValueError("diagonal_fisher: labels='sampled' needs a key")

  def log_prob(p, x, y):
    logits = apply_fn(p, x[None])
    return jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))[0, y]

  @jax.jit
  def batch_sum(p, x, y):
    grads = jax.vmap(jax.grad(log_prob), in_axes=(None, 0, 0))(p, x, y)
    return jax.tree.map(lambda g: jnp.sum(g * g, 0), grads)

  total, count = None, 0
  for i, batch in enumerate(batches):
    x = jnp.asarray(batch["x"])
    if labels == "true":
      y = jnp.asarray(batch["y"])
    else:
      y = jax.random.categorical(jax.random.fold_in(key, i), apply_fn(params, x), axis=-1)
    sums = batch_sum(params, x, y)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    count += x.shape[0]
  if not count:
    raise ValueError("diagonal_fisher: no examples in batches")
  return jax.tree.map(lambda s: s / count, total)


def fisher_merge(stacked_params: Any, stacked_fishers: Any, *, eps: float = 1e-8) -> Any:
  """``sum_m F_m theta_m / sum_m F_m`` per entry (module docstring)."""
  num_members(stacked_params)
  if jax.tree.structure(stacked_params) != jax.tree.structure(stacked_fishers):
    raise ValueError("fisher_merge: the Fishers' tree differs from the params'")

  def one(p, f):
    mass = jnp.sum(f, 0)
    return jnp.where(mass >= eps, jnp.sum(f * p, 0) / jnp.maximum(mass, eps), jnp.mean(p, 0))

  return jax.tree.map(one, stacked_params, stacked_fishers)


def _unfolded(module: nn.Module, x: jax.Array) -> jax.Array | None:
  """``[N, d_in]``: the inputs of ``module``'s matmul (a dense layer's inputs; a
  convolution's receptive fields in its kernel's order), or ``None`` for other modules."""
  from kdjax.models._cnn1d import Conv1D, im2col_1d
  if isinstance(module, nn.Dense):
    return x.reshape(-1, x.shape[-1])
  if isinstance(module, Conv1D):  # kdjax's [B, L, C] convolution, kernel [k, C_in, C_out]
    patches = im2col_1d(x, module.kernel_size, stride=module.stride, padding=module.padding)
    return patches.reshape(-1, patches.shape[-1])
  if (isinstance(module, nn.Conv) and module.feature_group_count == 1
      and module.padding not in ("CIRCULAR", "CAUSAL", "REFLECT")):
    size = module.kernel_size
    kernel = (size,) if isinstance(size, int) else tuple(size)
    n = len(kernel)

    def per_axis(v):
      return None if v is None else (v,) * n if isinstance(v, int) else tuple(v)

    strides = per_axis(module.strides or 1)
    padding = module.padding
    if not isinstance(padding, str):
      padding = [(p, p) if isinstance(p, int) else tuple(p) for p in (
          (padding,) * n if isinstance(padding, int) else padding)]
    spatial = "DHW"[-n:] if n <= 3 else None
    if spatial is None or x.ndim != n + 2:
      return None
    layout = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    patches = jax.lax.conv_general_dilated_patches(
        x, kernel, strides, padding, lhs_dilation=per_axis(module.input_dilation),
        rhs_dilation=per_axis(module.kernel_dilation), dimension_numbers=layout)
    c = x.shape[-1]
    # Features come as (C_in, k_1, ..., k_n); the kernel flattens as (k_1, ..., k_n, C_in).
    patches = patches.reshape(-1, c, *kernel)
    return jnp.moveaxis(patches, 1, -1).reshape(-1, c * int(np.prod(kernel)))
  return None


def input_grams(apply_fn: Callable[[Any, jax.Array], Any], params: Any,
                batches: Iterable) -> dict[str, jax.Array]:
  """``{module path: G [d_in, d_in]}``: the Gram ``X^T X`` of the inputs of every
  ``nn.Dense`` (all leading axes flattened) and every ungrouped convolution (``nn.Conv``,
  :class:`kdjax.models.Conv1D`; ``X`` the unfolded receptive fields, module docstring)
  while ``apply_fn(params, x)`` runs a linen model over ``batches`` (``{"x": ...}`` dicts).
  Paths are the params' (``"Dense_0"``, ``"block/conv1"``)."""

  def grams_of(p, x):
    found: dict[str, jax.Array] = {}

    def record(next_fun, args, kwargs, context):
      module = context.module
      h = _unfolded(module, args[0]) if context.method_name == "__call__" and args else None
      if h is not None:
        h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
        path = "/".join(module.path)
        found[path] = found.get(path, 0) + h.T @ h
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      apply_fn(p, x)
    return found

  grams_of = jax.jit(grams_of)
  total = None
  for batch in batches:
    g = grams_of(params, jnp.asarray(batch["x"]))
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  if not total:
    raise ValueError("input_grams: no nn.Dense or convolution call was seen (or no batches)")
  return total


def regmean(stacked_params: Any, grams: dict[str, jax.Array], *, alpha: float = 0.9) -> Any:
  """RegMean (module docstring). ``grams``: ``{path: [M, d_in, d_in]}`` (each member's
  :func:`input_grams`, stacked); a dense or convolution kernel at ``path + "/kernel"``
  (``[M, d_in, d_out]``, or ``[M, k_1, ..., C_in, C_out]`` with ``d_in = k_1 ... C_in``) is
  merged, every other leaf averaged."""
  if not 0 <= alpha <= 1:
    raise ValueError(f"regmean: alpha must be in [0, 1], got {alpha}")
  m = num_members(stacked_params)

  def one(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    module, _, last = name.rpartition("/")
    if last != "kernel" or module not in grams:
      return jnp.mean(leaf, 0)
    acc = jnp.promote_types(leaf.dtype, jnp.float32)
    g = jnp.asarray(grams[module], acc)
    shape = leaf.shape
    d = int(np.prod(shape[1:-1]))
    if g.shape != (m, d, d) or leaf.ndim < 3:
      raise ValueError(f"regmean: grams[{module!r}] has shape {g.shape}, the kernel "
                       f"{tuple(shape)} needs ({m}, {d}, {d})")
    leaf = leaf.reshape(m, d, shape[-1])
    diag = jnp.eye(g.shape[-1], dtype=g.dtype)[None] * g
    reg = alpha * g + (1 - alpha) * diag
    lhs = jnp.sum(reg, 0)
    rhs = jnp.einsum("mij,mjk->ik", reg, leaf.astype(acc))
    # A tiny ridge towards the members' mean: input directions no member's data reaches
    # (a dead ReLU unit: a zero row and column of every Gram) take the mean, not NaN.
    ridge = 100 * jnp.finfo(acc).eps * jnp.maximum(jnp.mean(jnp.diagonal(lhs)), 1e-30)
    eye = jnp.eye(lhs.shape[0], dtype=acc)
    merged = jnp.linalg.solve(lhs + ridge * eye, rhs + ridge * jnp.mean(leaf.astype(acc), 0))
    return merged.reshape(shape[1:]).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(one, stacked_params)
