"""Damaged checkpoints fall back to the previous good one; orbax never deletes a good
checkpoint before a newer one is complete."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config import load_config
from kdjax.training import DamagedCheckpointWarning, load_params, train_and_evaluate
from kdjax.training import _checkpoint as ckpt


def smoke(**overrides):
  return load_config("mnist1d/mlp.py", "smoke", {"progress_bar": False, **overrides})


def damage(step_dir: pathlib.Path, how: str) -> None:
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
  assert files
  for p in files:
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2] if how == "truncate" else
                  bytes(b ^ 0x5A for b in data))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  train_and_evaluate(smoke(), str(workdir))
  return load_params(workdir)


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_damaged_latest_checkpoint_falls_back_with_a_warning(uninterrupted, tmp_path, how):
  workdir = tmp_path / "w"
  train_and_evaluate(smoke(num_steps=40, checkpoint_every=10), str(workdir))  # keeps 30, 40
  damage(workdir / "checkpoints" / "40", how)
  with pytest.warns(DamagedCheckpointWarning, match=r"checkpoint step 40 in .* is damaged"):
    summary = train_and_evaluate(smoke(checkpoint_every=10), str(workdir))
  assert summary["resumed_from"] == 30 and summary["steps"] == 40
  assert [p.name.split("-")[0] for p in (workdir / "damaged_checkpoints").iterdir()] == ["40"]
  # The rerun replays steps 30..40 exactly: the result equals an uninterrupted run.
  jax.tree.map(np.testing.assert_array_equal, load_params(workdir), uninterrupted)


def test_teacher_with_damaged_latest_checkpoint_loads_the_previous_one(tmp_path):
  workdir = tmp_path / "t"
  train_and_evaluate(smoke(num_steps=20, log_every=10, checkpoint_every=10), str(workdir))
  with ckpt.make_manager(workdir) as manager:
    first = manager.restore(10).state["params"]["student"]
  damage(workdir / "checkpoints" / "20", "truncate")
  with pytest.warns(DamagedCheckpointWarning, match="checkpoint step 20"):
    params = load_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, params, first)
  damage(workdir / "checkpoints" / "10", "truncate")
  with pytest.warns(DamagedCheckpointWarning), pytest.raises(ValueError, match="every checkpoint in .* is damaged"):
    load_params(workdir)


def test_old_checkpoints_are_deleted_only_after_the_newer_one_is_committed(tmp_path):
  """max_to_keep=1 with async saves: record what is on disk whenever orbax deletes."""
  manager = ckpt.make_manager(tmp_path, max_to_keep=1)
  deleter = manager._checkpoint_deleter  # orbax internals: the one place steps are removed
  seen = []
  original = deleter.delete_steps

  def recording_delete(steps):
    committed = sorted(int(p.name) for p in ckpt.checkpoint_dir(tmp_path).iterdir() if p.name.isdigit())
    seen.append((list(steps), committed))
    return original(steps)

  deleter.delete_steps = recording_delete
  state = {"w": jnp.arange(1000.0)}
  for step in (1, 2, 3):
    ckpt.save(manager, step, jax.tree.map(lambda x: x + step, state))
  manager.wait_until_finished()
  deletions = [(steps, committed) for steps, committed in seen if steps]
  assert [steps for steps, _ in deletions] == [[1], [2]]
  for steps, committed in deletions:
    assert max(committed) > max(steps)  # the newer step was already committed (renamed from tmp)
  assert sorted(p.name for p in ckpt.checkpoint_dir(tmp_path).iterdir()) == ["3"]
  manager.close()


def test_a_checkpoint_of_another_optimizer_is_not_mistaken_for_damage(tmp_path):
  workdir = tmp_path / "w"
  train_and_evaluate(smoke(num_steps=20), str(workdir))
  config = (workdir / "config.json").read_text()
  with pytest.raises(ValueError, match='another config: optimizer.name "adam" -> "sgd"'):
    train_and_evaluate(smoke(**{"optimizer.name": "sgd"}), str(workdir))
  with pytest.raises(ValueError, match="checkpoint step 20 .* is intact but does not fit"):
    train_and_evaluate(smoke(resume="override", **{"optimizer.name": "sgd"}), str(workdir))
  assert (workdir / "config.json").read_text() == config  # written only after a good restore
  assert not (workdir / "config_history.jsonl").exists()
  assert [p.name for p in (workdir / "checkpoints").iterdir()] == ["20"]
  assert not (workdir / "damaged_checkpoints").exists()


def test_small_replicated_arrays_are_saved_whole_and_large_ones_replica_parallel(tmp_path,
                                                                                caplog):
  """On 8 devices a replicated array is written in 8 replica slices (an eager slice program
  each) only when a slice has at least ``MIN_REPLICA_SLICE_BYTES``; smaller arrays are
  written whole. Both restore exactly, on their shardings."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rows = 8 * ckpt.MIN_REPLICA_SLICE_BYTES // (4 * 256)  # exactly the threshold per slice
  state = {"small": np.arange(64 * 256, dtype=np.float32).reshape(64, 256),
           "large": np.arange(rows * 256, dtype=np.float32).reshape(rows, 256) / 7}
  placed = jax.device_put(state, replicated)
  with ckpt.make_manager(tmp_path) as manager, jax.log_compiles(True):
    caplog.set_level("WARNING")
    ckpt.save(manager, 1, placed)
    manager.wait_until_finished()
  compiled = [r.getMessage() for r in caplog.records if "Compiling jit(slice" in r.getMessage()]
  assert compiled and all(f"float32[{rows}," in m for m in compiled)  # only "large" is sliced
  with ckpt.make_manager(tmp_path) as manager:
    restored, _ = ckpt.restore_latest(manager, jax.device_put(jax.tree.map(np.zeros_like, state),
                                                              replicated))
  for name, value in state.items():
    np.testing.assert_array_equal(np.asarray(restored[name]), value)
    assert restored[name].sharding == replicated
