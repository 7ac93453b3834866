"""Bring your own model: NNX teachers, apply_fn teachers, features by module path,
teachers from params files kdjax did not write (flax msgpack, orbax)."""

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from kdjax import losses
from kdjax.config import load_config
from kdjax.data import load_digits
from kdjax.models import apply_with_features, as_model, get_model
from kdjax.training import TrainState, make_predict, make_train_chunk, train_and_evaluate
from kdjax.training.teachers._apply import frozen_teacher_apply
from kdjax.training.teachers._load import check_variables

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(3, 16, 5)), jnp.float32)  # [K steps, B, D]
Y = jnp.asarray(RNG.integers(0, 3, (3, 16)), jnp.int32)


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(6, name="conv")(x))
    self.sow("intermediates", "out", h)  # sown inside a submodule: path "block_2/out"
    return h


class Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="head")(Block(name="block_2")(x))


class NNXTeacher(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.l1 = nnx.Linear(5, 6, rngs=rngs)
    self.bn = nnx.BatchNorm(6, rngs=rngs)
    self.l2 = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.bn(self.l1(x)))
    self.sow(nnx.Intermediate, "hidden", h)
    return self.l2(h)


def new_state(model, tx, x) -> TrainState:
  variables = as_model(model).init(jax.random.key(0), x)
  params = {"student": variables.pop("params"), "aux": {}}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=variables, rng=jax.random.key_data(jax.random.key(1)))


def dense64(p, x):
  return np.asarray(x, np.float64) @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"])


def test_features_by_path_anywhere_in_the_model():
  params = Net().init(jax.random.key(0), X[0])["params"]
  pre = dense64(params["block_2"]["conv"], X[0])
  _, sown = apply_with_features(Net(), params, X[0])  # was KeyError -1 for a nested sow
  np.testing.assert_allclose(sown["block_2/out"], np.maximum(pre, 0), rtol=1e-5, atol=1e-6)
  out = as_model(Net()).apply({"params": params}, X[0], train=False, features=["block_2/conv"])
  np.testing.assert_allclose(out.features["block_2/conv"], pre, rtol=1e-5, atol=1e-6)
  assert set(out.features) == {"block_2/out", "block_2/conv"}  # only what was asked is captured
  with pytest.raises(ValueError, match=r"no feature or submodule at path\(s\) \['block_9'\]"):
    as_model(Net()).apply({"params": params}, X[0], train=False, features=["block_9"])


def test_hint_on_nested_features_through_make_objective():
  objective = losses.make_objective([
      ("cross_entropy", 1.0, {}),
      ("hint", 2.0, {"student_feature": "block_2/conv", "teacher_feature": "block_2/out"})])
  tx = optax.sgd(0.0)
  state = new_state(Net(), tx, X[0])
  t_params = Net().init(jax.random.key(5), X[0])["params"]
  fs = dense64(state.params["student"]["block_2"]["conv"], X[0])  # before the state is donated
  chunk = make_train_chunk(model=Net(), objective=objective, tx=tx,
                           teacher_apply=frozen_teacher_apply(Net(), objective.teacher_features))
  _, metrics = chunk(state, {"x": X[:1], "y": Y[:1]}, {"params": t_params})
  ft = np.maximum(dense64(t_params["block_2"]["conv"], X[0]), 0)
  np.testing.assert_allclose(metrics["loss/hint"], np.mean((fs - ft) ** 2), rtol=1e-5)


