"""Convert PyTorch teachers into kdjax zoo variables (PyTorch is optional: ``kdjax[torch]``),
and Hugging Face causal LMs in and out (:func:`from_hf`, :func:`to_hf`; safetensors, no PyTorch)."""

from kdjax.convert._mapping import convert_state_dict as convert_state_dict
from kdjax.convert._rules import RULES as RULES
from kdjax.convert._torch import load_pth as load_pth
from kdjax.convert._torch import torch_state_dict as torch_state_dict
from kdjax.convert._hf import HFFormatError as HFFormatError
from kdjax.convert._hf import decoder_fields as decoder_fields
from kdjax.convert._hf import from_hf as from_hf
from kdjax.convert._hf import hf_config as hf_config
from kdjax.convert._hf import read_config as read_config
from kdjax.convert._hf import to_hf as to_hf
