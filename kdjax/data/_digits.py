"""scikit-learn's 8x8 digits (1,797 images), as a second small data set."""

from collections.abc import Sequence

import numpy as np


def load_digits(*, test_fraction: float = 0.2, seed: int = 0,
                image_shape: Sequence[int] | None = None) -> dict[str, dict[str, np.ndarray]]:
  """Digits scaled to [0, 1], flattened to 64 features, split with a seeded permutation.

  Args:
    test_fraction: share of the 1,797 images held out as ``"test"``.
    seed: seed of the split's permutation.
    image_shape: e.g. ``(8, 8, 1)`` to return NHWC images for a 2-D convnet instead of
      flat vectors (the 64 values in row-major order).

  Returns:
    ``{"train": {"x": [N, 64] (or [N, *image_shape]) float32, "y": [N] int32}, "test": {...}}``.
  """
  from sklearn.datasets import load_digits as _load  # ships with scikit-learn, no download

  data = _load()
  x = (data.data / 16.0).astype(np.float32)
  if image_shape is not None:
    image_shape = tuple(int(d) for d in image_shape)
    if int(np.prod(image_shape)) != x.shape[1]:
      raise ValueError(f"load_digits: image_shape={image_shape} must hold the {x.shape[1]} "
                       "pixels of a digit, e.g. (8, 8, 1)")
    x = x.reshape((len(x), *image_shape))
  y = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(y))
  n_test = int(round(len(y) * test_fraction))
  test, train = order[:n_test], order[n_test:]
  return {"train": {"x": x[train], "y": y[train]}, "test": {"x": x[test], "y": y[test]}}
