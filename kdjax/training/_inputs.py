"""Where the training batches of a chunk come from.

In-memory data sets (``config.data.source="local"``): the whole training arrays are on
the host; chunk ``[step, step + num)`` gathers its examples by deterministic indices
(:func:`kdjax.data.batch_indices`, a function of the seed and the step alone, so a
resumed run sees the same batches) and ships one ``[num, B, ...]`` block sharded over
the mesh. Cached teacher targets ride along as ``batch["teacher_logits"]``.

Streaming data sets (``"tfds"``, ``"synthetic"``): this host's shard of a grain
pipeline (:func:`kdjax.data.pipelines_from_config`), blocks of ``steps_per_call``
batches placed on the mesh by a background :class:`kdjax.data.DevicePrefetcher`, so the
host prepares the next blocks while the device computes. The stream's position goes
into the checkpoint.
"""

import dataclasses
from typing import Any

import numpy as np

from kdjax import data as kd_data
from kdjax.training._padding import local_rows, pad_indices, pad_rows


def load_training_inputs(config, splits, objective) -> tuple[np.ndarray, np.ndarray | None]:
  """Training inputs and labels; with a transfer set, the inputs only (unlabelled)."""
  x, y = splits["train"]["x"], splits["train"]["y"]
  if not config.transfer.num_samples and not config.transfer.fresh:
    return x, y
  if config.data.name != "mnist1d":
    raise ValueError(f"A generated transfer set exists for mnist1d only, not {config.data.name!r}")
  if objective.needs_labels:
    raise ValueError("config.transfer adds unlabelled inputs, but the objective needs labels "
                     "(set hinton_kd alpha=1 or config.transfer.num_samples=0)")
  if config.transfer.fresh:  # new inputs every step: kdjax.training._fresh.FreshChunks
    return x, None
  transfer = kd_data.load_mnist1d_transfer(num_samples=config.transfer.num_samples,
                                           seed=config.transfer.seed)
  return np.concatenate([x, transfer["x"]]), None


class InMemoryBatches:
  """``chunk(step, num)``: the device-placed ``[num, B, ...]`` batches of steps
  ``step .. step + num - 1`` (this host's slice of each global batch).

  Args:
    x, y: training inputs ``[N, ...]`` and labels ``[N]`` (``None``: unlabelled).
    teacher_cache: ``[N, C]`` teacher targets per example, or ``None``.
    teacher_topk: ``{"topk_log_probs", "topk_indices"}``: ``[N, T, k]`` a stored top-k
      teacher per token row (:mod:`kdjax.training.teachers._topk`), or ``None``.
    batch_size: the global batch size.
    seed: the order's seed.
    mesh: the data mesh.
  """

  def __init__(self, x: np.ndarray, y: np.ndarray | None, *, teacher_cache: Any = None,
               teacher_topk: dict | None = None, batch_size: int, seed: int, mesh):
    self.x, self.y, self.teacher_cache = x, y, teacher_cache
    self.teacher_topk = teacher_topk or {}
    self.batch_size, self.seed, self.mesh = batch_size, seed, mesh
    _, self.rows = local_rows(batch_size, mesh)  # this host's rows, padded for its devices

  def __len__(self) -> int:
    return len(self.x)

  def chunk(self, step: int, num: int) -> dict[str, Any]:
    idx = kd_data.batch_indices(len(self.x), batch_size=self.batch_size, start_step=step,
                                num_steps=num, seed=self.seed)
    idx, mask = pad_indices(kd_data.host_slice(idx), self.rows)  # mask: None if unpadded
    batch = {"x": self.x[idx]} if mask is None else {"x": self.x[idx], "mask": mask}
    if self.y is not None:
      batch["y"] = self.y[idx]
    if self.teacher_cache is not None:
      batch["teacher_logits"] = self.teacher_cache[idx]
    for name, values in self.teacher_topk.items():
      batch[name] = values[idx]
    return kd_data.shard_batch(batch, self.mesh, batch_axis=1)

  def get_state(self) -> None:
    return None  # the order is a function of the seed and the step

  def close(self) -> None:
    pass


STEP_KEYS = ("x", "y", "label_probs")  # what the train step reads of a streaming batch


class _Select:
  """A pipeline iterator that yields only ``keys`` (ids and masks stay on the host),
  padded to ``rows`` with a ``mask`` when the devices do not divide the batch
  (:func:`kdjax.training._padding.pad_rows`)."""

  def __init__(self, iterator, keys, rows: int = 0):
    self._it, self._keys, self._rows = iterator, keys, rows

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._it)
    batch = {k: batch[k] for k in self._keys if k in batch}
    return pad_rows(batch, self._rows) if self._rows else batch

  def get_state(self):
    return self._it.get_state()

  def close(self):
    self._it.close()