def test_nnx_teacher_runs_frozen_in_eval_mode():
  teacher = NNXTeacher(nnx.Rngs(3))
  adapter = as_model(teacher)
  t_vars = adapter.init(None, None)
  # Non-trivial running statistics, as a trained teacher has.
  t_vars["state"]["bn"]["mean"] = jnp.linspace(-1.0, 1.0, 6)
  t_vars["state"]["bn"]["var"] = jnp.linspace(0.5, 2.0, 6)
  t_before = jax.tree.map(np.array, t_vars)
  # The adapter's eval call is the module's own eval-mode call.
  stats = nnx.state(teacher, nnx.BatchStat)
  nnx.replace_by_pure_dict(stats, t_vars["state"])
  nnx.update(teacher, stats)
  teacher.eval()
  direct, _ = nnx.capture(teacher, nnx.Intermediate)(X[0])  # the module's own call
  np.testing.assert_allclose(make_predict(teacher)(t_vars, X[0]), direct, rtol=1e-6)
  # Train mode normalises with the batch and updates the statistics, as nnx does.
  _, _, state = adapter.apply(t_vars, X[0], train=True)
  teacher.train()
  nnx.capture(teacher, nnx.Intermediate)(X[0])
  np.testing.assert_allclose(state["state"]["bn"]["mean"], teacher.bn.mean[...], rtol=1e-6)
  # As a teacher inside the step: eval mode, its statistics untouched.
  objective = losses.make_objective([
      ("hinton_kd", 1.0, {"temperature": 2.0, "alpha": 1.0}),
      ("hint", 1.0, {"student_feature": "block_2/out", "teacher_feature": "hidden"})])
  tx = optax.adam(1e-2)
  student_state = new_state(Net(), tx, X[0])
  s_logits, s_feats, _ = as_model(Net()).apply(student_state.student_variables(), X[0],
                                               train=True)
  ref, _ = objective({}, losses.LossInputs(
      student_logits=s_logits, teacher_logits=direct, student_features=s_feats,
      teacher_features={"hidden": adapter.apply(t_before, X[0], train=False).features["hidden"]}))
  chunk = make_train_chunk(model=Net(), objective=objective, tx=tx,
                           teacher_apply=frozen_teacher_apply(teacher, objective.teacher_features))
  _, first = chunk(jax.tree.map(jnp.copy, student_state), {"x": X[:1]}, t_vars)
  np.testing.assert_allclose(first["loss"], ref, rtol=1e-5)
  before = jax.tree.map(np.array, student_state.params)
  trained, metrics = chunk(student_state, {"x": X}, t_vars)
  jax.tree.map(np.testing.assert_array_equal, t_vars, t_before)  # the teacher is frozen
  assert int(trained.step) == len(X)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), trained.params, before)
  assert min(jax.tree.leaves(moved)) > 0  # every student parameter was updated


def test_apply_fn_teacher_with_features():
  w = jnp.asarray(RNG.normal(size=(5, 3)), jnp.float32)

  def teacher_fn(variables, x, train):
    assert train is False  # teachers always run in eval mode
    h = x @ variables["params"]["w"]
    return h, {"proj": h}

  objective = losses.make_objective([("soft_target_kl", 1.0, {"temperature": 1.0})])
  tx = optax.sgd(0.0)
  state = new_state(Net(), tx, X[0])
  s_logits = Net().apply({"params": state.params["student"]}, X[0])
  chunk = make_train_chunk(model=Net(), objective=objective, tx=tx,
                           teacher_apply=frozen_teacher_apply(teacher_fn))
  _, metrics = chunk(state, {"x": X[:1]}, {"params": {"w": w}})
  t = jax.nn.softmax(np.asarray(X[0] @ w, np.float64))
  kl = np.sum(t * (np.log(t) - jax.nn.log_softmax(np.asarray(s_logits, np.float64))), -1)
  np.testing.assert_allclose(metrics["loss"], kl.mean(), rtol=1e-5)


@pytest.fixture(scope="module")
def resnet8_teacher_variables():
  """resnet8 variables kdjax did not write: random weights and random BatchNorm statistics."""
  x = jnp.zeros((1, 8, 8, 1))
  variables = as_model(get_model("resnet8", num_classes=10)).init(jax.random.key(11), x)
  keys = iter(jax.random.split(jax.random.key(12), 100))
  variables["batch_stats"] = jax.tree.map(
      lambda a: a + 0.5 * jax.random.uniform(next(keys), a.shape), variables["batch_stats"])
  return variables


