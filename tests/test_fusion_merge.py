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
  with pytest.raises(ValueError, match="no spec for CNN1D"):
    from kdjax.models import CNN1D
    fusion.permutation_spec(CNN1D())


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


def test_resnet_alignment_keeps_the_function_and_repair_restores_batch_statistics():
  """resnet8 with BatchNorm: a copy permuted by random stream and block permutations
  aligns back exactly (statistics included); after repair_batch_norm the running
  statistics equal the training-mode statistics of the data (NumPy)."""
  from kdjax.models import get_model
  model = get_model("resnet8", num_classes=10, conv_impl="xla")
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32)
  with jax.enable_x64(False):
    variables = model.init(jax.random.key(0), x)
    # Non-trivial statistics and scales, so a wrong permutation of either would show.
    variables = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(a.dtype),
                             variables)
    variables = {**variables, "batch_stats": jax.tree.map(jnp.abs, variables["batch_stats"])}
    spec = fusion.permutation_spec(model)
    perms = {name: rng.permutation(n) for name, n in (
        (name, np.shape(traverse(variables["params"], path))[axis])
        for name, [(path, axis), *_] in spec.perms.items())}
    from kdjax.fusion._rebasin import _apply
    stats_spec = fusion.PermutationSpec({
        k: spec.axes[k.rpartition("/")[0] + "/scale"]
        for k in flat(variables["batch_stats"])})
    permuted = {"params": _apply(variables["params"], spec, perms),
                "batch_stats": _apply(variables["batch_stats"], stats_spec, perms)}
    logits = lambda v: np.asarray(model.apply(v, x))  # noqa: E731
    np.testing.assert_allclose(logits(permuted), logits(variables), atol=1e-4)
    back = fusion.permutation_align(variables, permuted, spec)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))
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
