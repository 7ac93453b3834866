"""Weight-space merges against float64 NumPy references, and their properties."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import ensemble, fusion


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _members(m=3, seed=0):
  rng = np.random.default_rng(seed)
  base = {"a": {"kernel": rng.normal(size=(5, 4))}, "b": rng.normal(size=(7,))}
  members = [jax.tree.map(lambda x: x + rng.normal(size=x.shape) * 0.3, base) for _ in range(m)]
  return base, ensemble.stack(members), members


def _ties_ref(base, members, density, scale):
  out = {}
  for path in ("a", "b"):
    get = (lambda t: t["a"]["kernel"]) if path == "a" else (lambda t: t["b"])
    b = get(base)
    taus = np.stack([get(m) - b for m in members]).reshape(len(members), -1)
    k = int(np.ceil(density * taus.shape[1]))
    trimmed = np.zeros_like(taus)
    for i, t in enumerate(taus):
      keep = np.argsort(-np.abs(t), kind="stable")[:k]
      trimmed[i, keep] = t[keep]
    sign = np.sign(trimmed.sum(0))
    merged = np.zeros(taus.shape[1])
    for j in range(taus.shape[1]):
      vals = [trimmed[i, j] for i in range(len(members))
              if trimmed[i, j] != 0 and np.sign(trimmed[i, j]) == sign[j]]
      merged[j] = np.mean(vals) if vals else 0.0
    out[path] = b + scale * merged.reshape(b.shape)
  return out


def test_task_arithmetic_and_ties_equal_numpy():
  base, stacked, members = _members()
  ta = fusion.task_arithmetic(base, stacked, scale=0.4)
  np.testing.assert_allclose(ta["b"], base["b"] + 0.4 * sum(m["b"] - base["b"] for m in members))
  for density in (0.2, 0.5, 1.0):
    got = fusion.ties_merge(base, stacked, density=density, scale=0.7)
    ref = _ties_ref(base, members, density, 0.7)
    np.testing.assert_allclose(got["a"]["kernel"], ref["a"], atol=1e-12)
    np.testing.assert_allclose(got["b"], ref["b"], atol=1e-12)


def test_one_member_and_equal_members_return_it():
  base, stacked, members = _members(m=1)
  one = members[0]
  for merged in (fusion.task_arithmetic(base, stacked),
                 fusion.ties_merge(base, stacked, density=1.0),
                 fusion.dare(base, stacked, density=1.0, key=jax.random.key(0))):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-12), merged, one)
  same = ensemble.stack([one, one, one])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-12),
               fusion.ties_merge(base, same, density=1.0), one)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-12),
               fusion.fisher_merge(same, jax.tree.map(jnp.ones_like, same)), one)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-12),
               fusion.slerp(one, one, 0.3), one)


def test_dare_drops_and_rescales():
  base, stacked, members = _members(m=2)
  got = fusion.dare(base, stacked, density=0.5, key=jax.random.key(3))
  tau = np.asarray(got["a"]["kernel"]) - base["a"]["kernel"]
  # Each entry is a sum of kept, doubled member entries: one of 4 combinations.
  t0, t1 = (m["a"]["kernel"] - base["a"]["kernel"] for m in members)
  options = np.stack([0 * t0, 2 * t0, 2 * t1, 2 * t0 + 2 * t1])
  assert np.all(np.min(np.abs(options - tau[None]), 0) < 1e-12)
  with pytest.raises(ValueError, match=r"density must be in \(0, 1\], got 0"):
    fusion.dare(base, stacked, density=0, key=jax.random.key(0))


def test_slerp_and_model_stock_equal_numpy():
  rng = np.random.default_rng(1)
  a, b = {"w": rng.normal(size=(6,))}, {"w": rng.normal(size=(6,))}
  cos = a["w"] @ b["w"] / np.linalg.norm(a["w"]) / np.linalg.norm(b["w"])
  omega = np.arccos(cos)
  ref = (np.sin(0.3 * omega) * a["w"] + np.sin(0.7 * omega) * b["w"]) / np.sin(omega)
  np.testing.assert_allclose(fusion.slerp(a, b, 0.7)["w"], ref, atol=1e-12)
  base, stacked, members = _members(m=3)
  taus = np.stack([m["b"] - base["b"] for m in members])
  unit = taus / np.linalg.norm(taus, axis=1, keepdims=True)
  c = np.mean([unit[i] @ unit[j] for i in range(3) for j in range(3) if i != j])
  t = 3 * c / (1 + 2 * c)
  ref = t * np.mean([m["b"] for m in members], 0) + (1 - t) * base["b"]
  np.testing.assert_allclose(fusion.model_stock(base, stacked)["b"], ref, atol=1e-12)


def test_fisher_merge_and_diagonal_fisher_equal_numpy():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(3, 4))
  x, y = rng.normal(size=(10, 3)), rng.integers(0, 4, 10)
  fisher = fusion.diagonal_fisher(lambda p, xb: xb @ p["w"], {"w": jnp.asarray(w)},
                                  [{"x": x[:6], "y": y[:6]}, {"x": x[6:], "y": y[6:]}],
                                  labels="true")
  z = x @ w
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  grads = np.einsum("ni,nc->nic", x, np.eye(4)[y] - p)  # d log p_y / dW
  np.testing.assert_allclose(fisher["w"], np.mean(grads**2, 0), atol=1e-12)
  params = {"w": rng.normal(size=(2, 3))}
  fishers = {"w": np.array([[1.0, 0.0, 0.0], [3.0, 0.0, 2.0]])}
  merged = fusion.fisher_merge(params, fishers)["w"]
  expect = [(params["w"][0, 0] + 3 * params["w"][1, 0]) / 4, params["w"][:, 1].mean(),
            params["w"][1, 2]]
  np.testing.assert_allclose(merged, expect, atol=1e-12)


class TwoDense(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="out")(nn.relu(nn.Dense(5, name="hidden")(x)))


def test_regmean_equals_the_least_squares_merge():
  model = TwoDense()
  rng = np.random.default_rng(3)
  xs = [rng.normal(size=(20, 4)) for _ in range(2)]
  members = [jax.tree.map(lambda a: a.astype(jnp.float64),
                          model.init(jax.random.key(i), jnp.asarray(xs[0]))["params"])
             for i in range(2)]
  apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  grams = [fusion.input_grams(apply, members[i], [{"x": xs[i][:10]}, {"x": xs[i][10:]}])
           for i in range(2)]
  np.testing.assert_allclose(grams[0]["hidden"], xs[0].T @ xs[0], atol=1e-10)
  stacked = ensemble.stack(members)
  merged = fusion.regmean(stacked, ensemble.stack(grams), alpha=1.0)
  # alpha=1: the W minimising sum_m ||X_m W - X_m W_m||^2, by NumPy least squares.
  big_x = np.concatenate(xs)
  targets = np.concatenate([xs[i] @ np.asarray(members[i]["hidden"]["kernel"]) for i in range(2)])
  ref, *_ = np.linalg.lstsq(big_x, targets, rcond=None)
  np.testing.assert_allclose(merged["hidden"]["kernel"], ref, atol=1e-9)
  np.testing.assert_allclose(merged["hidden"]["bias"], np.mean(
      [np.asarray(m["hidden"]["bias"]) for m in members], 0), atol=1e-12)


class TwoConvs(nn.Module):
  @nn.compact
  def __call__(self, x):  # [B, 9, 8, 2] -> conv 3x2, stride (2, 1), padding ((1, 1), (0, 1))
    h = nn.Conv(3, (3, 2), strides=(2, 1), padding=((1, 1), (0, 1)), name="conv")(x)
    return nn.Dense(2, name="out")(h.reshape(h.shape[0], -1))


def _patches_2d(x, kh, kw, stride, pad):
  """NumPy im2col: ``[B * H' * W', kh * kw * C]`` in the HWIO kernel's (kh, kw, C) order."""
  x = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  rows = []
  for b in range(x.shape[0]):
    for i in range(0, x.shape[1] - kh + 1, stride[0]):
      for j in range(0, x.shape[2] - kw + 1, stride[1]):
        rows.append(x[b, i:i + kh, j:j + kw, :].reshape(-1))
  return np.stack(rows)


