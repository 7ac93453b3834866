"""weight_matching and init_from_teacher: mapping formats, NumPy references, errors."""

import flax.core
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses


def _tree(seed, widths=(3, 4, 2), prefix="dense"):
  rng = np.random.default_rng(seed)
  return {f"{prefix}_{i}": {"kernel": jnp.float32(rng.normal(size=(a, b))),
                            "bias": jnp.float32(rng.normal(size=(b,)))}
          for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))}


def ref_weight_matching(student, teacher, pairs, normalize):
  """pairs: [(student_path, teacher_path, projection or None)], '/'-joined 2-level paths."""
  get = lambda tree, path: np.asarray(tree[path.split("/")[0]][path.split("/")[1]], np.float64)
  total = 0.0
  for s_path, t_path, proj in pairs:
    s, t = get(student, s_path), get(teacher, t_path)
    t = np.asarray(proj(t)) if proj else t
    total += np.sum((s - t) ** 2) / (s.size if normalize else 1)
  return total


STUDENT, TEACHER = _tree(0), _tree(1)
ALL = ["dense_0/kernel", "dense_0/bias", "dense_1/kernel", "dense_1/bias"]
WIDE_TEACHER = _tree(2, widths=(3, 6, 2), prefix="layer")
slice_cols = lambda w: w[..., :4]
slice_rows = lambda w: w[:4]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mapping,teacher,pairs", [
    (None, TEACHER, [(p, p, None) for p in ALL]),
    ({"dense_1/kernel": "dense_1/kernel"}, TEACHER, [("dense_1/kernel", "dense_1/kernel", None)]),
    ({"dense_0/bias": "dense_0/bias",
      "dense_1/bias": "dense_1/bias"}, TEACHER,
     [("dense_0/bias", "dense_0/bias", None), ("dense_1/bias", "dense_1/bias", None)]),
    ([(r"dense_(\d)/kernel", r"layer_\1/kernel")], _tree(3, prefix="layer"),
     [("dense_0/kernel", "layer_0/kernel", None), ("dense_1/kernel", "layer_1/kernel", None)]),
    ({"dense_0/kernel": ("layer_0/kernel", slice_cols),
      "dense_1/kernel": ("layer_1/kernel", slice_rows)}, WIDE_TEACHER,
     [("dense_0/kernel", "layer_0/kernel", slice_cols),
      ("dense_1/kernel", "layer_1/kernel", slice_rows)]),
    ([(r"dense_0/(kernel|bias)", r"layer_0/\1", slice_cols)], WIDE_TEACHER,
     [("dense_0/kernel", "layer_0/kernel", slice_cols),
      ("dense_0/bias", "layer_0/bias", slice_cols)]),
])
def test_weight_matching_matches_reference(mapping, teacher, pairs, normalize):
  got = jax.jit(lambda s, t: losses.weight_matching(s, t, mapping=mapping,
                                                    normalize=normalize))(STUDENT, teacher)
  assert got.shape == ()
  np.testing.assert_allclose(got, ref_weight_matching(STUDENT, teacher, pairs, normalize),
                             rtol=1e-5)


def test_weight_matching_gradient_and_identity():
  grads = jax.jit(jax.grad(lambda s: losses.weight_matching(s, TEACHER)))(STUDENT)
  for layer in STUDENT:
    for name, leaf in STUDENT[layer].items():
      np.testing.assert_allclose(grads[layer][name],
                                 2 * (leaf - TEACHER[layer][name]) / leaf.size, rtol=1e-5)
  assert float(losses.weight_matching(STUDENT, STUDENT)) == 0.0
  # FrozenDicts and an outer "params" level flatten to the same paths.
  frozen = flax.core.freeze({"params": STUDENT})
  assert float(losses.weight_matching(frozen, {"params": STUDENT})) == 0.0


def test_init_from_teacher_identity_is_born_again():
  new, copied = losses.init_from_teacher(STUDENT, TEACHER, mapping=None)
  assert sorted(copied) == sorted(ALL)
  assert jax.tree.structure(new) == jax.tree.structure(STUDENT)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(TEACHER)):
    np.testing.assert_array_equal(a, b)


def test_init_from_teacher_distilbert_every_other_layer():
  """Student layer i <- teacher layer 2i, via a dict built from the rule, and via regex."""
  teacher = _tree(4, widths=(3, 3, 3, 3, 3), prefix="layer")  # layers 0..3
  student = _tree(5, widths=(3, 3, 3), prefix="layer")  # layers 0..1
  mapping = {f"layer_{i}/{n}": f"layer_{2 * i}/{n}" for i in range(2) for n in ("kernel", "bias")}
  new, copied = losses.init_from_teacher(student, teacher, mapping=mapping)
  assert copied == list(mapping)
  np.testing.assert_array_equal(new["layer_1"]["kernel"], teacher["layer_2"]["kernel"])
  np.testing.assert_array_equal(new["layer_0"]["bias"], teacher["layer_0"]["bias"])
  # Regex: copy only the kernels; biases stay as they were.
  new, copied = losses.init_from_teacher(student, teacher, mapping=[(r"(.*)/kernel", r"\1/kernel")])
  assert copied == ["layer_0/kernel", "layer_1/kernel"]
  np.testing.assert_array_equal(new["layer_1"]["kernel"], teacher["layer_1"]["kernel"])
  np.testing.assert_array_equal(new["layer_1"]["bias"], student["layer_1"]["bias"])


def test_init_from_teacher_projection_and_dtype():
  student = jax.tree.map(lambda x: x.astype(jnp.bfloat16), STUDENT)
  new, _ = losses.init_from_teacher(
      student, WIDE_TEACHER, mapping={"dense_0/kernel": ("layer_0/kernel", slice_cols)})
  assert new["dense_0"]["kernel"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(new["dense_0"]["kernel"],
                                WIDE_TEACHER["layer_0"]["kernel"][:, :4].astype(jnp.bfloat16))


@pytest.mark.parametrize("fn", [losses.weight_matching, losses.init_from_teacher])
@pytest.mark.parametrize("mapping,exc,match", [
    ({"dense_0/kernel": "dense_9/kernel"}, ValueError,
     r"teacher \(mapped from student 'dense_0/kernel'\) path 'dense_9/kernel' does not exist; "
     r"available paths include \[.*'dense_0/kernel'"),
    ({"dense_7/kernel": "dense_0/kernel"}, ValueError, "student path 'dense_7/kernel' does not"),
    ({"dense_0/kernel": "dense_1/kernel"}, ValueError,
     r"shape mismatch between student 'dense_0/kernel' \(3, 4\) and teacher 'dense_1/kernel' "
     r"\(4, 2\)"),
    ({"dense_0/kernel": ("dense_1/kernel", lambda w: w[:1])}, ValueError,
     r"returned shape \(1, 2\), but student 'dense_0/kernel' has \(3, 4\)"),
    ([(r"conv_.*", "x")], ValueError, "no mapping rule matched"),
    ([("only_one",)], TypeError, r"\(regex, replacement\)"),
    ("dense_0/kernel", TypeError, "mapping must be None, a dict or a list"),
])
def test_mapping_errors(fn, mapping, exc, match):
  with pytest.raises(exc, match=match):
    fn(STUDENT, TEACHER, mapping=mapping)


def test_identity_mapping_missing_teacher_path():
  with pytest.raises(ValueError, match=r"path 'dense_1/(bias|kernel)' does not exist"):
    losses.weight_matching(STUDENT, {"dense_0": TEACHER["dense_0"]})
