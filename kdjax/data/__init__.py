"""Data sets (generated locally, cached; tfds image data sets streamed through grain),
augmentation, deterministic sharded batching and device prefetching."""

from kdjax.data._batches import batch_indices as batch_indices
from kdjax.data._batches import epoch_permutation as epoch_permutation
from kdjax.data._batches import host_slice as host_slice
from kdjax.data._batches import make_data_mesh as make_data_mesh
from kdjax.data._batches import shard_batch as shard_batch
from kdjax.data._cache import data_dir as data_dir
from kdjax.data._digits import load_digits as load_digits
from kdjax.data._mnist1d import load_mnist1d as load_mnist1d
from kdjax.data._mnist1d import load_mnist1d_transfer as load_mnist1d_transfer
from kdjax.data._registry import DATASETS as DATASETS
from kdjax.data._registry import load_dataset as load_dataset
from kdjax.data._augment import AUGMENTATIONS as AUGMENTATIONS
from kdjax.data._augment import augment_image as augment_image
from kdjax.data._augment import example_rng as example_rng
from kdjax.data._augment import mixup as mixup
from kdjax.data._augment import normalize as normalize
from kdjax.data._augment import pad_crop as pad_crop
from kdjax.data._augment import random_flip as random_flip
from kdjax.data._augment import random_resized_crop as random_resized_crop
from kdjax.data._augment import random_resized_crop_box as random_resized_crop_box
from kdjax.data._augment import resize_center_crop as resize_center_crop
from kdjax.data._pipeline import Pipeline as Pipeline
from kdjax.data._pipeline import PipelineIterator as PipelineIterator
from kdjax.data._pipeline import make_pipeline as make_pipeline
from kdjax.data._pipeline import make_tfds_pipeline as make_tfds_pipeline
from kdjax.data._prefetch import DevicePrefetcher as DevicePrefetcher
from kdjax.data._synthetic import SyntheticSource as SyntheticSource
from kdjax.data._tfds import TFDS_DATASETS as TFDS_DATASETS
from kdjax.data._tfds import ImageDatasetSpec as ImageDatasetSpec
from kdjax.data._tfds import dataset_spec as dataset_spec
from kdjax.data._tfds import tfds_source as tfds_source
from kdjax.data._from_config import pipelines_from_config as pipelines_from_config
