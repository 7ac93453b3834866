"""tensorflow-datasets sources read without TensorFlow (``tfds.data_source``, array_record).

Each data set is prepared once in the array_record format (README, "Training on a TPU
VM"); reading never downloads. ``tensorflow_datasets`` is imported inside the functions so
``import kdjax`` stays light.
"""

import dataclasses
import os

from kdjax.data import _augment


@dataclasses.dataclass(frozen=True)
class ImageDatasetSpec:
  """What the pipeline needs to know about a tfds image data set.

  Attributes:
    tfds_name: the tfds name (with config, e.g. ``imagenette/full-size-v2``).
    train_split, eval_split: tfds split names.
    num_classes: label count.
    image_size: side of the square model input.
    mean, std: per-channel normalisation on the [0, 1] scale.
    train_augment, eval_augment: :data:`kdjax.data.AUGMENTATIONS` names.
  """
  tfds_name: str
  train_split: str
  eval_split: str
  num_classes: int
  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_augment: str
  eval_augment: str


TFDS_DATASETS = {
    "mnist": ImageDatasetSpec("mnist", "train", "test", 10, 28, _augment.MNIST_MEAN,
                              _augment.MNIST_STD, "none", "none"),
    "cifar10": ImageDatasetSpec("cifar10", "train", "test", 10, 32, _augment.CIFAR10_MEAN,
                                _augment.CIFAR10_STD, "pad_crop_flip", "none"),
    "cifar100": ImageDatasetSpec("cifar100", "train", "test", 100, 32, _augment.CIFAR100_MEAN,
                                 _augment.CIFAR100_STD, "pad_crop_flip", "none"),
    "imagenet2012": ImageDatasetSpec("imagenet2012", "train", "validation", 1000, 224,
                                     _augment.IMAGENET_MEAN, _augment.IMAGENET_STD,
                                     "inception_crop_flip", "center_crop"),
    "imagenette": ImageDatasetSpec("imagenette/full-size-v2", "train", "validation", 10, 224,
                                   _augment.IMAGENET_MEAN, _augment.IMAGENET_STD,
                                   "inception_crop_flip", "center_crop"),
}


def dataset_spec(name: str) -> ImageDatasetSpec:
  """The :class:`ImageDatasetSpec` of ``name``; an unknown name is a ``ValueError``."""
  if name not in TFDS_DATASETS:
    raise ValueError(f"Unknown tfds data set {name!r}; known: {sorted(TFDS_DATASETS)}")
  return TFDS_DATASETS[name]


def resolve_data_dir(data_dir: str | None = None) -> str | None:
  """``data_dir`` if given, else ``$TFDS_DATA_DIR``, else None (tfds' default,
  ``~/tensorflow_datasets``)."""
  return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def tfds_source(name: str, split: str, *, data_dir: str | None = None):
  """The random-access source of split ``split`` of data set ``name``, without TensorFlow.

  Examples are ``{"image": uint8 [H, W, C], "label": int64, ...}``; the array_record files
  are read on access, nothing is loaded whole. Never downloads.

  Raises:
    FileNotFoundError: when the data set is not prepared under ``data_dir``.
  """
  import tensorflow_datasets as tfds  # heavy; imported only when a tfds data set is used

  spec = dataset_spec(name)
  data_dir = resolve_data_dir(data_dir)
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  try:
    return builder.as_data_source(split=split)
  except Exception as e:  # tfds raises several types here; name the cause in one line
    if not builder.is_prepared():
      raise FileNotFoundError(
          f"tfds data set {spec.tfds_name!r} is not prepared in {builder.data_dir}: prepare it "
          "once in the array_record format (README, 'Training on a TPU VM'); kdjax never "
          "downloads") from e
    raise ValueError(f"tfds data set {spec.tfds_name!r} split {split!r} in {builder.data_dir} "
                     f"cannot be read as an array_record data source: {e}") from e
