"""Streaming, sharded, resumable batches of images with grain (``grain.MapDataset``).

The global stream of example ids is a grain shuffle of ``range(N)`` that reshuffles every
epoch; host ``p`` of ``P`` reads positions ``p, p + P, p + 2P, ...`` of it and batches them.
So global batch ``j`` (the hosts' local batches ``j`` together, host-major on the mesh)
holds the examples of the contiguous block ``[j B, (j + 1) B)`` of the stream whatever
``P`` is, each host reads only its own examples, and the order is a function of the seed
alone. Examples are read from the
source on access (never loaded whole), augmented with generators keyed by ``(seed,
epoch, id)`` (:mod:`kdjax.data._augment`) and batched. The iterator's state is a small
JSON-serialisable dict; restoring it resumes the exact order and views.

Every batch holds ONE view ``x`` per example: the teacher and the student both read
``batch["x"]`` (function matching, Beyer et al. 2022); there is deliberately no second
view.

References:
  grain, https://google-grain.readthedocs.io (``MapDataset``, ``shuffle``, ``repeat``,
  ``to_iter_dataset``, iterator ``get_state``/``set_state``).
"""

import dataclasses
from typing import Any

import numpy as np

from kdjax.data import _augment


@dataclasses.dataclass(frozen=True)
class _PrepareExample:
  """Reads example ``key`` at local stream position ``position`` and makes its view."""
  source: Any
  num_real: int          # examples in the source; ids >= num_real are eval padding
  epoch_length: int      # ids per epoch of the global stream
  seed: int
  process_index: int
  process_count: int
  augment: str
  image_size: int
  pad: int

  def __call__(self, position: int, key: int) -> dict[str, np.ndarray]:
    key = int(key)
    real = key < self.num_real
    example = self.source[key if real else 0]
    image = np.asarray(example["image"])
    if image.ndim == 2:
      image = image[..., None]
    global_position = position * self.process_count + self.process_index
    epoch = global_position // self.epoch_length
    rng = None
    if self.augment in _augment.RANDOM_AUGMENTATIONS:
      rng = _augment.example_rng(self.seed, epoch, key)
    view = _augment.augment_image(image, rng, kind=self.augment, size=self.image_size,
                                  pad=self.pad)
    if view.shape[:2] != (self.image_size, self.image_size):
      raise ValueError(f"example {key} has shape {image.shape}; after {self.augment!r} it is "
                       f"{view.shape}, not {self.image_size}x{self.image_size} (pick an "
                       "augmentation that resizes, or the data set's image_size)")
    return {"x": view, "y": np.int32(example["label"]), "id": np.int64(key),
            "mask": np.bool_(real)}


