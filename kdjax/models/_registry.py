"""Model registry (a literal dict) and helpers to read named features."""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from kdjax.models._adapters import flat_features
from kdjax.models._cnn1d import CNN1D
from kdjax.models._decoder import Decoder
from kdjax.models._mlp import MLP
from kdjax.models._mobilenetv2 import MobileNetV2
from kdjax.models._resnet_cifar import CifarResNet
from kdjax.models._resnet_imagenet import ImageNetResNet
from kdjax.models._shufflenetv1 import ShuffleNetV1
from kdjax.models._shufflenetv2 import ShuffleNetV2
from kdjax.models._transformer import Transformer
from kdjax.models._vgg import VGG, VGG_CONFIGS
from kdjax.models._wrn import WideResNet

_p = functools.partial
_CIFAR_X4 = (32, 64, 128, 256)

# A model class, or a partial of one whose preset fields are the architecture (a zoo name).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn1d": CNN1D,
    # CIFAR (RepDistiller / mdistiller).
    "resnet8": _p(CifarResNet, depth=8),
    "resnet14": _p(CifarResNet, depth=14),
    "resnet20": _p(CifarResNet, depth=20),
    "resnet32": _p(CifarResNet, depth=32),
    "resnet44": _p(CifarResNet, depth=44),
    "resnet56": _p(CifarResNet, depth=56),
    "resnet110": _p(CifarResNet, depth=110),
    "resnet8x4": _p(CifarResNet, depth=8, widths=_CIFAR_X4),
    "resnet32x4": _p(CifarResNet, depth=32, widths=_CIFAR_X4),
    "wrn_16_2": _p(WideResNet, depth=16, widen_factor=2),
    "wrn_40_1": _p(WideResNet, depth=40, widen_factor=1),
    "wrn_40_2": _p(WideResNet, depth=40, widen_factor=2),
    "vgg8": _p(VGG, widths=VGG_CONFIGS["vgg8"]),
    "vgg13": _p(VGG, widths=VGG_CONFIGS["vgg13"]),
    "mobilenetv2": _p(MobileNetV2, expansion=6, width_mult=0.5),
    "shufflenetv1": ShuffleNetV1,
    "shufflenetv2": ShuffleNetV2,
    # ImageNet (torchvision).
    "resnet18": _p(ImageNetResNet, stage_sizes=(2, 2, 2, 2), bottleneck=False),
    "resnet34": _p(ImageNetResNet, stage_sizes=(3, 4, 6, 3), bottleneck=False),
    "resnet50": _p(ImageNetResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True),
    "transformer": Transformer,
    "decoder": Decoder,  # Llama 3 / Qwen 2-3 / Gemma 2-3 layouts (kdjax.convert.from_hf)
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds the model registered as ``name`` with ``kwargs`` as its fields.

  The fields a zoo name presets (e.g. ``depth`` of ``"resnet20"``) are not keywords.

  Raises:
    ValueError: if ``name`` is unknown (the message lists the known names) or a
      keyword is not a free field of that model.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {sorted(MODELS)}")
  cls = MODELS[name]
  preset = set(getattr(cls, "keywords", {}))
  fields = set(getattr(cls, "func", cls).__dataclass_fields__) - {"parent", "name"} - preset
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f"Model {name!r} has no field(s) {sorted(unknown)}; its fields: {sorted(fields)}")
  return cls(**kwargs)


def apply_with_features(model: nn.Module, params: Any, x: jax.Array,
                        **kwargs: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Runs ``model`` and returns ``(logits, features)``.

  ``features`` maps each name the model sows into ``"intermediates"`` to its array,
  under its path from the top module (``"penultimate"``, ``"block_2"``; a name sown
  inside submodule ``stage_1`` is ``"stage_1/name"``). ``params`` may also be full
  variables ``{"params": ..., "batch_stats": ...}`` (run as in evaluation).
  """
  variables = params if isinstance(params, dict) and "params" in params else {"params": params}
  logits, state = model.apply(variables, x, mutable=["intermediates"], **kwargs)
  return logits, flat_features(state.get("intermediates", {}))


def count_params(params: Any) -> int:
  """Number of scalar parameters in a pytree."""
  return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
