"""Cached teacher targets: data-parallel computation and the disk cache
(kdjax.training.teachers._cache)."""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from kdjax import ensemble
from kdjax.models import get_model
from kdjax.training import TeacherGroup
from kdjax.training.teachers import _cache as tc
from kdjax.models import eval_logits


def _group(model, seeds, indices):
  members = [model.init(jax.random.key(s), jnp.zeros((1, 40))) for s in seeds]
  return TeacherGroup(model=model, variables=ensemble.stack(members),
                      workdirs=tuple(f"/nonexistent/t{i}" for i in indices), indices=indices)


@pytest.fixture(scope="module")
def groups():
  """Three members, two architectures, interleaved in the user's order."""
  return [_group(get_model("mlp", num_classes=10, hidden=(32,)), (0, 2), (0, 2)),
          _group(get_model("mlp", num_classes=10, hidden=(16, 16)), (1,), (1,))]


def member_axis_teacher_log_probs(groups, x, *, space="prob", weights=None, temperature=1.0,
                                  batch_size=4096):
  """The implementation kdjax shipped before (kept here as the reference): the member axis
  sharded over a member mesh, padded to the device count, every device on the full batch."""
  from kdjax import fusion
  member_mesh = ensemble.make_member_mesh()
  order = np.argsort(np.concatenate([g.indices for g in groups]))
  outputs = []
  for start in range(0, len(x), batch_size):
    xb = jnp.asarray(x[start:start + batch_size])
    member_logits = jnp.concatenate([
        ensemble.sharded_apply(eval_logits(g.model), g.variables, xb, mesh=member_mesh)
        for g in groups])[order] / temperature
    if member_logits.shape[0] == 1:
      fused = member_logits[0]
    elif weights:
      fused = fusion.weighted(member_logits, jnp.asarray(weights), space=space)
    else:
      fused = fusion.average(member_logits, space=space)
    outputs.append(np.asarray(fused) * temperature)
  return np.concatenate(outputs)


X = np.random.default_rng(0).normal(size=(37, 40)).astype(np.float32)  # 37: not a multiple of 8


def test_data_parallel_targets_equal_the_member_axis_function(groups):
  weights = (0.2, 0.5, 0.3)
  got = tc.teacher_targets(groups, X, space="prob", weights=weights, temperature=4.0,
                           batch_size=16)
  want = member_axis_teacher_log_probs(groups, X, space="prob", weights=weights,
                                       temperature=4.0, batch_size=16)
  assert got.shape == (37, 10) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  split = tc.teacher_targets(groups, X, space="prob", weights=weights, temperature=4.0,
                             batch_size=16, member_axis="data")  # members split over devices
  np.testing.assert_allclose(split, want, rtol=1e-5, atol=1e-5)
  single = [groups[1]]
  np.testing.assert_allclose(tc.teacher_targets(single, X, space="logit"),
                             member_axis_teacher_log_probs(single, X, space="logit"), rtol=1e-5,
                             atol=1e-6)


def test_a_single_teacher_on_eight_devices_does_a_slice_of_the_work_each():
  """Per-device FLOPs of the compiled program on 8 devices are 1/8 of one device's: each
  device runs the teacher on its slice of the batch, no member axis padded to 8."""
  model = get_model("cnn1d", num_classes=10)
  single = [_group(model, (0,), (0,))]
  flops = {}
  for n in (1, 8):
    mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
    run, variables, sharding = tc.targets_program(single, mesh=mesh)
    x = jax.ShapeDtypeStruct((256, 40), jnp.float32, sharding=sharding)
    cost = run.lower(variables, x).compile().cost_analysis()
    flops[n] = (cost[0] if isinstance(cost, list) else cost)["flops"]
  assert flops[1] > 1e6
  assert flops[8] == pytest.approx(flops[1] / 8, rel=0.02)


