"""Training and evaluation pipelines built from a config's ``data`` section.

The trainer calls :func:`pipelines_from_config` once; every data-side setting lives in
``config.data`` (see ``kdjax.training.default_config``):

* ``source``: ``"tfds"`` (``name`` is a :data:`kdjax.data.TFDS_DATASETS` key, read from
  ``data_dir`` or ``$TFDS_DATA_DIR``) or ``"synthetic"`` (``synthetic.*``);
* ``augment`` (``""``: the data set's training view), ``pad``, ``mixup_alpha``, ``flatten``;
* ``num_threads`` (grain threads preparing examples), ``num_workers`` (grain worker
  processes), ``prefetch`` (device blocks ahead);
* ``mock_examples > 0``: read tfds through ``tfds.testing.mock_data`` with that many
  random examples per split, for smoke runs without the data (never downloads).
"""

from typing import Any

from kdjax.config import default_config, with_defaults
from kdjax.data._pipeline import Pipeline, make_pipeline
from kdjax.data._synthetic import SyntheticSource
from kdjax.data._tfds import dataset_spec, tfds_source

SOURCES = ("tfds", "synthetic")


def _tfds_sources(data_config, spec) -> tuple[Any, Any]:
  data_dir = data_config.data_dir or None

  def read():
    return (tfds_source(data_config.name, spec.train_split, data_dir=data_dir),
            tfds_source(data_config.name, spec.eval_split, data_dir=data_dir))

  if not data_config.mock_examples:
    return read()
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=int(data_config.mock_examples)):
    return read()  # mock sources keep working after the context ends


def pipelines_from_config(data_config, *, batch_size: int, eval_batch_size: int, seed: int,
                          process_index: int | None = None,
                          process_count: int | None = None) -> dict[str, Any]:
  """This host's training and evaluation pipelines for ``config.data``.

  Args:
    data_config: the ``config.data`` ConfigDict (``source``, ``name``, ...); a field it does
      not set takes its value in ``default_config().data``.
    batch_size, eval_batch_size: global batch sizes.
    seed: the training order, augmentation and mixup seed.
    process_index, process_count: this host and the host count (default: JAX's).

  Returns:
    ``{"train": Pipeline (endless), "eval": Pipeline (one padded pass), "num_classes",
    "image_shape": (H, W, C) of the model input, "train_size": examples per epoch}``.
  """
  data_config = with_defaults(data_config, default_config().data)
  source = data_config.source
  if source == "synthetic":
    syn = data_config.synthetic
    shape = tuple(syn.shape)
    train_src = SyntheticSource(syn.num_examples, shape, num_classes=syn.num_classes, seed=seed)
    eval_src = SyntheticSource(syn.eval_examples, shape, num_classes=syn.num_classes,
                               seed=seed + 1)
    num_classes, image_size = syn.num_classes, shape[0]
    mean, std = (0.5,) * shape[-1], (0.25,) * shape[-1]
    train_augment, eval_augment, name = "none", "none", "synthetic"
  elif source == "tfds":
    spec = dataset_spec(data_config.name)
    train_src, eval_src = _tfds_sources(data_config, spec)
    num_classes, mean, std = spec.num_classes, spec.mean, spec.std
    image_size = int(data_config.image_size or spec.image_size)
    train_augment, eval_augment, name = spec.train_augment, spec.eval_augment, data_config.name
  else:
    raise ValueError(f"config.data.source={source!r} has no streaming pipeline; streaming "
                     f"sources: {SOURCES}")
  common = {"num_classes": num_classes, "image_size": image_size, "mean": mean, "std": std,
            "flatten": bool(data_config.flatten),
            "process_index": process_index, "process_count": process_count,
            "num_threads": int(data_config.num_threads),
            "num_workers": int(data_config.num_workers)}
  train = make_pipeline(train_src, batch_size=batch_size, seed=seed, train=True,
                        augment=data_config.augment or train_augment,
                        pad=int(data_config.pad),
                        mixup_alpha=float(data_config.mixup_alpha),
                        name=f"{name}:train", **common)
  evaluation: Pipeline = make_pipeline(eval_src, batch_size=eval_batch_size, seed=seed,
                                       train=False, augment=eval_augment, name=f"{name}:eval",
                                       **common)
  channels = len(mean)
  return {"train": train, "eval": evaluation, "num_classes": num_classes,
          "image_shape": (image_size, image_size, channels), "train_size": len(train_src)}
