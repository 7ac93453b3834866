"""2-D convolution (NHWC input, HWIO kernel) through oneDNN on the CPU, or XLA's convolution."""

import functools
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

from kdjax.ops._build import OnednnUnavailableError, load, onednn_unavailable_reason

CONV_IMPLS = ("auto", "onednn", "xla")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

Padding = str | int | Sequence[tuple[int, int]]


def _pads(x_shape, w_shape, strides, padding) -> tuple[tuple[int, int], tuple[int, int]]:
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"conv2d: padding must be 'SAME', 'VALID', an int or two (lo, hi) pairs, "
                       f"got {padding!r}")
    pads = lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding.upper())
  elif isinstance(padding, int):
    pads = [(padding, padding)] * 2
  else:
    pads = [tuple(int(p) for p in pair) for pair in padding]
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
      raise ValueError(f"conv2d: padding must be two (lo, hi) pairs, got {padding!r}")
  if any(p < 0 for pair in pads for p in pair):
    raise ValueError(f"conv2d: negative padding {pads} is not supported")
  return tuple(tuple(p) for p in pads)


def _out_hw(x_shape, w_shape, strides, pads) -> tuple[int, int]:
  return tuple((x_shape[1 + i] + sum(pads[i]) - w_shape[i]) // strides[i] + 1 for i in range(2))


def _attrs(strides, pads) -> dict:
  (pt, pb), (pl, pr) = pads
  return dict(stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
              pad_top=np.int64(pt), pad_bottom=np.int64(pb), pad_left=np.int64(pl),
              pad_right=np.int64(pr))


def _ffi(name, out_shape, *args, strides, pads):
  return jax.ffi.ffi_call(name, jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")(*args, **_attrs(strides, pads))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_onednn(x, w, strides, pads):
  oh, ow = _out_hw(x.shape, w.shape, strides, pads)
  return _ffi("kdjax_conv2d_fwd", (x.shape[0], oh, ow, w.shape[3]), x, w, strides=strides,
              pads=pads)


def _conv_onednn_fwd(x, w, strides, pads):
  return _conv_onednn(x, w, strides, pads), (x, w)


def _conv_onednn_bwd(strides, pads, residuals, dy):
  x, w = residuals
  dx = _ffi("kdjax_conv2d_bwd_data", x.shape, dy, w, strides=strides, pads=pads)
  dw = _ffi("kdjax_conv2d_bwd_weights", w.shape, x, dy, strides=strides, pads=pads)
  return dx, dw


_conv_onednn.defvjp(_conv_onednn_fwd, _conv_onednn_bwd)


def choose_auto_impl(backend: str, device_count: int,
                     unavailable_reason: Callable[[], str | None]) -> tuple[str, str]:
  """What ``impl="auto"`` means in a process: ``("onednn" | "xla", why)``.

  oneDNN only where it is verified to help and to be correct at full speed: the CPU backend
  with a single device in the whole job (``jax.device_count() == 1``; with several devices,
  also virtual CPU devices or several processes, XLA would gather a sharded batch onto every
  device around the FFI call, which is correct but repeats the work), and the extension
  builds and loads (``unavailable_reason()`` is ``None``; it is only called when the first two
  hold, so nothing is compiled elsewhere). Everything else runs XLA's convolution.
  """
  if backend != "cpu":
    return "xla", f"backend is {backend!r}, not 'cpu'"
  if device_count != 1:
    return "xla", (f"{device_count} devices: the FFI call is not partitioned (XLA would gather "
                   "a sharded batch onto every device)")
  reason = unavailable_reason()
  if reason is not None:
    return "xla", f"oneDNN convolution unavailable: {reason.splitlines()[0]}"
  return "onednn", "one CPU device and the oneDNN extension loads"


@functools.cache
def resolve_auto_impl() -> str:
  """``"onednn"`` or ``"xla"``: :func:`choose_auto_impl` for this process, decided on first use
  (the JAX backend must be initialised by then), logged once and cached, so ``"auto"`` costs
  nothing per call or per trace after that."""
  impl, why = choose_auto_impl(jax.default_backend(), jax.device_count(),
                               onednn_unavailable_reason)
  logging.info("kdjax.ops: conv_impl='auto' runs %s convolutions (%s)", impl, why)
  return impl


def _use_onednn(impl: str, x: jax.Array, w: jax.Array) -> bool:
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv2d: unknown impl {impl!r}; known: {list(CONV_IMPLS)}")
  if impl == "xla":
    return False
  fits = x.dtype == jnp.float32 and w.dtype == jnp.float32
  if impl == "onednn":
    if not fits:
      raise TypeError(f"conv2d: impl='onednn' needs float32 x and w, got {x.dtype} and {w.dtype}")
    load()  # raises OnednnUnavailableError with the reason
    return True
  return fits and resolve_auto_impl() == "onednn"


def conv2d(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
           padding: Padding = "SAME", *, impl: str = "auto") -> jax.Array:
  r"""2-D cross-correlation, as ``lax.conv_general_dilated`` with NHWC/HWIO/NHWC layouts.

  .. math::
    y_{n,i,j,o} = \sum_{a,b,c} x^{pad}_{n,\, s_h i + a,\, s_w j + b,\, c}\; w_{a,b,c,o}

  where :math:`x^{pad}` is ``x`` zero-padded by ``padding``. With ``impl="onednn"`` the
  forward pass, the gradient w.r.t. ``x`` (a transposed convolution of ``dy``) and the
  gradient w.r.t. ``w`` (:math:`\sum_n x^{pad} \star dy`) are oneDNN primitives called
  through XLA's FFI (a ``jax.custom_vjp``); it works under ``jit``, ``grad`` and ``scan``.
  Correct but not fast: under ``vmap`` each batch element is a separate oneDNN call (the FFI
  call's ``vmap_method="sequential"``), and on inputs sharded over several devices XLA
  gathers the operands onto every device first (the FFI call is not partitioned), so a
  data-parallel mesh gets no speed from it. Higher-order gradients are not defined for
  ``impl="onednn"`` (the backward pass is not itself differentiable).

  Args:
    x: ``[N, H, W, C]`` input.
    w: ``[KH, KW, C, O]`` kernel (Flax's layout).
    strides: ``(s_h, s_w)``.
    padding: ``"SAME"``, ``"VALID"``, an int (symmetric) or ``((top, bottom), (left,
      right))``.
    impl: ``"onednn"`` (raises :class:`OnednnUnavailableError` when it cannot be built,
      ``TypeError`` for non-float32 inputs), ``"xla"`` (``lax.conv_general_dilated``), or
      ``"auto"``: oneDNN for float32 inputs where :func:`resolve_auto_impl` says so (one CPU
      device and the extension loads), else XLA.

  Returns:
    ``[N, OH, OW, O]`` with ``OH = (H + top + bottom - KH) // s_h + 1`` (likewise ``OW``).

  References:
    oneDNN convolution primitive, https://uxlfoundation.github.io/oneDNN/dev_guide_convolution.html
  """
  if x.ndim != 4 or w.ndim != 4:
    raise ValueError(f"conv2d: x must be [N, H, W, C] and w [KH, KW, C, O], got shapes "
                     f"{x.shape} and {w.shape}")
  if x.shape[3] != w.shape[2]:
    raise ValueError(f"conv2d: x has {x.shape[3]} channels but w expects {w.shape[2]} "
                     f"(x {x.shape}, w {w.shape})")
  strides = tuple(int(s) for s in strides)
  if len(strides) != 2 or min(strides) < 1:
    raise ValueError(f"conv2d: strides must be two positive ints, got {strides}")
  pads = _pads(x.shape, w.shape, strides, padding)
  if _use_onednn(impl, x, w):
    if w.shape[:2] == (1, 1) and (strides != (1, 1) or any(p for pair in pads for p in pair)):
      # A 1x1 convolution is a stride-1 one on the padded, subsampled input. oneDNN 3.2's
      # strided 1x1 backward-weights kernel (jit_1x1 with "rtus") returned wrong values on
      # every other call for narrow channels (4 -> 6) in our tests; this form never runs it.
      x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))[:, ::strides[0], ::strides[1], :]
      strides, pads = (1, 1), ((0, 0), (0, 0))
    return _conv_onednn(x, w, strides, pads)
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DIMENSION_NUMBERS)


