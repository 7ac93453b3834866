"""scikit-learn's 8x8 digits (1,797 images), as a second small data set."""

import numpy as np


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """Digits scaled to [0, 1], flattened to 64 features, split with a seeded permutation.

  Returns:
    ``{"train": {"x": [N, 64] float32, "y": [N] int32}, "test": {...}}``.
  """
  from sklearn.datasets import load_digits as _load  # ships with scikit-learn, no download

  data = _load()
  x = (data.data / 16.0).astype(np.float32)
  y = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(y))
  n_test = int(round(len(y) * test_fraction))
  test, train = order[:n_test], order[n_test:]
  return {"train": {"x": x[train], "y": y[train]}, "test": {"x": x[test], "y": y[test]}}
