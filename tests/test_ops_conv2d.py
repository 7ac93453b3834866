"""kdjax.ops.conv2d: the oneDNN convolution (forward and both gradients) against XLA's and a
float64 NumPy reference, its transforms, the model switch, and the fallback without oneDNN.

The oneDNN tests skip where oneDNN cannot be built (the package is optional), except in CI
(``CI`` set), which installs ``kdjax[onednn]`` and must run them."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kdjax import ops
from kdjax.models import get_model
from kdjax.ops import _build, _conv2d, conv2d


@pytest.fixture(scope="module")
def onednn():
  reason = ops.onednn_unavailable_reason()
  if reason is not None:
    if os.environ.get("CI"):
      pytest.fail(f"CI installs kdjax[onednn] but the oneDNN convolution is unavailable: {reason}")
    pytest.skip(f"oneDNN convolution unavailable: {reason}")


def _reference(x, w, r, strides, pads):
  """float64 NumPy: ``y = conv(x, w)`` and the gradients of ``sum(y * r)`` w.r.t. x and w."""
  x, w, r = (np.asarray(a, np.float64) for a in (x, w, r))
  (pt, pb), (pl, pr) = pads
  sh, sw = strides
  kh, kw = w.shape[:2]
  xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  y = np.zeros((x.shape[0], oh, ow, w.shape[3]))
  dxp = np.zeros_like(xp)
  dw = np.zeros_like(w)
  for a in range(kh):
    for b in range(kw):
      patch = xp[:, a:a + sh * (oh - 1) + 1:sh, b:b + sw * (ow - 1) + 1:sw, :]  # [N, OH, OW, C]
      y += np.einsum("nijc,co->nijo", patch, w[a, b])
      dw[a, b] = np.einsum("nijc,nijo->co", patch, r)
      dxp[:, a:a + sh * (oh - 1) + 1:sh, b:b + sw * (ow - 1) + 1:sw, :] += np.einsum(
          "nijo,co->nijc", r, w[a, b])
  dx = dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2], :]
  return y, dx, dw


# The CIFAR ResNets' convolutions (3x3 stride 1 and 2, the 1x1 stride-2 shortcut), SAME with
# its asymmetric padding at stride 2, VALID, and odd sizes.
CASES = [
    # (N, H, W, C, KH, KW, O, strides, padding)
    (2, 8, 8, 3, 3, 3, 4, (1, 1), ((1, 1), (1, 1))),
    (2, 8, 8, 4, 3, 3, 6, (2, 2), ((1, 1), (1, 1))),
    (2, 8, 8, 4, 1, 1, 6, (2, 2), ((0, 0), (0, 0))),
    (3, 7, 9, 5, 3, 3, 4, (2, 1), "SAME"),
    (2, 6, 6, 3, 3, 3, 2, (1, 1), "VALID"),
    (1, 5, 5, 2, 3, 3, 3, (2, 2), 2),
]


def _inputs(case, seed=0):
  n, h, w_, c, kh, kw, o, strides, padding = case
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, h, w_, c)).astype(np.float32)
  w = rng.normal(size=(kh, kw, c, o)).astype(np.float32)
  return x, w, strides, padding


def _loss_grads(impl, strides, padding, r):
  def loss(x, w):
    return jnp.sum(conv2d(x, w, strides, padding, impl=impl) * r)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_matches_float64_reference_and_xla(onednn, case):
  x, w, strides, padding = _inputs(case)
  pads = _conv2d._pads(x.shape, w.shape, strides, padding)
  y = jax.jit(lambda x, w: conv2d(x, w, strides, padding, impl="onednn"))(x, w)
  r = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
  y_ref, dx_ref, dw_ref = _reference(x, w, r, strides, pads)
  step = _loss_grads("onednn", strides, padding, r)
  for _ in range(3):  # repeated calls reuse the cached primitives: each must be right
    _, (dx, dw) = step(x, w)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  _, (dx_xla, dw_xla) = _loss_grads("xla", strides, padding, r)(x, w)
  y_xla = lax.conv_general_dilated(x, w, strides, pads,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, y_xla, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, dx_xla, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, dw_xla, rtol=1e-5, atol=1e-4)


def test_resnet_shapes_against_xla(onednn):
  """The three convolution shapes of resnet20's second stage at CIFAR size (batch 4)."""
  rng = np.random.default_rng(2)
  for shape_x, shape_w, stride in [((4, 32, 32, 16), (3, 3, 16, 32), 2),
                                   ((4, 16, 16, 32), (3, 3, 32, 32), 1),
                                   ((4, 32, 32, 16), (1, 1, 16, 32), 2)]:
    x = rng.normal(size=shape_x).astype(np.float32)
    w = (rng.normal(size=shape_w) / np.sqrt(np.prod(shape_w[:3]))).astype(np.float32)
    pad = ((shape_w[0] // 2,) * 2,) * 2
    y = conv2d(x, w, (stride, stride), pad, impl="onednn")
    r = rng.normal(size=y.shape).astype(np.float32)
    step = _loss_grads("onednn", (stride, stride), pad, r)
    want = _loss_grads("xla", (stride, stride), pad, r)(x, w)
    for _ in range(2):
      for g, e in zip(jax.tree.leaves(step(x, w)), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)


def test_vmap_and_scan(onednn):
  x, w, strides, padding = _inputs(CASES[1])
  xs = np.stack([x, 2 * x, -x])
  f = lambda x: conv2d(x, w, strides, padding, impl="onednn")  # noqa: E731
  g = lambda x: lax.conv_general_dilated(x, w, strides, ((1, 1), (1, 1)),  # noqa: E731
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(jax.jit(jax.vmap(f))(xs), jax.vmap(g)(xs), rtol=1e-5, atol=1e-5)
  gv = jax.grad(lambda w: jnp.sum(jax.vmap(
      lambda x: conv2d(x, w, strides, padding, impl="onednn"))(xs) ** 2))(w)
  gx = jax.grad(lambda w: jnp.sum(jax.vmap(
      lambda x: conv2d(x, w, strides, padding, impl="xla"))(xs) ** 2))(w)
  np.testing.assert_allclose(gv, gx, rtol=1e-4, atol=1e-3)

  def body(carry, x):
    return carry + jnp.sum(conv2d(x, w, strides, padding, impl="onednn")), None
  total, _ = jax.jit(lambda xs: lax.scan(body, 0.0, xs))(xs)
  np.testing.assert_allclose(total, np.sum(jax.vmap(g)(xs)), rtol=1e-4)


def test_empty_batch_gives_zero_kernel_gradient(onednn):
  x, w, strides, padding = _inputs(CASES[1])
  x = x[:0]
  y = conv2d(x, w, strides, padding, impl="onednn")
  assert y.shape == (0, 4, 4, 6)
  dw = jax.grad(lambda w: jnp.sum(conv2d(x, w, strides, padding, impl="onednn")))(w)
  np.testing.assert_array_equal(dw, np.zeros_like(w))


def test_batch_sharded_over_devices(onednn):
  """On a data mesh over the 8 test devices the (gathered) FFI call gives XLA's values."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  x, w, strides, padding = _inputs((16, 6, 6, 3, 3, 3, 4, (1, 1), "SAME"))
  x = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  got, want = (_loss_grads(impl, strides, padding, 1.0)(x, w) for impl in ("onednn", "xla"))
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-4)


def test_resnet20_forward_and_grad_equal_across_impls(onednn):
  """resnet20 (train mode, BatchNorm batch statistics): logits, BatchNorm updates and every
  parameter gradient agree between ``conv_impl="onednn"`` and ``"xla"``."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 3)), jnp.float32)
  labels = jnp.array([0, 3])
  results = {}
  for impl in ("xla", "onednn"):
    model = get_model("resnet20", num_classes=10, conv_impl=impl)
    variables = model.init(jax.random.key(0), x)

    def loss(params, model=model, variables=variables):
      logits, state = model.apply({**variables, "params": params}, x, train=True,
                                  mutable=["batch_stats"])
      nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
      return nll, (logits, state)

    (value, (logits, state)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"])
    results[impl] = (value, logits, state, grads)
  for got, want in zip(jax.tree.leaves(results["onednn"]), jax.tree.leaves(results["xla"])):
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name", ["wrn_16_2", "vgg8", "resnet18", "resnet8x4"])
def test_conv_impl_reaches_every_zoo_convolution(onednn, name):
  """Traced only (no compile): with ``conv_impl="onednn"`` every convolution of the model is
  the oneDNN FFI call, as many as XLA convolutions with ``"xla"``."""
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  counts = {}
  for impl in ("xla", "onednn"):
    model = get_model(name, num_classes=10, conv_impl=impl)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    text = str(jax.make_jaxpr(model.apply)(variables, x))
    counts[impl] = (text.count("kdjax_conv2d_fwd"), text.count("conv_general_dilated["))
  assert counts["xla"][0] == 0 and counts["xla"][1] > 0
  assert counts["onednn"] == (counts["xla"][1], 0)


@pytest.fixture
def fresh_auto():
  """``resolve_auto_impl`` decided anew in the test, and again (for this process) after it."""
  _conv2d.resolve_auto_impl.cache_clear()
  yield
  _conv2d.resolve_auto_impl.cache_clear()


def test_choose_auto_impl_both_ways():
  calls = []

  def reason(value):
    return lambda: calls.append(value) or value

  assert ops.choose_auto_impl("cpu", 1, reason(None))[0] == "onednn"
  impl, why = ops.choose_auto_impl("cpu", 1, reason("oneDNN >= 3 not found (looked ...)\nmore"))
  assert (impl, why) == ("xla", "oneDNN convolution unavailable: oneDNN >= 3 not found (looked ...)")
  assert ops.choose_auto_impl("cpu", 8, reason(None)) == (
      "xla", "8 devices: the FFI call is not partitioned (XLA would gather a sharded batch onto "
      "every device)")
  assert ops.choose_auto_impl("gpu", 1, reason(None))[0] == "xla"
  assert calls == [None, "oneDNN >= 3 not found (looked ...)\nmore"]  # never built off one CPU


def test_auto_is_plain_xla_on_several_devices(fresh_auto, caplog):
  """The test process has 8 CPU devices: the zoo's default ``"auto"`` is XLA's convolution
  itself (the same jaxpr as ``"xla"``), decided once and logged once."""
  caplog.set_level("INFO")
  assert ops.conv_general_dilated("auto") is lax.conv_general_dilated
  x = jnp.zeros((2, 8, 8, 3), jnp.float32)
  texts = {}
  for impl in ("auto", "xla", None):
    model = get_model("resnet8", num_classes=10, **({} if impl is None else {"conv_impl": impl}))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    texts[impl] = str(jax.make_jaxpr(model.apply)(variables, x))
  assert texts["auto"] == texts["xla"] == texts[None]
  assert "kdjax_conv2d_fwd" not in texts["auto"]
  logged = [r.getMessage() for r in caplog.records if "conv_impl='auto'" in r.getMessage()]
  assert logged == ["kdjax.ops: conv_impl='auto' runs xla convolutions (8 devices: the FFI call "
                    "is not partitioned (XLA would gather a sharded batch onto every device))"]


def test_auto_on_one_cpu_device_is_onednn_and_equals_xla(onednn, fresh_auto, monkeypatch):
  """With one device (as a plain CPU process has), the default ``"auto"`` runs every dense
  convolution through oneDNN and the logits equal ``"xla"``'s to float32 rounding
  (gradients: ``test_resnet20_forward_and_grad_equal_across_impls``); bfloat16 inputs fall
  back to XLA instead of raising."""
  monkeypatch.setattr(_conv2d.jax, "device_count", lambda: 1)
  assert ops.resolve_auto_impl() == "onednn"
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 8, 8, 3)), jnp.float32)
  plain, default = get_model("resnet8", num_classes=10, conv_impl="xla"), get_model(
      "resnet8", num_classes=10)
  # Random variables of the right shapes (jitting ``init`` would compile for 14 CPU-seconds).
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(plain.init, jax.random.key(0), x)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, leaf: (rng.uniform(0.5, 1.5, leaf.shape) if "var" in jax.tree_util.keystr(path)
                          else rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]) or 1)
                          ).astype(np.float32), shapes)
  text = str(jax.make_jaxpr(default.apply)(variables, x))
  # resnet8: stem + 3 blocks x 2 + 2 strided shortcuts = 9 convolutions, all oneDNN
  assert text.count("kdjax_conv2d_fwd") == 9 and "conv_general_dilated[" not in text
  np.testing.assert_allclose(jax.jit(default.apply)(variables, x),
                             jax.jit(plain.apply)(variables, x), rtol=1e-4, atol=1e-5)
  w = jnp.ones((3, 3, 3, 4), jnp.bfloat16)
  want = lax.conv_general_dilated(x.astype(jnp.bfloat16), w, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got_bf16 = ops.conv_general_dilated("auto")(x.astype(jnp.bfloat16), w, (1, 1), ((1, 1), (1, 1)),
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_array_equal(np.asarray(got_bf16, np.float32), np.asarray(want, np.float32))


def test_auto_uses_xla_where_onednn_does_not_fit(monkeypatch):
  x, w, strides, padding = _inputs(CASES[0])
  pads = _conv2d._pads(x.shape, w.shape, strides, padding)
  want = lax.conv_general_dilated(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), strides, pads,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), strides, padding, impl="auto")
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  monkeypatch.setattr(_conv2d, "resolve_auto_impl", lambda: "xla")
  want32 = lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_array_equal(conv2d(x, w, strides, padding, impl="auto"), want32)


