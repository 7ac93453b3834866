"""MNIST-1D (Greydanus 2020), generated locally with ``mnist1d.data.make_dataset``.

The package's ``get_dataset`` downloads a pickle; we never call it. Generation is
deterministic in ``(num_samples, seed)`` and cached as ``.npz`` under
:func:`kdjax.data.data_dir`.
"""

import concurrent.futures
import os

import numpy as np

from kdjax.data._cache import data_dir

# Transfer sets are generated in chunks of this size, in parallel processes.
_CHUNK = 25_000


def _generate(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """All ``num_samples`` examples of one ``make_dataset`` draw (no split)."""
  from mnist1d.data import get_dataset_args, make_dataset  # slow import, used rarely

  args = get_dataset_args()
  args.num_samples = num_samples
  args.seed = seed
  args.train_split = 1.0
  data = make_dataset(args)
  return data["x"].astype(np.float32), data["y"].astype(np.int32)


def _cached(name: str, build) -> dict[str, np.ndarray]:
  path = data_dir() / name
  if path.exists():
    with np.load(path) as f:
      return dict(f)
  arrays = build()
  tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache file
  return arrays


def load_mnist1d(*, num_samples: int = 5000, train_split: float = 0.8,
                 seed: int = 42) -> dict[str, dict[str, np.ndarray]]:
  """MNIST-1D with the paper's defaults: 4,000 train / 1,000 test, 40 features, 10 classes.

  Returns:
    ``{"train": {"x": [N, 40] float32, "y": [N] int32}, "test": {...}}``.
  """
  def build():
    x, y = _generate(num_samples, seed)
    return {"x": x, "y": y}

  arrays = _cached(f"mnist1d_n{num_samples}_s{seed}.npz", build)
  split = int(len(arrays["y"]) * train_split)
  return {
      "train": {"x": arrays["x"][:split], "y": arrays["y"][:split]},
      "test": {"x": arrays["x"][split:], "y": arrays["y"][split:]},
  }


def load_mnist1d_transfer(*, num_samples: int = 100_000, seed: int = 1,
                          workers: int | None = None) -> dict[str, np.ndarray]:
  """An unlabelled transfer set: fresh MNIST-1D inputs drawn with another seed.

  Generated in chunks of 25,000 (chunk ``i`` uses seed ``seed * 1000 + i``) in up to
  ``workers`` processes (default: the CPU count), then cached. The true labels are kept
  as ``"oracle_y"`` for oracle baselines only; distillation never reads them.

  Returns:
    ``{"x": [num_samples, 40] float32, "oracle_y": [num_samples] int32}``.
  """
  def build():
    sizes = [min(_CHUNK, num_samples - start) for start in range(0, num_samples, _CHUNK)]
    seeds = [seed * 1000 + i for i in range(len(sizes))]
    n_workers = max(1, min(len(sizes), workers or os.cpu_count() or 1))
    if n_workers == 1:
      parts = [_generate(n, s) for n, s in zip(sizes, seeds)]
    else:
      with concurrent.futures.ProcessPoolExecutor(n_workers) as pool:
        parts = list(pool.map(_generate, sizes, seeds))
    return {"x": np.concatenate([p[0] for p in parts]),
            "oracle_y": np.concatenate([p[1] for p in parts])}

  return _cached(f"mnist1d_transfer_n{num_samples}_s{seed}.npz", build)
