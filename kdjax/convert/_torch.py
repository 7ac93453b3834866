"""PyTorch checkpoints -> variables of kdjax zoo models. PyTorch itself is optional: only
:func:`load_pth` imports it, lazily."""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.convert._mapping import convert_state_dict, to_numpy
from kdjax.convert._rules import RULES
from kdjax.models import MODELS, get_model


def torch_state_dict(name: str, state_dict: Mapping[str, Any], *, num_classes: int,
                     input_shape: Sequence[int] = (32, 32, 3)) -> dict[str, Any]:
  """Variables of ``get_model(name, num_classes=num_classes)`` from a PyTorch ``state_dict``.

  The ``state_dict`` is in the layout of the architecture's reference implementation
  (RepDistiller / mdistiller for the CIFAR models, torchvision for ``resnet18/34/50``). The
  converted model, applied in eval mode (``train=False``) to NHWC inputs ``x``, gives the
  logits the PyTorch model gives in ``eval()`` mode on ``x.transpose(0, 3, 1, 2)``.
  Keys prefixed with ``module.`` (``torch.nn.DataParallel``) are accepted.

  Args:
    name: a zoo name of :data:`kdjax.models.MODELS` (e.g. ``"resnet32x4"``).
    state_dict: parameter/buffer names -> ``torch.Tensor`` or NumPy arrays.
    num_classes: classifier outputs (must match the checkpoint's).
    input_shape: ``(H, W, C)`` used to trace the model's variable shapes (only ``C`` matters
      for the shapes).

  Returns:
    ``{"params": ..., "batch_stats": ...}`` (``jax.Array`` leaves, float32).

  Raises:
    ValueError: ``name`` has no PyTorch layout, or the ``state_dict`` does not fit (one line
      naming unexpected keys, unfilled variables and shape mismatches).
  """
  model = get_model(name, num_classes=num_classes)
  rules = RULES.get(type(model))
  if rules is None:
    known = sorted(n for n, f in MODELS.items() if getattr(f, "func", f) in RULES)
    raise ValueError(f"torch_state_dict: model {name!r} has no PyTorch layout; convertible: {known}")
  if state_dict and all(k.startswith("module.") for k in state_dict):
    state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), x)
  variables = convert_state_dict(state_dict, rules, abstract,
                                 what=f"{name!r} (num_classes={num_classes})")
  return jax.tree.map(jnp.asarray, variables)


def load_pth(path: str, *, key: str | None = None) -> dict[str, Any]:
  """Reads a PyTorch checkpoint file into a ``state_dict`` of NumPy arrays.

  Uses ``torch.load(path, map_location="cpu", weights_only=True)`` (no code in the file is
  run). A checkpoint that wraps the ``state_dict`` (RepDistiller and mdistiller save
  ``{"model": state_dict, ...}``) is unwrapped: ``key`` if given, else the first of
  ``"state_dict"``, ``"model"``, ``"net"`` that holds a mapping.

  Args:
    path: ``.pth`` / ``.pt`` file.
    key: entry of the checkpoint that holds the ``state_dict``.

  Returns:
    Names -> NumPy arrays, ready for :func:`torch_state_dict`.

  Raises:
    ImportError: PyTorch is not installed (``pip install 'kdjax[torch]'``).
    ValueError: no ``state_dict`` of tensors found in the file.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("load_pth needs PyTorch: pip install 'kdjax[torch]' (CPU torch is enough)") from e
  checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"load_pth: {path} holds a {type(checkpoint).__name__}, not a state_dict")
  if key is not None:
    if key not in checkpoint:
      raise ValueError(f"load_pth: {path} has no entry {key!r}; entries: {sorted(checkpoint)[:20]}")
    checkpoint = checkpoint[key]
  elif not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
    wrapped = [k for k in ("state_dict", "model", "net") if isinstance(checkpoint.get(k), Mapping)]
    if not wrapped:
      raise ValueError(f"load_pth: {path} is not a state_dict of tensors and has no 'state_dict', "
                       f"'model' or 'net' entry; entries: {sorted(map(str, checkpoint))[:20]}")
    checkpoint = checkpoint[wrapped[0]]
  bad = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
  if bad:
    raise ValueError(f"load_pth: entries of {path} that are not tensors: {bad[:10]}")
  return {k: to_numpy(v) for k, v in checkpoint.items()}
