"""Batches the devices do not divide: padded, masked rows (kdjax.training._padding), and the
multi-process helpers (kdjax.training._distributed) that work in one process."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import data as kd_data
from kdjax import losses
from kdjax.models import get_model
from kdjax.training import _distributed, _padding, create_train_state, make_train_chunk


def test_pad_indices_repeats_the_first_row_and_masks_it():
  idx = np.arange(10).reshape(2, 5)
  padded, mask = _padding.pad_indices(idx, 8)
  np.testing.assert_array_equal(padded, [[0, 1, 2, 3, 4, 0, 0, 0], [5, 6, 7, 8, 9, 5, 5, 5]])
  np.testing.assert_array_equal(mask, [[True] * 5 + [False] * 3] * 2)
  assert _padding.pad_indices(idx, 5)[1] is None
  assert _padding.padded_size(100, 8) == 104 and _padding.padded_size(96, 8) == 96


def test_pad_rows_keeps_an_existing_mask():
  batch = {"x": np.arange(6.0).reshape(3, 2), "y": np.arange(3), "mask": np.array([1, 0, 1], bool)}
  out = _padding.pad_rows(batch, 4)
  np.testing.assert_array_equal(out["x"][3], batch["x"][0])
  np.testing.assert_array_equal(out["mask"], [True, False, True, False])
  chunk = _padding.pad_rows({"x": np.zeros((2, 3, 5))}, 4, axis=1)  # [K, b, ...]
  assert chunk["x"].shape == (2, 4, 5) and chunk["mask"].shape == (2, 4)


def test_masked_mean_matches_numpy():
  from kdjax import losses
  rng = np.random.default_rng(0)
  values, mask = rng.normal(size=13), rng.random(13) < 0.6
  got = jax.jit(losses.masked_mean)(values.astype(np.float32), mask)
  np.testing.assert_allclose(got, values[mask].astype(np.float64).mean(), rtol=1e-6)
  hits = values > 0  # booleans (argmax == label) average in float32
  got = jax.jit(losses.masked_mean)(hits, mask)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, hits[mask].mean(), rtol=1e-6)
  assert float(losses.masked_mean(values, np.zeros(13, bool))) == 0.0


def test_batch_norm_statistics_ignore_padded_rows():
  """Mean/variance of a linen BatchNorm over a padded batch equal the unpadded batch's
  (float64 NumPy reference); without the mask they do not."""
  rng = np.random.default_rng(1)
  x = rng.normal(2.0, 3.0, size=(10, 4, 3)).astype(np.float32)
  padded_x = np.concatenate([x, np.repeat(x[:1] * 50, 6, axis=0)])  # [16, 4, 3], 6 fake rows
  mask = np.arange(16) < 10
  bn = nn.BatchNorm(use_running_average=False, momentum=0.0)  # running stats = this batch's
  variables = bn.init(jax.random.key(0), padded_x)

  def stats(masked):
    mask_arg = jnp.asarray(mask) if masked else None
    with _padding.mask_batch_norm(mask_arg):
      y, updates = bn.apply(variables, padded_x, mutable=["batch_stats"])
    return y, updates["batch_stats"]

  y, got = jax.jit(lambda: stats(True))()
  x64 = x.astype(np.float64).reshape(-1, 3)
  np.testing.assert_allclose(got["mean"], x64.mean(0), rtol=1e-5)
  np.testing.assert_allclose(got["var"], x64.var(0), rtol=1e-4)
  expected = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
  np.testing.assert_allclose(np.asarray(y[:10]).reshape(-1, 3), expected, atol=1e-4)
  _, unmasked = stats(False)
  assert not np.allclose(unmasked["mean"], x64.mean(0), rtol=1e-2)


def _train(model, x, y, *, num_devices: int, batch: int, steps: int):
  """``steps`` KD-free steps on the first ``steps * batch`` examples, the batch padded to
  a multiple of ``num_devices``; returns the losses and the final state on the host."""
  mesh = kd_data.make_data_mesh(num_devices)
  idx, mask = _padding.pad_indices(np.arange(steps * batch).reshape(steps, batch),
                                   _padding.padded_size(batch, num_devices))
  batches = {"x": x[idx], "y": y[idx]} | ({} if mask is None else {"mask": mask})
  tx = optax.sgd(0.1)  # (Adam's normalisation would blow float noise in ~0 gradients up)
  objective = losses.make_objective({"cross_entropy": {"weight": 1.0}})
  state = create_train_state(model, tx, jnp.asarray(x[:batch]), rng=jax.random.key(0),
                             aux_params={})
  state = jax.device_put(state, NamedSharding(mesh, P()))
  chunk = make_train_chunk(model=model, objective=objective, tx=tx)
  state, metrics = chunk(state, kd_data.shard_batch(batches, mesh, batch_axis=1))
  return float(metrics["loss"]), float(metrics["accuracy"]), jax.device_get(
      {"params": state.params, "model_state": state.model_state})


class _BatchNormMLP(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense: batch statistics in a tiny model."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(16)(x))
    return nn.Dense(10)(nn.relu(x))


MODELS = {  # name -> (model, input shape, device counts compared with 1 device)
    "mlp": (lambda: get_model("mlp", num_classes=10, hidden=(100, 100)), (40,), (2, 4, 8)),
    "cnn1d": (lambda: get_model("cnn1d", num_classes=10), (40,), (8,)),  # 1, 8: also end to end
    "batchnorm_mlp": (_BatchNormMLP, (40,), (8,)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batch_100_trains_the_same_on_1_2_4_8_devices(name):
  """Batch 100 (the README quickstart's) on 2, 4, 8 devices is 100, 100, 104 rows (4
  padded); losses, accuracy, params and BatchNorm statistics equal the 1-device run."""
  make, shape, device_counts = MODELS[name]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, *shape)).astype(np.float32)
  y = rng.integers(0, 10, size=200).astype(np.int32)
  reference = _train(make(), x, y, num_devices=1, batch=100, steps=2)
  for devices in device_counts:
    loss, acc, state = _train(make(), x, y, num_devices=devices, batch=100, steps=2)
    np.testing.assert_allclose(loss, reference[0], rtol=2e-5, err_msg=f"{devices} devices")
    assert acc == pytest.approx(reference[1], abs=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5,
                                                         err_msg=f"{devices} devices"),
                 state, reference[2])
  if name == "batchnorm_mlp":
    assert jax.tree.leaves(reference[2]["model_state"])  # the statistics were compared


def test_padding_a_stateful_non_linen_model_names_what_works():
  state = {"batch_stats": {"mean": np.zeros(3)}}
  fn = lambda variables, x: x  # noqa: E731  (a plain apply_fn cannot take a BatchNorm mask)
  mesh = kd_data.make_data_mesh(8)
  with pytest.raises(ValueError, match=r"batch_size=100 is not divisible by 8 devices.*"
                     r"e\.g\. 96, 104\) or --config.num_devices in \[1, 2, 4, 5\]"):
    _padding.check_padding(batch_size=100, local_rows=100, mesh=mesh, model=fn,
                           model_state=state)
  _padding.check_padding(batch_size=96, local_rows=96, mesh=mesh, model=fn,
                         model_state=state)  # divisible: nothing to mask
  _padding.check_padding(batch_size=100, local_rows=100, mesh=mesh,
                         model=get_model("resnet8", num_classes=10), model_state=state)


def test_hosts_must_take_equal_shares(monkeypatch):
  assert _distributed.local_batch_size(100) == 100
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match=r"batch_size=100 cannot be split over 3 processes.*99, 102"):
    _distributed.local_batch_size(100)


def test_initialize_flags_are_checked_and_a_plain_machine_stays_single_process(monkeypatch):
  with pytest.raises(ValueError, match=r"missing \['--num_processes', '--process_id'\]"):
    _distributed.initialize("127.0.0.1:1234")
  with pytest.raises(ValueError, match="must be HOST:PORT"):
    _distributed.initialize("127.0.0.1", 2, 0)
  with pytest.raises(ValueError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
    _distributed.initialize("127.0.0.1:1234", 2, 2)
  monkeypatch.delenv("SLURM_NTASKS", raising=False)
  assert _distributed.initialize() is False  # no cluster here (and JAX already runs)
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert _distributed.initialize() is False
  assert _distributed.is_writer() and jax.process_count() == 1


def test_to_host_returns_a_sharded_array_whole():
  mesh = kd_data.make_data_mesh(8)
  x = np.arange(32.0).reshape(16, 2)
  np.testing.assert_array_equal(_distributed.to_host(kd_data.shard_batch(x, mesh)), x)


def test_rows_are_padded_per_data_shard_of_a_data_model_mesh():
  from kdjax.training import _sharding

  mesh = _sharding.make_mesh({"data": 4, "model": 2}, 8)  # the batch splits 4 ways
  assert _padding.local_data_shards(mesh) == 4
  assert _padding.local_rows(100, mesh) == (100, 100)
  assert _padding.local_rows(30, mesh) == (30, 32)
