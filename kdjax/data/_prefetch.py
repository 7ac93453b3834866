"""Background preparation of device batches, so the host works while the device computes.

A thread pulls host batches from an iterator, stacks ``steps_per_call`` of them into one
``[steps_per_call, b, ...]`` block when a jitted ``lax.scan`` runs several steps a call,
places them on the mesh (:func:`kdjax.data.shard_batch`: global arrays from each host's
local batch, ``NamedSharding`` over the batch axis), and queues ``buffer_size`` such blocks ahead of
the consumer. Each queued block carries the iterator state right after it, so
:meth:`DevicePrefetcher.get_state` is the position of what the consumer has taken, not of
what the thread has read ahead: checkpointing it resumes exactly.

This is ``flax.jax_utils.prefetch_to_device`` for ``jit`` + ``NamedSharding`` (that
helper targets ``pmap``), plus the checkpointable position.
"""

import queue
import threading
from typing import Any, Iterator

import numpy as np

from kdjax.data._batches import shard_batch

_DONE = object()


def stack_steps(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """``steps_per_call`` host batches stacked into one ``[steps, b, ...]`` block."""
  return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


class DevicePrefetcher:
  """Iterator of device-placed batches prepared ahead in a background thread.

  Args:
    iterator: host batches (dicts of NumPy arrays); if it has ``get_state`` (a
      :class:`kdjax.data.PipelineIterator`), :meth:`get_state` reports the consumed position.
    mesh: the device mesh; batches are sharded over ``axis`` along the batch axis (global
      arrays built from each host's local batch). ``None``: plain NumPy blocks (tests).
    buffer_size: blocks prepared ahead; 0 prepares each block in ``__next__`` (no overlap).
    steps_per_call: host batches per block; > 1 stacks them to ``[steps, b, ...]`` with the
      batch sharded on axis 1 (the layout of a ``lax.scan`` over steps).
    axis: the mesh axis of the batch.
  """

  def __init__(self, iterator: Iterator[dict[str, np.ndarray]], *, mesh=None,
               buffer_size: int = 2, steps_per_call: int = 1, axis: str = "data"):
    if buffer_size < 0:
      raise ValueError(f"buffer_size must be >= 0, got {buffer_size}")
    if steps_per_call < 1:
      raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
    self._it = iterator
    self._mesh, self._axis = mesh, axis
    self._steps = steps_per_call
    self._state = self._source_state()
    self._stop = threading.Event()
    self._queue: queue.Queue | None = None
    self._thread = None
    if buffer_size:
      self._queue = queue.Queue(maxsize=buffer_size)
      self._thread = threading.Thread(target=self._produce, daemon=True,
                                      name="kdjax-device-prefetch")
      self._thread.start()

  def _source_state(self):
    return self._it.get_state() if hasattr(self._it, "get_state") else None

  def _place(self, block: dict[str, np.ndarray]):
    if self._mesh is None:
      return block
    return shard_batch(block, self._mesh, batch_axis=1 if self._steps > 1 else 0,
                       axis=self._axis)

  def _next_block(self):
    """The next placed block and the source state after it; raises StopIteration."""
    batches = [next(self._it) for _ in range(self._steps)]
    block = batches[0] if self._steps == 1 else stack_steps(batches)
    return self._place(block), self._source_state()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self) -> None:
    try:
      while not self._stop.is_set():
        if not self._put(self._next_block()):
          return
    except StopIteration:
      self._put(_DONE)
    except BaseException as e:  # surfaced in the consumer's thread
      self._put(e)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Any]:
    if self._queue is None:
      block, self._state = self._next_block()
      return block
    item = self._queue.get()
    if item is _DONE:
      self._queue.put(_DONE)  # later calls stop too
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    block, self._state = item
    return block

  def get_state(self) -> Any:
    """The source's state after the last block returned by ``__next__``."""
    return self._state

  def close(self) -> None:
    """Stops the thread (the read-ahead blocks are dropped) and closes the source."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    close = getattr(self._it, "close", None)
    if close is not None:
      close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()
