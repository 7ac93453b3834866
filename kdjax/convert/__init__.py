"""Convert PyTorch teachers into kdjax zoo variables (PyTorch is optional: ``kdjax[torch]``)."""

from kdjax.convert._mapping import convert_state_dict as convert_state_dict
from kdjax.convert._rules import RULES as RULES
from kdjax.convert._torch import load_pth as load_pth
from kdjax.convert._torch import torch_state_dict as torch_state_dict
