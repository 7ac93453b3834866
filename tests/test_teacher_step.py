"""Online teachers in the step (kdjax.training.teachers._apply) on 8 virtual devices, checked
against a Python loop over members with the fusion math in float64 NumPy."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax import ensemble, fusion, losses
from kdjax.models import get_model
from kdjax.training import TeacherGroup, TrainState, make_train_chunk
from kdjax.training.teachers._apply import (fuse_member_logits, make_teacher_apply,
                                          read_fitted_weights, teacher_variables)


class BNNet(nn.Module):
  """A second architecture with model state (BatchNorm running statistics)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(24)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(10)(nn.relu(x))


def _member(model, seed):
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 40)))
  if "batch_stats" in variables:  # non-trivial running statistics
    rng = np.random.default_rng(seed)
    stats = variables["batch_stats"]["BatchNorm_0"]
    variables = {**variables, "batch_stats": {"BatchNorm_0": {
        "mean": jnp.asarray(rng.normal(size=stats["mean"].shape), jnp.float32),
        "var": jnp.asarray(rng.uniform(0.5, 2.0, size=stats["var"].shape), jnp.float32)}}}
  return variables


@pytest.fixture(scope="module")
def pool():
  """Five members in the user's order mlp, bn, mlp, bn, mlp: two groups, interleaved."""
  mlp, bn = get_model("mlp", num_classes=10, hidden=(32,)), BNNet()
  models = [mlp, bn, mlp, bn, mlp]
  members = [_member(m, seed) for seed, m in enumerate(models)]
  groups = [TeacherGroup(model=m, variables=ensemble.stack([members[i] for i in idx]),
                         workdirs=tuple(f"t{i}" for i in idx), indices=idx)
            for m, idx in ((mlp, (0, 2, 4)), (bn, (1, 3)))]
  loop_logits = lambda x: np.stack([np.asarray(m.apply(v, x), np.float64)  # noqa: E731
                                    for m, v in zip(models, members)])
  return groups, loop_logits


def _reference(z, space, weights, tau):
  """float64 NumPy: tau * log fuse_m(softmax(z_m / tau)) in ``space``."""
  w = np.full(len(z), 1 / len(z)) if weights is None else np.asarray(weights, np.float64)
  t = z / tau
  log_softmax = lambda a: a - np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) - a.max(-1, keepdims=True)  # noqa: E731,E501
  if space == "prob":
    fused = np.log(np.einsum("m,mbc->bc", w, np.exp(log_softmax(t))))
  elif space == "logit":
    fused = log_softmax(np.einsum("m,mbc->bc", w, t))
  else:
    fused = log_softmax(np.einsum("m,mbc->bc", w, log_softmax(t)))
  return tau * fused


def _mesh():
  return Mesh(np.asarray(jax.devices()), ("data",))


def _sharded_run(apply, variables, x):
  mesh = _mesh()
  rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  run = jax.jit(apply, in_shardings=(rep, dat))
  return run(jax.device_put(variables, rep), jax.device_put(x, dat))


CASES = [("prob", None, 1.0, "auto"), ("prob", (0.1, 0.3, 0.2, 0.25, 0.15), 4.0, "vmap"),
         ("logit", (0.5, 0.0, 0.2, 0.2, 0.1), 2.0, "loop"), ("log_prob", None, 3.0, "map")]


