"""Evaluation of the student (eval mode) on held-out data."""

from collections.abc import Callable
from typing import Any

from kdjax import metrics
from kdjax.training._step import predict_in_batches


def evaluate_arrays(predict: Callable, variables: Any, split: dict, *, batch_size: int,
                    mesh) -> dict[str, float]:
  """Accuracy and mean NLL of ``predict(variables, x)`` on an in-memory split
  ``{"x": [N, ...], "y": [N]}`` (batches of ``batch_size`` sharded over ``mesh``)."""
  logits = predict_in_batches(predict, variables, split["x"], batch_size=batch_size, mesh=mesh)
  return {"accuracy": float(metrics.accuracy(logits, split["y"])),
          "nll": float(metrics.nll(logits, split["y"]))}
