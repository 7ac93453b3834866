"""Where generated data sets are cached."""

import os
import pathlib


def data_dir() -> pathlib.Path:
  """``$KDJAX_DATA_DIR`` if set, else ``~/.cache/kdjax``; created on first use."""
  path = pathlib.Path(os.environ.get("KDJAX_DATA_DIR", "~/.cache/kdjax")).expanduser()
  path.mkdir(parents=True, exist_ok=True)
  return path
