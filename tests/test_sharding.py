"""Mesh from config, parameter sharding rules and the per-device memory report, on the 8
virtual CPU devices: a teacher split over all devices with a replicated student trains
exactly like the all-replicated run."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import losses
from kdjax.data import shard_batch
from kdjax.models import MLP
from kdjax.training import create_train_state, frozen_teacher_apply, make_train_chunk
from kdjax.training import _sharding

TEACHER = MLP(hidden=(256, 256), num_classes=10)  # "large": 79k params
STUDENT = MLP(hidden=(16,), num_classes=10)
ALL_DEVICES = (("", "fsdp:data,model"),)  # every teacher leaf over all 8 devices


def _setup(seed=0, steps=3, batch=32):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(steps, batch, 40)).astype(np.float32)
  y = rng.integers(0, 10, size=(steps, batch))
  teacher_vars = TEACHER.init(jax.random.key(1), jnp.asarray(x[0]))
  tx = optax.adam(1e-2)
  state = create_train_state(STUDENT, tx, jnp.asarray(x[0]), rng=jax.random.key(2))
  objective = losses.make_objective({"hinton_kd": {"weight": 1.0, "temperature": 4.0,
                                                   "alpha": 0.7}})
  return {"x": x, "y": y}, teacher_vars, tx, state, objective


@functools.lru_cache(maxsize=None)  # the all-replicated reference is shared by two tests
def _run(mesh, student_rules, teacher_rules):
  batches, teacher_vars, tx, state, objective = _setup()
  shardings = _sharding.state_shardings(state, tx, student_rules, mesh)
  state = jax.device_put(state, shardings)
  teacher_vars = jax.device_put(teacher_vars,
                                _sharding.tree_shardings(teacher_vars, teacher_rules, mesh))
  chunk = make_train_chunk(model=STUDENT, objective=objective, tx=tx,
                           teacher_apply=frozen_teacher_apply(TEACHER), state_shardings=shardings)
  placed = shard_batch(batches, mesh, batch_axis=1)
  compiled = chunk.lower(state, placed, teacher_vars).compile()
  report = _sharding.memory_report(state, teacher_vars, compiled)
  new_state, metrics = chunk(state, placed, teacher_vars)
  return new_state, metrics, teacher_vars, shardings, report


def test_make_mesh_sizes_and_errors():
  mesh = _sharding.make_mesh({"data": -1, "model": 2})
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert dict(_sharding.make_mesh({"data": -1}, num_devices=2).shape) == {"data": 2, "model": 1}
  with pytest.raises(ValueError, match="unknown axis"):
    _sharding.make_mesh({"data": -1, "tensor": 2})
  with pytest.raises(ValueError, match="needs 6 devices but 8"):
    _sharding.make_mesh({"data": 3, "model": 2})
  with pytest.raises(ValueError, match="not divisible by 3"):
    _sharding.make_mesh({"data": -1, "model": 3})
  with pytest.raises(ValueError, match="at most one -1"):
    _sharding.make_mesh({"data": -1, "model": -1})


def test_rules_first_match_fsdp_and_errors():
  mesh = _sharding.make_mesh({"data": 2, "model": 4})
  tree = {"params": {"dense_0": {"kernel": jnp.zeros((40, 256)), "bias": jnp.zeros(256)},
                     "head": {"kernel": jnp.zeros((256, 10)), "bias": jnp.zeros(10)}}}
  rules = (("head/bias", None), ("head", (("data", "model"), None)), ("kernel", "fsdp"),
           ("bias", "fsdp:data"))
  specs = jax.tree.map(lambda s: s.spec, _sharding.tree_shardings(tree, rules, mesh))
  assert specs["params"]["dense_0"]["kernel"] == P(None, "model")  # largest dim, 256 % 4 == 0
  assert specs["params"]["dense_0"]["bias"] == P("data")
  assert specs["params"]["head"]["kernel"] == P(("data", "model"), None)
  assert specs["params"]["head"]["bias"] == P()  # first match wins
  # fsdp of an array no dimension of which divides: replicated.
  assert _sharding.tree_shardings(jnp.zeros((3, 5)), (("", "fsdp"),), mesh).spec == P()
  with pytest.raises(ValueError, match=r"config.sharding.teacher\[0\] at 'params/head/bias'.*"
                                       r"not divisible by the 4 devices"):
    _sharding.tree_shardings(tree, (("bias", ("model",)),), mesh, field="config.sharding.teacher")
  with pytest.raises(ValueError, match="names axis \\['tensor'\\]"):
    _sharding.tree_shardings(tree, (("kernel", (None, "tensor")),), mesh)
  with pytest.raises(ValueError, match="has 3 entries but the array has shape"):
    _sharding.tree_shardings(tree, (("kernel", (None, None, "model")),), mesh)
  with pytest.raises(ValueError, match="unknown spec 'zero3'"):
    _sharding.tree_shardings(tree, (("kernel", "zero3"),), mesh)
  with pytest.raises(ValueError, match="bad path regex"):
    _sharding.tree_shardings(tree, (("(", None),), mesh)
  with pytest.raises(ValueError, match=r"rules\[0\] must be a \(path regex, spec\) pair"):
    _sharding.tree_shardings(tree, ("kernel",), mesh)


def test_sharded_teacher_trains_like_replicated_and_saves_memory():
  mesh = _sharding.make_mesh({"data": 2, "model": 4})
  ref_state, ref_metrics, ref_teacher, _, ref_report = _run(mesh, (), ())
  state, metrics, teacher, shardings, report = _run(mesh, (), ALL_DEVICES)

  # The teacher really is split over all 8 devices: each holds 1/8 of every kernel.
  kernel = teacher["params"]["dense_0"]["kernel"]
  assert {s.data.shape for s in kernel.addressable_shards} == {(40, 32)}
  assert len({s.device for s in kernel.addressable_shards}) == 8
  assert {s.data.shape for s in ref_teacher["params"]["dense_0"]["kernel"].addressable_shards} == {
      (40, 256)}
  # The student and its optimizer state stay replicated, before and after the step.
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    assert leaf.sharding.is_fully_replicated
  assert jax.tree.map(lambda a: a.sharding.spec, state.params) == jax.tree.map(
      lambda s: s.spec, shardings.params)

  # Same training: losses and params equal to the all-replicated run.
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state.params, ref_state.params)

  # Memory: teacher bytes per device shrink by 8 on every leaf with a dimension divisible
  # by 8 (all but the head bias [10], which stays replicated).
  full = ref_report["per_device_bytes"]["teacher_params"]
  expected = sum(a.nbytes // 8 if any(d % 8 == 0 for d in a.shape) else a.nbytes
                 for a in jax.tree.leaves(ref_teacher["params"]))
  assert full == sum(a.nbytes for a in jax.tree.leaves(ref_teacher["params"]))
  assert report["per_device_bytes"]["teacher_params"] == expected
  assert full / expected > 7.9
  assert (report["per_device_bytes"]["student_params"]
          == ref_report["per_device_bytes"]["student_params"]
          == sum(a.nbytes for a in jax.tree.leaves(state.params["student"])))
  # XLA's analysis of the compiled chunk (per device): the arguments shrink by the
  # teacher's saving; temporaries are reported.
  compiled, ref_compiled = report["compiled_step"], ref_report["compiled_step"]
  assert ref_compiled["argument"] - compiled["argument"] == full - expected
  assert compiled["temp"] > 0 and compiled["output"] > 0


def test_fsdp_student_keeps_params_and_adam_state_sharded():
  mesh = _sharding.make_mesh({"data": 2, "model": 4})
  ref_state, ref_metrics, *_ = _run(mesh, (), ())
  state, metrics, _, shardings, report = _run(mesh, (("student/dense_0/kernel", "fsdp"),),
                                              ALL_DEVICES)
  kernel = state.params["student"]["dense_0"]["kernel"]  # [40, 16]: the largest dim, 40
  assert kernel.sharding.spec == P("model")
  assert {s.data.shape for s in kernel.addressable_shards} == {(10, 16)}
  adam = state.opt_state[0]
  for moment in (adam.mu, adam.nu):
    assert moment["student"]["dense_0"]["kernel"].sharding.spec == P("model")
    assert moment["student"]["head"]["kernel"].sharding.is_fully_replicated
  assert adam.count.sharding.is_fully_replicated
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state.params, ref_state.params)
  assert report["per_device_bytes"]["optimizer_state"] < sum(
      a.nbytes for a in jax.tree.leaves(state.opt_state))


def test_batches_on_a_2d_mesh_split_over_data_replicated_over_model():
  from kdjax.data import DevicePrefetcher

  mesh = _sharding.make_mesh({"data": 2, "model": 4})
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  placed = shard_batch({"x": x}, mesh)["x"]
  by_data = NamedSharding(mesh, P("data"))
  assert placed.sharding.is_equivalent_to(by_data, 2)
  assert {s.data.shape for s in placed.addressable_shards} == {(4, 3)}  # 2 halves, 4 copies each
  np.testing.assert_array_equal(placed, x)
  with DevicePrefetcher(iter([{"x": x}]), mesh=mesh) as batches:
    batch = next(batches)
  assert batch["x"].sharding.is_equivalent_to(by_data, 2)
  np.testing.assert_array_equal(batch["x"], x)
