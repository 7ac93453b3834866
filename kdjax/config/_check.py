"""Checks of a config before any compute: known fields of the right types, settings that
cannot work together, the number of steps. Each failure is one line naming the field."""

import copy
import difflib
from typing import Any

import ml_collections

from kdjax.config._defaults import default_config

# Sub-trees whose keys are free-form (loss labels, loader or model keyword arguments).
FREE_FORM = ("losses", "data.kwargs", "model", "init.mapping")


def _type_ok(default: Any, value: Any) -> bool:
  if default is None or value is None:
    return True  # optional / FieldReference(None) fields take any type
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def check_fields(config: ml_collections.ConfigDict,
                 defaults: ml_collections.ConfigDict | None = None) -> None:
  """Every field of ``config`` must exist in :func:`kdjax.training.default_config` with a
  value of the same type (an int where a float is expected is fine).

  Raises:
    ValueError: ``config has unknown field 'optimizer.momentun' (did you mean 'momentum'?)``.
    TypeError: ``config.num_steps must be an int, got '10' (str)``.
  """
  defaults = default_config() if defaults is None else defaults

  def walk(node, ref, prefix):
    for key in node.keys():
      path = f"{prefix}{key}"
      if key not in ref:
        close = difflib.get_close_matches(key, list(ref.keys()), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"config has unknown field {path!r}{hint}; known fields of "
                         f"{prefix.rstrip('.') or 'config'}: {sorted(ref.keys())}")
      value, default = node[key], ref[key]
      if path in FREE_FORM:
        continue
      if isinstance(default, ml_collections.ConfigDict):
        if not isinstance(value, (ml_collections.ConfigDict, dict)):
          raise TypeError(f"config.{path} must be a group of fields, got {value!r}")
        walk(value if isinstance(value, ml_collections.ConfigDict)
             else ml_collections.ConfigDict(value), default, path + ".")
      elif not _type_ok(default, value):
        raise TypeError(f"config.{path} must be a {type(default).__name__}, got {value!r} "
                        f"({type(value).__name__})")

  walk(config, defaults, "")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Errors for settings that cannot work, before any compute is spent."""
  check_fields(config)  # unknown fields and wrong types
  if config.num_steps < 0 or config.num_epochs < 0 or not (config.num_steps or
                                                           config.num_epochs):
    raise ValueError(f"set num_steps > 0 or num_epochs > 0 (got num_steps={config.num_steps}, "
                     f"num_epochs={config.num_epochs})")
  per_call = config.steps_per_call or config.log_every
  if config.steps_per_call < 0 or config.log_every <= 0 or config.log_every % per_call:
    raise ValueError(f"log_every={config.log_every} must be a positive multiple of "
                     f"steps_per_call={config.steps_per_call} (0: log_every)")
  for name in ("eval_every", "checkpoint_every"):
    every = config[name]
    if every <= 0 or every % config.log_every:
      raise ValueError(f"{name}={every} must be a positive multiple of log_every={config.log_every} "
                       "(evaluations and checkpoints fall on chunk boundaries)")


def resolve_num_steps(config: ml_collections.ConfigDict, train_size: int) -> int:
  """``num_epochs > 0`` takes precedence: ``num_epochs * (train_size // batch_size)``
  steps; ``num_steps`` must then be 0 (derive it) or that same number.

  Raises:
    ValueError: if both are set and disagree.
  """
  if not config.num_epochs:
    return config.num_steps
  per_epoch = train_size // config.batch_size
  derived = config.num_epochs * per_epoch
  if config.num_steps not in (0, derived) or not derived:
    raise ValueError(f"config.num_steps={config.num_steps} disagrees with config.num_epochs="
                     f"{config.num_epochs} x {per_epoch} steps an epoch ({train_size} examples, "
                     f"batch_size={config.batch_size}) = {derived}; set num_steps=0 to derive it, "
                     "or num_epochs=0 to train num_steps")
  return derived


def with_defaults(config: ml_collections.ConfigDict,
                  defaults: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """``defaults`` (:func:`kdjax.config.default_config`) with every field ``config`` sets laid
  over it: a config that sets only some fields gets the others' defaults, so code below
  reads ``config.teacher.member_axis`` and never ``.get(field, default)``. The free-form
  sub-trees (:data:`FREE_FORM`: loss terms, model and loader keyword arguments) are taken
  from ``config`` whole, never merged with the defaults' entries."""
  out = copy.deepcopy(default_config() if defaults is None else defaults)

  def lay(target, node, prefix):
    for key in node.keys():
      path, value = f"{prefix}{key}", node[key]
      if (key in target and isinstance(target[key], ml_collections.ConfigDict)
          and path not in FREE_FORM and isinstance(value, (ml_collections.ConfigDict, dict))):
        lay(target[key], value, path + ".")
      else:
        with target.ignore_type():
          target[key] = copy.deepcopy(value)

  lay(out, config, "")
  return out