@dataclasses.dataclass(frozen=True)
class _NormalizeBatch:
  """uint8 views ``[b, H, W, C]`` -> normalised float32 (one vectorised op per batch)."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  flatten: bool

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = _augment.normalize(batch["x"], self.mean, self.std)
    if self.flatten:
      x = x.reshape(x.shape[0], -1)
    return {**batch, "x": x}


@dataclasses.dataclass(frozen=True)
class _MixupBatch:
  seed: int
  alpha: float
  num_classes: int
  process_index: int

  def __call__(self, batch_index: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, 0x6D6978, int(batch_index), self.process_index])
    x, probs = _augment.mixup(batch["x"], batch["y"], rng, alpha=self.alpha,
                              num_classes=self.num_classes)
    return {**batch, "x": x, "label_probs": probs}


def _shuffle_seed(seed: int) -> int:
  # grain reseeds epoch e with seed + e; hashing the user's seed first keeps runs with
  # nearby seeds from sharing epochs.
  return int(np.random.SeedSequence([int(seed), 0x5EED]).generate_state(1)[0])


def _resolve_processes(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
  return int(process_index), int(process_count)


class Pipeline:
  """Batches of one split for this host; see the module docstring for the order.

  Build with :func:`make_pipeline`. ``iterator(state=None)`` starts (or resumes) a
  :class:`PipelineIterator`; ``len(pipeline)`` is the number of local batches (for an
  endless training stream, ``sys.maxsize // batch``).
  """

  def __init__(self, dataset, *, meta: dict[str, Any], steps_per_epoch: int,
               num_threads: int, prefetch_buffer_size: int, num_workers: int = 0):
    self.dataset = dataset  # grain MapDataset of local batches
    self.meta = meta
    self.steps_per_epoch = steps_per_epoch
    self._read = (num_threads, prefetch_buffer_size)
    self._num_workers = num_workers

  def __len__(self) -> int:
    return len(self.dataset)

  def __getitem__(self, step: int) -> dict[str, np.ndarray]:
    """Local batch ``step`` by random access (no iterator state involved)."""
    return self.dataset[step]

  def iterator(self, state: dict[str, Any] | None = None) -> "PipelineIterator":
    import grain

    num_threads, buffer = self._read
    stream = self.dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=buffer))
    if self._num_workers:
      from absl import flags

      if not flags.FLAGS.is_parsed():
        raise ValueError("num_workers > 0 starts grain worker processes, which read grain's absl "
                         "flags: run under absl.app (as `kdjax train` does) or call "
                         "absl.flags.FLAGS.mark_as_parsed() first")
      stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._num_workers))
    out = PipelineIterator(iter(stream), self.meta)
    if state is not None:
      out.set_state(state)
    return out


class PipelineIterator:
  """Iterator over local batches whose position is a JSON-serialisable checkpoint.

  ``get_state()`` returns ``{"grain": <grain iterator state>, "meta": {...}}``, which an
  orbax ``ocp.args.JsonSave`` stores beside the model state; ``set_state`` refuses a
  state written by a pipeline with another seed, batch size, host layout or source.
  """

  def __init__(self, grain_iterator, meta: dict[str, Any]):
    self._it = grain_iterator
    self._meta = meta

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def get_state(self) -> dict[str, Any]:
    return {"grain": self._it.get_state(), "meta": dict(self._meta)}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or set(state) != {"grain", "meta"}:
      raise ValueError(f"not a pipeline state (expected keys 'grain' and 'meta'): {state!r:.200}")
    for key, value in self._meta.items():
      saved = state["meta"].get(key)
      if saved != value:
        raise ValueError(f"the saved data state has {key}={saved!r} but this pipeline has "
                         f"{key}={value!r}; resuming would change the data order")
    self._it.set_state(state["grain"])

  def close(self) -> None:
    """Stops grain's worker processes, if any (safe to call twice)."""
    close = getattr(self._it, "close", None)
    if close is not None:
      close()


def make_pipeline(source, *, batch_size: int, seed: int, train: bool, num_classes: int,
                  image_size: int, mean, std, augment: str = "none", pad: int = 4,
                  mixup_alpha: float = 0.0, flatten: bool = False, num_epochs: int | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  num_threads: int = 0, prefetch_buffer_size: int = 16,
                  num_workers: int = 0, name: str = "") -> Pipeline:
  """Builds this host's stream of batches from a random-access ``source``.

  Args:
    source: ``len`` + ``[i] -> {"image": [H, W, C] or [H, W] uint8, "label": int}``
      (a ``tfds.data_source``, :class:`kdjax.data.SyntheticSource`, ...).
    batch_size: GLOBAL batch size; each of the ``process_count`` hosts yields
      ``batch_size / process_count`` examples a step.
    seed: the order, augmentation and mixup are functions of it.
    train: ``True``: shuffled every epoch, ``num_epochs`` epochs (``None``: endless), the
      last ``N mod process_count`` ids of the source dropped so hosts have equal shards.
      ``False``: one pass in source order, padded to whole batches; padding has
      ``mask=False``.
    num_classes: label count (for mixup's label distributions).
    image_size: side of the output images (crops resize to it; other views must have it).
    mean, std: per-channel normalisation on the [0, 1] scale.
    augment: one of :data:`kdjax.data.AUGMENTATIONS`.
    pad: padding of ``pad_crop_flip``.
    mixup_alpha: > 0 mixes each training batch (:func:`kdjax.data.mixup`) and adds
      ``label_probs``.
    flatten: yield ``x`` as ``[B, H * W * C]`` (MLPs).
    num_epochs: training epochs (``None``: endless).
    process_index, process_count: this host and the host count (default: JAX's); pass
      explicit values to test sharding in one process.
    num_threads, prefetch_buffer_size: grain's host threads preparing examples ahead
      (``grain.ReadOptions``); 0 threads prepares in the caller.
    num_workers: > 0 prepares batches in that many grain worker processes
      (``mp_prefetch``; same batches, same resumable state), for hosts with many cores.
    name: recorded in the state, so another data set's state is refused.

  Returns:
    A :class:`Pipeline` of ``{"x": [b, ...] float32, "y": [b] int32, "id": [b] int64,
    "mask": [b] bool[, "label_probs": [b, C] float32]}`` with ``b = batch_size /
    process_count``.
  """
  import grain

  process_index, process_count = _resolve_processes(process_index, process_count)
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                     f"process_count={process_count}")
  if augment not in _augment.AUGMENTATIONS:
    raise ValueError(f"Unknown augmentation {augment!r}; known: {_augment.AUGMENTATIONS}")
  if mixup_alpha < 0:
    raise ValueError(f"mixup_alpha must be >= 0, got {mixup_alpha}")
  if mixup_alpha and not train:
    raise ValueError("mixup_alpha > 0 is for training pipelines only")
  local_batch = batch_size // process_count
  num_real = len(source)
  if train:
    epoch_length = num_real - num_real % process_count
    if epoch_length < batch_size:
      raise ValueError(f"batch_size={batch_size} is larger than the {num_real} examples")
    keys = grain.MapDataset.range(epoch_length).shuffle(seed=_shuffle_seed(seed))
    keys = keys.repeat(num_epochs)
  else:
    epoch_length = -(-num_real // batch_size) * batch_size  # padded to whole global batches
    keys = grain.MapDataset.range(epoch_length)
  keys = keys[process_index::process_count]
  prepare = _PrepareExample(
      source=source, num_real=num_real, epoch_length=epoch_length, seed=int(seed),
      process_index=process_index, process_count=process_count, augment=augment,
      image_size=int(image_size), pad=int(pad))
  if len(mean) != len(std):
    raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must have the same length")
  batches = keys.map_with_index(prepare).batch(local_batch, drop_remainder=True)
  batches = batches.map(_NormalizeBatch(tuple(mean), tuple(std), flatten))
  if mixup_alpha:
    batches = batches.map_with_index(_MixupBatch(int(seed), float(mixup_alpha), num_classes,
                                                 process_index))
  meta = {"name": name, "num_examples": num_real, "seed": int(seed), "batch_size": batch_size,
          "process_index": process_index, "process_count": process_count, "train": train,
          "augment": augment, "mixup_alpha": float(mixup_alpha)}
  return Pipeline(batches, meta=meta, steps_per_epoch=epoch_length // batch_size,
                  num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size,
                  num_workers=num_workers)


def make_tfds_pipeline(name: str, split: str = "train", *, batch_size: int, seed: int = 0,
                       train: bool | None = None, data_dir: str | None = None,
                       augment: str | None = None, **kwargs: Any) -> Pipeline:
  """:func:`make_pipeline` over tfds data set ``name`` (a :data:`kdjax.data.TFDS_DATASETS`
  key) with its classes, image size, normalisation and augmentation defaults.

  ``split`` ``"train"`` / ``"eval"`` name the data set's training and evaluation splits
  (any tfds split name also works); ``train`` defaults to ``split == "train"``;
  ``augment`` defaults to the data set's training or evaluation view.
  """
  from kdjax.data._tfds import dataset_spec, tfds_source

  spec = dataset_spec(name)
  tfds_split = {"train": spec.train_split, "eval": spec.eval_split}.get(split, split)
  train = (split == "train") if train is None else train
  if augment is None:
    augment = spec.train_augment if train else spec.eval_augment
  source = tfds_source(name, tfds_split, data_dir=data_dir)
  options = {"num_classes": spec.num_classes, "image_size": spec.image_size,
             "mean": spec.mean, "std": spec.std, **kwargs}
  return make_pipeline(source, batch_size=batch_size, seed=seed, train=train, augment=augment,
                       name=f"{name}:{tfds_split}", **options)
