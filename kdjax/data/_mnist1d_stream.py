"""Fresh MNIST-1D inputs every step: the procedural generator, vectorised and seekable.

MNIST-1D (Greydanus 2020) draws every example from one of ten 12-point templates by a fixed
chain of random transforms (``mnist1d.transform.transform``): pad with
:math:`p \\sim U\\{36..60\\}` zeros, stretch linearly to 72 points, scale by
:math:`1 + 0.4 (u - \\tfrac12)`, roll by :math:`k \\sim U\\{0..47\\}`, fill the zeros with
correlated noise :math:`G_{\\sigma=2} * (0.25\\,\\epsilon)`, add :math:`0.02\\,\\epsilon'`,
shear by :math:`-0.75 (u' - \\tfrac12)\\,\\mathrm{linspace}(-\\tfrac12, \\tfrac12)`, and
subsample linearly to 40 points; the data set is then standardised with its own mean and
standard deviation. :func:`mnist1d_transform_batch` runs that chain on a whole batch at once
from explicit random draws (equal to the package's per-example loop given the same draws);
:class:`FreshMNIST1D` draws them from ``numpy.random.default_rng([seed, step])``, so batch
``step`` is a pure function of ``(seed, step)``: a run resumed at step ``s`` sees exactly the
inputs it would have seen, whatever the chunking. Standardisation uses the mean and standard
deviation of a fixed reference draw of the same generator (``FreshMNIST1D.stats``).

References:
  Greydanus, "Scaling down deep learning with MNIST-1D", ICML 2024 (arXiv:2011.14439);
  https://github.com/greydanus/mnist1d (``mnist1d/transform.py``).
"""

import functools
from typing import Iterator

import numpy as np

_TEMPLATE_LEN = 12
_PADDING = (36, 60)
_SCALE_COEFF = 0.4
_MAX_TRANSLATION = 48
_CORR_NOISE = 0.25
_IID_NOISE = 2e-2
_SHEAR = 0.75
_FINAL_LEN = 40
_EPS = 1e-8
_WIDE = _TEMPLATE_LEN + _PADDING[1]  # 72 points after the stretch
_STATS_SAMPLES = 20_000              # reference draw for the standardisation constants


@functools.cache
def _templates() -> np.ndarray:
  from mnist1d.data import get_templates  # the package's ten digit templates, [10, 12]
  return np.asarray(get_templates()["x"], np.float64)


def _stretch(x: np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
  """Row ``i``'s first ``lengths[i]`` points linearly resampled to ``n`` points (as
  ``scipy.interpolate.interp1d(linspace(0, 1, L), x)(linspace(0, 1, n))``)."""
  pos = np.linspace(0.0, 1.0, n)[None, :] * (lengths[:, None] - 1)
  lo = np.minimum(np.floor(pos).astype(np.int64), lengths[:, None] - 2)
  frac = pos - lo
  rows = np.arange(x.shape[0])[:, None]
  return x[rows, lo] * (1 - frac) + x[rows, lo + 1] * frac


def mnist1d_transform_batch(labels: np.ndarray, *, pad: np.ndarray, scale: np.ndarray,
                            shift: np.ndarray, corr_noise: np.ndarray, iid_noise: np.ndarray,
                            shear: np.ndarray) -> np.ndarray:
  """MNIST-1D's transform chain on a batch, from explicit draws (before standardisation).

  Args:
    labels: ``[B]`` int digit classes 0..9 (which template).
    pad: ``[B]`` uniforms in [0, 1): :math:`p = 36 + \\lfloor 25 u \\rfloor` padded zeros.
    scale: ``[B]`` uniforms: amplitude factor :math:`1 + 0.4 (u - 0.5)`.
    shift: ``[B]`` ints in [0, 48): circular shift to the right.
    corr_noise: ``[B, 72]`` standard normals, smoothed (Gaussian, sigma 2) into the zeros.
    iid_noise: ``[B, 72]`` standard normals, added everywhere (times 0.02).
    shear: ``[B]`` uniforms: slope :math:`0.75 (u - 0.5)`.

  Returns:
    ``[B, 40]`` float64, what ``mnist1d.transform.transform`` returns for those draws.
  """
  from scipy.ndimage import gaussian_filter1d

  b = labels.shape[0]
  p = _PADDING[0] + (pad * (_PADDING[1] - _PADDING[0] + 1)).astype(np.int64)
  padded = np.zeros((b, _WIDE))
  padded[:, :_TEMPLATE_LEN] = _templates()[labels] + _EPS
  x = _stretch(padded, _TEMPLATE_LEN + p, _WIDE)
  x = x * (1 + _SCALE_COEFF * (scale - 0.5))[:, None]
  cols = (np.arange(_WIDE)[None, :] - shift[:, None]) % _WIDE
  x = np.take_along_axis(x, cols, axis=1)
  noise = gaussian_filter1d(_CORR_NOISE * corr_noise, 2.0, axis=1)
  x = np.where(x != 0, x, noise) + _IID_NOISE * iid_noise
  x = x - (_SHEAR * (shear - 0.5))[:, None] * np.linspace(-0.5, 0.5, _WIDE)[None, :]
  return _stretch(x, np.full(b, _WIDE), _FINAL_LEN)


def _draw(rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  labels = rng.integers(0, 10, batch_size)
  x = mnist1d_transform_batch(
      labels, pad=rng.random(batch_size), scale=rng.random(batch_size),
      shift=rng.integers(0, _MAX_TRANSLATION, batch_size),
      corr_noise=rng.standard_normal((batch_size, _WIDE)),
      iid_noise=rng.standard_normal((batch_size, _WIDE)), shear=rng.random(batch_size))
  return x, labels


@functools.cache
def _reference_stats() -> tuple[float, float]:
  x, _ = _draw(np.random.default_rng([0x5EED, 0]), _STATS_SAMPLES)
  return float(x.mean()), float(x.std())


class FreshMNIST1D:
  """New unlabelled MNIST-1D inputs for every training step, a pure function of
  ``(seed, step)``.

  Args:
    seed: stream seed (use another seed than the labelled data's generator).
    batch_size: inputs per step.

  ``batch(step)`` is ``[batch_size, 40]`` float32, standardised like ``make_dataset``'s
  output; ``chunk(start, num)`` stacks steps ``start .. start + num - 1`` to
  ``[num, batch_size, 40]``. The true classes (``batch(step, labels=True)``) are for
  oracle baselines and tests only.
  """

  def __init__(self, seed: int, batch_size: int):
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.seed, self.batch_size = int(seed), int(batch_size)

  @property
  def stats(self) -> tuple[float, float]:
    """Mean and standard deviation used to standardise (of a fixed 20,000-input draw)."""
    return _reference_stats()

  def batch(self, step: int, labels: bool = False):
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    x, y = _draw(np.random.default_rng([self.seed, int(step)]), self.batch_size)
    mean, std = self.stats
    x = ((x - mean) / std).astype(np.float32)
    return (x, y.astype(np.int32)) if labels else x

  def chunk(self, start: int, num: int) -> np.ndarray:
    return np.stack([self.batch(s) for s in range(start, start + num)])

  def __iter__(self) -> Iterator[np.ndarray]:
    step = 0
    while True:
      yield self.batch(step)
      step += 1
