"""Data set registry (a literal dict) and the train/validation split."""

from typing import Any

import numpy as np

from kdjax.data._digits import load_digits
from kdjax.data._mnist1d import load_mnist1d
from kdjax.data._text import load_jsonl_tokens, load_stdlib_bytes

DATASETS = {
    "mnist1d": load_mnist1d,
    "digits": load_digits,
    # Token data (x: [N, T] or packed [N, 2, T], y: [N, T] next tokens; kdjax.data._text).
    "stdlib_bytes": load_stdlib_bytes,
    "jsonl": load_jsonl_tokens,
}


def load_dataset(name: str, *, val_size: int = 0, **kwargs: Any) -> dict[str, dict[str, np.ndarray]]:
  """Loads data set ``name`` as ``{"train", "test"[, "val"]}`` splits of ``{"x", "y"}``.

  ``val_size > 0`` carves the last ``val_size`` training examples into ``"val"``
  (the generated orders are already shuffled), for fusion fitting and early choices.
  """
  if name not in DATASETS:
    raise ValueError(f"Unknown data set {name!r}; known data sets: {sorted(DATASETS)}")
  splits = DATASETS[name](**kwargs)
  if val_size:
    train = splits["train"]
    n = len(train["y"])
    if not 0 < val_size < n:
      raise ValueError(f"val_size={val_size} must be between 0 and the {n} training examples")
    splits["val"] = {k: v[n - val_size:] for k, v in train.items()}
    splits["train"] = {k: v[:n - val_size] for k, v in train.items()}
  num_classes = splits.pop("num_classes", None)  # token data: the vocabulary size
  if num_classes is None:
    num_classes = int(max(s["y"].max() for s in splits.values())) + 1
  return {**splits, "num_classes": int(num_classes)}
