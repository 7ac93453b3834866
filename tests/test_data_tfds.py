"""tfds data sets through grain without TensorFlow, on mock and locally built data.

Nothing here may reach the network: TFDS_DATA_DIR points at a temporary folder and tfds'
download manager raises if anything calls it.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from kdjax import data

import tensorflow_datasets as tfds  # noqa: E402  (a runtime dependency)

EXPECTED = {  # name: (x shape, classes)
    "mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "imagenet2012": ((224, 224, 3), 1000),
    "imagenette": ((224, 224, 3), 10),
}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
  """A fresh empty TFDS data dir, and a download manager that fails loudly."""
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))

  def refuse(*args, **kwargs):
    raise AssertionError(f"a test tried to download: {args!r:.200}")

  dm = tfds.download.DownloadManager
  for name in ("download", "download_and_extract", "extract", "download_kaggle_data"):
    if hasattr(dm, name):
      monkeypatch.setattr(dm, name, refuse)
  return tmp_path


def _mock(n=24):
  return tfds.testing.mock_data(num_examples=n)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_data_set_streams_batches_of_the_right_shape(name):
  shape, classes = EXPECTED[name]
  with _mock():
    train = data.make_tfds_pipeline(name, "train", batch_size=8, seed=0, process_index=0,
                                    process_count=1)
    evaluation = data.make_tfds_pipeline(name, "eval", batch_size=8, process_index=0,
                                         process_count=1)
    batch = next(train.iterator())
    assert batch["x"].shape == (8, *shape) and batch["x"].dtype == np.float32
    assert batch["y"].dtype == np.int32 and ((0 <= batch["y"]) & (batch["y"] < classes)).all()
    assert train.steps_per_epoch == 3
    # Evaluation is deterministic (center crop for ImageNet-style sets, none otherwise).
    first, second = evaluation[0], evaluation[0]
    np.testing.assert_array_equal(first["x"], second["x"])
    assert first["x"].shape == (8, *shape)
    seen = np.concatenate([b["id"][b["mask"]] for b in evaluation.iterator()])
    assert sorted(seen) == list(range(24))


@pytest.mark.parametrize("name", ["mnist", "cifar100", "imagenette"])
def test_hosts_read_disjoint_covering_shards(name):
  with _mock():
    hosts = [data.make_tfds_pipeline(name, "train", batch_size=6, seed=3, process_index=p,
                                     process_count=3) for p in range(3)]
    per_host = [set(np.concatenate([h[j]["id"] for j in range(4)]).tolist()) for h in hosts]
  assert all(len(s) == 8 for s in per_host)
  assert set.union(*per_host) == set(range(24))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_resume_across_a_simulated_kill(name):
  with _mock():
    make = lambda: data.make_tfds_pipeline(name, "train", batch_size=4, seed=7,  # noqa: E731
                                           process_index=0, process_count=1)
    it = make().iterator()
    reference = [next(it) for _ in range(9)]  # crosses an epoch (6 steps of 4)
    it = make().iterator()
    for _ in range(5):
      next(it)
    saved = json.dumps(it.get_state())
    del it
    resumed = make().iterator(json.loads(saved))
    for ref in reference[5:]:
      got = next(resumed)
      np.testing.assert_array_equal(got["id"], ref["id"])
      np.testing.assert_array_equal(got["x"], ref["x"])


_CHILD = textwrap.dedent("""
    import json, os, sys, time
    import tensorflow_datasets as tfds
    from kdjax.data import make_tfds_pipeline
    out = sys.argv[1]
    with tfds.testing.mock_data(num_examples=24):
      it = make_tfds_pipeline("cifar100", "train", batch_size=4, seed=11, process_index=0,
                              process_count=1).iterator()
      for step in range(1, 1000):
        batch = next(it)
        with open(os.path.join(out, "log.jsonl"), "a") as f:
          f.write(json.dumps({"step": step, "id": batch["id"].tolist(),
                              "x_sum": float(batch["x"].sum())}) + "\\n")
        tmp = os.path.join(out, "state.tmp")
        with open(tmp, "w") as f:
          json.dump({"consumed": step, "state": it.get_state()}, f)
        os.replace(tmp, os.path.join(out, "state.json"))  # the "checkpoint"
        time.sleep(0.05)
