"""Model state in the trainer: BatchNorm statistics, dropout keys, frozen teachers,
resume and data parallelism (zoo resnet8 on 8x8 digits images)."""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special

from kdjax import losses
from kdjax.config import load_config
from kdjax.models import as_model, get_model
from kdjax.training import TrainState, make_predict, make_train_chunk, train_and_evaluate
from kdjax.training._checkpoint import load_variables
from kdjax.training.teachers._apply import frozen_teacher_apply


def smoke(path: str, **overrides):
  return load_config(path, "smoke", {"progress_bar": False, **overrides})


def losses_of(workdir) -> list[float]:
  return [json.loads(line)["train/loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def state_for(model, x, tx, seed=0) -> TrainState:
  variables = as_model(model).init(jax.random.key(seed), x)
  params = {"student": variables.pop("params"), "aux": {}}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=variables, rng=jax.random.key_data(jax.random.key(seed + 1)))


def test_batchnorm_train_uses_batch_statistics_eval_uses_running_ones():
  x = np.random.default_rng(0).normal(2.0, 3.0, (16, 3)).astype(np.float32)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)

  adapter = as_model(Net())
  variables = adapter.init(jax.random.key(0), x)
  out, _, state = adapter.apply(variables, x, train=True)
  x64 = x.astype(np.float64)
  mean, var = x64.mean(0), x64.var(0)
  np.testing.assert_allclose(out, (x64 - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["BatchNorm_0"]["var"], 0.9 + 0.1 * var, rtol=1e-5)
  # Eval: running statistics, and nothing changes.
  new_vars = {"params": variables["params"], **state}
  evaluated, _, same = adapter.apply(new_vars, x, train=False)
  ra_mean, ra_var = 0.1 * mean, 0.9 + 0.1 * var
  np.testing.assert_allclose(evaluated, (x64 - ra_mean) / np.sqrt(ra_var + 1e-5), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(make_predict(Net())(new_vars, x), evaluated, rtol=1e-6)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), same, state))


def test_train_step_updates_student_statistics_and_never_the_teacher_s():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(1).integers(0, 10, (2, 16)), jnp.int32)
  student, teacher = get_model("resnet8", num_classes=10), get_model("resnet8", num_classes=10)
  t_vars = as_model(teacher).init(jax.random.key(7), x[0])
  t_vars["batch_stats"] = jax.tree.map(  # non-trivial running statistics
      lambda a: a + jax.random.uniform(jax.random.key(3), a.shape), t_vars["batch_stats"])
  t_before = jax.tree.map(np.array, t_vars)
  objective = losses.make_objective([("hinton_kd", 1.0, {"temperature": 4.0, "alpha": 0.5})])
  tx = optax.sgd(0.1)
  state = state_for(student, x[0], tx)
  s_before = jax.tree.map(np.array, state.model_state)
  chunk = make_train_chunk(model=student, objective=objective, tx=tx,
                           teacher_apply=frozen_teacher_apply(teacher))
  # Reference loss of the first step: student in train mode, teacher in eval mode.
  s_logits, _, _ = as_model(student).apply(state.student_variables(), x[0], train=True)
  t_logits = make_predict(teacher)(t_vars, x[0])
  ref, _ = objective({}, losses.LossInputs(student_logits=s_logits, labels=y[0],
                                           teacher_logits=t_logits))
  new_state, m1 = chunk(state, {"x": x[:1], "y": y[:1]}, t_vars)
  np.testing.assert_allclose(m1["loss"], ref, rtol=1e-5)
  new_state, _ = chunk(new_state, {"x": x[1:], "y": y[1:]}, t_vars)
  jax.tree.map(np.testing.assert_array_equal, t_vars, t_before)  # teacher bit-identical
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), new_state.model_state, s_before)
  assert all(jax.tree.leaves(changed))  # every student mean/var moved


class DropoutNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
    return nn.Dense(3)(x)