def _patches_1d(x, k, stride, pad):
  x = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
  return np.stack([x[b, i:i + k, :].reshape(-1) for b in range(x.shape[0])
                   for i in range(0, x.shape[1] - k + 1, stride)])


def test_regmean_merges_convolutions_on_their_unfolded_inputs():
  """nn.Conv (strided, asymmetric padding) and kdjax's Conv1D: the Grams are those of the
  NumPy im2col patches, and alpha=1 RegMean is the least-squares merge over them."""
  from kdjax.models import CNN1D
  rng = np.random.default_rng(8)
  for model, shape, name, unfold in (
      (TwoConvs(), (6, 9, 8, 2), "conv",
       lambda x, p: _patches_2d(x, 3, 2, (2, 1), ((1, 1), (0, 1)))),
      (CNN1D(channels=(4, 3), kernel_sizes=(5, 3), strides=(2, 2)), (6, 40), "conv_1", None)):
    xs = [rng.normal(size=shape) for _ in range(2)]
    members = [jax.tree.map(lambda a: a.astype(jnp.float64),
                            model.init(jax.random.key(i), jnp.asarray(xs[0]))["params"])
               for i in range(2)]
    apply = lambda p, x, model=model: model.apply({"params": p}, x)  # noqa: E731
    grams = [fusion.input_grams(apply, members[i], [{"x": xs[i][:3]}, {"x": xs[i][3:]}])
             for i in range(2)]
    if unfold is None:  # CNN1D's conv_1 sees relu(conv_0(x)): recompute it in NumPy
      def unfold(x, p):
        w, b = (np.asarray(p["conv_0"][k]) for k in ("kernel", "bias"))
        h = _patches_1d(x[..., None], 5, 2, 1) @ w.reshape(-1, w.shape[-1]) + b
        return _patches_1d(np.maximum(h, 0).reshape(x.shape[0], -1, w.shape[-1]), 3, 2, 1)
    patches = []
    for i in range(2):
      patches.append(unfold(xs[i], members[i]))
      np.testing.assert_allclose(grams[i][name], patches[i].T @ patches[i], rtol=1e-9,
                                 atol=1e-9)
    merged = fusion.regmean(ensemble.stack(members), ensemble.stack(grams), alpha=1.0)
    kernels = [np.asarray(m[name]["kernel"]) for m in members]
    flat_k = [k.reshape(-1, k.shape[-1]) for k in kernels]
    ref, *_ = np.linalg.lstsq(np.concatenate(patches), np.concatenate(
        [patches[i] @ flat_k[i] for i in range(2)]), rcond=None)
    np.testing.assert_allclose(merged[name]["kernel"], ref.reshape(kernels[0].shape), atol=1e-8)
    np.testing.assert_allclose(merged[name]["bias"], np.mean(
        [np.asarray(m[name]["bias"]) for m in members], 0), atol=1e-12)


