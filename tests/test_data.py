"""Data: generated MNIST-1D and digits, deterministic resumable batching, sharding."""

import numpy as np
import pytest

from kdjax import data


def test_mnist1d_is_generated_locally_and_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("KDJAX_DATA_DIR", str(tmp_path))
  splits = data.load_mnist1d(num_samples=200, seed=3)
  assert splits["train"]["x"].shape == (160, 40) and splits["test"]["x"].shape == (40, 40)
  assert splits["train"]["y"].dtype == np.int32 and set(np.unique(splits["train"]["y"])) <= set(range(10))
  assert (tmp_path / "mnist1d_n200_s3.npz").exists()
  again = data.load_mnist1d(num_samples=200, seed=3)
  np.testing.assert_array_equal(again["train"]["x"], splits["train"]["x"])
  other = data.load_mnist1d(num_samples=200, seed=4)
  assert not np.allclose(other["train"]["x"], splits["train"]["x"])


def test_transfer_set_chunks_and_workers_agree(tmp_path, monkeypatch):
  monkeypatch.setenv("KDJAX_DATA_DIR", str(tmp_path / "a"))
  serial = data.load_mnist1d_transfer(num_samples=300, seed=2, workers=1)
  monkeypatch.setenv("KDJAX_DATA_DIR", str(tmp_path / "b"))
  parallel = data.load_mnist1d_transfer(num_samples=300, seed=2, workers=2)
  assert serial["x"].shape == (300, 40)
  np.testing.assert_array_equal(serial["x"], parallel["x"])


def test_digits_and_registry():
  splits = data.load_dataset("digits", val_size=100)
  assert splits["train"]["x"].shape[1] == 64 and len(splits["val"]["y"]) == 100
  assert splits["num_classes"] == 10
  assert 0.0 <= splits["train"]["x"].min() and splits["train"]["x"].max() <= 1.0
  with pytest.raises(ValueError, match="Unknown data set 'cifar11'"):
    data.load_dataset("cifar11")


def test_batches_are_a_function_of_seed_and_step():
  full = data.batch_indices(103, batch_size=10, start_step=0, num_steps=25, seed=7)
  resumed = data.batch_indices(103, batch_size=10, start_step=13, num_steps=12, seed=7)
  np.testing.assert_array_equal(full[13:], resumed)
  # Each epoch (10 steps of 10) visits 100 distinct examples; epochs differ in order.
  assert len(np.unique(full[:10])) == 100
  assert not np.array_equal(full[:10], full[10:20])
  with pytest.raises(ValueError, match="larger than the data set"):
    data.batch_indices(5, batch_size=10, start_step=0, num_steps=1, seed=0)


def test_shard_batch_places_slices_on_every_device():
  mesh = data.make_data_mesh()
  assert mesh.size == 8
  x = np.arange(3 * 16 * 2, dtype=np.float32).reshape(3, 16, 2)
  placed = data.shard_batch({"x": x}, mesh, batch_axis=1)["x"]
  np.testing.assert_array_equal(np.asarray(placed), x)
  assert {s.data.shape for s in placed.addressable_shards} == {(3, 2, 2)}
  assert len(placed.sharding.device_set) == 8


def test_host_slice():
  idx = np.arange(24).reshape(2, 12)
  np.testing.assert_array_equal(data.host_slice(idx, process_index=1, process_count=3), idx[:, 4:8])
  with pytest.raises(ValueError, match="not divisible by 5 hosts"):
    data.host_slice(idx, process_index=0, process_count=5)
