"""Optional native kernels for XLA:CPU, called through XLA's FFI (``jax.ffi``).

Why this package exists: on the CPU, XLA's own 2-D convolutions are what keeps a CIFAR ResNet
distillation step behind PyTorch's (im2col, shifted matmuls and XLA's oneDNN/XNNPACK flags
did not close the gap; README "Faster CPU convolutions"). :func:`conv2d` runs the forward and both backward convolutions as oneDNN primitives instead,
the same library PyTorch uses on the CPU.

Everything here is optional: kdjax imports and runs without a compiler or oneDNN. The zoo's
dense CNNs default to ``conv_impl="auto"`` (``config.model.conv_impl``): oneDNN on a single
CPU device when the extension loads, else ``lax.conv_general_dilated``
(:func:`resolve_auto_impl`, decided once per process and logged). To
enable it: ``pip install 'kdjax[onednn]'`` (oneDNN 3 from PyPI), have ``g++``, then
``python -m kdjax.ops.build`` (or let the first use build it once, cached in
``~/.cache/kdjax``).
"""

from kdjax.ops._build import OnednnUnavailableError as OnednnUnavailableError
from kdjax.ops._build import build as build_onednn
from kdjax.ops._build import onednn_available as onednn_available
from kdjax.ops._build import onednn_unavailable_reason as onednn_unavailable_reason
from kdjax.ops._conv2d import CONV_IMPLS as CONV_IMPLS
from kdjax.ops._conv2d import choose_auto_impl as choose_auto_impl
from kdjax.ops._conv2d import conv2d as conv2d
from kdjax.ops._conv2d import conv_general_dilated as conv_general_dilated
from kdjax.ops._conv2d import resolve_auto_impl as resolve_auto_impl
