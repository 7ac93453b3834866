"""make_objective: weighted sums, masking, auxiliary projector params, validation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kdjax import losses

B, C = 6, 5


def _inputs(where=None, labels=True):
  rng = np.random.default_rng(0)
  f = lambda *shape: jnp.float32(rng.normal(size=shape))
  return losses.LossInputs(
      student_logits=f(B, C),
      labels=jnp.asarray(rng.integers(0, C, size=B)) if labels else None,
      teacher_logits=jax.nn.log_softmax(f(B, C)),  # fused log-probs are fine
      student_features={"penultimate": f(B, 8), "block_1": f(B, 4, 3)},
      teacher_features={"penultimate": f(B, 12), "block_1": f(B, 4, 7), "block_2": f(B, 2, 5)},
      student_params={"dense_0": {"kernel": f(3, 4)}},
      teacher_params={"dense_0": {"kernel": f(3, 4)}},
      where=where,
  )


ALL_TERMS = [
    ("cross_entropy", 0.5, {}),
    ("soft_target_kl", 1.5, {"temperature": 2.0}),
    ("hinton_kd", 1.0, {"temperature": 4.0, "alpha": 0.9}),
    ("dkd", 0.3, {"alpha": 1.0, "beta": 2.0, "temperature": 4.0}),
    ("dist", 0.7, {"temperature": 2.0}),
    ("hint", 3.0, {"student_feature": "penultimate", "teacher_feature": "block_2",
                   "projector": "dense"}),
    ("attention_transfer", 2.0, {"student_feature": "block_1", "p": 2}),
    ("similarity_preserving", 1.1, {"student_feature": "penultimate"}),
    ("rkd_distance", 0.9, {"student_feature": "penultimate"}),
    ("rkd_angle", 1.2, {"student_feature": "block_1"}),
    ("pkt", 0.8, {"student_feature": "penultimate"}),
    ("weight_matching", 1e-1, {}),
]


def _by_hand(inputs, aux):
  """The same objective written out with the public loss functions."""
  s, t, y, sf, tf = (inputs.student_logits, inputs.teacher_logits, inputs.labels,
                     inputs.student_features, inputs.teacher_features)
  w = jnp.ones(B) if inputs.where is None else inputs.where.astype(jnp.float32)
  mean = lambda v: jnp.sum(v * w) / jnp.sum(w)
  proj = losses.Projector(target_shape=(2, 5), kind="dense")
  where = inputs.where
  values = {
      "cross_entropy": mean(losses.cross_entropy(s, y)),
      "soft_target_kl": mean(losses.soft_target_kl(s, t, temperature=2.0)),
      "hinton_kd": mean(losses.hinton_kd(s, t, y, temperature=4.0, alpha=0.9)),
      "dkd": mean(losses.dkd(s, t, y, alpha=1.0, beta=2.0, temperature=4.0)),
      "dist": losses.dist(s, t, temperature=2.0, where=where),
      "hint": mean(losses.hint(proj.apply({"params": aux["hint"]}, sf["penultimate"]),
                               tf["block_2"])),
      "attention_transfer": mean(losses.attention_transfer(sf["block_1"], tf["block_1"])),
      "similarity_preserving": losses.similarity_preserving(sf["penultimate"], tf["penultimate"],
                                                            where=where),
      "rkd_distance": losses.rkd_distance(sf["penultimate"], tf["penultimate"], where=where),
      "rkd_angle": losses.rkd_angle(sf["block_1"], tf["block_1"], where=where),
      "pkt": losses.pkt(sf["penultimate"], tf["penultimate"], where=where),
      "weight_matching": losses.weight_matching(inputs.student_params, inputs.teacher_params),
  }
  return sum(wt * values[name] for name, wt, _ in ALL_TERMS), values


@pytest.mark.parametrize("where", [None, np.array([1, 1, 0, 1, 1, 0], bool)])
def test_weighted_sum_equals_hand_computed(where):
  inputs = _inputs(where=None if where is None else jnp.asarray(where))
  objective = losses.make_objective(ALL_TERMS)
  aux = objective.init(jax.random.key(0), inputs)
  assert set(aux) == {"hint"}
  loss, metrics = jax.jit(objective)(aux, inputs)
  want, values = jax.jit(_by_hand)(inputs, aux)
  assert set(metrics) == {"loss"} | {f"loss/{n}" for n, _, _ in ALL_TERMS}
  for name, value in values.items():
    np.testing.assert_allclose(metrics[f"loss/{name}"], value, rtol=1e-5, atol=1e-7,
                               err_msg=name)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], loss)


def test_where_equals_slicing_examples():
  keep = np.array([1, 0, 1, 1, 0, 1], bool)
  terms = [t for t in ALL_TERMS if t[0] in ("hinton_kd", "dist", "rkd_angle", "pkt")]
  objective = losses.make_objective(terms)
  full = _inputs(where=jnp.asarray(keep))
  inputs = _inputs()
  take = lambda tree: jax.tree.map(lambda x: x[keep], tree)
  sliced = inputs.replace(student_logits=take(inputs.student_logits), labels=take(inputs.labels),
                          teacher_logits=take(inputs.teacher_logits),
                          student_features=take(inputs.student_features),
                          teacher_features=take(inputs.teacher_features))
  loss_masked, _ = jax.jit(objective)({}, full)
  loss_sliced, _ = jax.jit(objective)({}, sliced)
  np.testing.assert_allclose(loss_masked, loss_sliced, rtol=1e-5)


@pytest.mark.parametrize("projector,student_feature,teacher_feature", [
    ("dense", "penultimate", "block_2"),
    ("conv", "block_1", "block_1"),
])
def test_projector_params_are_created_and_trained(projector, student_feature, teacher_feature):
  objective = losses.make_objective(
      {"hint_a": {"loss": "hint", "weight": 2.0, "student_feature": student_feature,
                  "teacher_feature": teacher_feature, "projector": projector, "norm": "layer"},
       "hint_b": {"loss": "hint", "weight": 1.0, "student_feature": "penultimate",
                  "teacher_feature": "block_2", "projector": "dense"}})
  inputs = _inputs()
  aux = objective.init(jax.random.key(0), inputs)
  assert set(aux) == {"hint_a", "hint_b"}
  grads = jax.jit(jax.grad(lambda a: objective(a, inputs)[0]))(aux)
  assert jax.tree.structure(grads) == jax.tree.structure(aux)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf)) and float(jnp.max(jnp.abs(leaf))) > 0
  # And the students' features get gradients through the projector.
  g_feat = jax.jit(jax.grad(lambda f: objective(aux, inputs.replace(
      student_features={**inputs.student_features, student_feature: f}))[0]))(
          inputs.student_features[student_feature])
  assert float(jnp.max(jnp.abs(g_feat))) > 0


def test_config_dict_and_properties():
  cfg = ml_collections.ConfigDict({
      "hinton_kd": {"weight": 1.0, "temperature": 4.0, "alpha": 1.0},
      "sp": {"loss": "similarity_preserving", "weight": 0.5, "student_feature": "penultimate"},
      "at": {"loss": "attention_transfer", "weight": 0.5, "student_feature": "block_1",
             "teacher_feature": "block_1"},
  })
  objective = losses.make_objective(cfg)
  assert {t.label: t.name for t in objective.terms} == {
      "hinton_kd": "hinton_kd", "sp": "similarity_preserving", "at": "attention_transfer"}
  assert objective.needs_teacher and not objective.needs_labels and not objective.needs_params
  assert objective.student_features == {"penultimate", "block_1"}
  assert objective.teacher_features == {"penultimate", "block_1"}
  # alpha == 1: no labels needed at trace time either.
  loss, metrics = jax.jit(objective)({}, _inputs(labels=False))
  assert np.isfinite(loss) and set(metrics) == {"loss", "loss/hinton_kd", "loss/sp", "loss/at"}

  ce = losses.make_objective([("cross_entropy", 1.0, {}), ("weight_matching", 1.0, {})])
  assert ce.needs_labels and ce.needs_params and ce.needs_teacher
  assert not losses.make_objective([("cross_entropy", 1.0)]).needs_teacher


def test_loss_inputs_is_a_pytree():
  inputs = _inputs(where=jnp.ones(B, bool))
  leaves = jax.tree.leaves(inputs)
  assert len(leaves) == 3 + 2 + 3 + 2 + 1  # logits/labels/teacher, features, params, where
  mapped = jax.tree.map(lambda x: x, inputs)
  assert isinstance(mapped, losses.LossInputs)
  assert losses.LossInputs(student_logits=jnp.zeros((2, 3))).student_features == {}


@pytest.mark.parametrize("terms,match", [
    ([("hinton", 1.0, {})], r"unknown loss term 'hinton'.*known terms: \['attention_transfer'"),
    ([("soft_target_kl", 1.0, {"temp": 2.0})],
     r"unknown keyword\(s\) \['temp'\]; known keywords: \['temperature'\]"),
    ([("hinton_kd", 1.0, {"temperature": 2.0})], r"needs keyword\(s\) \['alpha'\]"),
    ([("hint", 1.0, {})], r"needs keyword\(s\) \['student_feature'\]"),
    ([("hint", 1.0, {"student_feature": "a", "projector": "mlp"})], "projector must be"),
    ([("soft_target_kl", 1.0, {"temperature": 0.0})], "temperature must be > 0"),
    ([("cross_entropy", 1.0, {}), ("cross_entropy", 2.0, {})], "duplicate term label"),
    ({"kd": {"loss": "dkd"}}, "needs a 'weight'"),
    ({"kd": {"loss": "nope", "weight": 1.0}}, "unknown loss term 'nope'"),
    ([], "no terms"),
])
def test_make_objective_errors(terms, match):
  with pytest.raises(ValueError, match=match):
    losses.make_objective(terms)


@pytest.mark.parametrize("terms,inputs,match", [
    ([("hinton_kd", 1.0, {"temperature": 2.0, "alpha": 0.5})], _inputs(labels=False),
     r"needs inputs.labels, which is None"),
    ([("dkd", 1.0, {})], _inputs(labels=False), "needs inputs.labels"),
    ([("soft_target_kl", 1.0, {})], _inputs().replace(teacher_logits=None),
     "needs inputs.teacher_logits"),
    ([("pkt", 1.0, {"student_feature": "nope"})], _inputs(),
     r"student_features has no 'nope'; available: \['block_1', 'penultimate'\]"),
    ([("hint", 1.0, {"student_feature": "penultimate", "teacher_feature": "block_2",
                     "projector": "dense"})], _inputs(), "call objective.init"),
    ([("hint", 1.0, {"student_feature": "penultimate"})], _inputs(),
     r"student_features.shape=\(6, 8\) and teacher_features.shape=\(6, 12\)"),
])
def test_trace_time_errors(terms, inputs, match):
  objective = losses.make_objective(terms)
  with pytest.raises(ValueError, match=match):
    jax.jit(objective)({}, inputs)


def test_a_new_term_is_one_registry_entry(monkeypatch):
  """Adding a term touches only TERMS: the composer validates its keywords, fetches its
  inputs, masks padded rows and averages it, with no other change."""
  def l1_logits(student_logits, teacher_logits, *, scale):
    return scale * jnp.mean(jnp.abs(student_logits - teacher_logits), axis=-1)

  monkeypatch.setitem(losses.TERMS, "l1_logits", losses.TermSpec(
      l1_logits, ("student_logits", "teacher_logits"), {"scale": 1.0}))
  objective = losses.make_objective([("l1_logits", 2.0, {"scale": 3.0})])
  keep = jnp.asarray(np.array([1, 1, 0, 1, 1, 0], bool))
  inputs = _inputs(where=keep)
  loss, metrics = jax.jit(objective)({}, inputs)
  s, t = np.asarray(inputs.student_logits), np.asarray(inputs.teacher_logits)
  want = 3.0 * np.abs(s - t).mean(-1)[np.asarray(keep)].mean()
  np.testing.assert_allclose(metrics["loss/l1_logits"], want, rtol=1e-6)
  np.testing.assert_allclose(loss, 2.0 * want, rtol=1e-6)
  assert objective.needs_teacher and not objective.needs_labels
  assert losses.term_keywords()["l1_logits"] == {"scale": 1.0}
  with pytest.raises(ValueError, match=r"unknown keyword\(s\) \['temperature'\]"):
    losses.make_objective([("l1_logits", 1.0, {"temperature": 2.0})])


def test_weight_schedules():
  """A weight may be a linear warm-up (DKD's recipe) or any callable of the step."""
  inputs = _inputs()
  plain = losses.make_objective([("dkd", 8.0, {})])
  warm = losses.make_objective({"dkd": {"weight": {"value": 8.0, "warmup_steps": 20}}})
  custom = losses.make_objective([("dkd", lambda step: 8.0 * jnp.minimum(step / 20, 1.0), {})])
  full, _ = plain({}, inputs)
  for objective in (warm, custom):
    run = jax.jit(lambda step, objective=objective: objective({}, inputs, step=step)[0])
    np.testing.assert_allclose(run(0), 0.0, atol=1e-7)
    np.testing.assert_allclose(run(5), full / 4, rtol=1e-5)
    np.testing.assert_allclose(run(20), full, rtol=1e-5)
    np.testing.assert_allclose(run(1000), full, rtol=1e-5)
    with pytest.raises(ValueError, match="has a weight schedule; call objective"):
      objective({}, inputs)
  # Numbers need no step and ignore one: the default behaviour is unchanged.
  np.testing.assert_allclose(plain({}, inputs, step=3)[0], full)


@pytest.mark.parametrize("weight,match", [
    ({"value": 1.0}, r"weight schedule must be \{'value': w, 'warmup_steps': n\}"),
    ({"value": 1.0, "warmup_steps": 0}, "warmup_steps must be an int >= 1"),
    ("heavy", "weight must be a number or a schedule"),
])
def test_weight_schedule_errors(weight, match):
  with pytest.raises(ValueError, match=match):
    losses.make_objective({"ce": {"loss": "cross_entropy", "weight": weight}})