@pytest.mark.parametrize("space,weights,tau,strategy", CASES)
def test_in_step_targets_equal_loop_over_members(pool, space, weights, tau, strategy):
  assert jax.device_count() == 8
  groups, loop_logits = pool
  x = np.random.default_rng(1).normal(size=(64, 40)).astype(np.float32)
  apply = make_teacher_apply(groups, space=space, weights=weights, temperature=tau,
                             strategy=strategy)
  got, feats = _sharded_run(apply, teacher_variables(groups), x)
  assert feats == {} and got.shape == (64, 10)
  z = loop_logits(x)
  np.testing.assert_allclose(np.asarray(got), _reference(z, space, weights, tau),
                             rtol=2e-5, atol=2e-5)
  # ... and the same as kdjax.fusion on the loop's logits (the cached path's math).
  zt = jnp.asarray(z / tau, jnp.float32)
  lib = (fusion.average(zt, space=space) if weights is None else
         fusion.weighted(zt, jnp.asarray(weights, jnp.float32), space=space))
  np.testing.assert_allclose(np.asarray(got), tau * np.asarray(lib), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("member_axis", ["", "data"])
def test_train_steps_with_online_ensemble_equal_steps_on_loop_targets(pool, member_axis):
  """Three KD steps, the ensemble run and fused inside the step on 8 devices (members
  replicated, or split over the devices), equal the same steps fed the loop-over-members
  targets as cached ``teacher_logits``."""
  from kdjax.training.teachers._apply import (make_sharded_teacher_apply,
                                               sharded_teacher_variables)
  groups, loop_logits = pool
  weights, tau = (0.1, 0.3, 0.2, 0.25, 0.15), 4.0
  student = get_model("mlp", num_classes=10, hidden=(16,))
  objective = losses.make_objective({"hinton_kd": {"weight": 1.0, "temperature": 4.0,
                                                   "alpha": 1.0}})
  tx = optax.adam(1e-2)
  params = {"student": student.init(jax.random.key(7), jnp.zeros((1, 40)))["params"], "aux": {}}

  def fresh_state():
    fresh = jax.tree.map(jnp.array, params)  # copies: the chunk donates its state
    return TrainState(step=jnp.zeros((), jnp.int32), params=fresh, opt_state=tx.init(fresh),
                      model_state={}, rng=jax.random.key_data(jax.random.key(0)))

  x = np.random.default_rng(2).normal(size=(3, 32, 40)).astype(np.float32)
  mesh = _mesh()
  rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "data"))
  fusion_args = {"space": "prob", "weights": weights, "temperature": tau}
  if member_axis:
    apply = make_sharded_teacher_apply(groups, mesh=mesh, member_axis=member_axis, **fusion_args)
    variables = sharded_teacher_variables(groups, mesh, member_axis)
  else:
    apply = make_teacher_apply(groups, **fusion_args)
    variables = jax.device_put(teacher_variables(groups), rep)
  online = make_train_chunk(model=student, objective=objective, tx=tx, teacher_apply=apply)
  state_online, m_online = online(jax.device_put(fresh_state(), rep),
                                  {"x": jax.device_put(x, dat)}, variables)
  targets = np.stack([_reference(loop_logits(xb), "prob", weights, tau) for xb in x])
  cached = make_train_chunk(model=student, objective=objective, tx=tx)
  state_cached, m_cached = cached(fresh_state(), {"x": jnp.asarray(x),
                                                  "teacher_logits": jnp.asarray(targets,
                                                                                jnp.float32)})
  np.testing.assert_allclose(float(m_online["loss"]), float(m_cached["loss"]), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-4, atol=1e-6),
               state_online.params, state_cached.params)
  assert int(state_online.step) == 3


def test_single_teacher_is_an_ensemble_of_one_with_features(pool):
  groups, _ = pool
  one = [TeacherGroup(model=groups[0].model,
                      variables=jax.tree.map(lambda a: a[:1], groups[0].variables),
                      workdirs=("t0",), indices=(0,))]
  variables = teacher_variables(one)
  assert variables["params"]["dense_0"]["kernel"].shape == (40, 32)  # unstacked: weight losses
  apply = make_teacher_apply(one, space="logit", temperature=4.0, features=("hidden_0",))
  x = np.random.default_rng(3).normal(size=(16, 40)).astype(np.float32)
  logits, feats = _sharded_run(apply, variables, x)
  np.testing.assert_allclose(np.asarray(logits),
                             np.asarray(groups[0].model.apply(variables, x)), rtol=1e-6)
  assert feats["hidden_0"].shape == (16, 32)
  # The one-member fusion formula gives the same distribution at any temperature.
  z = jnp.asarray(logits)[None]
  np.testing.assert_allclose(jax.nn.softmax(fuse_member_logits(z, temperature=4.0) / 4.0),
                             jax.nn.softmax(4.0 * fusion.average(z / 4.0) / 4.0), rtol=1e-5)


