"""Where the training batches of a chunk come from.

In-memory data sets (``config.data.source="local"``): the whole training arrays are on
the host; chunk ``[step, step + num)`` gathers its examples by deterministic indices
(:func:`kdjax.data.batch_indices`, a function of the seed and the step alone, so a
resumed run sees the same batches) and ships one ``[num, B, ...]`` block sharded over
the mesh. Cached teacher targets ride along as ``batch["teacher_logits"]``.
"""

from typing import Any

import numpy as np

from kdjax import data as kd_data


def load_training_inputs(config, splits, objective) -> tuple[np.ndarray, np.ndarray | None]:
  """Training inputs and labels; with a transfer set, the inputs only (unlabelled)."""
  x, y = splits["train"]["x"], splits["train"]["y"]
  if not config.transfer.num_samples and not config.transfer.fresh:
    return x, y
  if config.data.name != "mnist1d":
    raise ValueError(f"A generated transfer set exists for mnist1d only, not {config.data.name!r}")
  if objective.needs_labels:
    raise ValueError("config.transfer adds unlabelled inputs, but the objective needs labels "
                     "(set hinton_kd alpha=1 or config.transfer.num_samples=0)")
  if config.transfer.fresh:  # new inputs every step: kdjax.training._fresh.FreshChunks
    return x, None
  transfer = kd_data.load_mnist1d_transfer(num_samples=config.transfer.num_samples,
                                           seed=config.transfer.seed)
  return np.concatenate([x, transfer["x"]]), None


class InMemoryBatches:
  """``chunk(step, num)``: the device-placed ``[num, B, ...]`` batches of steps
  ``step .. step + num - 1`` (this host's slice of each global batch).

  Args:
    x, y: training inputs ``[N, ...]`` and labels ``[N]`` (``None``: unlabelled).
    teacher_cache: ``[N, C]`` teacher targets per example, or ``None``.
    batch_size: the global batch size.
    seed: the order's seed.
    mesh: the data mesh.
  """

  def __init__(self, x: np.ndarray, y: np.ndarray | None, *, teacher_cache: Any = None,
               batch_size: int, seed: int, mesh):
    self.x, self.y, self.teacher_cache = x, y, teacher_cache
    self.batch_size, self.seed, self.mesh = batch_size, seed, mesh

  def __len__(self) -> int:
    return len(self.x)

  def chunk(self, step: int, num: int) -> dict[str, Any]:
    idx = kd_data.batch_indices(len(self.x), batch_size=self.batch_size, start_step=step,
                                num_steps=num, seed=self.seed)
    idx = kd_data.host_slice(idx)
    batch = {"x": self.x[idx]}
    if self.y is not None:
      batch["y"] = self.y[idx]
    if self.teacher_cache is not None:
      batch["teacher_logits"] = self.teacher_cache[idx]
    return kd_data.shard_batch(batch, self.mesh, batch_axis=1)
