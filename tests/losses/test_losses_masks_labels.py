"""Masks select (NaN/inf/bad labels in masked entries change nothing) and the label policy
(labels outside [0, C) ignore their row) in every loss and in make_objective."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses, metrics
from references import ref_cross_entropy, ref_dkd, ref_hinton_kd

B, C = 6, 5
KEEP = np.array([True, False, True, True, False, True])  # rows 1 and 4 are padding


def _rng(seed):
  return np.random.default_rng(seed)


def _poison_rows(x, keep, value):
  """``x`` with the rows where ``keep`` is False set to ``value`` (NaN, inf, ...)."""
  x = np.array(x, dtype=np.float32)
  x[~keep] = value
  return jnp.asarray(x)


# ------------------------------------------------------------------ batch-level row masks
ROW_MASKED = {
    "dist": lambda s, t, w: losses.dist(s, t, temperature=2.0, where=w),
    "similarity_preserving": lambda s, t, w: losses.similarity_preserving(s, t, where=w),
    "rkd_distance": lambda s, t, w: losses.rkd_distance(s, t, where=w),
    "rkd_angle": lambda s, t, w: losses.rkd_angle(s, t, where=w),
    "pkt": lambda s, t, w: losses.pkt(s, t, where=w),
}
# Compiled once per loss and shape, shared by the parametrized cases.
ROW_VALUE_AND_GRAD = {name: jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
                      for name, fn in ROW_MASKED.items()}


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf, 1e30])
@pytest.mark.parametrize("name", list(ROW_MASKED))
def test_masked_rows_with_nan_inf_equal_slicing(name, poison):
  s = _poison_rows(_rng(0).normal(size=(B, C)), KEEP, poison)
  t = _poison_rows(_rng(1).normal(size=(B, C)), KEEP, poison)
  value_and_grad = ROW_VALUE_AND_GRAD[name]
  got, (gs, gt) = value_and_grad(s, t, jnp.asarray(KEEP))
  want, (ws, wt) = value_and_grad(s[KEEP], t[KEEP], None)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gs[KEEP], ws, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gt[KEEP], wt, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(gs[~KEEP], 0.0)
  np.testing.assert_array_equal(gt[~KEEP], 0.0)


# ------------------------------------------------------------ element / class masks
ELEMENT_MASKED = {
    "soft_target_kl": lambda s, t, w: losses.soft_target_kl(s, t, temperature=2.0, where=w),
    "soft_target_kl_with_log_targets": lambda s, t, w: losses.soft_target_kl_with_log_targets(
        s, t, temperature=2.0, where=w),
    "cross_entropy": lambda s, t, w: losses.cross_entropy(s, jnp.array([0, 1, 1, 3]), where=w),
    "hint": lambda s, t, w: losses.hint(s, t, where=w),
}
ELEMENT_VALUE_AND_GRAD = {
    name: jax.jit(jax.value_and_grad(
        lambda s, t, w, fn=fn: jnp.sum(fn(s, t, w) * jnp.arange(1.0, 5.0)), argnums=(0, 1)))
    for name, fn in ELEMENT_MASKED.items()}


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", list(ELEMENT_MASKED))
def test_masked_classes_with_nan_inf_equal_slicing(name, poison):
  fn = ELEMENT_MASKED[name]
  keep = np.array([True, True, False, True, False])  # labels 0, 1, 3 are kept classes
  s = np.array(_rng(2).normal(size=(4, 5)), np.float32)
  t = np.array(_rng(3).normal(size=(4, 5)), np.float32)
  s[:, ~keep], t[:, ~keep] = poison, poison
  s, t = jnp.asarray(s), jnp.asarray(t)
  f = lambda s, t, w: jnp.sum(fn(s, t, w) * jnp.arange(1.0, 5.0))  # noqa: E731
  got, (gs, gt) = ELEMENT_VALUE_AND_GRAD[name](s, t, jnp.broadcast_to(keep, s.shape))
  if name == "cross_entropy":  # slicing the classes renumbers the labels
    sliced = lambda s, t: jnp.sum(losses.cross_entropy(s, jnp.array([0, 1, 1, 2]))  # noqa: E731
                                  * jnp.arange(1.0, 5.0))
  else:
    sliced = lambda s, t: f(s, t, None)  # noqa: E731
  want, (ws, wt) = jax.value_and_grad(sliced, argnums=(0, 1))(s[:, keep], t[:, keep])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gs[:, keep], ws, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gt[:, keep], wt, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(gs[:, ~keep], 0.0)
  np.testing.assert_array_equal(gt[:, ~keep], 0.0)


# ----------------------------------------------------------------------- make_objective
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


def _objective_inputs(poison=None, bad_label=None):
  rng = _rng(5)
  f = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
  rows = lambda x: jnp.asarray(x) if poison is None else _poison_rows(x, KEEP, poison)  # noqa: E731
  labels = rng.integers(0, C, size=B)
  if bad_label is not None:
    labels[~KEEP] = bad_label
  return losses.LossInputs(
      student_logits=rows(f(B, C)), labels=jnp.asarray(labels),
      teacher_logits=rows(f(B, C)),
      student_features={"penultimate": rows(f(B, 8)), "block_1": rows(f(B, 4, 3))},
      teacher_features={"penultimate": rows(f(B, 12)), "block_1": rows(f(B, 4, 7)),
                        "block_2": rows(f(B, 2, 5))},
      student_params={"dense_0": {"kernel": jnp.asarray(f(3, 4))}},
      teacher_params={"dense_0": {"kernel": jnp.asarray(f(3, 4))}},
      where=None if poison is None and bad_label is None else jnp.asarray(KEEP))


def _sliced(inputs):
  take = lambda x: x[KEEP]  # noqa: E731
  return inputs.replace(
      student_logits=take(inputs.student_logits), labels=take(inputs.labels),
      teacher_logits=take(inputs.teacher_logits),
      student_features=jax.tree.map(take, inputs.student_features),
      teacher_features=jax.tree.map(take, inputs.teacher_features), where=None)


OBJECTIVE = losses.make_objective(ALL_TERMS)


def _objective_loss(aux, s, sf, tf, inputs):
  inputs = inputs.replace(student_logits=s, student_features=sf, teacher_features=tf)
  return OBJECTIVE(aux, inputs)


OBJECTIVE_GRAD = jax.jit(jax.value_and_grad(_objective_loss, argnums=(0, 1, 2, 3), has_aux=True))


@pytest.mark.parametrize("poison,bad_label", [(np.nan, None), (np.inf, -1), (-np.inf, C),
                                              (None, -100)])
def test_objective_padded_rows_equal_sliced_batch(poison, bad_label):
  """Defect 1: NaN/inf features or out-of-range labels in padded rows change nothing."""
  padded = _objective_inputs(poison, bad_label)
  aux = OBJECTIVE.init(jax.random.key(0), _sliced(padded))
  grad_fn = OBJECTIVE_GRAD
  (got, got_metrics), got_grads = grad_fn(aux, padded.student_logits, padded.student_features,
                                          padded.teacher_features, padded)
  sliced = _sliced(padded)
  (want, want_metrics), want_grads = grad_fn(aux, sliced.student_logits,
                                             sliced.student_features,
                                             sliced.teacher_features, sliced)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, want, rtol=2e-5)
  for key in want_metrics:
    np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=2e-5, atol=1e-7,
                               err_msg=key)
  # aux (projector) gradients equal; per-row gradients equal on kept rows, 0 on padding.
  chex.assert_tree_all_finite(got_grads)
  chex.assert_trees_all_close(got_grads[0], want_grads[0], rtol=2e-4, atol=1e-6)
  for g, w in zip(jax.tree.leaves(got_grads[1:]), jax.tree.leaves(want_grads[1:])):
    np.testing.assert_allclose(g[KEEP], w, rtol=2e-4, atol=1e-6)
    np.testing.assert_array_equal(g[~KEEP], 0.0)


# ------------------------------------------------------------------------- label policy
LABELLED = {
    "cross_entropy": (lambda s, t, y: losses.cross_entropy(s, y),
                      lambda s, t, y: ref_cross_entropy(s, y)),
    "hinton_kd": (lambda s, t, y: losses.hinton_kd(s, t, y, temperature=4.0, alpha=0.3),
                  lambda s, t, y: ref_hinton_kd(s, t, y, 4.0, 0.3)),
    "hinton_kd_alpha1": (lambda s, t, y: losses.hinton_kd(s, t, y, temperature=4.0, alpha=1.0),
                         lambda s, t, y: ref_hinton_kd(s, t, y, 4.0, 1.0)),
    "dkd": (lambda s, t, y: losses.dkd(s, t, y, alpha=0.7, beta=2.0, temperature=4.0),
            lambda s, t, y: ref_dkd(s, t, y, 0.7, 2.0, 4.0)),
}
LABELLED_JIT = {name: jax.jit(fn) for name, (fn, _) in LABELLED.items()}
LABELLED_GRAD = {name: jax.jit(jax.grad(
    lambda s, t, y, fn=fn: jnp.sum(fn(s, t, y) * jnp.arange(1.0, B + 1)), argnums=(0, 1)))
    for name, (fn, _) in LABELLED.items()}


@pytest.mark.parametrize("bad", [-1, -5, -100, C, C + 7])
@pytest.mark.parametrize("name", list(LABELLED))
def test_out_of_range_labels_ignore_their_row(name, bad):
  """Defect 2: a label outside [0, C) gives loss 0 and no gradient, in every labelled loss."""
  _, ref = LABELLED[name]
  s, t = _rng(6).normal(size=(B, C)), _rng(7).normal(size=(B, C))
  y = _rng(8).integers(0, C, size=B)
  y_bad = np.where(KEEP, y, bad)
  got = LABELLED_JIT[name](jnp.float32(s), jnp.float32(t), jnp.asarray(y_bad))
  np.testing.assert_array_equal(got[~KEEP], 0.0)
  np.testing.assert_allclose(got[KEEP], ref(s[KEEP], t[KEEP], y[KEEP]), rtol=1e-4, atol=1e-6)
  gs, gt = LABELLED_GRAD[name](jnp.float32(s), jnp.float32(t), jnp.asarray(y_bad))
  np.testing.assert_array_equal(gs[~KEEP], 0.0)
  np.testing.assert_array_equal(gt[~KEEP], 0.0)
  assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))


def test_minus_one_agrees_across_losses():
  """The issue's reproduction: label -1 must not pick class C-1 in one loss and not another."""
  s, t = jnp.float32(_rng(9).normal(size=(1, C))), jnp.float32(_rng(10).normal(size=(1, C)))
  y = jnp.array([-1])
  for value in (losses.cross_entropy(s, y), losses.dkd(s, t, y),
                losses.hinton_kd(s, t, y, temperature=4.0, alpha=0.5)):
    np.testing.assert_array_equal(value, 0.0)


