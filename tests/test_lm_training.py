"""Language models through the one trainer (`train_and_evaluate`): byte-level decoders and
tiny Hugging Face checkpoints as teacher and student, fused and unfused per-token losses,
packed JSONL data, meshes, SIGKILL resume, export back to Hugging Face."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kdjax import convert, data, models
from kdjax.config import load_config
from kdjax.training import load_params, load_run, train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parent.parent
QUIET = {"progress_bar": False}


def _config(arg, **overrides):
  return load_config("sequence/byte_lm_kd.py", arg, {**QUIET, **overrides})


@pytest.fixture(scope="module")
def byte_teacher(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("byte_teacher")
  train_and_evaluate(_config("teacher,smoke"), str(workdir))
  return workdir


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
  pytest.importorskip("transformers")
  from tests import hf_tiny
  root = tmp_path_factory.mktemp("hf_lm")
  bytes_vocab = {"vocab_size": 256}
  return {"llama3": hf_tiny.save("llama3", root, config_changes=bytes_vocab),
          "qwen3": hf_tiny.save("qwen3", root, seed=1, config_changes=bytes_vocab),
          "gemma2": hf_tiny.save("gemma2", root, seed=2, config_changes=bytes_vocab),
          "small_vocab": hf_tiny.save("qwen2", root, seed=3)}


def _metrics(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_fused_and_full_logit_students_train_alike(byte_teacher, tmp_path):
  """The fused terms equal cross_entropy + forward_kl on [B*T, V] logits, through the
  trainer: the same losses at every logged step and the same final params (float32)."""
  full = train_and_evaluate(_config("full,smoke", **{"teacher.workdir": str(byte_teacher)}),
                            str(tmp_path / "full"))
  fused = train_and_evaluate(_config("fused,smoke", **{"teacher.workdir": str(byte_teacher)}),
                             str(tmp_path / "fused"))
  for a, b in zip(_metrics(tmp_path / "full"), _metrics(tmp_path / "fused")):
    np.testing.assert_allclose(b["train/loss/fused_cross_entropy"], a["train/loss/cross_entropy"],
                               rtol=2e-5)
    np.testing.assert_allclose(b["train/loss/fused_kd"], a["train/loss/forward_kl"], rtol=1e-4,
                               atol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=2e-5),
               load_params(tmp_path / "full"), load_params(tmp_path / "fused"))
  assert fused["test"]["perplexity"] == pytest.approx(np.exp(fused["test"]["nll"]))
  assert 1 < full["test"]["perplexity"] < 256 and full["teacher_test"]["perplexity"] < 256
  # The teacher is an argument of the compiled step, not a constant folded into it.
  teacher_bytes = full["memory"]["per_device_bytes"]["teacher_params"]
  assert teacher_bytes > 0 and full["memory"]["compiled_step"]["argument"] > teacher_bytes
  assert "train/teacher_agreement" in _metrics(tmp_path / "full")[-1]


def test_hf_teacher_and_student_distil_and_export(hf_folders, tmp_path):
  """A Hugging Face Llama teacher -> Qwen 3 student (both folders), fused loss; the
  distilled workdir exports as a folder transformers loads with the same logits."""
  from tests import hf_tiny
  config = _config("fused,smoke", **{"teacher.hf_path": str(hf_folders["llama3"])})
  config.model = ml_collections.ConfigDict({"name": "decoder",
                                            "hf_path": str(hf_folders["qwen3"])})
  workdir = tmp_path / "student"
  summary = train_and_evaluate(config, str(workdir))
  assert summary["params"] == models.count_params(convert.from_hf(hf_folders["qwen3"])[1])
  model, variables, info = load_run(workdir)  # rebuilt from run.json: no HF folder needed
  assert info["model"]["name"] == "decoder" and info["model"]["qk_norm"]
  _, start = convert.from_hf(hf_folders["qwen3"])
  assert not np.allclose(variables["params"]["norm"]["scale"], start["params"]["norm"]["scale"])
  out = convert.to_hf(model, variables, tmp_path / "export")
  tokens = np.asarray(data.stdlib_bytes(40)).reshape(2, 20).astype(np.int32)
  mask = np.ones_like(tokens)
  ours = models.as_model(model).apply(variables, jnp.asarray(tokens), train=False)[0]
  np.testing.assert_allclose(np.asarray(ours), hf_tiny.torch_logits(out, tokens, mask), atol=1e-4)


def test_hf_pairs_that_cannot_distil_fail_in_one_line(hf_folders, tmp_path):
  config = _config("full,smoke", **{"teacher.hf_path": str(hf_folders["llama3"])})
  config.model = ml_collections.ConfigDict({"name": "decoder",
                                            "hf_path": str(hf_folders["small_vocab"])})
  with pytest.raises(ValueError, match=r"vocab_size 96 is smaller than the data's 256"):
    train_and_evaluate(config, str(tmp_path / "a"))
  config = _config("fused,smoke", **{"teacher.hf_path": str(hf_folders["gemma2"])})
  with pytest.raises(ValueError, match=r"final_softcap=3.0.*fused losses do not model"):
    train_and_evaluate(config, str(tmp_path / "b"))
  config = _config("full,smoke", **{"teacher.hf_path": str(hf_folders["llama3"]),
                                    "teacher.cache": True})
  with pytest.raises(ValueError, match=r"teacher.cache=True but the data are token rows"):
    train_and_evaluate(config, str(tmp_path / "c"))


def test_different_tokenizers_are_refused(hf_folders, tmp_path):
  import shutil
  folders = {}
  for name, words in (("llama3", "ab"), ("qwen3", "ba")):
    folders[name] = tmp_path / name
    shutil.copytree(hf_folders[name], folders[name])
    _tokenizer(folders[name], words=words)
  config = _config("full,smoke", **{"teacher.hf_path": str(folders["llama3"])})
  config.model = ml_collections.ConfigDict({"name": "decoder", "hf_path": str(folders["qwen3"])})
  with pytest.raises(ValueError, match=r"Tokenizers differ: .*qwen3/tokenizer.json and .*llama3"):
    train_and_evaluate(config, str(tmp_path / "w"))


def test_vocabulary_mismatch_is_one_line(hf_folders, byte_teacher, tmp_path):
  """A student whose head is wider than the teacher's (V 256 vs a 300-token decoder)."""
  config = _config("full,smoke", **{"teacher.workdir": str(byte_teacher)})
  config.model.num_classes = 300
  with pytest.raises(ValueError, match=r"predicts a vocabulary of 256 tokens but the student 300"):
    train_and_evaluate(config, str(tmp_path / "w"))


