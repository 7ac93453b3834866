r"""``metrics.jsonl``: what the loop logs once a logging interval (:mod:`._progress` shows it)."""

import json
import os
import pathlib
from typing import Any

import jax
from absl import logging

from kdjax.training import _nonfinite

class MetricsLog:
  """``metrics.jsonl``: one JSON object a line; a resumed run first drops the lines
  written after its checkpoint, so the file never holds a step twice, and a line a kill
  cut short (with a warning). With several processes only process 0 writes."""

  def __init__(self, path: pathlib.Path, resume_step: int):
    self.path = path
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    kept = []
    if path.exists():
      for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
          record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
          logging.warning("%s line %d is cut short (a kill while it was written): dropped",
                          path, number)
          continue
        if isinstance(record, dict) and record.get("step", resume_step + 1) <= resume_step:
          kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")


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
