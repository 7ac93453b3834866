"""Model registry (a literal dict) and helpers to read named features."""

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from kdjax.models._adapters import flat_features
from kdjax.models._cnn1d import CNN1D
from kdjax.models._mlp import MLP

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn1d": CNN1D,
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds the model registered as ``name`` with ``kwargs`` as its fields.

  Raises:
    ValueError: if ``name`` is unknown (the message lists the known names) or a
      keyword is not a field of that model.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {sorted(MODELS)}")
  cls = MODELS[name]
  fields = set(cls.__dataclass_fields__) - {"parent", "name"}
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f"Model {name!r} has no field(s) {sorted(unknown)}; its fields: {sorted(fields)}")
  return cls(**kwargs)


def apply_with_features(model: nn.Module, params: Any, x: jax.Array,
                        **kwargs: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Runs ``model`` and returns ``(logits, features)``.

  ``features`` maps each name the model sows into ``"intermediates"`` to its array,
  under its path from the top module (``"penultimate"``, ``"block_2"``; a name sown
  inside submodule ``stage_1`` is ``"stage_1/name"``). ``params`` may also be full
  variables ``{"params": ..., "batch_stats": ...}`` (run as in evaluation).
  """
  variables = params if isinstance(params, dict) and "params" in params else {"params": params}
  logits, state = model.apply(variables, x, mutable=["intermediates"], **kwargs)
  return logits, flat_features(state.get("intermediates", {}))


def count_params(params: Any) -> int:
  """Number of scalar parameters in a pytree."""
  return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