def test_a_base_of_another_architecture_is_refused():
  base, stacked, _ = _members()
  with pytest.raises(ValueError, match="the base must be the members' start"):
    fusion.task_arithmetic({"a": {"kernel": np.zeros((5, 4))}}, stacked)


def test_permutation_align_recovers_a_permuted_mlp():
  """A randomly permuted copy of an MLP aligns back to the original exactly; alignment of
  another MLP keeps its function (logits equal to 1e-6) and raises its similarity."""
  from kdjax.models import MLP
  model = MLP(hidden=(16, 12), num_classes=5)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(8, 10)))
  ref = jax.tree.map(lambda a: a.astype(jnp.float64),
                     model.init(jax.random.key(0), x)["params"])
  rng = np.random.default_rng(5)
  p0, p1 = rng.permutation(16), rng.permutation(12)
  permuted = {"dense_0": {"kernel": ref["dense_0"]["kernel"][:, p0], "bias": ref["dense_0"]["bias"][p0]},
              "dense_1": {"kernel": ref["dense_1"]["kernel"][p0][:, p1], "bias": ref["dense_1"]["bias"][p1]},
              "head": {"kernel": ref["head"]["kernel"][p1], "bias": ref["head"]["bias"]}}
  logits = lambda p: np.asarray(model.apply({"params": p}, x))  # noqa: E731
  np.testing.assert_allclose(logits(permuted), logits(ref), atol=1e-9)
  spec = fusion.permutation_spec(model)
  back = fusion.permutation_align(ref, permuted, spec)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, ref))
  other = jax.tree.map(lambda a: a.astype(jnp.float64),
                       model.init(jax.random.key(1), x)["params"])
  aligned = fusion.permutation_align(ref, other, spec)
  np.testing.assert_allclose(logits(aligned), logits(other), atol=1e-6)
  dot = lambda a, b: sum(float(np.sum(np.asarray(u) * np.asarray(v)))  # noqa: E731
                         for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert dot(ref, aligned) > dot(ref, other)
  with pytest.raises(ValueError, match="no spec for MobileNetV2"):
    from kdjax.models import get_model
    fusion.permutation_spec(get_model("mobilenetv2", num_classes=10))


@pytest.fixture(scope="module")
def mlp_members(tmp_path_factory):
  from kdjax.config import load_config
  from kdjax.training import train_and_evaluate
  root = tmp_path_factory.mktemp("merge_members")
  with jax.enable_x64(False):
    for name, seed, steps in (("base", 0, 40), ("m0", 1, 40), ("m1", 2, 40)):
      overrides = {"seed": seed, "num_steps": steps, "progress_bar": False}
      if name != "base":  # fine-tuned from the base: a few steps more of its run
        import shutil
        shutil.copytree(root / "base", root / name)
        overrides.update(num_steps=80, resume="override")
      train_and_evaluate(load_config("mnist1d/member_mlp.py", "smoke", overrides), str(root / name))
  return root


def test_kdjax_merge_reports_every_method(mlp_members, tmp_path):
  from kdjax.config import load_config
  from kdjax.programs.merge import run_merge
  config = load_config("merge/mlp5_mnist1d.py", "finetuned", {
      "members": f"{mlp_members / 'm0'},{mlp_members / 'm1'}", "base": str(mlp_members / "base"),
      "methods": ("average", "align_average", "task_arithmetic", "ties", "dare", "model_stock",
                  "fisher", "regmean")})
  with jax.enable_x64(False):
    report = run_merge(config, str(tmp_path / "merge"))
  rows = report["rows"]
  assert set(rows) == {"member 0", "member 1", *config.methods}
  assert rows["task_arithmetic"]["hyper"]["scale"] in config.grid.scale  # chosen on val
  for r in rows.values():
    assert 0 <= r["test"]["accuracy"] <= 1 and np.isfinite(r["test"]["nll"])
  assert len(report["path"]["naive"]) == len(report["path"]["aligned"]) == 11
  for f in ("report.md", "report.json", "path.png"):
    assert (tmp_path / "merge" / f).stat().st_size > 0
  config.base = ""
  with pytest.raises(ValueError, match=r"need config.base, the run the members were fine-tuned"):
    run_merge(config, str(tmp_path / "m2"))


def test_kdjax_merge_repairs_batchnorm_members(tmp_path):
  """Two resnet8 members on digits: every method runs, merged models are scored with
  repaired statistics, and without repair data the run is refused in one line."""
  from kdjax.config import load_config
  from kdjax.programs.merge import run_merge
  from kdjax.training import train_and_evaluate
  data = {"name": "digits", "val_size": 100, "kwargs": {"image_shape": (8, 8, 1)}}
  with jax.enable_x64(False):
    for seed in (0, 1):
      train_and_evaluate(load_config("digits/student_resnet8.py", "smoke", {
          "seed": seed, "num_steps": 30, "progress_bar": False, "data.val_size": 100}),
          str(tmp_path / f"m{seed}"))
    config = load_config("merge/mlp5_mnist1d.py", None, {
        "members": f"{tmp_path / 'm0'},{tmp_path / 'm1'}", "repair_examples": 300})
    config.data.update(data)
    report = run_merge(config, str(tmp_path / "merge"))
    assert report["batch_norm_repaired"]
    assert set(report["rows"]) == {"member 0", "member 1", *config.methods}
    for r in report["rows"].values():
      assert 0 <= r["test"]["accuracy"] <= 1 and np.isfinite(r["test"]["nll"])
    assert len(report["path"]["aligned"]) == 11
    assert "re-estimated on 300 training examples" in (tmp_path / "merge" / "report.md").read_text()
    config.repair_examples = 0
    with pytest.raises(ValueError, match="BatchNorm members need training data"):
      run_merge(config, str(tmp_path / "m2"))


def _zoo_model(name):
  from kdjax.models import CNN1D, VGG, WideResNet, get_model
  if name == "cnn1d":
    return CNN1D(channels=(6, 5, 4)), (8, 40)
  if name == "vgg":
    return VGG(widths=((4,), (5,), (6, 6), (7, 7), (8, 8)), num_classes=10, conv_impl="xla"), (
        8, 32, 32, 3)
  if name.startswith("wrn"):
    k = int(name[-1])
    return WideResNet(depth=10, widen_factor=k, num_classes=10, conv_impl="xla"), (
        8, 16, 16, 3)
  return get_model(name, num_classes=10, conv_impl="xla"), (8, 32, 32, 3)


@pytest.mark.parametrize("name", ["resnet8", "cnn1d", "vgg", "wrn1", "wrn2"])
def test_zoo_alignment_of_a_permuted_copy_is_exact_and_keeps_the_function(name):
  """A copy permuted by random permutations of every spec group (residual streams, block
  insides, a flattened head's channels) computes the same logits, and aligns back to the
  original exactly, BatchNorm statistics included."""
  model, shape = _zoo_model(name)
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  with jax.enable_x64(False):
    variables = model.init(jax.random.key(0), x)
    variables = {c: v for c, v in variables.items() if c in ("params", "batch_stats")}
    # Non-trivial statistics and scales, so a wrong permutation of either would show.
    variables = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(a.dtype),
                             variables)
    spec = fusion.permutation_spec(model)
    perms = {n: rng.permutation(size) for n, size in spec.sizes(variables["params"]).items()}
    from kdjax.fusion._rebasin import _apply
    permuted = {"params": _apply(variables["params"], spec, perms)}
    if "batch_stats" in variables:
      variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])
      stats_spec = fusion.PermutationSpec({
          k: spec.axes[k.rpartition("/")[0] + "/scale"] for k in flat(variables["batch_stats"])})
      permuted["batch_stats"] = _apply(variables["batch_stats"], stats_spec, perms)
    logits = lambda v: np.asarray(model.apply(v, x))  # noqa: E731
    assert np.abs(logits(permuted) - logits(variables)).max() < 1e-4
    changed = [k for k, v in flat(permuted["params"]).items()
               if not np.array_equal(v, flat(variables["params"])[k])]
    assert len(changed) >= len(spec.axes) - 2  # every permuted leaf moved (not the head bias)
    back = fusion.permutation_align(variables, permuted, spec)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))


def test_repair_restores_batch_statistics():
  """After repair_batch_norm the running statistics equal the training-mode statistics of
  the data (NumPy)."""
  model, shape = _zoo_model("resnet8")
  x = jnp.asarray(np.random.default_rng(7).normal(size=shape), jnp.float32)
  with jax.enable_x64(False):
    variables = model.init(jax.random.key(0), x)
    repaired = fusion.repair_batch_norm(model, variables, [{"x": x[:4]}, {"x": x[4:]}])
    stem = np.asarray(jax.lax.conv_general_dilated(
        x, variables["params"]["conv1"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))).reshape(-1, 16)
    np.testing.assert_allclose(repaired["batch_stats"]["bn1"]["mean"], stem.mean(0), atol=1e-4)
    np.testing.assert_allclose(repaired["batch_stats"]["bn1"]["var"], stem.var(0), rtol=1e-3)
  with pytest.raises(ValueError, match="no batch_stats"):
    fusion.repair_batch_norm(model, {"params": variables["params"]}, [{"x": x}])


def flat(tree):
  from flax import traverse_util
  return traverse_util.flatten_dict(dict(tree), sep="/")


def traverse(tree, path):
  return flat(tree)[path]
