"""Flax linen models with named intermediate features, and their registry: MNIST-1D's MLP
and CNN1D, the decoder-only LM of Hugging Face checkpoints (Llama 3, Qwen 2/3, Gemma 2/3),
and the CNN zoo of the distillation benchmarks (CIFAR ResNets, WRNs, VGGs,
MobileNetV2, ShuffleNetV1/V2 after RepDistiller; ImageNet ResNets after torchvision)."""

from kdjax.models._cnn1d import CNN1D as CNN1D
from kdjax.models._cnn1d import Conv1D as Conv1D
from kdjax.models._cnn1d import conv1d_im2col as conv1d_im2col
from kdjax.models._decoder import Decoder as Decoder
from kdjax.models._decoder import decoder_sharding_rules as decoder_sharding_rules
from kdjax.models._sampler import Samples as Samples
from kdjax.models._sampler import filter_logits as filter_logits
from kdjax.models._sampler import sample as sample
from kdjax.models._mlp import MLP as MLP
from kdjax.models._mobilenetv2 import MobileNetV2 as MobileNetV2
from kdjax.models._resnet_cifar import CifarResNet as CifarResNet
from kdjax.models._resnet_imagenet import ImageNetResNet as ImageNetResNet
from kdjax.models._shufflenetv1 import ShuffleNetV1 as ShuffleNetV1
from kdjax.models._shufflenetv2 import ShuffleNetV2 as ShuffleNetV2
from kdjax.models._vgg import VGG as VGG
from kdjax.models._wrn import WideResNet as WideResNet
from kdjax.models._registry import MODELS as MODELS
from kdjax.models._registry import apply_with_features as apply_with_features
from kdjax.models._registry import count_params as count_params
from kdjax.models._registry import get_model as get_model
from kdjax.models._adapters import FunctionModel as FunctionModel
from kdjax.models._adapters import LinenModel as LinenModel
from kdjax.models._adapters import Model as Model
from kdjax.models._adapters import ModelOutput as ModelOutput
from kdjax.models._adapters import NNXModel as NNXModel
from kdjax.models._adapters import PretrainedModel as PretrainedModel
from kdjax.models._adapters import output_head as output_head
from kdjax.models._adapters import as_model as as_model
from kdjax.models._adapters import eval_apply as eval_apply
from kdjax.models._adapters import eval_logits as eval_logits
from kdjax.models._adapters import flat_features as flat_features
from kdjax.models._adapters import split_variables as split_variables
from kdjax.models._transformer import Transformer as Transformer