def test_ensemble_errors_name_the_problem(pool):
  groups, _ = pool
  with pytest.raises(ValueError, match=r"needs teacher features \['hidden_0'\], which only a "
                     r"single teacher has; config.teacher gives an ensemble of 5 members"):
    make_teacher_apply(groups, features=("hidden_0",))
  with pytest.raises(ValueError, match="needs the teacher's params, which only a single"):
    make_teacher_apply(groups, needs_params=True)
  with pytest.raises(ValueError, match="config.teacher.weights has 2 entries but the teacher "
                     "ensemble has 5 members"):
    make_teacher_apply(groups, weights=(0.5, 0.5))
  with pytest.raises(ValueError, match="must sum to 1"):
    make_teacher_apply(groups, weights=(0.5, 0.5, 0.5, 0.5, 0.5))
  with pytest.raises(ValueError, match="Unknown teacher fusion 'median'"):
    make_teacher_apply(groups, space="median")
  with pytest.raises(ValueError, match="Unknown config.teacher.member_strategy 'pmap'"):
    make_teacher_apply(groups, strategy="pmap")


def test_fitted_weights_from_a_fuse_report(tmp_path):
  report = tmp_path / "report.json"
  report.write_text(json.dumps({"members": ["cnn0", "cnn1", "cnn2"], "space": "prob",
                                "fitted_weights": {"nll": [0.2, 0.3, 0.5001],
                                                   "random": [0.0, 1.0, 0.0]}}))
  workdirs = ["runs/cnn0", "runs/cnn1", "runs/cnn2"]
  w = read_fitted_weights(str(report), workdirs, space="prob")
  np.testing.assert_allclose(w, np.array([0.2, 0.3, 0.5001]) / 1.0001)
  assert read_fitted_weights(f"{report}:random", workdirs, space="prob") == (0.0, 1.0, 0.0)
  with pytest.raises(ValueError, match=r"fitted on members \['cnn0', 'cnn1', 'cnn2'\], but "
                     r"the teachers are \['cnn1', 'cnn0', 'cnn2'\]"):
    read_fitted_weights(str(report), ["a/cnn1", "a/cnn0", "a/cnn2"], space="prob")
  with pytest.raises(ValueError, match="fitted in space 'prob' but config.teacher.fusion='logit'"):
    read_fitted_weights(str(report), workdirs, space="logit")
  with pytest.raises(ValueError, match=r"has no weights 'deep'; it has \['nll', 'random'\]"):
    read_fitted_weights(f"{report}:deep", workdirs, space="prob")
  with pytest.raises(FileNotFoundError, match="is not a file"):
    read_fitted_weights(str(tmp_path / "none.json"), workdirs, space="prob")


@pytest.mark.parametrize("shape,member_axis", [((8,), "data"), ((2, 4), "member")])
def test_members_sharded_over_devices_equal_replicated_members(pool, shape, member_axis):
  """Members split over a mesh axis (5 members in groups of 3 and 2, padded with weight-0
  copies) give the targets of the replicated-member path, in every space."""
  from kdjax.training.teachers._apply import (make_sharded_teacher_apply,
                                               sharded_teacher_variables)
  groups, loop_logits = pool
  names = ("data",) if len(shape) == 1 else ("data", "member")
  mesh = Mesh(np.asarray(jax.devices()).reshape(shape), names)
  variables = sharded_teacher_variables(groups, mesh, member_axis)
  assert variables["params"][0]["dense_0"]["kernel"].shape[0] == 3 + (-3) % shape[-1]
  x = np.random.default_rng(4).normal(size=(32, 40)).astype(np.float32)
  z = loop_logits(x)
  for space, weights, tau in (("prob", (0.1, 0.3, 0.2, 0.25, 0.15), 4.0), ("logit", None, 2.0),
                              ("log_prob", (0.5, 0.0, 0.2, 0.2, 0.1), 1.0)):
    apply = make_sharded_teacher_apply(groups, mesh=mesh, member_axis=member_axis,
                                       space=space, weights=weights, temperature=tau)
    got = jax.jit(lambda v, xb: apply(v, xb)[0])(
        variables, jax.device_put(x, NamedSharding(mesh, P("data"))))
    np.testing.assert_allclose(np.asarray(got), _reference(z, space, weights, tau),
                               rtol=2e-5, atol=2e-5)
