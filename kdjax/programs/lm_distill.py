"""Distilling a small causal language model: online teacher, fused full-logit KD, or stored
top-k teacher log-probabilities (offline), on bytes of the Python standard library's source.

``run(config, workdir)`` trains (or reloads) the teacher, optionally writes its top-k store,
trains the student and returns validation perplexities. Configs: ``configs/sequence/``.
The data are the bytes of the ``*.py`` files at the top of this Python's standard library
(``sysconfig.get_paths()["stdlib"]``), sorted by name: shipped with every Python, no download;
the exact text depends on the Python version.
"""

import glob
import json
import os
import sysconfig
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kdjax import data, losses
from kdjax.models import Transformer


def stdlib_bytes(num_bytes: int) -> np.ndarray:
  """The first ``num_bytes`` bytes of the standard library's top-level ``*.py`` files."""
  files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
  chunks, total = [], 0
  for path in files:
    with open(path, "rb") as f:
      chunks.append(f.read())
    total += len(chunks[-1])
    if total >= num_bytes:
      break
  if total < num_bytes:
    raise ValueError(f"stdlib_bytes: only {total} bytes of stdlib source, asked {num_bytes}")
  return np.frombuffer(b"".join(chunks)[:num_bytes], np.uint8)


def sequences(stream: np.ndarray, seq_len: int) -> np.ndarray:
  """Non-overlapping ``[M, seq_len + 1]`` windows (inputs ``[:, :-1]``, targets ``[:, 1:]``)."""
  m = len(stream) // (seq_len + 1)
  return stream[: m * (seq_len + 1)].reshape(m, seq_len + 1).astype(np.int32)


def _model(c: ml_collections.ConfigDict, seq_len: int) -> Transformer:
  return Transformer(vocab_size=256, width=c.width, num_layers=c.num_layers,
                     num_heads=c.num_heads, max_len=seq_len)


def _batches(num: int, batch_size: int, steps: int, seed: int):
  """Shuffled index batches, epoch after epoch, by grain's index shuffle."""
  import grain  # pylint: disable=g-import-not-at-top
  epochs = -(-steps * batch_size // num) + 1
  ds = grain.MapDataset.range(num).shuffle(seed=seed).repeat(epochs).batch(batch_size,
                                                                            drop_remainder=True)
  for step in range(steps):
    yield np.asarray(ds[step])


def perplexity(model: Transformer, params: Any, seqs: np.ndarray, batch_size: int) -> float:
  """``exp`` of the mean next-byte cross-entropy over ``seqs``."""
  @jax.jit
  def nll(tokens):
    logits = model.apply({"params": params}, tokens[:, :-1])
    return jnp.sum(losses.cross_entropy(logits, tokens[:, 1:]))
  total = sum(float(nll(jnp.asarray(seqs[i:i + batch_size])))
              for i in range(0, len(seqs) - batch_size + 1, batch_size))
  count = (len(seqs) // batch_size) * batch_size * (seqs.shape[1] - 1)
  return float(np.exp(total / count))


def _make_train(model: Transformer, seqs: np.ndarray, c: ml_collections.ConfigDict, loss_fn,
                extra=None):
  """``train(seed) -> params``; the jitted step is built once and shared by every seed."""
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, c.warmup_steps,
                                                      c.num_steps), weight_decay=c.weight_decay)

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def train(seed: int):
    params = model.init(jax.random.key(seed), jnp.asarray(seqs[:1, :-1]))["params"]
    opt_state = tx.init(params)
    for idx in _batches(len(seqs), c.batch_size, c.num_steps, seed):
      batch = {"tokens": jnp.asarray(seqs[idx])}
      if extra is not None:
        batch.update(extra(idx))
      params, opt_state, loss = step(params, opt_state, batch)
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"training diverged: loss {float(loss)}")
    return params

  return train


