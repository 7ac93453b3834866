r"""Evaluation of the student (eval mode) on held-out data.

In-memory splits are evaluated whole (:func:`evaluate_arrays`); a streaming evaluation
pipeline (:func:`evaluate_stream`) is one pass whose last batch is padded to the global
batch size, its padding marked ``mask=False``. Both report accuracy and mean NLL over the
real examples only:

.. math::
   \mathrm{acc} = \frac{\sum_i m_i [\arg\max_c z_{ic} = y_i]}{\sum_i m_i}, \qquad
   \mathrm{nll} = \frac{\sum_i m_i \, (-\log \mathrm{softmax}(z_i)_{y_i})}{\sum_i m_i}.

With several hosts the sums are over the *global* batch (``jit`` over arrays sharded
across hosts), so every host gets the same numbers and no per-host mean is averaged.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import data as kd_data
from kdjax import losses, metrics
from kdjax.models import eval_logits
from kdjax.training._padding import map_in_batches


def evaluate_tokens(predict: Callable, variables: Any, split: dict, *, batch_size: int,
                    mesh) -> dict[str, float]:
  """Next-token accuracy, mean NLL and perplexity ``exp(nll)`` of a language model over the
  tokens of ``{"x": [N, T] or [N, 2, T], "y": [N, T]}`` that have a target (``y >= 0``).

  Batches of ``batch_size`` rows, sharded over ``mesh``, each reduced on the devices to
  per-row sums, so no ``[N, T, V]`` logits are ever gathered.
  """
  x, y = np.asarray(split["x"]), np.asarray(split["y"])
  width = int(np.prod(x.shape[1:]))
  joined = np.concatenate([x.reshape(len(x), width), y], axis=1)  # one array to batch

  @jax.jit
  def row_sums(xy):
    xb, yb = xy[:, :width].reshape(-1, *x.shape[1:]), xy[:, width:]
    logits = predict(variables, xb).astype(jnp.float32)  # [b, T, V]
    keep = losses.label_mask(yb, logits.shape[-1])
    correct = jnp.where(keep, jnp.argmax(logits, -1) == yb, False)
    nll = jnp.where(keep, losses.cross_entropy(logits, yb), 0.0)
    return jnp.stack([correct.sum(-1).astype(jnp.float32), nll.sum(-1),
                      keep.sum(-1).astype(jnp.float32)], -1)  # [b, 3]

  sharding = None if mesh is None else NamedSharding(mesh, P("data"))
  sums = map_in_batches(row_sums, joined, batch_size=batch_size, sharding=sharding).sum(0)
  if not sums[2]:
    raise ValueError("the evaluation split has no token with a target (y >= 0)")
  nll = float(sums[1] / sums[2])
  return {"accuracy": float(sums[0] / sums[2]), "nll": nll,
          "perplexity": float(np.exp(min(nll, 700.0))), "tokens": int(sums[2])}


def evaluate_arrays(predict: Callable, variables: Any, split: dict, *, batch_size: int,
                    mesh) -> dict[str, float]:
  """Accuracy and mean NLL of ``predict(variables, x)`` on an in-memory split
  ``{"x": [N, ...], "y": [N]}`` (batches of ``batch_size`` sharded over ``mesh``); token
  rows (``y [N, T]``) go to :func:`evaluate_tokens`."""
  if np.ndim(split["y"]) == 2:
    return evaluate_tokens(predict, variables, split, batch_size=batch_size, mesh=mesh)
  logits = predict_in_batches(predict, variables, split["x"], batch_size=batch_size, mesh=mesh)
  return {"accuracy": float(metrics.accuracy(logits, split["y"])),
          "nll": float(metrics.nll(logits, split["y"]))}


@jax.jit
def masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """``{"correct", "nll", "count"}`` summed over the rows where ``mask`` holds (and the
  label is a class); ``logits [B, C]``, ``labels [B]``, ``mask [B]`` bool."""
  logits = logits.astype(jnp.float32)
  keep = mask & losses.label_mask(labels, logits.shape[-1])
  correct = jnp.argmax(logits, -1) == labels
  return {"correct": jnp.sum(jnp.where(keep, correct, 0)),
          "nll": jnp.sum(jnp.where(keep, losses.cross_entropy(logits, labels), 0.0)),
          "count": jnp.sum(keep)}


def evaluate_stream(predict: Callable, variables: Any, pipeline, *, mesh) -> dict[str, float]:
  """Accuracy and mean NLL of ``predict(variables, x)`` over one pass of a streaming
  evaluation ``pipeline`` (:class:`kdjax.data.Pipeline`, this host's shard), counting
  only examples with ``mask=True``.

  Raises:
    ValueError: if the pass holds no real example.
  """
  totals = None
  iterator = pipeline.iterator()
  try:
    for batch in iterator:
      placed = kd_data.shard_batch({k: batch[k] for k in ("x", "y", "mask")}, mesh)
      sums = masked_sums(predict(variables, placed["x"]), placed["y"], placed["mask"])
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  finally:
    iterator.close()
  count = 0 if totals is None else int(totals["count"])
  if not count:
    raise ValueError(f"the evaluation pipeline {pipeline.meta.get('name')!r} has no examples")
  return {"accuracy": float(totals["correct"]) / count, "nll": float(totals["nll"]) / count}


def evaluate_all(predict: Callable, variables: Any, data, *, batch_size: int, mesh,
                 splits: tuple[str, ...] = ("val", "test")) -> dict[str, dict[str, float]]:
  """``{split: {"accuracy", "nll"}}`` for the held-out ``splits`` the run's data has
  (a :class:`kdjax.training._inputs.TrainingData`; streaming data has ``"test"``, its
  evaluation pipeline)."""
  if data.streaming:
    if "test" not in splits:
      return {}
    return {"test": evaluate_stream(predict, variables, data.pipelines["eval"], mesh=mesh)}
  return {name: evaluate_arrays(predict, variables, data.splits[name], batch_size=batch_size,
                                mesh=mesh)
          for name in splits if name in data.splits}


def make_predict(model: Any) -> Callable[[Any, jax.Array], jax.Array]:
  """Jitted ``(variables, x) -> logits`` in eval mode (``train=False``: BatchNorm uses
  running statistics, dropout is off). ``variables`` is ``{"params": ..., **state}``."""
  return jax.jit(eval_logits(model))


def predict_in_batches(predict: Callable, params: Any, x, *, batch_size: int, mesh=None):
  """Logits for all of ``x`` (NumPy), in batches sharded over ``mesh``'s data axis
  (:func:`kdjax.training._padding.map_in_batches`: the last batch padded, the padding
  dropped). With several processes each feeds its slice of every batch and receives all
  the logits.
  """
  sharding = None if mesh is None else NamedSharding(mesh, P("data"))
  return map_in_batches(lambda xb: predict(params, xb), x, batch_size=batch_size,
                        sharding=sharding)
