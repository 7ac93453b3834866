"""Loading ``configs/*.py`` files by path, as ``--config path.py:arg`` does.

The repository's ``configs/`` folder ships inside the package as ``kdjax/_configs`` (a
symbolic link in the source tree; real files in a wheel), so ``kdjax demo`` and
``--config configs/mnist1d/teacher_cnn.py`` work from any folder after a plain
``pip install``.
"""

import importlib.util
import pathlib
from typing import Any

import ml_collections

# The configs shipped with the package (the repository's configs/ folder).
CONFIG_ROOT = pathlib.Path(__file__).parent.parent / "_configs"


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


def resolve_config_path(path: str | pathlib.Path) -> pathlib.Path:
  """A config file: ``path`` itself if it exists (relative to the working directory),
  else the shipped config of that name: ``mnist1d/mlp.py`` and ``configs/mnist1d/mlp.py``
  both name ``kdjax/_configs/mnist1d/mlp.py``.

  Raises:
    FileNotFoundError: naming every place looked in.
  """
  path = pathlib.Path(path)
  candidates = [path, CONFIG_ROOT / path]
  if not path.is_absolute() and path.parts[:1] == ("configs",):
    candidates.append(CONFIG_ROOT.joinpath(*path.parts[1:]))
  found = next((p for p in candidates if p.is_file()), None)
  if found is None:
    raise FileNotFoundError(f"Config file {str(path)!r} not found (looked in "
                            f"{[str(c) for c in candidates]})")
  return found


def load_module(path: str | pathlib.Path):
  """The Python module of a config file (found by :func:`resolve_config_path`)."""
  found = resolve_config_path(path)
  spec = importlib.util.spec_from_file_location(f"kdjax_config_{found.stem}", found)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def check_config_arg(module, arg: str | None, name: str) -> None:
  """``arg`` (``"labelled,smoke"``) must be comma-separated words of the file's ``ARGS``
  (a word ending in ``=`` takes a value: ``"k="`` accepts ``k=8``).

  Raises:
    ValueError: ``config argument 'smok' of mnist1d/teacher_cnn.py: accepted words:
      'smoke' (comma-separated)``.
  """
  accepted = tuple(getattr(module, "ARGS", ()))
  words = [w for w in (arg or "").split(",") if w]
  bad = [w for w in words if not any(w == a or (a.endswith("=") and w.startswith(a))
                                     for a in accepted)]
  if bad or len(set(words)) < len(words):
    what = f"unknown word {bad[0]!r}" if bad else "a repeated word"
    listed = ", ".join(repr(a) for a in accepted) or "none (the file takes no argument)"
    raise ValueError(f"config argument {arg!r} of {name}: {what}; accepted words: {listed} "
                     "(comma-separated)")


def load_config(path: str | pathlib.Path, arg: str | None = None,
                overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file (found by :func:`resolve_config_path`; ``arg``
  checked by :func:`check_config_arg`), with dotted ``overrides`` applied (see
  :func:`override`)."""
  module = load_module(path)
  check_config_arg(module, arg, str(path))
  config = module.get_config(arg) if arg is not None else module.get_config()
  return override(config, overrides or {})
