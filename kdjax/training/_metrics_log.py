r"""``metrics.jsonl`` and the progress bar: what the loop reports once a chunk."""

import json
import pathlib
from typing import Any

import jax
import tqdm

from kdjax.training import _nonfinite

# metrics.jsonl key -> progress-bar label
BAR_FIELDS = {"train/loss": "loss", "train/accuracy": "train_acc",
              "train/teacher_agreement": "agree", "test/accuracy": "test_acc"}


class MetricsLog:
  """``metrics.jsonl``: one JSON object a line; a resumed run first drops the lines
  written after its checkpoint, so the file never holds a step twice. With several
  processes only process 0 writes."""

  def __init__(self, path: pathlib.Path, resume_step: int):
    self.path = path
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    kept = []
    if path.exists():
      kept = [line for line in path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= resume_step]
    path.write_text("".join(line + "\n" for line in kept))

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")


def make_progress_bar(*, total: int, initial: int, enabled: bool, desc: str) -> tqdm.tqdm:
  """A tqdm bar; ``enabled=True`` still hides it when stderr is not a TTY, and on every
  process but 0."""
  enabled = enabled and jax.process_index() == 0
  return tqdm.tqdm(total=total, initial=initial, disable=None if enabled else True,
                   desc=desc, dynamic_ncols=True, leave=False)


def update_progress_bar(bar: tqdm.tqdm, num_steps: int, record: dict[str, Any]) -> None:
  bar.update(num_steps)
  bar.set_postfix({name: f"{record[key]:.3f}" for key, name in BAR_FIELDS.items()
                   if key in record})


def merge_calls(calls: list[tuple[int, int, dict]], *, policy: str) -> dict[str, float]:
  r"""The metrics of one logging interval from its jitted calls ``(start step, steps,
  device metrics)``, read from the device once: each call is checked for non-finite
  steps (:func:`kdjax.training._nonfinite.check_chunk`, which raises under ``"stop"``),
  then the means are weighted by each call's finite steps.

  .. math:: \bar m = \frac{\sum_k n_k \bar m_k}{\sum_k n_k}

  with :math:`n_k` the finite steps of call :math:`k` (one call: its metrics as they are).
  """
  fetched = jax.device_get([m for _, _, m in calls])
  checked, weights = [], []
  for (start, num, _), metrics in zip(calls, fetched):
    weights.append(num - int(metrics[_nonfinite._HEALTH + "steps"]))
    checked.append(_nonfinite.check_chunk(metrics, chunk_start=start, policy=policy))
  if len(checked) == 1:
    return {k: float(v) for k, v in checked[0].items()}
  total = sum(weights)
  out = {}
  for key in checked[0]:
    if key == "skipped_steps":
      continue
    values = [float(m[key]) for m in checked]
    out[key] = (sum(w * v for w, v in zip(weights, values) if w) / total if total
                else float("nan"))
  skipped = sum(int(m.get("skipped_steps", 0)) for m in checked)
  if skipped:
    out["skipped_steps"] = float(skipped)
  return out