def _cached(groups, tmp_path, **kw):
  args = {"cache_dir": tmp_path / "cache", "data": {"name": "toy", "kwargs": {}},
          "space": "prob", "weights": (0.2, 0.5, 0.3), "temperature": 2.0, **kw}
  return tc.cached_teacher_targets(groups, X, **args)


def test_disk_cache_is_reused_and_a_new_key_recomputes(groups, tmp_path, monkeypatch):
  first, info = _cached(groups, tmp_path)
  assert not info["reused"] and pathlib.Path(info["path"]).is_file()
  key = json.loads(pathlib.Path(info["path"]).with_suffix(".json").read_text())
  assert key["fusion"] == {"space": "prob", "weights": [0.2, 0.5, 0.3], "temperature": 2.0}
  assert [m["index"] for m in key["teachers"]] == [0, 1, 2]
  np.testing.assert_allclose(first, tc.teacher_targets(groups, X, weights=(0.2, 0.5, 0.3),
                                                       temperature=2.0))
  calls = []
  real = tc.teacher_targets
  monkeypatch.setattr(tc, "teacher_targets", lambda *a, **k: calls.append(1) or real(*a, **k))
  again, info2 = _cached(groups, tmp_path)
  assert info2["reused"] and info2["path"] == info["path"] and not calls
  np.testing.assert_array_equal(again, first)
  # Each part of the key recomputes: fusion, data, the teachers' contents.
  changed = [{"temperature": 1.0}, {"data": {"name": "toy", "kwargs": {"seed": 1}}}]
  for kw in changed:
    _, info3 = _cached(groups, tmp_path, **kw)
    assert not info3["reused"] and info3["path"] != info["path"]
  retrained = [groups[0], dataclasses.replace(
      groups[1], variables=jax.tree.map(lambda a: a + 1e-3, groups[1].variables))]
  _, info4 = _cached(retrained, tmp_path)
  assert not info4["reused"] and len(calls) == 3
  # Same params, a model setting that changes the outputs (the compute dtype): recomputed.
  bf16 = [groups[0], dataclasses.replace(groups[1], model=get_model(
      "mlp", num_classes=10, hidden=(16, 16), dtype=jnp.bfloat16))]
  targets5, info5 = _cached(bf16, tmp_path)
  assert not info5["reused"] and info5["path"] != info["path"] and len(calls) == 4
  assert not np.allclose(targets5, first, rtol=0, atol=1e-6)  # the outputs do differ


def test_damaged_cache_file_is_recomputed_with_a_warning(groups, tmp_path):
  first, info = _cached(groups, tmp_path)
  path = pathlib.Path(info["path"])
  path.write_bytes(path.read_bytes()[:100])  # truncated by something outside kdjax
  with pytest.warns(UserWarning, match="teacher target cache .* is unreadable"):
    again, info2 = _cached(groups, tmp_path)
  assert not info2["reused"]
  np.testing.assert_array_equal(again, first)
  assert _cached(groups, tmp_path)[1]["reused"]  # rewritten whole


def test_a_write_killed_midway_leaves_no_cache_file(groups, tmp_path, monkeypatch):
  def dies_midway(f, array, allow_pickle):
    f.write(b"\x93NUMPY partial")
    raise KeyboardInterrupt  # as a signal would, mid-write
  monkeypatch.setattr(tc.np, "save", dies_midway)
  with pytest.raises(KeyboardInterrupt):
    _cached(groups, tmp_path)
  assert list((tmp_path / "cache").iterdir()) == []  # no partial file, no temporary left
  monkeypatch.undo()
  assert not _cached(groups, tmp_path)[1]["reused"]


def test_default_cache_dir(tmp_path, monkeypatch):
  monkeypatch.delenv(tc.CACHE_ENV, raising=False)
  assert tc.default_cache_dir(tmp_path / "runs" / "kd") == tmp_path / "runs" / ".kdjax_cache"
  monkeypatch.setenv(tc.CACHE_ENV, str(tmp_path / "c"))
  assert tc.default_cache_dir(tmp_path / "runs" / "kd") == tmp_path / "c"