@pytest.mark.parametrize("fmt", ["msgpack", "orbax"])
def test_teacher_from_a_foreign_params_file(fmt, resnet8_teacher_variables, tmp_path):
  variables = resnet8_teacher_variables
  if fmt == "msgpack":
    path = tmp_path / "teacher.msgpack"
    path.write_bytes(flax.serialization.to_bytes(variables))
  else:
    path = tmp_path / "teacher_orbax"
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path, variables)
  config = load_config("digits/kd_resnet14_to_resnet8.py", "smoke", {
      "progress_bar": False, "num_steps": 10, "model.name": "mlp", "teacher.cache": True,
      "teacher.params_file": str(path)})
  config.teacher.model.name = "resnet8"
  summary = train_and_evaluate(config, str(tmp_path / "kd"))
  test = load_digits(image_shape=(8, 8, 1))["test"]
  logits = make_predict(get_model("resnet8", num_classes=10))(variables, test["x"])
  expected = float(np.mean(np.argmax(logits, -1) == test["y"]))
  assert abs(summary["teacher_test"]["accuracy"] - expected) <= 1 / len(test["y"])
  assert summary["steps"] == 10 and np.isfinite(summary["test"]["nll"])


def test_foreign_params_are_checked_against_the_model(resnet8_teacher_variables):
  expected = jax.eval_shape(lambda: resnet8_teacher_variables)
  params_only = check_variables(resnet8_teacher_variables["params"],
                                {"params": expected["params"]}, source="f")
  assert set(params_only) == {"params"}
  bad = jax.tree.map(np.asarray, resnet8_teacher_variables)
  bad["params"]["fc"]["kernel"] = np.zeros((64, 7), np.float32)
  with pytest.raises(ValueError, match=r"f does not fit.*fc/kernel: file \(64, 7\) vs model"):
    check_variables(bad, expected, source="f")
  del bad["batch_stats"]
  with pytest.raises(ValueError, match=r"missing \['batch_stats/"):
    check_variables(bad, expected, source="f")


def test_pytorch_teacher_from_a_pth_file(tmp_path):
  """A RepDistiller resnet8 (1-channel stem for 8x8 digits) saved by PyTorch as
  ``{"model": state_dict}`` teaches through ``teacher.params_file``; its test accuracy in
  kdjax equals PyTorch's own eval-mode accuracy."""
  import torch
  import torch_models

  torch.manual_seed(0)
  net = torch_models.build("resnet8", 10)
  net.conv1 = torch.nn.Conv2d(1, net.conv1.out_channels, 3, padding=1, bias=False)
  net.avgpool = torch.nn.AdaptiveAvgPool2d(1)  # global pool of the 2x2 maps (8x8 inputs)
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
  net.eval()
  path = tmp_path / "resnet8.pth"
  torch.save({"model": net.state_dict(), "epoch": 240}, path)
  test = load_digits(image_shape=(8, 8, 1))["test"]
  with torch.no_grad():
    out = net(torch.from_numpy(test["x"].transpose(0, 3, 1, 2)))
  torch_logits = (out[0] if isinstance(out, tuple) else out).numpy()
  expected = float(np.mean(np.argmax(torch_logits, -1) == test["y"]))
  config = load_config("digits/kd_resnet14_to_resnet8.py", "smoke", {
      "progress_bar": False, "num_steps": 10, "model.name": "mlp", "teacher.cache": True,
      "teacher.params_file": str(path), "teacher.model.name": "resnet8"})
  summary = train_and_evaluate(config, str(tmp_path / "kd"))
  assert abs(summary["teacher_test"]["accuracy"] - expected) <= 1 / len(test["y"])


def test_nnx_dropout_is_a_pure_function_of_the_step_key():
  class Dropped(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      self.l1 = nnx.Linear(5, 8, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)
      self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.drop(self.l1(x)))

  adapter = as_model(Dropped(nnx.Rngs(0)))
  variables = adapter.init(None, None)
  train = jax.jit(lambda v, x, r: adapter.apply(v, x, train=True, rng=r).logits)
  a, b = train(variables, X[0], jax.random.key(1)), train(variables, X[0], jax.random.key(1))
  np.testing.assert_array_equal(a, b)  # same key, same mask: resumable
  assert not np.array_equal(a, train(variables, X[0], jax.random.key(2)))
  evaluated = adapter.apply(variables, X[0], train=False).logits
  l1, l2 = variables["params"]["l1"], variables["params"]["l2"]
  np.testing.assert_allclose(evaluated, dense64(l2, dense64(l1, X[0])), rtol=1e-5, atol=1e-5)