def conv_general_dilated(impl: str):
  """A ``lax.conv_general_dilated`` stand-in for ``flax.linen.Conv(conv_general_dilated=...)``
  that runs :func:`conv2d` with ``impl`` for what it supports (2-D, NHWC/HWIO, no dilation,
  one group, float32 for ``"auto"``) and ``lax.conv_general_dilated`` for everything else.
  ``"xla"``, and ``"auto"`` where :func:`resolve_auto_impl` picks XLA, return
  ``lax.conv_general_dilated`` itself (the same program as before ``"auto"`` existed)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl: unknown {impl!r}; known: {list(CONV_IMPLS)}")
  if impl == "xla" or (impl == "auto" and resolve_auto_impl() == "xla"):
    return lax.conv_general_dilated

  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
           preferred_element_type=None):
    plain = (lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
             and all(d == 1 for d in (lhs_dilation or (1, 1)))
             and all(d == 1 for d in (rhs_dilation or (1, 1)))
             and preferred_element_type is None and dimension_numbers is not None
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMENSION_NUMBERS))
    if plain:
      return conv2d(lhs, rhs, window_strides, padding, impl=impl)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)

  return conv


__all__ = ["CONV_IMPLS", "OnednnUnavailableError", "choose_auto_impl", "conv2d",
           "conv_general_dilated", "resolve_auto_impl"]
