"""Deterministic, resumable batching and placement of batches on a device mesh.

The order of examples depends only on ``(seed, epoch)``: the batch a run sees at step
``s`` is the same whether or not it was restarted, so a resumed run reproduces an
uninterrupted one exactly.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
  """The shuffled order of epoch ``epoch``: a permutation keyed by ``(seed, epoch)``."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(num_examples: int, *, batch_size: int, start_step: int, num_steps: int,
                  seed: int) -> np.ndarray:
  """Example indices of steps ``start_step .. start_step + num_steps - 1``.

  Epochs drop their last partial batch; each epoch is a fresh permutation.

  Returns:
    ``[num_steps, batch_size]`` int64 indices.
  """
  steps_per_epoch = num_examples // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size={batch_size} is larger than the data set ({num_examples} examples)")
  out = np.empty((num_steps, batch_size), dtype=np.int64)
  for i, step in enumerate(range(start_step, start_step + num_steps)):
    epoch, pos = divmod(step, steps_per_epoch)
    if i == 0 or pos == 0:
      perm = epoch_permutation(num_examples, seed=seed, epoch=epoch)
    out[i] = perm[pos * batch_size:(pos + 1) * batch_size]
  return out


def host_slice(indices: np.ndarray, *, process_index: int | None = None,
               process_count: int | None = None) -> np.ndarray:
  """This host's contiguous slice of the last (batch) axis of global ``indices``."""
  pid = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  per_host, rem = divmod(indices.shape[-1], count)
  if rem:
    raise ValueError(f"global batch {indices.shape[-1]} is not divisible by {count} hosts")
  return indices[..., pid * per_host:(pid + 1) * per_host]


def shard_batch(local_batch, mesh: Mesh, *, batch_axis: int = 0, axis: str = "data"):
  """Places a host-local batch pytree as global arrays sharded along ``batch_axis``.

  With several hosts each feeds its own slice (see :func:`host_slice`) and the global
  batch is their concatenation.
  """
  def place(x):
    spec = [None] * np.ndim(x)
    spec[batch_axis] = axis
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(*spec)), np.asarray(x))

  return jax.tree.map(place, local_batch)