def test_dropout_masks_follow_the_step_and_resume_exactly():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 8, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, (4, 8)), jnp.int32)
  objective = losses.make_objective({"cross_entropy": {"weight": 1.0}})
  tx = optax.adam(1e-2)
  chunk = make_train_chunk(model=DropoutNet(), objective=objective, tx=tx)
  straight, m_all = chunk(state_for(DropoutNet(), x[0], tx), {"x": x, "y": y})
  half, _ = chunk(state_for(DropoutNet(), x[0], tx), {"x": x[:2], "y": y[:2]})
  resumed, _ = chunk(half, {"x": x[2:], "y": y[2:]})
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  # Dropout is live in training: the same batch twice gives different losses at steps 0, 1.
  same = {"x": jnp.stack([x[0], x[0]]), "y": jnp.stack([y[0], y[0]])}
  state = state_for(DropoutNet(), x[0], optax.sgd(0.0))
  zero_lr = make_train_chunk(model=DropoutNet(), objective=objective, tx=optax.sgd(0.0))
  _, m_a = zero_lr(state, jax.tree.map(lambda a: a[:1], same))
  state = state_for(DropoutNet(), x[0], optax.sgd(0.0)).replace(step=jnp.ones((), jnp.int32))
  _, m_b = zero_lr(state, jax.tree.map(lambda a: a[:1], same))
  assert float(m_a["loss"]) != float(m_b["loss"])


@pytest.fixture(scope="module")
def resnet8_runs(tmp_path_factory):
  """resnet8 on digits images, 20 steps with checkpoints at 10 and 20: on 8 devices, on 1
  device, and the 8-device run resumed from its step-10 checkpoint (a copy of its workdir
  with the last checkpoint removed, as if killed after step 10)."""
  root = tmp_path_factory.mktemp("resnet8")
  runs = {}
  for name, devices in (("d8", 8), ("d1", 1)):
    config = smoke("digits/student_resnet8.py", num_devices=devices, num_steps=20,
                   checkpoint_every=10, keep_checkpoints=3)
    runs[name] = train_and_evaluate(config, str(root / name))
  shutil.copytree(root / "d8", root / "resumed")
  shutil.rmtree(root / "resumed" / "checkpoints" / "20")
  config = smoke("digits/student_resnet8.py", num_devices=8, num_steps=20,
                 checkpoint_every=10, keep_checkpoints=3)
  runs["resumed"] = train_and_evaluate(config, str(root / "resumed"))
  return root, runs


def test_resume_is_bit_identical_including_batch_stats(resnet8_runs):
  root, runs = resnet8_runs
  assert runs["resumed"]["resumed_from"] == 10
  straight, resumed = load_variables(root / "d8"), load_variables(root / "resumed")
  assert set(straight) == {"params", "batch_stats"}
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  assert losses_of(root / "d8") == losses_of(root / "resumed")
  assert runs["d8"]["test"] == runs["resumed"]["test"]


def test_eight_devices_equal_one_device_with_global_batch_statistics(resnet8_runs):
  root, runs = resnet8_runs
  np.testing.assert_allclose(losses_of(root / "d1"), losses_of(root / "d8"), rtol=1e-5)
  one, eight = load_variables(root / "d1"), load_variables(root / "d8")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), one, eight)
  init_stats = as_model(get_model("resnet8", num_classes=10)).init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["batch_stats"]
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), eight["batch_stats"],
                       init_stats)
  assert min(jax.tree.leaves(moved)) > 1e-3  # the statistics were trained, not left at init
  assert abs(runs["d1"]["test"]["nll"] - runs["d8"]["test"]["nll"]) < 1e-4


def test_kd_smoke_config_with_a_batchnorm_teacher_workdir(resnet8_runs, tmp_path):
  root, _ = resnet8_runs
  config = smoke("digits/kd_resnet14_to_resnet8.py", num_steps=10,
                 **{"teacher.workdir": str(root / "d8")})
  teacher_before = jax.tree.map(np.array, load_variables(root / "d8"))
  summary = train_and_evaluate(config, str(tmp_path / "kd"))
  assert summary["steps"] == 10 and np.isfinite(summary["test"]["nll"])
  # The teacher's test accuracy is what its own variables give in eval mode.
  assert abs(summary["teacher_test"]["accuracy"] - runs_accuracy(root / "d8")) <= 1 / 360
  jax.tree.map(np.testing.assert_array_equal, load_variables(root / "d8"), teacher_before)


