"""Loading ``configs/*.py`` files by path, as ``--config path.py:arg`` does."""

import importlib.util
import pathlib
from typing import Any

import ml_collections

# The repository's configs/ folder (present in a source checkout / editable install).
CONFIG_ROOT = pathlib.Path(__file__).resolve().parent.parent / "configs"


def override(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields, ``{"teacher.workdir": "runs/t", "num_steps": 10}``, as
  ``--config.teacher.workdir=runs/t`` would; an unknown field is an error."""
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    if leaf not in target:
      raise KeyError(f"config has no field {key!r}")
    target[leaf] = value
  return config


def load_config(path: str | pathlib.Path, arg: str | None = None,
                overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file, with dotted ``overrides`` applied (see
  :func:`override`); relative paths are tried against the working directory, then the
  repository's ``configs/`` folder."""
  path = pathlib.Path(path)
  candidates = [path, CONFIG_ROOT / path, CONFIG_ROOT.parent / path]
  found = next((p for p in candidates if p.is_file()), None)
  if found is None:
    raise FileNotFoundError(f"Config file {str(path)!r} not found (looked in {[str(c) for c in candidates]})")
  spec = importlib.util.spec_from_file_location(f"kdjax_config_{found.stem}", found)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg is not None else module.get_config()
  return override(config, overrides or {})