def test_grouped_convolution_in_models_falls_back_to_xla():
  conv = ops.conv_general_dilated("onednn")
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
  w = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
  args = ((1, 1), ((1, 1), (1, 1)))
  kwargs = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
  np.testing.assert_array_equal(conv(x, w, *args, **kwargs),
                                lax.conv_general_dilated(x, w, *args, **kwargs))


def test_bad_inputs_name_the_problem():
  x, w, strides, padding = _inputs(CASES[0])
  with pytest.raises(ValueError, match="unknown impl 'mkl'"):
    conv2d(x, w, strides, padding, impl="mkl")
  with pytest.raises(ValueError, match=r"x has 3 channels but w expects 5"):
    conv2d(x, np.zeros((3, 3, 5, 2), np.float32), strides, padding, impl="xla")
  with pytest.raises(ValueError, match=r"x must be \[N, H, W, C\]"):
    conv2d(x[0], w, strides, padding, impl="xla")
  with pytest.raises(ValueError, match="padding must be"):
    conv2d(x, w, strides, "FULL", impl="xla")
  with pytest.raises(TypeError, match="needs float32"):
    conv2d(x.astype(jnp.bfloat16), w, strides, padding, impl="onednn")
  with pytest.raises(ValueError, match="conv_impl: unknown 'fast'"):
    get_model("resnet8", num_classes=10, conv_impl="fast").init(jax.random.key(0), x[:, :, :, :3])