def test_fuse_evaluates_batchnorm_members_and_soups_with_their_running_statistics(tmp_path):
  """``kdjax fuse`` on BatchNorm members: each member row, and the uniform soup of a
  member with itself, is that member's own eval-mode test score (``batch_stats`` used and
  averaged, not dropped or re-initialised)."""
  from kdjax import metrics
  from kdjax.data import load_dataset
  from kdjax.programs.fuse import run_fuse
  from kdjax.training import load_run

  # fuse fits on the last 300 training examples: the member must have held them out.
  member = tmp_path / "held_out"
  train_and_evaluate(smoke("digits/student_resnet8.py", num_devices=8, num_steps=10,
                           checkpoint_every=10, **{"data.val_size": 300}), str(member))
  config = load_config("mnist1d/fuse_cnn5.py")
  config.data.name, config.data.val_size = "digits", 300
  config.data.kwargs = {"image_shape": (8, 8, 1)}
  config.members = f"{member},{member}"
  config.deep.folds, config.deep.steps = 2, 5
  report = run_fuse(config, str(tmp_path / "fuse"))
  test = load_dataset("digits", image_shape=(8, 8, 1), val_size=300)["test"]
  model, variables, _ = load_run(member)
  assert set(variables) == {"params", "batch_stats"}
  logits = jax.jit(model.apply)(variables, jnp.asarray(test["x"]))
  want = [float(metrics.accuracy(logits, test["y"])), float(metrics.nll(logits, test["y"]))]
  for row in ("member 0 (held_out)", "member 1 (held_out)", "uniform soup (CifarResNet x2)"):
    got = report["test"][row]
    np.testing.assert_allclose([got["accuracy"], got["nll"]], want, rtol=1e-4, err_msg=row)
  # With repair: the soup's statistics are those of the training data (repair_batch_norm).
  config.repair_examples = 200
  report = run_fuse(config, str(tmp_path / "fuse_repaired"))
  train = load_dataset("digits", image_shape=(8, 8, 1), val_size=300)["train"]
  from kdjax import fusion
  repaired = fusion.repair_batch_norm(model, variables, [{"x": train["x"][:200]}])
  logits = jax.jit(model.apply)(repaired, jnp.asarray(test["x"]))
  got = report["test"]["uniform soup (CifarResNet x2, BN repaired)"]
  np.testing.assert_allclose([got["accuracy"], got["nll"]], [
      float(metrics.accuracy(logits, test["y"])), float(metrics.nll(logits, test["y"]))],
      rtol=1e-4)


def test_a_teacher_initialised_student_starts_from_the_teachers_running_statistics():
  """Born-again (identity mapping) and a rule mapping that copies one block: the copied
  modules' ``batch_stats`` are the teacher's, the others stay the student's own."""
  from kdjax.training._init import copy_teacher_state, module_pairs

  init = jax.jit(as_model(get_model("resnet8", num_classes=10)).init)
  student, teacher = (init(jax.random.key(k), jnp.zeros((1, 8, 8, 1))) for k in (0, 1))
  teacher["batch_stats"] = jax.tree.map(lambda a: a + 1.5, teacher["batch_stats"])
  flat = lambda tree: dict(zip(*zip(*[(jax.tree_util.keystr(p), v) for p, v in  # noqa: E731
                                      jax.tree_util.tree_leaves_with_path(tree)])))

  for mapping in (None, [(r"(layer2_0/.*)", r"\1")]):
    new_params, copied = losses.init_from_teacher(student["params"], teacher["params"],
                                                  mapping=mapping)
    state, copied_state = copy_teacher_state(
        {"batch_stats": student["batch_stats"]}, teacher,
        module_pairs(copied, student["params"], teacher["params"], mapping))
    got, t_stats, s_stats = (flat(x) for x in (state["batch_stats"], teacher["batch_stats"],
                                               student["batch_stats"]))
    assert copied_state and all(p.startswith("batch_stats/") for p in copied_state)
    for key in got:
      from_teacher = mapping is None or "layer2_0" in key
      np.testing.assert_array_equal(got[key], (t_stats if from_teacher else s_stats)[key])
    assert len(copied_state) == sum(mapping is None or "layer2_0" in k for k in got)