def run(config: ml_collections.ConfigDict, workdir: str,
        seeds: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
  """Trains (or reloads) the teacher, then the student as ``config.distill.method`` says.

  Methods: ``"none"`` (cross-entropy only), ``"full"`` (online teacher,
  :func:`~kdjax.losses.fused_distillation_loss` over the full vocabulary), ``"topk"``
  (the teacher's top-``k`` log-probabilities written once with
  :func:`~kdjax.data.write_topk_logits`, read back with grain, and
  :func:`~kdjax.losses.sparse_kl`). One student per seed (default ``(config.seed,)``),
  sharing one compiled step. Returns one result per seed (validation perplexities).
  """
  c = config
  os.makedirs(workdir, exist_ok=True)
  stream = stdlib_bytes(c.data.train_bytes + c.data.val_bytes)
  train = sequences(stream[: c.data.train_bytes], c.data.seq_len)
  val = sequences(stream[c.data.train_bytes:], c.data.seq_len)
  teacher = _model(c.teacher, c.data.seq_len)
  student = _model(c.student, c.data.seq_len)

  teacher_path = os.path.join(workdir, "teacher.msgpack")
  if os.path.exists(teacher_path):
    template = teacher.init(jax.random.key(0), jnp.asarray(train[:1, :-1]))["params"]
    with open(teacher_path, "rb") as f:
      teacher_params = flax.serialization.from_bytes(template, f.read())
  else:
    def teacher_loss(params, batch):
      logits = teacher.apply({"params": params}, batch["tokens"][:, :-1])
      return jnp.mean(losses.cross_entropy(logits, batch["tokens"][:, 1:]))
    teacher_params = _make_train(teacher, train, c.teacher.train, teacher_loss)(c.teacher.seed)
    tmp = teacher_path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(flax.serialization.to_bytes(teacher_params))
    os.replace(tmp, teacher_path)

  d = c.distill
  extra, store_dir = None, None
  if d.method == "topk":
    store_dir = os.path.join(workdir, f"topk_k{d.k}")
    data.write_topk_logits(lambda t: teacher.apply({"params": teacher_params}, t),
                           train[:, :-1], store_dir, k=d.k, num_shards=d.num_shards,
                           batch_size=64, dtype="float16", temperature=d.temperature)
    store = data.read_topk_logits(store_dir)

    def extra(idx):
      recs = [store[int(i)] for i in idx]
      return {"topk_log_probs": jnp.asarray(np.stack([r["topk_log_probs"] for r in recs])),
              "topk_indices": jnp.asarray(np.stack([r["topk_indices"] for r in recs]))}
  elif d.method not in ("none", "full"):
    raise ValueError(f"distill.method must be 'none', 'full' or 'topk', got {d.method!r}")

  def student_loss(params, batch):
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
    hidden = student.apply({"params": params}, inputs, method=Transformer.hidden)
    logits = hidden @ params["head"]
    loss = d.ce_weight * jnp.mean(losses.cross_entropy(logits, targets))
    if d.method == "full":
      t_hidden = teacher.apply({"params": teacher_params}, inputs, method=Transformer.hidden)
      kd = losses.fused_distillation_loss(
          hidden.reshape(-1, hidden.shape[-1]), params["head"],
          jax.lax.stop_gradient(t_hidden.reshape(-1, t_hidden.shape[-1])),
          jax.lax.stop_gradient(teacher_params["head"]), divergence=d.divergence,
          temperature=d.temperature, chunk_size=d.chunk_size)
      loss += d.kd_weight * jnp.mean(kd)
    elif d.method == "topk":
      kd = losses.sparse_kl(logits / d.temperature, batch["topk_log_probs"],
                            batch["topk_indices"], variant=d.variant)
      loss += d.kd_weight * d.temperature**2 * jnp.mean(kd)
    return loss

  train_student = _make_train(student, train, c.student.train, student_loss, extra)
  teacher_ppl = perplexity(teacher, teacher_params, val, 64)
  results = []
  for seed in (c.seed,) if seeds is None else seeds:
    t0 = time.perf_counter()
    student_params = train_student(seed)
    result = {
        "method": d.method, "k": d.k if d.method == "topk" else None, "seed": seed,
        "student_val_perplexity": perplexity(student, student_params, val, 64),
        "teacher_val_perplexity": teacher_ppl,
        "student_train_seconds": round(time.perf_counter() - t0, 1),
        "train_tokens": int(train.shape[0] * c.data.seq_len),
        "val_tokens": int(val.shape[0] * c.data.seq_len),
        "student_params": int(sum(x.size for x in jax.tree.leaves(student_params))),
        "teacher_params": int(sum(x.size for x in jax.tree.leaves(teacher_params))),
    }
    if store_dir is not None:
      result["store_bytes_per_token"] = data.store_bytes_per_token(store_dir)
    with open(os.path.join(workdir, f"result_{d.method}_k{d.k}_seed{seed}.json"), "w") as f:
      json.dump(result, f, indent=1)
    results.append(result)
  return results
