r"""Token data sets for language models: rows of ``T`` input tokens and their ``T`` targets.

A split is ``{"x", "y"}``: ``x [N, T]`` int32 tokens, or *packed* rows ``x [N, 2, T]``
(tokens and segment ids: several documents per row, id 0 = padding; see
:class:`kdjax.models.Decoder`), and ``y [N, T]`` int32 next tokens, ``-1`` where no loss is
taken (padding, a document's last token, prompt tokens). The trainer treats a batch of
``B`` rows as ``B * T`` token examples (:mod:`kdjax.training._tokens`).

* :func:`load_stdlib_bytes`: the bytes of this Python's standard-library ``*.py`` files
  (no download), ``V = 256``, non-overlapping windows;
* :func:`load_jsonl_tokens`: JSON-lines files of ``{"text": ...}``,
  ``{"prompt": ..., "completion": ...}`` (loss on the completion only) or
  ``{"tokens": [...]}``, tokenised on the host by a local ``tokenizer.json``
  (``tokenizers``), packed greedily into rows.
"""

import glob
import json
import os
import pathlib
import sysconfig

import numpy as np


def stdlib_bytes(num_bytes: int) -> np.ndarray:
  """The first ``num_bytes`` bytes of the standard library's top-level ``*.py`` files,
  sorted by name (the exact text depends on the Python version)."""
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


def windows(stream: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  """Non-overlapping windows of ``seq_len + 1`` tokens: ``{"x": [:, :-1], "y": [:, 1:]}``."""
  m = len(stream) // (seq_len + 1)
  rows = stream[: m * (seq_len + 1)].reshape(m, seq_len + 1).astype(np.int32)
  return {"x": rows[:, :-1], "y": rows[:, 1:]}


def load_stdlib_bytes(seq_len: int = 64, train_bytes: int = 200_000,
                      test_bytes: int = 30_000) -> dict:
  """Standard-library source bytes as ``{"train", "test"}`` token splits, ``V = 256``."""
  stream = stdlib_bytes(train_bytes + test_bytes)
  return {"train": windows(stream[:train_bytes], seq_len),
          "test": windows(stream[train_bytes:], seq_len), "num_classes": 256}


def pack(documents: list[tuple[np.ndarray, np.ndarray]], seq_len: int) -> dict[str, np.ndarray]:
  """Greedy packing of ``(tokens, loss)`` documents into rows of ``seq_len + 1`` tokens.

  A document longer than a row is cut into row-sized pieces (each its own segment). Returns
  ``x [N, 2, seq_len]`` (tokens, segment ids) and ``y [N, seq_len]`` (the next token of the
  same segment where ``loss`` marks it, else -1).
  """
  width = seq_len + 1
  rows, row, seg, used = [], np.zeros((2, width), np.int64), 0, 0
  loss_rows, loss_row = [], np.zeros(width, bool)
  pieces = [(t[i:i + width], m[i:i + width]) for t, m in documents
            for i in range(0, len(t), width) if len(t[i:i + width]) > 1]
  for tokens, loss in pieces:
    if used + len(tokens) > width:
      rows.append(row)
      loss_rows.append(loss_row)
      row, seg, used, loss_row = np.zeros((2, width), np.int64), 0, 0, np.zeros(width, bool)
    seg += 1
    row[0, used:used + len(tokens)] = tokens
    row[1, used:used + len(tokens)] = seg
    loss_row[used:used + len(tokens)] = loss
    used += len(tokens)
  if used:
    rows.append(row)
    loss_rows.append(loss_row)
  if not rows:
    return {"x": np.zeros((0, 2, seq_len), np.int32), "y": np.zeros((0, seq_len), np.int32)}
  packed, loss = np.stack(rows), np.stack(loss_rows)  # [N, 2, width], [N, width]
  same = (packed[:, 1, 1:] == packed[:, 1, :-1]) & (packed[:, 1, 1:] > 0)
  y = np.where(same & loss[:, 1:], packed[:, 0, 1:], -1)
  return {"x": packed[:, :, :-1].astype(np.int32), "y": y.astype(np.int32)}


def _documents(path: pathlib.Path, tokenizer) -> list[tuple[np.ndarray, np.ndarray]]:
  docs = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not a JSON line ({e.msg})") from None
      if "tokens" in record:
        tokens = np.asarray(record["tokens"], np.int64)
        loss = np.ones(len(tokens), bool)
      elif "prompt" in record and "completion" in record:
        prompt = tokenizer.encode(record["prompt"]).ids
        completion = tokenizer.encode(record["completion"]).ids
        tokens = np.asarray(prompt + completion, np.int64)
        # The loss is on predicting completion tokens: targets at positions >= len(prompt).
        loss = np.arange(len(tokens)) >= len(prompt)
      elif "text" in record:
        tokens = np.asarray(tokenizer.encode(record["text"]).ids, np.int64)
        loss = np.ones(len(tokens), bool)
      else:
        raise ValueError(f"{path}:{line_no}: a record needs 'text', 'prompt' + 'completion' "
                         f"or 'tokens', got keys {sorted(record)}")
      docs.append((tokens, loss))
  return docs


def load_tokenizer(folder: str | pathlib.Path):
  """``tokenizers.Tokenizer`` of a local folder's ``tokenizer.json`` (or the file itself)."""
  from tokenizers import Tokenizer
  path = pathlib.Path(folder)
  file = path / "tokenizer.json" if path.is_dir() else path
  if not file.is_file():
    raise FileNotFoundError(f"{file} is missing: data.kwargs.tokenizer must be a folder with a "
                            "tokenizer.json (or the file)")
  return Tokenizer.from_file(str(file))


def load_jsonl_tokens(files: str = "", tokenizer: str = "", seq_len: int = 128,
                      test_fraction: float = 0.1) -> dict:
  """JSON-lines documents (``files``: a glob or comma-separated paths) as packed token
  splits; the last ``test_fraction`` of the documents are ``"test"``; ``V`` is the
  tokenizer's vocabulary size."""
  paths = sorted(p for spec in files.split(",") if spec for p in glob.glob(spec.strip()))
  if not paths:
    raise FileNotFoundError(f"data.kwargs.files={files!r} matches no file")
  tok = load_tokenizer(tokenizer)
  docs = [d for p in paths for d in _documents(pathlib.Path(p), tok)]
  vocab = tok.get_vocab_size()
  top = max((int(t.max()) for t, _ in docs if len(t)), default=-1)
  if top >= vocab:
    raise ValueError(f"data.kwargs.files: token id {top} is outside the tokenizer's vocabulary "
                     f"of {vocab}")
  num_test = max(1, int(round(len(docs) * test_fraction)))
  if len(docs) < 2:
    raise ValueError(f"data.kwargs.files={files!r}: {len(docs)} document(s); need >= 2 "
                     "(train and test)")
  return {"train": pack(docs[:-num_test], seq_len), "test": pack(docs[-num_test:], seq_len),
          "num_classes": vocab}
