"""Model zoo: parameter counts against the PyTorch references (and the published sizes),
feature names and shapes, BatchNorm train/eval behaviour, channel shuffle."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch_models

from kdjax import models
from kdjax.models._layers import channel_shuffle

IMAGENET = ("resnet18", "resnet34", "resnet50")

# Sizes quoted by RepDistiller / mdistiller (CIFAR-100) and torchvision (ImageNet).
PUBLISHED = {"resnet8x4": 1.23e6, "resnet32x4": 7.43e6, "resnet20": 0.28e6, "resnet56": 0.86e6,
             "wrn_40_2": 2.26e6, "wrn_16_2": 0.70e6, "resnet18": 11.69e6, "resnet50": 25.56e6}

_CIFAR_RESNET = ((32, 32, 16), [(32, 32, 16), (16, 16, 32), (8, 8, 64)], 64)
_CIFAR_RESNET_X4 = ((32, 32, 32), [(32, 32, 64), (16, 16, 128), (8, 8, 256)], 256)
_WRN_2 = ((32, 32, 16), [(32, 32, 32), (16, 16, 64), (8, 8, 128)], 128)
_VGG = ((32, 32, 64), [(16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512)], 512)
_RESNET_BASIC = ((32, 32, 64), [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)], 512)
# name -> (stem [H, W, C], stage [H, W, C] list, penultimate width); 32x32 CIFAR, 64x64 ImageNet.
FEATURE_SHAPES = {
    **{f"resnet{d}": _CIFAR_RESNET for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _CIFAR_RESNET_X4, "resnet32x4": _CIFAR_RESNET_X4,
    "wrn_16_2": _WRN_2, "wrn_40_2": _WRN_2,
    "wrn_40_1": ((32, 32, 16), [(32, 32, 16), (16, 16, 32), (8, 8, 64)], 64),
    "vgg8": _VGG, "vgg13": _VGG,
    "mobilenetv2": ((16, 16, 16), [(16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160)], 1280),
    "shufflenetv1": ((32, 32, 24), [(16, 16, 240), (8, 8, 480), (4, 4, 960)], 960),
    "shufflenetv2": ((32, 32, 24), [(16, 16, 116), (8, 8, 232), (4, 4, 464)], 1024),
    "resnet18": _RESNET_BASIC, "resnet34": _RESNET_BASIC,
    "resnet50": ((32, 32, 64), [(16, 16, 256), (8, 8, 512), (4, 4, 1024), (2, 2, 2048)], 2048),
}
ZOO = tuple(FEATURE_SHAPES)


def test_zoo_is_registered_and_has_references():
  assert set(ZOO) <= set(models.MODELS)
  assert set(ZOO) == set(torch_models.NAMES)


@pytest.mark.parametrize("name", ZOO)
def test_param_count_and_features(name):
  """One abstract init (no compute) gives params, batch stats and the sown features."""
  num_classes, size = (1000, 64) if name in IMAGENET else (100, 32)
  model = models.get_model(name, num_classes=num_classes)
  variables = jax.eval_shape(functools.partial(model.init, mutable=True), jax.random.key(0),
                             jnp.zeros((2, size, size, 3)))
  ours = models.count_params(variables["params"])

  reference = torch_models.build(name, num_classes)
  expected = sum(p.numel() for p in reference.parameters())
  assert abs(ours - expected) <= 0.01 * expected, (ours, expected)
  buffers = sum(b.numel() for n, b in reference.named_buffers() if not n.endswith("num_batches_tracked"))
  assert models.count_params(variables["batch_stats"]) == buffers
  if name in PUBLISHED:
    assert abs(ours - PUBLISHED[name]) <= 0.01 * PUBLISHED[name], (ours, PUBLISHED[name])

  stem, stages, width = FEATURE_SHAPES[name]
  expected_shapes = {"stem": (2, *stem), "penultimate": (2, width), "logits": (2, num_classes)}
  for k, shape in enumerate(stages, start=1):
    expected_shapes[f"stage{k}"] = expected_shapes[f"stage{k}_preact"] = (2, *shape)
  if name in IMAGENET:
    expected_shapes["stem_preact"] = (2, *stem)
  got = {k: v[-1].shape for k, v in variables["intermediates"].items()}
  assert got == expected_shapes


def test_zoo_names_fix_their_architecture_fields():
  assert models.get_model("resnet20", num_classes=10).depth == 20
  with pytest.raises(ValueError, match=r"'resnet20' has no field\(s\) \['depth'\]"):
    models.get_model("resnet20", depth=56)
  with pytest.raises(ValueError, match=r"'vgg8' has no field\(s\) \['width'\]"):
    models.get_model("vgg8", width=3)


def _conv3x3_float64(x, kernel):
  """float64 NumPy 3x3 convolution, stride 1, zero padding 1, NHWC/HWIO."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1] - 2, x.shape[2] - 2
  kernel = np.asarray(kernel, np.float64)
  return sum(np.einsum("bhwc,co->bhwo", x[:, i:i + h, j:j + w], kernel[i, j])
             for i in range(3) for j in range(3))


def test_batchnorm_train_updates_statistics_like_pytorch_and_eval_does_not():
  model = models.get_model("resnet8", num_classes=10)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
  # An "rbg" key: threefry's init programs take XLA:CPU seconds to compile per shape.
  variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))

  # Train mode: batch statistics, and running averages updated with PyTorch's momentum 0.1.
  logits, updates = apply(variables, x, train=True, mutable=("batch_stats",))
  pre_bn = _conv3x3_float64(x, variables["params"]["conv1"]["kernel"])
  stats = updates["batch_stats"]["bn1"]
  np.testing.assert_allclose(stats["mean"], 0.1 * pre_bn.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * pre_bn.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  # ... so an example's output depends on the rest of its batch.
  other = np.concatenate([x[:2], rng.normal(size=(2, 8, 8, 3)).astype(np.float32)])
  mixed = apply(variables, other, train=True, mutable=("batch_stats",))[0]
  assert np.abs(np.asarray(mixed[:2]) - np.asarray(logits[:2])).max() > 1e-3

  # Eval mode: running averages, nothing to update, examples independent of each other.
  eval_logits = apply(variables, x)
  np.testing.assert_allclose(apply(variables, other)[:2], eval_logits[:2], rtol=1e-5, atol=1e-6)
  with pytest.raises(flax.errors.ModifyScopeVariableError, match="batch_stats"):
    model.apply(variables, x, train=True)  # train mode must be allowed to update statistics
  # Evaluating with the updated running averages changes the outputs.
  after = apply({**variables, "batch_stats": updates["batch_stats"]}, x)
  assert np.abs(np.asarray(after) - np.asarray(eval_logits)).max() > 1e-3


def test_channel_shuffle_matches_pytorch_definition():
  x = np.arange(2 * 3 * 3 * 12, dtype=np.float32).reshape(2, 3, 3, 12)
  nchw = x.transpose(0, 3, 1, 2)
  n, c, h, w = nchw.shape
  expected = nchw.reshape(n, 3, c // 3, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
  np.testing.assert_array_equal(channel_shuffle(x, 3), expected.transpose(0, 2, 3, 1))
  with pytest.raises(ValueError, match="12 channels are not divisible by groups=5"):
    channel_shuffle(x, 5)
