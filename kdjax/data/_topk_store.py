"""Offline teacher logits: top-k log-probabilities per token in sharded ArrayRecord files.

Layout of a store directory::

    topk_meta.json                                   k, sequence length, dtype, shards
    topk-00003-of-00008.process001.array_record      shard 3, written by process 1

Examples ``0..M-1`` are split into ``num_shards`` contiguous ranges; process ``p`` of ``P``
writes the shards ``s`` with ``s % P == p``. A shard is written to ``<name>.tmp`` and renamed
when complete (an atomic rename on POSIX), so a killed writer leaves only whole shards
behind and a restart writes exactly the missing ones. One record per example holds its
``[T, k]`` log-probabilities (float16 or float32) followed by its ``[T, k]`` int32 token ids.
"""

import glob
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# grain and array_record are imported where used: importing kdjax.data stays light.
META = "topk_meta.json"
DTYPES = ("float16", "float32")


def _shard_name(shard: int, num_shards: int, process_index: int) -> str:
  return f"topk-{shard:05d}-of-{num_shards:05d}.process{process_index:03d}.array_record"


def _atomic_write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _topk_fn(teacher_fn: Callable[[jax.Array], jax.Array], k: int, temperature: float):
  @jax.jit
  def topk(tokens):
    logits = teacher_fn(tokens)
    return jax.lax.top_k(jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, -1), k)
  return topk


def write_topk_logits(teacher_fn: Callable[[jax.Array], jax.Array], tokens: np.ndarray,
                      directory: str, *, k: int, num_shards: int, batch_size: int = 32,
                      dtype: str = "float16", temperature: float = 1.0,
                      process_index: int | None = None, process_count: int | None = None,
                      options: str = "group_size:1",
                      on_shard_written: Callable[[int], None] | None = None) -> list[str]:
  r"""Runs a teacher over token sequences and stores its top-k log-probabilities per token.

  Stores :math:`\mathrm{top}_k \log \mathrm{softmax}(z / T)` per token (values and token
  ids), the input of :func:`kdjax.losses.sparse_kl`. Resumable: shards already complete
  are skipped, a partial shard (``.tmp``) is rewritten.

  Args:
    teacher_fn: ``tokens [B, T] int32 -> logits [B, T, V]`` (e.g. a bound ``model.apply``).
    tokens: ``[M, T]`` integer token ids, the whole data set (every process passes all of
      it and writes its own shards).
    directory: the store directory (created).
    k: tokens kept per position, ``1 <= k <= V``.
    num_shards: number of files the examples are split into.
    batch_size: examples per teacher call (the last batch of a shard is padded).
    dtype: ``"float16"`` or ``"float32"`` storage of the log-probabilities.
    temperature: the teacher's softmax temperature :math:`T`.
    process_index: this host's index (default ``jax.process_index()``).
    process_count: the number of hosts (default ``jax.process_count()``).
    options: ArrayRecord writer options; ``group_size:1`` (what grain's random access
      expects), compressed by default.
    on_shard_written: called with the shard index after each shard's rename.

  Returns:
    The paths of the shards this process owns, complete.
  """
  fn = "write_topk_logits"
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"{fn}: tokens must be an integer [M, T] array, got {tokens.dtype} "
                     f"{tokens.shape}")
  if dtype not in DTYPES:
    raise ValueError(f"{fn}: dtype must be one of {DTYPES}, got {dtype!r}")
  if not 1 <= num_shards <= len(tokens):
    raise ValueError(f"{fn}: num_shards must be in [1, {len(tokens)}] (the number of "
                     f"examples), got {num_shards}")
  if k < 1 or batch_size < 1:
    raise ValueError(f"{fn}: k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
  p = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  os.makedirs(directory, exist_ok=True)
  # tokens: [N, T], or packed rows [N, 2, T] (tokens, segment ids)
  meta = {"k": k, "sequence_length": int(tokens.shape[-1]), "num_examples": int(len(tokens)),
          "num_shards": num_shards, "dtype": dtype, "temperature": temperature,
          "process_count": count}
  meta_path = os.path.join(directory, META)
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      old = json.load(f)
    if old != meta:
      raise ValueError(f"{fn}: {directory} holds a store with other settings {old}, "
                       f"not {meta}; use a new directory")
  else:
    _atomic_write_text(meta_path, json.dumps(meta, indent=1))
  topk = _topk_fn(teacher_fn, k, temperature)
  bounds = np.linspace(0, len(tokens), num_shards + 1).round().astype(int)
  paths = []
  for shard in range(p, num_shards, count):
    path = os.path.join(directory, _shard_name(shard, num_shards, p))
    paths.append(path)
    if os.path.exists(path):
      continue
    tmp = path + ".tmp"
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    writer = array_record_module.ArrayRecordWriter(tmp, options)
    for start in range(bounds[shard], bounds[shard + 1], batch_size):
      stop = min(start + batch_size, bounds[shard + 1])
      batch = tokens[start:stop]
      padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), 0)])
      values, ids = jax.device_get(topk(jnp.asarray(padded, jnp.int32)))
      for i in range(len(batch)):
        writer.write(values[i].astype(dtype).tobytes() + ids[i].astype(np.int32).tobytes())
    writer.close()
    os.replace(tmp, path)
    if on_shard_written is not None:
      on_shard_written(shard)
  return paths


def topk_store_files(directory: str) -> tuple[list[str], dict]:
  """The store's shard files in example order and its metadata; raises if incomplete."""
  with open(os.path.join(directory, META)) as f:
    meta = json.load(f)
  files = sorted(glob.glob(os.path.join(directory, "topk-*-of-*.array_record")))
  shards = [int(os.path.basename(f).split("-")[1]) for f in files]
  missing = sorted(set(range(meta["num_shards"])) - set(shards))
  if missing or len(shards) != meta["num_shards"]:
    raise ValueError(f"topk_store_files: {directory} is incomplete: missing shards {missing} "
                     f"of {meta['num_shards']} (run the writer again to resume)")
  return files, meta


def read_topk_logits(directory: str) -> "grain.MapDataset":
  """The store as a grain ``MapDataset``: element ``i`` is example ``i``'s top-k.

  Elements are ``{"topk_log_probs": [T, k] float16/32, "topk_indices": [T, k] int32}``;
  join them with the token data set by index (``MapDataset.range(M).map(...)``), then
  shuffle and batch with grain, and pass them to :func:`kdjax.losses.sparse_kl`.
  """
  import grain  # pylint: disable=g-import-not-at-top

  files, meta = topk_store_files(directory)
  shape = (meta["sequence_length"], meta["k"])
  dtype = np.dtype(meta["dtype"])
  split = int(np.prod(shape)) * dtype.itemsize

  def decode(record: bytes) -> dict[str, np.ndarray]:
    return {"topk_log_probs": np.frombuffer(record[:split], dtype).reshape(shape),
            "topk_indices": np.frombuffer(record[split:], np.int32).reshape(shape)}

  source = grain.sources.ArrayRecordDataSource(files)
  if len(source) != meta["num_examples"]:
    raise ValueError(f"read_topk_logits: {directory} holds {len(source)} records, its "
                     f"metadata says {meta['num_examples']}")
  return grain.MapDataset.source(source).map(decode)


def store_bytes_per_token(directory: str) -> float:
  """Bytes on disk per stored token (all shard files / (examples * sequence length))."""
  files, meta = topk_store_files(directory)
  total = sum(os.path.getsize(f) for f in files)
  return total / (meta["num_examples"] * meta["sequence_length"])