def runs_accuracy(workdir) -> float:
  return json.loads((workdir / "summary.json").read_text())["test"]["accuracy"]


def test_teacher_smoke_config_trains(tmp_path):  # student_resnet8 and kd_*: tests above
  """The summary's test scores are the saved variables' own, in eval mode (BatchNorm's
  running statistics), recomputed here in float64 NumPy from the logits."""
  from kdjax.data import load_dataset
  config = smoke("digits/teacher_resnet14.py", num_steps=10)
  summary = train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["steps"] == 10
  test = load_dataset("digits", **config.data.kwargs)["test"]
  logits = np.asarray(make_predict(get_model(config.model.name, num_classes=10, **{
      k: v for k, v in config.model.to_dict().items() if k != "name"}))(
          load_variables(tmp_path / "run"), test["x"]), np.float64)
  log_probs = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
  np.testing.assert_allclose(summary["test"]["accuracy"], np.mean(logits.argmax(-1) == test["y"]),
                             atol=1e-6)
  np.testing.assert_allclose(summary["test"]["nll"],
                             -np.mean(log_probs[np.arange(len(test["y"])), test["y"]]), rtol=1e-4)


def test_digits_as_images():
  from kdjax.data import load_digits

  flat, images = load_digits(), load_digits(image_shape=(8, 8, 1))
  assert images["train"]["x"].shape == (len(flat["train"]["y"]), 8, 8, 1)
  np.testing.assert_array_equal(images["test"]["x"].reshape(len(flat["test"]["y"]), 64),
                                flat["test"]["x"])
  with pytest.raises(ValueError, match=r"image_shape=\(7, 7, 1\) must hold the 64 pixels"):
    load_digits(image_shape=(7, 7, 1))


def test_a_skipped_non_finite_step_leaves_batch_statistics_unchanged():
  """Under on_nonfinite="skip" (optax.apply_if_finite) a NaN batch drops the update and
  must not write NaN into the running statistics either."""

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
      return nn.Dense(3)(x)

  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 4)).astype(np.float32)
  x[1, 0, 0] = np.nan  # the second step's batch holds a NaN
  y = jnp.asarray(rng.integers(0, 3, (2, 8)), jnp.int32)
  objective = losses.make_objective([("cross_entropy", 1.0, {})])
  tx = optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=10)
  chunk = make_train_chunk(model=Net(), objective=objective, tx=tx)
  state = state_for(Net(), x[0], tx)
  after_one, _ = chunk(state, {"x": jnp.asarray(x[:1]), "y": y[:1]})
  kept = jax.tree.map(np.array, (after_one.params, after_one.model_state))
  after_two, _ = chunk(after_one, {"x": jnp.asarray(x[1:]), "y": y[1:]})
  jax.tree.map(np.testing.assert_array_equal, (after_two.params, after_two.model_state), kept)
  assert int(after_two.opt_state.notfinite_count) == 1


def test_run_once_init_is_the_eager_init_without_the_forward_pass():
  """The trainer's init (``run_once``: one jitted program, LLVM optimisation off on the
  CPU) gives the eager ``model.init``'s variables to float32 rounding (the random bits are
  the same threefry draws; only the codegen of their transform differs), and XLA dropped
  the forward pass: the compiled program has no matrix product."""
  from kdjax.training._state import run_once

  model = as_model(get_model("mlp", num_classes=10))
  x = jnp.ones((2, 40))
  eager = model.init(jax.random.key(3), x)
  once = run_once(model.init, jax.random.key(3), x)
  assert jax.tree.structure(once) == jax.tree.structure(eager)
  for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(eager)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  assert any(np.asarray(leaf).std() > 0 for leaf in jax.tree.leaves(once))  # random draws
  hlo = jax.jit(model.init).lower(jax.random.key(3), x).compile().as_text()
  assert " dot(" not in hlo
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False).logits)
  assert " dot(" in forward.lower(once, x).compile().as_text()  # the check can fail