class StreamBatches:
  """``chunk(step, num)``: the next ``num`` batches of a streaming training pipeline as
  one device block ``[num, B, ...]``, prepared ahead by a
  :class:`kdjax.data.DevicePrefetcher` thread (``prefetch`` blocks of ``steps_per_call``
  batches) while the device computes.

  The stream's position is :meth:`get_state` (what has been consumed, not what the thread
  read ahead); a run resumed from it continues the exact order (``state``). ``step`` is
  not used: the position is the iterator's.

  Args:
    pipeline: the training :class:`kdjax.data.Pipeline` (this host's shard).
    mesh: the data mesh.
    steps_per_call: batches per block (the ``lax.scan`` length).
    prefetch: blocks prepared ahead (0: each block is prepared when asked for).
    state: a saved :meth:`get_state` to resume from, or ``None`` (start).
  """

  def __init__(self, pipeline, *, mesh, steps_per_call: int, prefetch: int, state=None):
    self.pipeline, self.mesh, self.prefetch = pipeline, mesh, prefetch
    _, self.rows = local_rows(pipeline.meta["batch_size"], mesh)  # padded for the devices
    self._prefetcher = None
    self._start(state, steps_per_call)

  def _start(self, state, steps: int) -> None:
    self.steps = steps
    iterator = _Select(self.pipeline.iterator(state), STEP_KEYS, self.rows)
    self._prefetcher = kd_data.DevicePrefetcher(iterator, mesh=self.mesh, buffer_size=self.prefetch,
                                        steps_per_call=steps)

  def chunk(self, step: int, num: int) -> dict[str, Any]:
    del step  # the iterator holds the position
    if num != self.steps:  # e.g. a last, shorter call: restart at the consumed position
      state = self.get_state()
      self._prefetcher.close()
      self._start(state, num)
    block = next(self._prefetcher)
    if num == 1:  # the prefetcher stacks only for steps_per_call > 1
      block = {k: v[None] for k, v in block.items()}
    return block

  def get_state(self) -> dict[str, Any]:
    return self._prefetcher.get_state()

  def close(self) -> None:
    self._prefetcher.close()


@dataclasses.dataclass
class TrainingData:
  """A run's data: in-memory arrays (``config.data.source="local"``) or this host's
  streaming pipelines (``"tfds"``, ``"synthetic"``).

  Attributes:
    num_classes: label count.
    train_size: training examples an epoch (``train_size // batch_size`` steps).
    sample_x, sample_y: one batch of training inputs ``[b, ...]`` and labels (shapes for
      init; ``sample_y`` is ``None`` for unlabelled inputs).
    train_x, train_y: in memory: the training inputs (with a transfer set) and labels.
    splits: in memory: the held-out splits ``{"test"[, "val"]: {"x", "y"}}``.
    pipelines: streaming: :func:`kdjax.data.pipelines_from_config`'s result.
  """

  num_classes: int
  train_size: int
  sample_x: np.ndarray
  sample_y: np.ndarray | None
  train_x: np.ndarray | None = None
  train_y: np.ndarray | None = None
  splits: dict | None = None
  pipelines: dict | None = None

  @property
  def streaming(self) -> bool:
    return self.pipelines is not None

  @property
  def tokens(self) -> bool:
    """Token rows (``y [N, T]``, :mod:`kdjax.data._text`) for a language model."""
    return self.train_y is not None and self.train_y.ndim == 2


def load_training_data(config, objective, *, eval_batch_size: int) -> TrainingData:
  """The data of ``config.data`` (global batch sizes ``config.batch_size`` and
  ``eval_batch_size``)."""
  if config.data.source == "local":
    splits = kd_data.load_dataset(config.data.name, **config.data.kwargs,
                                  val_size=config.data.val_size)
    x, y = load_training_inputs(config, splits, objective)
    return TrainingData(num_classes=splits["num_classes"], train_size=len(x),
                        sample_x=x[:config.batch_size],
                        sample_y=None if y is None else y[:config.batch_size],
                        train_x=x, train_y=y,
                        splits={k: splits[k] for k in ("val", "test") if k in splits})
  if config.transfer.num_samples:
    raise ValueError("config.transfer adds generated mnist1d inputs to in-memory data only; "
                     f"config.data.source={config.data.source!r} streams")
  if config.data.mixup_alpha and not objective.accepts_label_probs:
    hard = [t.label for t in objective.terms
            if t.needs_labels() and "label_probs" not in t.spec.inputs]
    raise ValueError(f"config.data.mixup_alpha={config.data.mixup_alpha} mixes the labels, but "
                     f"objective term(s) {hard} need hard labels; set mixup_alpha=0 or use "
                     "terms that take soft targets (cross_entropy, hinton_kd)")
  pipelines = kd_data.pipelines_from_config(config.data, batch_size=config.batch_size,
                                            eval_batch_size=eval_batch_size, seed=config.seed)
  sample = pipelines["train"][0]
  return TrainingData(num_classes=pipelines["num_classes"], train_size=pipelines["train_size"],
                      sample_x=sample["x"], sample_y=sample["y"], pipelines=pipelines)


def make_batches(data: TrainingData, config, *, mesh, teacher_cache=None, teacher_topk=None,
                 state=None) -> "InMemoryBatches | StreamBatches":
  """The training batches of ``data``, resumed at the saved stream position ``state``."""
  if data.streaming:
    return StreamBatches(data.pipelines["train"], mesh=mesh, prefetch=config.data.prefetch,
                         steps_per_call=config.steps_per_call or config.log_every, state=state)
  return InMemoryBatches(data.train_x, data.train_y, teacher_cache=teacher_cache,
                         teacher_topk=teacher_topk, batch_size=config.batch_size,
                         seed=config.seed, mesh=mesh)
