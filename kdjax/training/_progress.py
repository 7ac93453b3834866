"""Progress of a run: a tqdm bar on a terminal, one line per logging interval elsewhere.

Under Slurm, ``> log`` or ``nohup`` stderr is not a terminal and a bar would be silent (or
fill the log with carriage returns), so each logging interval prints one line instead::

  [teacher] step 1500/6000  loss 0.4213  test_acc 0.9120  812.4 steps/s  ETA 0:00:06

Steps per second are those of the latest interval (the first includes compilation); the
ETA extrapolates that rate over the steps left. Only process 0 reports.
"""

import datetime
import sys
import time
from typing import Any

import jax
import tqdm

# metrics.jsonl key -> label
FIELDS = {"train/loss": "loss", "train/accuracy": "train_acc",
          "train/teacher_agreement": "agree", "test/accuracy": "test_acc"}


class Progress:
  """``update(num_steps, record)`` once a logging interval; ``close()`` at the end.

  Args:
    total: the run's last step. initial: the step it starts (resumes) at.
    enabled: ``config.progress_bar``; ``False`` (or any process but 0) reports nothing.
    desc: the run's name (its workdir's).
    stream: where lines go when it is not a terminal (default ``sys.stderr``).
  """

  def __init__(self, *, total: int, initial: int, enabled: bool, desc: str, stream=None):
    self.total, self.step, self.desc = total, initial, desc
    self.stream = sys.stderr if stream is None else stream
    enabled = enabled and jax.process_index() == 0
    self.bar = None
    self.lines = enabled and not _is_terminal(self.stream)
    if enabled and not self.lines:
      self.bar = tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                           leave=False, file=self.stream)
    self._last = time.perf_counter()

  def update(self, num_steps: int, record: dict[str, Any]) -> None:
    self.step += num_steps
    values = {name: f"{record[key]:.4f}" for key, name in FIELDS.items() if key in record}
    if self.bar is not None:
      self.bar.update(num_steps)
      self.bar.set_postfix(values)
    if not self.lines:
      return
    now = time.perf_counter()
    rate = num_steps / max(now - self._last, 1e-9)
    self._last = now
    eta = datetime.timedelta(seconds=round((self.total - self.step) / rate))
    shown = "  ".join(f"{k} {v}" for k, v in values.items())
    print(f"[{self.desc}] step {self.step}/{self.total}  {shown}  {rate:.1f} steps/s  ETA {eta}",
          file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _is_terminal(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False
