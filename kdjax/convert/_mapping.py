"""Generic PyTorch ``state_dict`` -> Flax variables mapping, driven by per-family name rules.

A rule maps one PyTorch module name (``"layer1.0.conv1"``) to one Flax module path
(``"layer1_0/conv1"``). The module's kind comes from its tensors: BatchNorm (has
``running_mean``), convolution (4-D ``weight``) or linear (2-D ``weight``). Layout changes:

- ``Conv2d.weight`` ``[O, I/g, kh, kw]`` (OIHW) -> ``Conv.kernel`` ``[kh, kw, I/g, O]`` (HWIO);
- ``Linear.weight`` ``[out, in]`` -> ``Dense.kernel`` ``[in, out]``;
- ``BatchNorm2d`` ``weight, bias`` -> ``params`` ``scale, bias``; ``running_mean, running_var``
  -> ``batch_stats`` ``mean, var``; ``num_batches_tracked`` is dropped.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

# Flax leaf -> the PyTorch leaf it comes from (for error messages).
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
# (PyTorch module-name pattern, Flax module path template or function of the match).
Rule = tuple[str, str | Callable[[re.Match], str]]


def to_numpy(value: Any) -> np.ndarray:
  """A torch tensor (any device; float16/bfloat16 become float32) or array-like as NumPy."""
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _flax_module(module: str, rules: Sequence[Rule]) -> str | None:
  for pattern, target in rules:
    match = re.fullmatch(pattern, module)
    if match:
      return target(match) if callable(target) else match.expand(target)
  return None


_BATCH_NORM = {"weight": "params/scale", "bias": "params/bias",
               "running_mean": "batch_stats/mean", "running_var": "batch_stats/var"}


def _convert_module(leaves: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """Flax variables (``"params/kernel"`` etc., relative to the module) of one PyTorch module,
  and the leaves that fit no conv, linear or BatchNorm layer."""
  leaves = {k: v for k, v in leaves.items() if k != "num_batches_tracked"}
  if {"running_mean", "running_var"} & set(leaves):
    out = {_BATCH_NORM[k]: v for k, v in leaves.items() if k in _BATCH_NORM}
    return out, [k for k in leaves if k not in _BATCH_NORM]
  out, weight = {}, leaves.get("weight")
  if weight is not None and weight.ndim == 4:
    out["params/kernel"] = weight.transpose(2, 3, 1, 0)
  elif weight is not None and weight.ndim == 2:
    out["params/kernel"] = weight.T
  if out and "bias" in leaves:
    out["params/bias"] = leaves["bias"]
  return out, [k for k in leaves if not out or k not in ("weight", "bias")]


def _listing(items: Sequence[str], limit: int = 6) -> str:
  shown = ", ".join(items[:limit])
  return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"


def convert_state_dict(state_dict: Mapping[str, Any], rules: Sequence[Rule],
                       abstract_variables: Mapping[str, Any], *, what: str) -> dict[str, Any]:
  """Maps a PyTorch ``state_dict`` onto the variables of a Flax model.

  Args:
    state_dict: PyTorch parameter and buffer names -> tensors or arrays.
    rules: PyTorch module name -> Flax module path rules, first match wins.
    abstract_variables: the model's variables (arrays or ``jax.ShapeDtypeStruct``, e.g. from
      ``jax.eval_shape(model.init, ...)``), nested dicts with ``"params"`` and possibly
      ``"batch_stats"``; fixes the target names, shapes and dtypes.
    what: the model, named in errors.

  Returns:
    Nested dicts of NumPy arrays with exactly the structure of ``abstract_variables``.

  Raises:
    ValueError: one line naming the unexpected PyTorch keys, the Flax variables no key
      filled, and the shape mismatches.
  """
  expected = traverse_util.flatten_dict(dict(abstract_variables), sep="/")
  modules: dict[str, dict[str, np.ndarray]] = {}
  for key, value in state_dict.items():
    module, _, leaf = key.rpartition(".")
    modules.setdefault(module, {})[leaf] = to_numpy(value)
  converted: dict[str, np.ndarray] = {}
  sources: dict[str, str] = {}
  unexpected, mismatched = [], []
  for module, leaves in modules.items():
    target = _flax_module(module, rules)
    if target is None:
      unexpected += [f"{module}.{leaf}" for leaf in leaves if leaf != "num_batches_tracked"]
      continue
    variables, unknown = _convert_module(leaves)
    unexpected += [f"{module}.{leaf}" for leaf in unknown]
    for name, array in variables.items():
      collection, leaf = name.split("/")
      path = f"{collection}/{target}/{leaf}"
      source = f"{module}.{_TORCH_LEAF.get(leaf, leaf)}"
      if path in converted:  # two PyTorch modules for one Flax module
        unexpected.append(f"{source} (-> {path}, already filled by {sources[path]})")
        continue
      converted[path], sources[path] = array, source
  unexpected += [f"{sources[p]} (-> {p})" for p in converted if p not in expected]
  missing = [p for p in expected if p not in converted]
  for path, array in converted.items():
    if path in expected and tuple(array.shape) != tuple(expected[path].shape):
      mismatched.append(f"{sources[path]} -> {path}: {tuple(array.shape)} vs {tuple(expected[path].shape)}")
  problems = []
  if unexpected:
    problems.append(f"unexpected PyTorch keys {_listing(sorted(unexpected))}")
  if missing:
    problems.append(f"no PyTorch key for Flax variables {_listing(missing)}")
  if mismatched:
    problems.append(f"shape mismatches (converted vs expected) {_listing(mismatched)}")
  if problems:
    raise ValueError(f"state_dict does not fit {what}: " + "; ".join(problems))
  return traverse_util.unflatten_dict(
      {tuple(p.split("/")): converted[p].astype(expected[p].dtype) for p in expected})
