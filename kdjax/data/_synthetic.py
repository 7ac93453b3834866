"""A synthetic image data set of any shape, for benchmarks and pipeline tests."""

import numpy as np


class SyntheticSource:
  """Random-access source of ``{"image": uint8 [*shape], "label": int64}`` examples.

  Example ``i`` is drawn from ``np.random.default_rng([seed, i])``: the same in every
  process and run, generated on access (nothing is held in memory). It has the interface
  of a grain / ``tfds.data_source`` random-access source (``len`` and ``[i]``).

  Args:
    num_examples: number of examples.
    shape: image shape ``(H, W, C)``.
    num_classes: labels are uniform in ``[0, num_classes)``.
    seed: the draw.
  """

  def __init__(self, num_examples: int, shape: tuple[int, ...] = (32, 32, 3), *,
               num_classes: int = 10, seed: int = 0):
    if num_examples <= 0:
      raise ValueError(f"num_examples must be positive, got {num_examples}")
    if len(shape) != 3 or min(shape) <= 0:
      raise ValueError(f"shape must be (H, W, C) with positive sizes, got {shape}")
    if num_classes <= 0:
      raise ValueError(f"num_classes must be positive, got {num_classes}")
    self.num_examples, self.shape = int(num_examples), tuple(int(s) for s in shape)
    self.num_classes, self.seed = int(num_classes), int(seed)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} examples")
    rng = np.random.default_rng([self.seed, index])
    image = np.frombuffer(rng.bytes(int(np.prod(self.shape))), np.uint8).reshape(self.shape)
    return {"image": image.copy(), "label": np.int64(rng.integers(self.num_classes))}

  def __repr__(self) -> str:
    return (f"SyntheticSource(num_examples={self.num_examples}, shape={self.shape}, "
            f"num_classes={self.num_classes}, seed={self.seed})")
