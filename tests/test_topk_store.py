"""Offline top-k teacher logits: write, kill, resume, read back, feed sparse_kl."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import data, losses

V, T, M, K = 40, 6, 24, 5

# A deterministic toy teacher (fixed weights), shared with the writer subprocess.
TEACHER_SRC = textwrap.dedent(f"""
    import numpy as np, jax.numpy as jnp
    _rng = np.random.default_rng(0)
    _emb = jnp.asarray(_rng.normal(size=({V}, 8)), jnp.float32)
    _out = jnp.asarray(_rng.normal(size=(8, {V})) * 2, jnp.float32)
    def teacher(tokens):
        h = _emb[tokens]
        return (h + jnp.cumsum(h, axis=1) / 3) @ _out
    tokens = np.random.default_rng(1).integers(0, {V}, size=({M}, {T}))
""")
_ns: dict = {}
exec(TEACHER_SRC, _ns)  # pylint: disable=exec-used
teacher, TOKENS = _ns["teacher"], _ns["tokens"]


def _write(directory, **kw):
  return data.write_topk_logits(teacher, TOKENS, str(directory), k=K, num_shards=6,
                                batch_size=4, **kw)


def _records(directory):
  ds = data.read_topk_logits(str(directory))
  return [ds[i] for i in range(len(ds))]


def test_roundtrip_matches_the_teacher_and_feeds_sparse_kl(tmp_path):
  paths = _write(tmp_path, dtype="float32")
  assert len(paths) == 6 and all("process000" in p for p in paths)
  recs = _records(tmp_path)
  assert len(recs) == M
  lp = jax.nn.log_softmax(teacher(jnp.asarray(TOKENS)), -1)
  want_vals, want_ids = jax.lax.top_k(lp, K)
  np.testing.assert_array_equal(np.stack([r["topk_indices"] for r in recs]), want_ids)
  np.testing.assert_allclose(np.stack([r["topk_log_probs"] for r in recs]), want_vals, atol=2e-5)
  # A batch through sparse_kl: the student equal to the teacher gives 0.
  batch = recs[:3]
  loss = losses.sparse_kl(teacher(jnp.asarray(TOKENS[:3])),
                          jnp.stack([r["topk_log_probs"] for r in batch]),
                          jnp.stack([r["topk_indices"] for r in batch]), variant="tail")
  np.testing.assert_allclose(loss, 0.0, atol=1e-5)
  sizes = sum(os.path.getsize(p) for p in paths)
  assert data.store_bytes_per_token(str(tmp_path)) == sizes / (M * T)


def test_two_hosts_write_disjoint_shards(tmp_path):
  a = _write(tmp_path, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="incomplete"):
    data.read_topk_logits(str(tmp_path))
  b = _write(tmp_path, process_index=1, process_count=2)
  assert not set(a) & set(b) and len(a) == len(b) == 3
  assert all("process001" in p for p in b)
  single = tmp_path / "single"
  _write(single)
  for got, want in zip(_records(tmp_path), _records(single)):
    np.testing.assert_array_equal(got["topk_indices"], want["topk_indices"])
    np.testing.assert_array_equal(got["topk_log_probs"], want["topk_log_probs"])


def test_killed_writer_resumes_to_the_uninterrupted_output(tmp_path):
  killed, clean = tmp_path / "killed", tmp_path / "clean"
  script = TEACHER_SRC + textwrap.dedent(f"""
      import sys, time
      from kdjax import data
      def slow(tokens):
          time.sleep(0.3)  # the writer is killed while it works on a shard
          return teacher(tokens)
      data.write_topk_logits(slow, tokens, {str(killed)!r}, k={K}, num_shards=6, batch_size=4,
                             on_shard_written=lambda s: print("done", s, flush=True))
  """)
  proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    assert proc.stdout.readline().startswith("done")
    assert proc.stdout.readline().startswith("done")
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
  finals = [f for f in os.listdir(killed) if f.endswith(".array_record")]
  assert 2 <= len(finals) < 6, finals  # killed midway
  with pytest.raises(ValueError, match="incomplete"):
    data.read_topk_logits(str(killed))
  resumed = []
  _write(killed, on_shard_written=resumed.append)
  assert len(resumed) == 6 - len(finals)  # only the missing shards were written again
  _write(clean)
  names = sorted(f for f in os.listdir(clean) if f.endswith(".array_record"))
  assert names == sorted(f for f in os.listdir(killed) if f.endswith(".array_record"))
  for name in names:  # byte-identical files
    assert (killed / name).read_bytes() == (clean / name).read_bytes()


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="num_shards"):
    data.write_topk_logits(teacher, TOKENS, str(tmp_path), k=K, num_shards=0)
  with pytest.raises(ValueError, match="dtype"):
    data.write_topk_logits(teacher, TOKENS, str(tmp_path), k=K, num_shards=2, dtype="int8")
  with pytest.raises(ValueError, match="tokens"):
    data.write_topk_logits(teacher, TOKENS.astype(float), str(tmp_path), k=K, num_shards=2)
  _write(tmp_path / "a")
  with pytest.raises(ValueError, match="other settings"):
    data.write_topk_logits(teacher, TOKENS, str(tmp_path / "a"), k=K + 1, num_shards=6)
