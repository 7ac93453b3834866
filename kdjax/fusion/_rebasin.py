r"""Permutation alignment of independently trained members (git re-basin's weight matching).

Hidden units can be permuted without changing a network's function. A
:class:`PermutationSpec` says which param axes each permutation acts on; weight matching
(Ainsworth et al., "Git Re-Basin", ICLR 2023, Algorithm 2) finds the permutations of
``params`` that bring it closest to ``reference``,

.. math:: \max_{\pi} \sum_\ell \langle W^{ref}_\ell, \pi_\ell W_\ell \pi_{\ell-1}^\top \rangle,

by coordinate ascent: one permutation at a time is the linear assignment problem of its
summed cross-correlation (``scipy.optimize.linear_sum_assignment``), in random order, until
no permutation improves. The aligned params compute the same function as ``params``; the
linear path to ``reference`` then crosses a much lower loss barrier.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import traverse_util


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
  """``axes[param path]``: per axis of that param, the permutation acting on it or ``None``
  (paths ``"dense_0/kernel"``, ``/``-joined). ``views[path]``: the shape the param is seen
  in while permuting (``-1`` for one inferred size), e.g. a dense layer after a flatten of
  ``[L, C]`` features, whose kernel ``[L * C, N]`` is permuted as ``[L, C, N]`` on ``C``."""

  axes: dict[str, tuple[str | None, ...]]
  views: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

  def sizes(self, params: Any) -> dict[str, int]:
    """``{permutation: size}`` for the params ``params`` (a tree or a flat ``/``-joined dict)."""
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    return {name: _view(self, path, np.asarray(flat[path])).shape[axis]
            for name, [(path, axis), *_] in self.perms.items()}

  @property
  def perms(self) -> dict[str, list[tuple[str, int]]]:
    """``{permutation: [(param path, axis), ...]}``."""
    out: dict[str, list[tuple[str, int]]] = {}
    for path, names in self.axes.items():
      for axis, name in enumerate(names):
        if name is not None:
          out.setdefault(name, []).append((path, axis))
    return out


def mlp_permutation_spec(num_hidden: int) -> PermutationSpec:
  """:class:`kdjax.models.MLP` with ``num_hidden`` hidden layers (``dense_i``, ``head``)."""
  axes = {}
  for i in range(num_hidden):
    prev = None if i == 0 else f"P{i - 1}"
    axes[f"dense_{i}/kernel"] = (prev, f"P{i}")
    axes[f"dense_{i}/bias"] = (f"P{i}",)
  axes["head/kernel"] = (f"P{num_hidden - 1}" if num_hidden else None, None)
  axes["head/bias"] = (None,)
  return PermutationSpec(axes)


def cnn1d_permutation_spec(channels, num_classes: int) -> PermutationSpec:
  """:class:`kdjax.models.CNN1D` with conv widths ``channels`` (``conv_i``, kernels
  ``[k, C_in, C_out]``): one permutation per conv's channels; the head's input is the
  flattened ``[L, C]`` last feature map, so its kernel is permuted as ``[L, C, classes]``."""
  axes: dict[str, tuple[str | None, ...]] = {}
  num_conv = len(channels)
  for i in range(num_conv):
    axes[f"conv_{i}/kernel"] = (None, None if i == 0 else f"P{i - 1}", f"P{i}")
    axes[f"conv_{i}/bias"] = (f"P{i}",)
  last = f"P{num_conv - 1}"
  axes["head/kernel"] = (None, last, None)
  axes["head/bias"] = (None,)
  return PermutationSpec(axes, views={"head/kernel": (-1, channels[-1], num_classes)})


def vgg_permutation_spec(widths) -> PermutationSpec:
  """:class:`kdjax.models.VGG`: one permutation per conv (``block{b}_conv{j}``, its bias,
  the BatchNorm after it, the next conv's input; the last one is the classifier's input)."""
  axes: dict[str, tuple[str | None, ...]] = {}
  prev = None
  for block, block_widths in enumerate(widths):
    for j in range(len(block_widths)):
      perm = f"P_block{block}_{j}"
      axes[f"block{block}_conv{j}/kernel"] = (None, None, prev, perm)
      axes[f"block{block}_conv{j}/bias"] = (perm,)
      axes[f"block{block}_bn{j}/scale"] = axes[f"block{block}_bn{j}/bias"] = (perm,)
      prev = perm
  axes["classifier/kernel"] = (prev, None)
  axes["classifier/bias"] = (None,)
  return PermutationSpec(axes)


def wrn_permutation_spec(depth: int, widen_factor: int) -> PermutationSpec:
  """:class:`kdjax.models.WideResNet` (pre-activation blocks): one permutation of the
  residual stream per run of blocks of one width (the stem conv's output, every block's
  ``bn1`` and ``conv1`` input, its ``conv2`` output, the final ``bn1`` and the classifier's
  input; a ``convShortcut`` starts a new stream) and one inside every block (``conv1``
  output, ``bn2``, ``conv2`` input)."""
  n = (depth - 4) // 6
  widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
  axes: dict[str, tuple[str | None, ...]] = {}

  def bn(name, perm):
    axes[f"{name}/scale"] = axes[f"{name}/bias"] = (perm,)

  stream, width = "stream_stem", 16
  axes["conv1/kernel"] = (None, None, None, stream)
  for group in range(3):
    for i in range(n):
      block, planes = f"block{group + 1}_{i}", widths[group]
      inner, out = f"{block}_inner", stream
      bn(f"{block}/bn1", stream)
      if width != planes:
        out = f"stream_{block}"
        axes[f"{block}/convShortcut/kernel"] = (None, None, stream, out)
      axes[f"{block}/conv1/kernel"] = (None, None, stream, inner)
      bn(f"{block}/bn2", inner)
      axes[f"{block}/conv2/kernel"] = (None, None, inner, out)
      stream, width = out, planes
  bn("bn1", stream)
  axes["fc/kernel"] = (stream, None)
  axes["fc/bias"] = (None,)
  return PermutationSpec(axes)


def cifar_resnet_permutation_spec(depth: int, widths: tuple[int, ...]) -> PermutationSpec:
  """:class:`kdjax.models.CifarResNet`: one permutation of the residual stream per run of
  blocks between width changes (the stem conv and BatchNorm, every block's ``conv2`` /
  ``bn2`` output, its shortcut, the next blocks' ``conv1`` input, the classifier's input;
  a projection shortcut starts a new stream) and one inside every block (``conv1`` /
  ``bn1`` output, ``conv2`` input). BatchNorm statistics follow their scales."""
  n = (depth - 2) // 6
  axes: dict[str, tuple[str | None, ...]] = {}

  def bn(name, perm):
    axes[f"{name}/scale"] = axes[f"{name}/bias"] = (perm,)

  stream, width = "stream_stem", widths[0]
  axes["conv1/kernel"] = (None, None, None, stream)
  bn("bn1", stream)
  for stage in range(3):
    for i in range(n):
      block, planes = f"layer{stage + 1}_{i}", widths[stage + 1]
      stride = 2 if stage > 0 and i == 0 else 1
      inner = f"{block}_inner"
      out = stream
      if stride != 1 or width != planes:
        out = f"stream_{block}"
        axes[f"{block}/downsample_conv/kernel"] = (None, None, stream, out)
        bn(f"{block}/downsample_bn", out)
      axes[f"{block}/conv1/kernel"] = (None, None, stream, inner)
      bn(f"{block}/bn1", inner)
      axes[f"{block}/conv2/kernel"] = (None, None, inner, out)
      bn(f"{block}/bn2", out)
      stream, width = out, planes
  axes["fc/kernel"] = (stream, None)
  axes["fc/bias"] = (None,)
  return PermutationSpec(axes)


def permutation_spec(model: Any) -> PermutationSpec:
  """The :class:`PermutationSpec` of a zoo model (:class:`kdjax.models.MLP`,
  :class:`kdjax.models.CNN1D`, :class:`kdjax.models.CifarResNet`, :class:`kdjax.models.VGG`,
  :class:`kdjax.models.WideResNet`).

  Raises:
    ValueError: for a model without one.
  """
  from kdjax.models import CNN1D, MLP, VGG, CifarResNet, WideResNet
  if isinstance(model, MLP):
    return mlp_permutation_spec(len(model.hidden))
  if isinstance(model, CNN1D):
    return cnn1d_permutation_spec(tuple(model.channels), model.num_classes)
  if isinstance(model, CifarResNet):
    return cifar_resnet_permutation_spec(model.depth, tuple(model.widths))
  if isinstance(model, VGG):
    return vgg_permutation_spec(model.widths)
  if isinstance(model, WideResNet):
    return wrn_permutation_spec(model.depth, model.widen_factor)
  raise ValueError(f"permutation_spec: no spec for {type(model).__name__} (known: MLP, "
                   "CNN1D, CifarResNet, VGG, WideResNet)")


def _permuted(flat: dict, spec: PermutationSpec, perms: dict[str, np.ndarray],
              skip: str | None = None) -> dict:
  out = {}
  for path, value in flat.items():
    shape = value.shape
    value = _view(spec, path, value)
    for axis, name in enumerate(spec.axes.get(path, ())):
      if name is not None and name != skip:
        value = np.take(value, perms[name], axis=axis)
    out[path] = value.reshape(shape)
  return out


def _view(spec: PermutationSpec, path: str, value: np.ndarray) -> np.ndarray:
  return value.reshape(spec.views[path]) if path in spec.views else value


def permutation_align(reference: Any, params: Any, spec: PermutationSpec, *,
                      max_iter: int = 100, seed: int = 0) -> Any:
  """``params`` with its hidden units permuted to match ``reference`` (module docstring);
  the result computes the same function as ``params``. Full variables
  (``{"params": ..., "batch_stats": ...}``) are accepted: the permutations are found on the
  params, and a BatchNorm's ``mean`` / ``var`` follow its ``scale``.

  Raises:
    ValueError: if ``spec`` names a path the params lack, or the two trees differ.
  """
  if isinstance(params, dict) and "params" in params:
    perms = _find_permutations(reference["params"], params["params"], spec, max_iter, seed)
    out = {"params": _apply(params["params"], spec, perms)}
    for collection, tree in params.items():
      if collection != "params":
        stats_axes = {path: spec.axes.get(path.rpartition("/")[0] + "/scale", (None,))
                      for path in traverse_util.flatten_dict(dict(tree), sep="/")}
        out[collection] = _apply(tree, PermutationSpec(stats_axes), perms)
    return out
  return _apply(params, spec, _find_permutations(reference, params, spec, max_iter, seed))


def _apply(tree: Any, spec: PermutationSpec, perms: dict[str, np.ndarray]) -> Any:
  leaves = traverse_util.flatten_dict(dict(tree), sep="/")
  moved = _permuted({k: np.asarray(v) for k, v in leaves.items()}, spec, perms)
  out = {k: np.asarray(moved[k], np.asarray(leaves[k]).dtype) for k in leaves}
  return jax.tree.map(np.asarray, traverse_util.unflatten_dict(out, sep="/"))


def _find_permutations(reference: Any, params: Any, spec: PermutationSpec, max_iter: int,
                       seed: int) -> dict[str, np.ndarray]:
  from scipy.optimize import linear_sum_assignment
  flat_ref = {k: np.asarray(v, np.float64) for k, v in
              traverse_util.flatten_dict(dict(reference), sep="/").items()}
  flat = {k: np.asarray(v, np.float64) for k, v in
          traverse_util.flatten_dict(dict(params), sep="/").items()}
  if set(flat_ref) != set(flat) or any(flat[k].shape != flat_ref[k].shape for k in flat):
    raise ValueError("permutation_align: reference and params have different trees or shapes")
  missing = sorted(set(spec.axes) - set(flat))
  if missing:
    raise ValueError(f"permutation_align: the spec names params {missing[:3]} the model lacks")
  groups = spec.perms
  try:
    sizes = spec.sizes(flat)
  except ValueError as e:
    raise ValueError(f"permutation_align: a param does not fit its spec view: {e}") from None
  perms = {name: np.arange(n) for name, n in sizes.items()}
  rng = np.random.default_rng(seed)
  for _ in range(max_iter):
    improved = False
    for name in rng.permutation(sorted(groups)):
      n = sizes[name]
      others = _permuted(flat, spec, perms, skip=name)
      cost = np.zeros((n, n))
      for path, axis in groups[name]:
        a = np.moveaxis(_view(spec, path, flat_ref[path]), axis, 0).reshape(n, -1)
        b = np.moveaxis(_view(spec, path, others[path]), axis, 0).reshape(n, -1)
        cost += a @ b.T
      _, new = linear_sum_assignment(cost, maximize=True)
      old_score = np.trace(cost[:, perms[name]])
      new_score = np.trace(cost[:, new])
      if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
        perms[name], improved = new, True
    if not improved:
      break
  return perms


def repair_batch_norm(model: Any, variables: Any, batches) -> Any:
  """``variables`` with every BatchNorm's ``mean`` / ``var`` re-estimated on ``batches``
  (``{"x": ...}`` dicts, training data): the model runs in training mode (each BatchNorm
  normalising by its batch's statistics, as the members' own running averages were formed)
  and each BatchNorm's input statistics are averaged over all batches (biased variance, as
  flax keeps it). For a merged or aligned-and-averaged BatchNorm network, whose averaged
  running statistics no longer describe its activations ("resetting BatchNorm", Ainsworth
  et al. 2023; Jordan et al., "REPAIR", ICLR 2023).

  Raises:
    ValueError: if ``variables`` has no ``batch_stats`` or ``batches`` is empty.
  """
  import flax.linen as nn
  import jax.numpy as jnp

  if "batch_stats" not in variables:
    raise ValueError("repair_batch_norm: the variables have no batch_stats (no BatchNorm)")

  @jax.jit
  def sums(v, x):
    found = {}

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
        h = args[0].astype(jnp.float32)
        h = h.reshape(-1, h.shape[-1])
        found["/".join(context.module.path)] = (jnp.sum(h, 0), jnp.sum(h * h, 0),
                                                jnp.asarray(h.shape[0], jnp.float32))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      model.apply(v, x, train=True, mutable=["batch_stats"])
    return found

  total = None
  for batch in batches:
    s = sums(variables, jnp.asarray(batch["x"]))
    total = s if total is None else jax.tree.map(jnp.add, total, s)
  if total is None:
    raise ValueError("repair_batch_norm: no batches")
  stats = traverse_util.flatten_dict(dict(variables["batch_stats"]), sep="/")
  for path, (s1, s2, n) in total.items():
    mean = s1 / n
    stats[f"{path}/mean"] = np.asarray(mean, np.asarray(stats[f"{path}/mean"]).dtype)
    stats[f"{path}/var"] = np.asarray(jnp.maximum(s2 / n - mean * mean, 0.0),
                                      np.asarray(stats[f"{path}/var"]).dtype)
  return {**variables, "batch_stats": traverse_util.unflatten_dict(stats, sep="/")}
