"""``metrics.jsonl`` and the progress bar: what the loop reports once a chunk."""

import json
import pathlib
from typing import Any

import tqdm

# metrics.jsonl key -> progress-bar label
BAR_FIELDS = {"train/loss": "loss", "train/accuracy": "train_acc",
              "train/teacher_agreement": "agree", "test/accuracy": "test_acc"}


class MetricsLog:
  """``metrics.jsonl``: one JSON object a line; a resumed run first drops the lines
  written after its checkpoint, so the file never holds a step twice."""

  def __init__(self, path: pathlib.Path, resume_step: int):
    self.path = path
    kept = []
    if path.exists():
      kept = [line for line in path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= resume_step]
    path.write_text("".join(line + "\n" for line in kept))

  def write(self, record: dict[str, Any]) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")


def make_progress_bar(*, total: int, initial: int, enabled: bool, desc: str) -> tqdm.tqdm:
  """A tqdm bar; ``enabled=True`` still hides it when stderr is not a TTY."""
  return tqdm.tqdm(total=total, initial=initial, disable=None if enabled else True,
                   desc=desc, dynamic_ncols=True, leave=False)


def update_progress_bar(bar: tqdm.tqdm, num_steps: int, record: dict[str, Any]) -> None:
  bar.update(num_steps)
  bar.set_postfix({name: f"{record[key]:.3f}" for key, name in BAR_FIELDS.items()
                   if key in record})
