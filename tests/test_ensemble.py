"""Stacked ensembles: stack/unstack, every apply strategy, sharded apply on 8 devices, groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import ensemble
from kdjax.models import get_model

TOL = dict(rtol=2e-5, atol=2e-5)


_MODELS = {name: get_model(name) for name in ("mlp", "cnn1d")}
_JIT_INIT = {name: jax.jit(m.init) for name, m in _MODELS.items()}
_JIT_APPLY = {name: jax.jit(m.apply) for name, m in _MODELS.items()}


def _members(name, num, seed=0):
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(16, 40)), jnp.float32)
  params = [_JIT_INIT[name](jax.random.key(seed * 100 + i), x[:1])["params"]
            for i in range(num)]
  return name, params, x


_APPLY_FNS = {}


def _apply_fn(model_name):
  """One apply_fn object per architecture, so jit caches across tests."""
  if model_name not in _APPLY_FNS:
    model = _MODELS[model_name]
    _APPLY_FNS[model_name] = lambda p, x: model.apply({"params": p}, x)
  return _APPLY_FNS[model_name]


def _loop_reference(name, params, x):
  """A Python loop of single-member applies (jitted once per architecture)."""
  return np.stack([np.asarray(_JIT_APPLY[name]({"params": p}, x)) for p in params])


def test_stack_unstack_roundtrip():
  _, params, _ = _members("mlp", 3)
  stacked = ensemble.stack(params)
  assert stacked["dense_0"]["kernel"].shape == (3, 40, 100)
  assert ensemble.num_members(stacked) == 3
  back = ensemble.unstack(stacked)
  for a, b in zip(params, back):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _zeros_params(**kw):
  shapes = jax.eval_shape(get_model("mlp", **kw).init, jax.random.key(0), jnp.zeros((1, 40)))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"])


def test_stack_errors_name_the_path():
  base = _zeros_params()
  with pytest.raises(ValueError, match=r"member 1 .*dense_1.*bias.*\(50,\)"):
    ensemble.stack([base, _zeros_params(hidden=(100, 50))])
  with pytest.raises(ValueError, match=r"tree structure.*dense_2"):
    ensemble.stack([base, _zeros_params(hidden=(100, 100, 100))])
  with pytest.raises(ValueError, match="empty"):
    ensemble.stack([])
  with pytest.raises(ValueError, match="member axis"):
    ensemble.num_members({"a": jnp.zeros((2, 3)), "b": jnp.zeros((3, 3))})


@pytest.mark.parametrize("name", ["mlp", "cnn1d"])
@pytest.mark.parametrize("strategy", ["auto", "vmap", "map", "loop"])
def test_apply_strategies_equal_loop(name, strategy):
  model, params, x = _members(name, 3)
  out = ensemble.apply(_apply_fn(name), ensemble.stack(params), x, strategy=strategy)
  assert out.shape == (3, 16, 10)
  np.testing.assert_allclose(out, _loop_reference(model, params, x), **TOL)


def test_linen_module_as_apply_fn():
  name, params, x = _members("mlp", 2)
  stacked = ensemble.stack(params)
  # Equal modules share one cached apply_fn, so jit reuses the compiled program.
  assert ensemble.linen_apply_fn(get_model("mlp")) is ensemble.linen_apply_fn(get_model("mlp"))
  np.testing.assert_allclose(ensemble.apply(get_model("mlp"), stacked, x),
                             _loop_reference(name, params, x), **TOL)
  group = ensemble.EnsembleGroup(get_model("mlp"), stacked)
  np.testing.assert_allclose(ensemble.apply_groups([group], x), _loop_reference(name, params, x),
                             **TOL)


def test_apply_unknown_strategy():
  _, params, x = _members("mlp", 2)
  with pytest.raises(ValueError, match="known.*vmap"):
    ensemble.apply(_apply_fn("mlp"), ensemble.stack(params), x, strategy="pmap")


def test_auto_runs_the_program_of_the_strategy_it_chooses():
  """``"auto"`` dispatches to the compiled program of ``choose_strategy``'s pick (and of no
  other strategy): counted by the jitted programs each strategy holds, for inputs of a shape
  no other test uses."""
  _, params, x = _members("mlp", 2)
  x = jnp.concatenate([x, x[:5]])  # 21 rows
  stacked = ensemble.stack(params)
  choice = ensemble.choose_strategy(_apply_fn("mlp"), stacked, x)
  programs = {"vmap": ensemble._apply_vmap, "map": ensemble._apply_map,
              "loop": ensemble._apply_member}
  before = {k: f._cache_size() for k, f in programs.items()}
  out = ensemble.apply(_apply_fn("mlp"), stacked, x, strategy="auto")
  grown = {k for k, f in programs.items() if f._cache_size() > before[k]}
  assert grown == {choice}
  np.testing.assert_array_equal(out, ensemble.apply(_apply_fn("mlp"), stacked, x, strategy=choice))


def test_eight_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("name,num", [("mlp", 8), ("mlp", 5), ("cnn1d", 8), ("cnn1d", 3),
                                      ("mlp", 16)])
def test_sharded_apply_equals_apply_and_loop(name, num):
  model, params, x = _members(name, num, seed=num)
  mesh = ensemble.make_member_mesh(8)
  stacked = ensemble.stack(params)
  fn = _apply_fn(name)
  ref = _loop_reference(model, params, x)
  plain = ensemble.apply(fn, stacked, x)
  sharded = ensemble.sharded_apply(fn, stacked, x, mesh=mesh)
  assert sharded.shape == (num, 16, 10)
  np.testing.assert_allclose(plain, ref, **TOL)
  np.testing.assert_allclose(sharded, ref, **TOL)

  # Placed once: each device holds ceil(M / 8) members' weights (M padded to a multiple of 8).
  placed = ensemble.shard_stacked(stacked, mesh, "member")
  per_device = -(-num // 8)
  for leaf in jax.tree.leaves(placed):
    assert leaf.shape[0] == 8 * per_device
    shards = leaf.addressable_shards
    assert len(shards) == 8 and len({s.device for s in shards}) == 8
    for s in shards:
      assert s.data.shape == (per_device,) + leaf.shape[1:]
  # Device d holds members d*k..(d+1)*k-1 (padding repeats members 0, 1, ...).
  kernel = jax.tree.leaves(placed)[0]
  for s in kernel.addressable_shards:
    start = s.index[0].start
    expect = np.asarray(jax.tree.leaves(stacked)[0])[np.arange(start, start + per_device) % num]
    np.testing.assert_array_equal(s.data, expect)
  out = ensemble.sharded_apply(fn, placed, x, mesh=mesh, num_members=num)
  np.testing.assert_allclose(out, ref, **TOL)
  if num % 8 == 0:
    assert out.sharding.spec[0] == "member"
    assert {s.data.shape[0] for s in out.addressable_shards} == {per_device}


def test_sharded_apply_batch_axis():
  model, params, x = _members("mlp", 4)
  mesh = jax.make_mesh((4, 2), ("member", "data"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  out = ensemble.sharded_apply(_apply_fn("mlp"), ensemble.stack(params), x, mesh=mesh,
                               batch_axis="data")
  np.testing.assert_allclose(out, _loop_reference(model, params, x), **TOL)
  assert {s.data.shape for s in out.addressable_shards} == {(1, 8, 10)}


def test_sharding_errors():
  _, params, x = _members("mlp", 3)
  mesh = ensemble.make_member_mesh(8)
  with pytest.raises(ValueError, match="no axis 'models'"):
    ensemble.sharded_apply(_apply_fn("mlp"), ensemble.stack(params), x, mesh=mesh,
                           member_axis="models")
  with pytest.raises(ValueError, match="pad=True"):
    ensemble.shard_stacked(ensemble.stack(params), mesh, "member", pad=False)


def test_apply_groups_mixed_architectures():
  cnn, cnn_params, x = _members("cnn1d", 2)
  mlp, mlp_params, _ = _members("mlp", 3)
  groups = [ensemble.EnsembleGroup(_apply_fn("cnn1d"), ensemble.stack(cnn_params)),
            ensemble.EnsembleGroup(_apply_fn("mlp"), ensemble.stack(mlp_params))]
  assert [g.num_members for g in groups] == [2, 3]
  out = ensemble.apply_groups(groups, x)
  ref = np.concatenate([_loop_reference(cnn, cnn_params, x), _loop_reference(mlp, mlp_params, x)])
  assert out.shape == (5, 16, 10)
  np.testing.assert_allclose(out, ref, **TOL)
