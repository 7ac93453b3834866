"""PyTorch -> Flax conversion: for every zoo architecture, the PyTorch reference (random
weights, random BatchNorm statistics and affine) and the converted Flax model give the same
logits and stage features in eval mode; bad state_dicts get one-line errors; .pth loading."""

import functools

import jax
import numpy as np
import pytest
import torch
import torch_models

from kdjax import convert, models

IMAGENET = ("resnet18", "resnet34", "resnet50")
NUM_CLASSES = 10
TOL = 1e-4


def randomize_batchnorm(module, seed):
  """Random affine and running statistics in every BatchNorm, so a swapped or dropped
  statistic changes the outputs."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
  return module


@functools.cache
def reference(name):
  torch.manual_seed(0)
  return randomize_batchnorm(torch_models.build(name, NUM_CLASSES), seed=1).eval()


def assert_close(ours, ref, what):
  """|ours - ref| <= TOL * max(1, max |ref|) elementwise: absolute for O(1) values, relative
  to the tensor's scale for large ones (deep nets' residual streams grow)."""
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
  scale = max(1.0, float(np.abs(ref).max()))
  err = float(np.abs(ours - ref).max())
  assert err <= TOL * scale, f"{what}: max abs diff {err:.3g} > {TOL} * {scale:.3g}"
  return err


@pytest.mark.parametrize("name", torch_models.NAMES)
def test_converted_model_matches_pytorch(name):
  size = 64 if name in IMAGENET else 32
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  torch_model = reference(name)
  with torch.no_grad():
    ref_logits, ref_features = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))

  variables = convert.torch_state_dict(name, torch_model.state_dict(), num_classes=NUM_CLASSES)
  model = models.get_model(name, num_classes=NUM_CLASSES)
  logits, state = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(variables, x)

  err = assert_close(logits, ref_logits.numpy(), f"{name} logits")
  print(f"{name}: max abs logit difference {err:.2e}")
  features = {k: v[-1] for k, v in state["intermediates"].items()}
  assert set(ref_features) | {"logits"} == set(features)
  for key, value in ref_features.items():
    value = value.numpy()
    assert_close(features[key], value.transpose(0, 2, 3, 1) if value.ndim == 4 else value,
                 f"{name} feature {key}")


def small_state_dict():
  return reference("resnet8").state_dict()


def test_numpy_arrays_and_data_parallel_prefix_accepted():
  state_dict = {f"module.{k}": v.numpy() for k, v in small_state_dict().items()}
  variables = convert.torch_state_dict("resnet8", state_dict, num_classes=NUM_CLASSES)
  np.testing.assert_array_equal(variables["params"]["layer2_0"]["conv1"]["kernel"],
                                state_dict["module.layer2.0.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["layer2_0"]["downsample_bn"]["var"],
                                state_dict["module.layer2.0.downsample.1.running_var"])
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state_dict["module.fc.weight"].T)


def test_missing_key_is_named():
  state_dict = dict(small_state_dict())
  del state_dict["layer3.0.bn2.running_var"]
  with pytest.raises(ValueError, match=r"^state_dict does not fit 'resnet8' \(num_classes=10\): "
                     r"no PyTorch key for Flax variables \[batch_stats/layer3_0/bn2/var\]$"):
    convert.torch_state_dict("resnet8", state_dict, num_classes=NUM_CLASSES)


def test_unexpected_key_is_named():
  state_dict = {**small_state_dict(), "head.weight": np.zeros((3, 3), np.float32)}
  with pytest.raises(ValueError, match=r"unexpected PyTorch keys \[head.weight\]$"):
    convert.torch_state_dict("resnet8", state_dict, num_classes=NUM_CLASSES)


def test_shape_mismatch_is_named():
  with pytest.raises(ValueError, match=r"shape mismatches \(converted vs expected\) "
                     r"\[fc.weight -> params/fc/kernel: \(64, 10\) vs \(64, 100\), "
                     r"fc.bias -> params/fc/bias: \(10,\) vs \(100,\)\]"):
    convert.torch_state_dict("resnet8", small_state_dict(), num_classes=100)


def test_wrong_architecture_is_refused():
  with pytest.raises(ValueError, match="unexpected PyTorch keys.*no PyTorch key for Flax variables"):
    convert.torch_state_dict("wrn_16_2", small_state_dict(), num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match=r"model 'mlp' has no PyTorch layout; convertible: \[.*'resnet8'"):
    convert.torch_state_dict("mlp", small_state_dict(), num_classes=NUM_CLASSES)


def test_load_pth_plain_and_wrapped(tmp_path):
  state_dict = small_state_dict()
  torch.save(state_dict, tmp_path / "plain.pth")
  torch.save({"model": state_dict, "epoch": 240, "best_acc": 0.7}, tmp_path / "wrapped.pth")
  for path in ("plain.pth", "wrapped.pth"):
    loaded = convert.load_pth(str(tmp_path / path))
    assert set(loaded) == set(state_dict)
    for k, v in state_dict.items():
      np.testing.assert_array_equal(loaded[k], v.numpy())
  assert set(convert.load_pth(str(tmp_path / "wrapped.pth"), key="model")) == set(state_dict)
  with pytest.raises(ValueError, match="has no entry 'net'"):
    convert.load_pth(str(tmp_path / "wrapped.pth"), key="net")
  torch.save({"epoch": 3}, tmp_path / "empty.pth")
  with pytest.raises(ValueError, match="no 'state_dict', 'model' or 'net' entry"):
    convert.load_pth(str(tmp_path / "empty.pth"))