def _tokenizer(folder: pathlib.Path, words=None) -> pathlib.Path:
  from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
  words = words or "the a cat dog sat on mat ran to and fast slow big small red blue".split()
  vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
  tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  folder.mkdir(parents=True, exist_ok=True)
  tok.save(str(folder / "tokenizer.json"))
  return folder


def test_jsonl_documents_are_packed_with_prompt_masks(tmp_path):
  tok = _tokenizer(tmp_path / "tok")
  lines = [{"text": "the cat sat on the mat"}, {"prompt": "a dog", "completion": "ran fast"},
           {"tokens": [3, 4, 5]}, {"text": "big red dog ran to the small blue cat"}]
  (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  splits = data.load_jsonl_tokens(files=str(tmp_path / "d.jsonl"), tokenizer=str(tok),
                                  seq_len=8, test_fraction=0.25)
  x, y = splits["train"]["x"], splits["train"]["y"]
  assert splits["num_classes"] == 17 and x.shape[1:] == (2, 8) and y.shape[1:] == (8,)
  # Row 0: "the cat sat on the mat" (6 tokens); the next document does not fit: padding.
  np.testing.assert_array_equal(x[0, 0, :6], [1, 3, 5, 6, 1, 7])
  np.testing.assert_array_equal(x[0, 1], [1, 1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(y[0], [3, 5, 6, 1, 7, -1, -1, -1])  # the last token: no target
  # Row 1: "a dog" + "ran fast" (prompt targets dropped), then the tokens [3, 4, 5].
  np.testing.assert_array_equal(x[1, 0, :7], [2, 4, 8, 11, 3, 4, 5])
  np.testing.assert_array_equal(x[1, 1], [1, 1, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(y[1], [-1, 8, 11, -1, 4, 5, -1, -1])
  with pytest.raises(ValueError, match=r"d2.jsonl:1: a record needs 'text'"):
    (tmp_path / "d2.jsonl").write_text('{"body": "x"}\n{"text": "a"}\n')
    data.load_jsonl_tokens(files=str(tmp_path / "d2.jsonl"), tokenizer=str(tok))


def test_jsonl_student_trains_in_bfloat16(tmp_path):
  tok = _tokenizer(tmp_path / "tok")
  rng = np.random.default_rng(0)
  words = "the a cat dog sat on mat ran to and fast slow big small red blue".split()
  cycle = lambda start, n: " ".join(words[(start + i) % len(words)] for i in range(n))  # noqa: E731
  lines = [{"text": cycle(rng.integers(16), rng.integers(3, 20))} for _ in range(200)]
  (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
  config = _config("none,smoke", dtype="bfloat16")
  config.data.name = "jsonl"
  config.data.kwargs = {"files": str(tmp_path / "d.jsonl"), "tokenizer": str(tok), "seq_len": 16}
  summary = train_and_evaluate(config, str(tmp_path / "w"))
  assert summary["dtype"] == "bfloat16" and np.isfinite(summary["test"]["nll"])
  assert {np.asarray(p).dtype for p in jax.tree.leaves(load_params(tmp_path / "w"))} == {
      np.dtype("float32")}  # float32 master weights
  # Each next word follows from the current one: far below the uniform 17.
  assert summary["test"]["perplexity"] < 8


@pytest.mark.parametrize("mesh", [{"data": 2, "model": 4}, {"data": 8, "model": 1}])
def test_sharded_decoders_train_like_one_device(byte_teacher, tmp_path, mesh):
  """Decoder sharding rules (FSDP over data, heads / MLP / vocabulary over model) for
  teacher and student: losses and gradient norms equal one device's."""
  rules = models.decoder_sharding_rules()
  common = {"teacher.workdir": str(byte_teacher), "num_steps": 4, "log_every": 2,
            "eval_every": 4, "checkpoint_every": 4, "optimizer.warmup_steps": 2}
  one = _config("fused,smoke", num_devices=1, **common)
  many = _config("fused,smoke", **common)
  many.mesh = ml_collections.ConfigDict(mesh)
  many.sharding.student = rules
  many.sharding.teacher = rules
  reference = train_and_evaluate(one, str(tmp_path / "one"))
  summary = train_and_evaluate(many, str(tmp_path / "many"))
  assert summary["mesh"] == mesh
  for part in ("student_params", "teacher_params"):  # the rules did shard both models
    assert (summary["memory"]["per_device_bytes"][part]
            < 0.5 * reference["memory"]["per_device_bytes"][part]), part
  for a, b in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "many")):
    for key in ("train/loss", "train/grad_norm", "test/nll"):
      if key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=2e-5, err_msg=key)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=2e-5),
               load_params(tmp_path / "one"), load_params(tmp_path / "many"))


def test_sigkill_resume_is_bit_identical(byte_teacher, tmp_path):
  """`kdjax train` of a fused byte-LM student killed twice (SIGKILL) and rerun ends with the
  params of an uninterrupted run."""
  overrides = {"num_steps": 120, "log_every": 5, "eval_every": 120, "checkpoint_every": 10,
               "teacher.workdir": str(byte_teacher)}
  train_and_evaluate(_config("fused,smoke", **overrides), str(tmp_path / "ref"))
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  workdir = tmp_path / "killed"
  cmd = [sys.executable, "-m", "kdjax.main", "train", "--config",
         str(REPO / "configs/sequence/byte_lm_kd.py:fused,smoke"), "--workdir", str(workdir),
         "--config.progress_bar=False"] + [f"--config.{k}={v}" for k, v in overrides.items()]

  def step():
    try:
      return json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    except (OSError, ValueError, IndexError):
      return 0

  for target in (25, 70):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and step() < target:
      time.sleep(0.002)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
  subprocess.run(cmd, env=env, check=True, capture_output=True)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["steps"] == 120 and summary["resumed_from"] >= 20
  jax.tree.map(np.testing.assert_array_equal, load_params(workdir), load_params(tmp_path / "ref"))
  steps = [r["step"] for r in _metrics(workdir)]
  assert steps == list(range(5, 121, 5))


@pytest.mark.slow
def test_two_processes_train_like_one(byte_teacher, tmp_path):
  """Two processes (4 CPU devices each, gloo) distil the fused byte-LM student like one
  process with 8 devices: losses, evaluation, params."""
  import socket
  worker = pathlib.Path(__file__).with_name("multihost_worker.py")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  overrides = {**QUIET, "num_steps": 4, "log_every": 2, "eval_every": 2, "checkpoint_every": 4,
               "optimizer.warmup_steps": 2, "teacher.workdir": str(byte_teacher)}
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
  multi = tmp_path / "two"
  procs = [subprocess.Popen([sys.executable, str(worker), f"127.0.0.1:{port}", "2", str(i),
                             str(multi), "4", "sequence/byte_lm_kd.py:fused,smoke",
                             json.dumps(overrides)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
           for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  summary = train_and_evaluate(_config("fused,smoke", **overrides), str(tmp_path / "one"))
  for out, _ in outputs:
    report = json.loads(out.strip().splitlines()[-1])
    np.testing.assert_allclose(report["test"]["nll"], summary["test"]["nll"], rtol=1e-5)
  for a, b in zip(_metrics(tmp_path / "one"), _metrics(multi)):
    assert set(a) == set(b)
    for key in ("train/loss", "train/grad_norm", "test/nll", "test/accuracy"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5),
               load_params(tmp_path / "one"), load_params(multi))


def test_memory_report_from_the_config_matches_the_run(byte_teacher, tmp_path):
  """memory_report(config) sizes a teacher + student pair before any step: the same
  per-device bytes as the run's placed arrays, and the compiled step's plan."""
  from kdjax.training import memory_report
  config = _config("fused,smoke", **{"teacher.workdir": str(byte_teacher)})
  config.mesh = ml_collections.ConfigDict({"data": 2, "model": 4})
  config.sharding.student = config.sharding.teacher = models.decoder_sharding_rules()
  report = memory_report(config)
  summary = train_and_evaluate(config, str(tmp_path / "w"))
  placed = summary["memory"]["per_device_bytes"]
  for key in ("student_params", "optimizer_state", "teacher_params"):
    assert report["per_device_bytes"][key] == placed[key], key
  assert report["mesh"] == {"data": 2, "model": 4} and report["tokens_per_step"] == 16 * 32
  run_temp = summary["memory"]["compiled_step"]["temp"]
  assert abs(report["compiled_step"]["temp"] - run_temp) <= 0.1 * run_temp


def test_stored_topk_teacher_trains_and_is_reused(byte_teacher, tmp_path):
  """config.teacher.topk: the teacher's top-k written once (ArrayRecord) and reused by the
  next run; at k = V (256) sparse_kl 'tail' is forward KL, so the run tracks the online
  full-logit one up to the store's float16 rounding."""
  teacher = {"teacher.workdir": str(byte_teacher), "teacher.cache_dir": str(tmp_path / "cache")}
  full = train_and_evaluate(_config("full,smoke", **teacher), str(tmp_path / "full"))
  first = train_and_evaluate(_config("topk,k=256,smoke", **teacher), str(tmp_path / "topk"))
  assert not first["teacher_cache"]["reused"] and first["teacher_cache"]["bytes_per_token"] > 0
  for a, b in zip(_metrics(tmp_path / "full"), _metrics(tmp_path / "topk")):
    np.testing.assert_allclose(b["train/loss/sparse_kl"], a["train/loss/forward_kl"], rtol=5e-3)
  np.testing.assert_allclose(first["test"]["nll"], full["test"]["nll"], rtol=1e-3)
  again = train_and_evaluate(_config("topk,k=256,smoke", seed=1, **teacher), str(tmp_path / "b"))
  assert again["teacher_cache"]["reused"]
  assert again["teacher_cache"]["path"] == first["teacher_cache"]["path"]
  with pytest.raises(ValueError, match=r"the sparse_kl term as the only teacher term"):
    config = _config("topk,smoke", **teacher)
    config.losses.forward_kl = {"weight": 0.1}
    train_and_evaluate(config, str(tmp_path / "c"))


def test_hf_distill_config_smoke(hf_folders, tmp_path):
  """configs/sequence/hf_distill.py:smoke: HF Llama teacher -> HF Qwen 3 student on packed
  JSON lines, bfloat16, decoder sharding rules on 8 devices."""
  tok = _tokenizer(tmp_path / "tok")
  lines = [{"prompt": "the cat", "completion": "sat on the mat"}, {"text": "a dog ran fast"}] * 300
  (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
  config = load_config("sequence/hf_distill.py", "smoke", {
      **QUIET, "teacher.hf_path": str(hf_folders["llama3"]),
      "model.hf_path": str(hf_folders["qwen3"]), "data.kwargs.files": str(tmp_path / "d.jsonl"),
      "data.kwargs.tokenizer": str(tok)})
  summary = train_and_evaluate(config, str(tmp_path / "w"))
  assert summary["dtype"] == "bfloat16" and summary["steps"] == 40
  assert np.isfinite(summary["test"]["nll"]) and summary["teacher_test"]["tokens"] > 0
