"""An offline teacher for language models: its top-k log-probabilities of every training
token, written once to an ArrayRecord store (:func:`kdjax.data.write_topk_logits`) and
read back for the step, which then never runs the teacher (``config.teacher.topk = k``).

The store lives in the teacher-target cache directory under a key of the teacher and the
data (:func:`kdjax.training.teachers._cache.cache_key`, plus ``k``): later runs and resumes
reuse it, and a writer killed part-way resumes with the shards it has not written. The
step reads ``batch["topk_log_probs"]`` / ``batch["topk_indices"]`` (``[B, T, k]``) through
the ``sparse_kl`` term (:func:`kdjax.losses.sparse_kl`).
"""

import hashlib
import json
import pathlib
import time

import jax
import numpy as np

from kdjax import data as kd_data
from kdjax.models import eval_logits
from kdjax.training import _distributed
from kdjax.training.teachers._cache import cache_key
from kdjax.training.teachers._load import single_teacher


def topk_store(groups, x: np.ndarray, *, k: int, cache_dir: pathlib.Path, data: dict,
               num_shards: int, batch_size: int = 64) -> tuple[dict[str, np.ndarray], dict]:
  """``({"topk_log_probs": [N, T, k] float16, "topk_indices": [N, T, k] int32}, info)`` of
  the single teacher in ``groups`` on the token rows ``x``; ``info = {"path", "reused",
  "seconds"}``."""
  key = {**cache_key(groups, x, data=data, space="topk", weights=None, temperature=1.0), "k": k}
  text = json.dumps(key, sort_keys=True)
  folder = pathlib.Path(cache_dir) / f"teacher_topk_{hashlib.sha256(text.encode()).hexdigest()[:16]}"
  reused = folder.is_dir() and (folder / "key.json").is_file()
  start = time.perf_counter()
  model, variables = single_teacher(groups)
  apply = jax.jit(eval_logits(model))  # variables are an argument, not constants
  kd_data.write_topk_logits(lambda tokens: apply(variables, tokens), x, str(folder), k=k,
                            num_shards=min(num_shards, len(x)), batch_size=batch_size,
                            dtype="float16")
  _distributed.barrier("teacher_topk_store")  # every host's shards are written
  if _distributed.is_writer() and not reused:
    (folder / "key.json").write_text(text)
  store = kd_data.read_topk_logits(str(folder))
  records = [store[i] for i in range(len(x))]
  arrays = {name: np.stack([r[name] for r in records])
            for name in ("topk_log_probs", "topk_indices")}
  return arrays, {"path": str(folder), "reused": reused,
                  "seconds": round(time.perf_counter() - start, 2),
                  "bytes_per_token": kd_data.store_bytes_per_token(str(folder))}