""")


def test_exact_resume_after_a_real_sigkill(tmp_path):
  env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
  child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  log = tmp_path / "log.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and child.poll() is None:
    if log.exists() and len(log.read_text().splitlines()) >= 8:
      break
    time.sleep(0.05)
  assert child.poll() is None, child.stderr.read().decode()[-2000:]
  child.send_signal(signal.SIGKILL)
  child.wait()
  child.stderr.close()
  saved = json.loads((tmp_path / "state.json").read_text())
  logged = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
  consumed = saved["consumed"]
  assert consumed >= 7
  with _mock():
    make = lambda: data.make_tfds_pipeline("cifar100", "train", batch_size=4, seed=11,  # noqa: E731
                                           process_index=0, process_count=1)
    it = make().iterator()
    reference = [next(it) for _ in range(consumed + 4)]
    resumed = make().iterator(saved["state"])
    after = [next(resumed) for _ in range(4)]
  for record, ref in zip(logged, reference):  # the killed run saw the reference order
    assert record["id"] == ref["id"].tolist()
    assert record["x_sum"] == pytest.approx(float(ref["x"].sum()), rel=1e-6)
  for got, ref in zip(after, reference[consumed:]):
    np.testing.assert_array_equal(got["id"], ref["id"])
    np.testing.assert_array_equal(got["x"], ref["x"])


def test_unprepared_data_set_fails_at_once_without_downloading(offline):
  start = time.time()
  with pytest.raises(FileNotFoundError, match="not prepared"):
    data.make_tfds_pipeline("cifar10", "train", batch_size=8, process_index=0, process_count=1)
  assert time.time() - start < 30  # a download attempt spends minutes in retries
  with pytest.raises(ValueError, match="Unknown tfds data set"):
    data.tfds_source("svhn", "train")


@pytest.mark.parametrize("encoding", ["tensor", "png", "jpeg"])
def test_locally_built_array_record_data_reads_through_the_pipeline(tmp_path, encoding):
  """A real array_record data set (built here, no mock) read by data_source + grain.

  ``png``/``jpeg``: encoded ``Image`` features, as MNIST/CIFAR (PNG) and ImageNet (JPEG)
  store them; encoded from PIL images and decoded on read, all without TensorFlow.
  """
  from PIL import Image

  def generated(i):
    return np.random.default_rng(i).integers(0, 256, (12, 12, 3), dtype=np.uint8)

  if encoding == "tensor":
    feature, encode = tfds.features.Tensor(shape=(12, 12, 3), dtype=np.uint8), lambda a: a
  else:
    feature = tfds.features.Image(shape=(12, 12, 3), encoding_format=encoding)
    encode = Image.fromarray

  class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": feature, "label": tfds.features.ClassLabel(num_classes=4)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(30)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"image": encode(generated(i)), "label": i % 4}

  builder = TinyImages(data_dir=str(tmp_path / "built"))
  builder.download_and_prepare(file_format="array_record")
  source = builder.as_data_source(split="train")
  assert len(source) == 30
  pipeline = data.make_pipeline(source, batch_size=6, seed=0, train=True, num_classes=4,
                                image_size=12, mean=(0.5,) * 3, std=(0.25,) * 3,
                                augment="pad_crop_flip", process_index=0, process_count=1)
  ids = np.concatenate([pipeline[j]["id"] for j in range(5)])
  np.testing.assert_array_equal(np.sort(ids), np.arange(30))
  batch = pipeline[0]
  assert batch["x"].shape == (6, 12, 12, 3)
  np.testing.assert_array_equal(batch["y"], [source[int(k)]["label"] for k in batch["id"]])
  # The view of id k is its stored image, augmented with example_rng(seed, epoch 0, k).
  k = int(batch["id"][0])
  view = data.augment_image(source[k]["image"], data.example_rng(0, 0, k), kind="pad_crop_flip",
                            size=12)
  np.testing.assert_array_equal(batch["x"][0], data.normalize(view, (0.5,) * 3, (0.25,) * 3))
  if encoding != "jpeg":  # lossless: tfds shuffled the examples; the stored set is the generated one
    stored = {source[j]["image"].tobytes(): int(source[j]["label"]) for j in range(30)}
    assert stored == {generated(i).tobytes(): i % 4 for i in range(30)}