def test_missing_onednn_gives_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setattr(_build, "_candidate_roots", lambda: [tmp_path])
  with pytest.raises(_build.OnednnUnavailableError, match="oneDNN >= 3 not found"):
    _build.build()
  monkeypatch.delenv("CXX", raising=False)
  monkeypatch.setattr(_build.shutil, "which", lambda name: None)
  with pytest.raises(_build.OnednnUnavailableError, match="no C\\+\\+ compiler"):
    _build.build()


def test_build_entry_point(onednn, capsys):
  from kdjax.ops import build
  assert build.main([]) == 0
  assert capsys.readouterr().out.strip().endswith("libkdjax_conv2d.so")


def test_ensemble_of_onednn_conv_members_equals_their_loop(onednn):
  """``kdjax.ensemble.apply`` over conv members (the oneDNN convolution once per member inside
  one compiled ``lax.map``, or ``vmap``, whose FFI call loops over members) gives exactly a
  Python loop of jitted member calls."""
  import flax.linen as nn

  from kdjax import ensemble
  from kdjax.models._layers import conv

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(conv(4, 3, padding=1, impl="onednn")(x))
      x = conv(6, 3, stride=2, padding=1, bias=True, impl="onednn")(x)
      return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))

  model = Tiny()
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 8, 8, 3)), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  rng = np.random.default_rng(7)
  members = [jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
             for _ in range(3)]
  member = jax.jit(ensemble.linen_apply_fn(model))
  loop = np.stack([member(p, x) for p in members])
  stacked = ensemble.stack(members)
  for strategy in ("map", "vmap"):
    got = ensemble.apply(model, stacked, x, strategy=strategy)
    np.testing.assert_array_equal(got, loop, err_msg=strategy)
