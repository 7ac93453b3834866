"""Loading ``configs/*.py`` files by path, as ``--config path.py:arg`` does."""

import importlib.util
import pathlib

import ml_collections

# The repository's configs/ folder (present in a source checkout / editable install).
CONFIG_ROOT = pathlib.Path(__file__).resolve().parent.parent / "configs"


def load_config(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file; relative paths are tried against the
  working directory, then the repository's ``configs/`` folder."""
  path = pathlib.Path(path)
  candidates = [path, CONFIG_ROOT / path, CONFIG_ROOT.parent / path]
  found = next((p for p in candidates if p.is_file()), None)
  if found is None:
    raise FileNotFoundError(f"Config file {str(path)!r} not found (looked in {[str(c) for c in candidates]})")
  spec = importlib.util.spec_from_file_location(f"kdjax_config_{found.stem}", found)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()