@pytest.mark.parametrize("term", ALL_TERMS[:4], ids=[t[0] for t in ALL_TERMS[:4]])
def test_objective_all_ignored_labels_gives_zero(term):
  objective = losses.make_objective([term])
  inputs = _objective_inputs().replace(labels=jnp.full((B,), -100))
  loss, grads = jax.jit(jax.value_and_grad(
      lambda s: objective({}, inputs.replace(student_logits=s))[0]))(inputs.student_logits)
  if term[0] in ("soft_target_kl",):  # takes no labels: unaffected
    assert float(loss) > 0
  else:
    assert float(loss) == 0.0
    np.testing.assert_array_equal(grads, 0.0)


def test_objective_ignored_labels_leave_the_label_free_terms_alone():
  """A row with label -1 still counts in the terms that take no labels (e.g. soft KL)."""
  objective = losses.make_objective([("cross_entropy", 1.0), ("soft_target_kl", 1.0)])
  inputs = _objective_inputs()
  y = np.array(inputs.labels)
  y[~KEEP] = -1
  _, m = objective({}, inputs.replace(labels=jnp.asarray(y)))
  s, t = np.asarray(inputs.student_logits, np.float64), np.asarray(inputs.teacher_logits)
  np.testing.assert_allclose(m["loss/cross_entropy"],
                             ref_cross_entropy(s[KEEP], y[KEEP]).mean(), rtol=1e-5)
  _, full = objective({}, inputs)
  np.testing.assert_allclose(m["loss/soft_target_kl"], full["loss/soft_target_kl"], rtol=1e-6)


def test_label_mask_and_metrics_follow_the_policy():
  s = _rng(11).normal(size=(B, C))
  y = _rng(12).integers(0, C, size=B)
  y_bad = np.where(KEEP, y, -1)
  np.testing.assert_array_equal(losses.label_mask(jnp.asarray(y_bad), C), KEEP)
  for fn in (metrics.nll, metrics.accuracy, metrics.brier_score,
             metrics.expected_calibration_error):
    got = fn(jnp.float32(s), jnp.asarray(y_bad))
    want = fn(jnp.float32(s[KEEP]), jnp.asarray(y[KEEP]))
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=fn.__name__)
  np.testing.assert_allclose(metrics.nll(jnp.float32(s), jnp.asarray(y_bad)),
                             ref_cross_entropy(s[KEEP], y[KEEP]).mean(), rtol=1e-5)
  assert float(metrics.nll(jnp.float32(s), jnp.full((B,), -1))) == 0.0


def test_label_check_docstring_examples():
  """kdjax.losses._checks holds the one label check; its examples run as doctests."""
  import doctest

  from kdjax.losses import _checks
  result = doctest.testmod(_checks, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0 and result.attempted >= 2
