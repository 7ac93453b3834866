"""Preemption notices and Ctrl-C: SIGTERM or SIGINT asks the run to checkpoint and stop at
the next chunk boundary.

A TPU VM (and most schedulers) sends SIGTERM some seconds before it takes the machine.
Python's default is to die at once (exit 143), losing everything since the last periodic
checkpoint. :class:`PreemptionGuard` records the notice instead; the loop checks it after
each chunk (``log_every`` steps run inside one ``lax.scan`` and cannot be cut short), saves
a checkpoint of that step, waits for it, and raises :class:`Preempted`; ``kdjax`` then
exits 0 (SIGTERM) or 130 (SIGINT, Ctrl-C). A second signal while waiting acts as if no
handler were installed: SIGTERM kills the process, SIGINT raises ``KeyboardInterrupt``.
"""

import signal
import threading

from absl import logging


class Preempted(Exception):
  """The run stopped on ``signal_name`` (SIGTERM or SIGINT) after saving the checkpoint of
  ``step``."""

  def __init__(self, step: int, workdir: str, signal_name: str = "SIGTERM"):
    what = "interrupted" if signal_name == "SIGINT" else "stopped on SIGTERM"
    super().__init__(f"{what} at step {step} (checkpoint saved in {workdir}); rerun the same "
                     "command to resume")
    self.step = step
    self.workdir = workdir
    self.signal_name = signal_name


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
  """Context manager (or ``install()``/``uninstall()``): while active, SIGTERM and SIGINT
  set :attr:`requested` (and :attr:`signal_name`) instead of stopping the process.

  Only the main thread can install signal handlers; elsewhere the guard does nothing
  (``requested`` stays False).
  """

  def __init__(self):
    self.requested = False
    self.signal_name = ""
    self._previous: dict = {}

  def _handle(self, signum, frame):
    if self.requested:  # second notice: behave as if no handler were installed
      self.uninstall()
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      signal.signal(signum, signal.SIG_DFL)
      signal.raise_signal(signum)
      return
    self.requested = True
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s: saving a checkpoint at the end of this chunk, then stopping (send it "
                    "again to stop at once)", self.signal_name)

  def install(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
    return self

  def uninstall(self) -> None:
    """Restores the previous handlers (idempotent)."""
    for s, previous in self._previous.items():
      signal.signal(s, previous)
    self._previous = {}

  def __enter__(self) -> "PreemptionGuard":
    return self.install()

  def __exit__(self, *exc) -> None:
    self.uninstall()
