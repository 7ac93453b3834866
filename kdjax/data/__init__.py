"""Data sets (generated locally, cached) and deterministic sharded batching."""

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
from kdjax.data._topk_store import read_topk_logits as read_topk_logits
from kdjax.data._topk_store import store_bytes_per_token as store_bytes_per_token
from kdjax.data._topk_store import topk_store_files as topk_store_files
from kdjax.data._topk_store import write_topk_logits as write_topk_logits
