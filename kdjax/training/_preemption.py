"""Preemption notices: SIGTERM asks the run to checkpoint and stop at the next chunk
boundary.

A TPU VM (and most schedulers) sends SIGTERM some seconds before it takes the machine.
Python's default is to die at once (exit 143), losing everything since the last periodic
checkpoint. :class:`PreemptionGuard` records the notice instead; the loop checks it after
each chunk (``log_every`` steps run inside one ``lax.scan`` and cannot be cut short), saves
a checkpoint of that step, waits for it, and raises :class:`Preempted`; ``kdjax`` then
exits 0. A second SIGTERM while waiting kills the process as before.
"""

import signal
import threading

from absl import logging


class Preempted(Exception):
  """The run stopped on SIGTERM after saving the checkpoint of ``step``."""

  def __init__(self, step: int, workdir: str):
    super().__init__(f"stopped on SIGTERM after saving the checkpoint of step {step} in "
                     f"{workdir}; rerun the same command to continue")
    self.step = step
    self.workdir = workdir


class PreemptionGuard:
  """Context manager (or ``install()``/``uninstall()``): while active, SIGTERM sets :attr:`requested` instead of killing.

  Only the main thread can install signal handlers; elsewhere the guard does nothing
  (``requested`` stays False).
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    if self.requested:  # second notice: behave as if no handler were installed
      signal.signal(signal.SIGTERM, signal.SIG_DFL)
      signal.raise_signal(signal.SIGTERM)
      return
    self.requested = True
    logging.warning("SIGTERM: saving a checkpoint at the end of this chunk, then stopping")

  def install(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def uninstall(self) -> None:
    """Restores the previous SIGTERM handler (idempotent)."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __enter__(self) -> "PreemptionGuard":
    return self.install()

  def __exit__(self, *exc) -> None:
    self.uninstall()
