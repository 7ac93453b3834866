"""Trace-time argument checks shared by the loss modules (private)."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def check_floating(name: str, fn: str, x: Any) -> jax.Array:
  """Returns ``x`` as an array, raising ``TypeError`` unless it has a float dtype."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{fn}: {name} must have a floating dtype, got {x.dtype} "
                    f"(shape {x.shape}); cast integer logits/features explicitly")
  return x


def check_integer(name: str, fn: str, x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f"{fn}: {name} must have an integer dtype (class indices), got "
                    f"{x.dtype} (shape {x.shape})")
  return x


def check_labels(fn: str, logits: jax.Array, labels: Any,
                 axis: int = -1) -> tuple[jax.Array, jax.Array]:
  """The one label check of kdjax: ``(safe_labels, valid)`` for integer ``labels``.

  Policy (as PyTorch's ``ignore_index``, for any out-of-range value): a label outside
  ``[0, C)`` (``-1``, ``-100``, ``C``, ...) marks its row as *ignored*. ``valid`` is
  ``labels`` in ``[0, C)``; ``safe_labels`` replaces ignored labels by 0 so that
  indexing never reads out of range (the caller selects the ignored rows away with
  ``valid``).

  Raises:
    TypeError: ``labels`` is not an integer array.
    ValueError: ``labels.shape`` is not the logits' shape without ``axis``.
  """
  labels = check_integer("labels", fn, labels)
  axis = axis % logits.ndim
  expected = tuple(d for i, d in enumerate(logits.shape) if i != axis)
  if labels.shape != expected:
    raise ValueError(f"{fn}: labels must have the logits' shape without the class axis "
                     f"{expected}, got labels.shape={labels.shape} (logits.shape="
                     f"{logits.shape}, axis={axis})")
  valid = label_mask(labels, logits.shape[axis])
  return jnp.where(valid, labels, 0), valid


def label_mask(labels: jax.Array, num_classes: int) -> jax.Array:
  """``True`` where a label is a class index in ``[0, num_classes)``; ``False`` marks an
  ignored row (padding such as ``-1`` or ``-100``, or any other out-of-range value).

  Per-example losses give 0 on ignored rows; average them over the valid rows,
  ``sum(loss) / max(sum(label_mask(labels, C)), 1)`` (a batch of only ignored rows gives
  0), as :func:`kdjax.losses.make_objective` and :mod:`kdjax.metrics` do.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import label_mask
    >>> label_mask(jnp.array([0, 2, -1, 3, -100]), 3)
    Array([ True,  True, False, False, False], dtype=bool)
  """
  labels = jnp.asarray(labels)
  return (labels >= 0) & (labels < num_classes)


def masked_mean(values: jax.Array, where: jax.Array | None) -> jax.Array:
  """Mean of ``values`` over ``where`` (selected, never multiplied: NaN in unselected
  entries stays out); 0 when nothing is selected. Boolean or integer ``values`` (e.g.
  ``argmax == label``) average in float32."""
  values = jnp.asarray(values)
  if not jnp.issubdtype(values.dtype, jnp.floating):
    values = values.astype(jnp.float32)
  if where is None:
    return jnp.mean(values)
  total = jnp.sum(jnp.where(where, values, 0))
  return total / jnp.maximum(jnp.sum(where), 1).astype(total.dtype)


def select(where: jax.Array | None, x: jax.Array, fill: Any = 0) -> jax.Array:
  """``x`` where ``where`` (broadcast from the left: ``[B]`` masks rows of ``[B, ...]``),
  ``fill`` elsewhere. Masks select, never multiply: ``NaN * 0`` is NaN, and masking the
  *inputs* as well as the result keeps masked entries out of the gradient too."""
  if where is None:
    return x
  where = jnp.reshape(where, where.shape + (1,) * (x.ndim - where.ndim))
  return jnp.where(where, x, jnp.asarray(fill, x.dtype))


def check_same_shape(fn: str, name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{fn}: {name_a} and {name_b} must have the same shape (no silent "
                     f"broadcasting), got {name_a}.shape={a.shape} and {name_b}.shape={b.shape}")


def check_min_rank(fn: str, name: str, x: jax.Array, rank: int) -> None:
  if x.ndim < rank:
    raise ValueError(f"{fn}: {name} must have rank >= {rank}, got shape {x.shape}")


def check_same_batch(fn: str, name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
  check_min_rank(fn, name_a, a, 1)
  check_min_rank(fn, name_b, b, 1)
  if a.shape[0] != b.shape[0]:
    raise ValueError(f"{fn}: {name_a} and {name_b} must have the same batch size, got "
                     f"{name_a}.shape={a.shape} and {name_b}.shape={b.shape}")


def check_positive(fn: str, name: str, value: Any) -> None:
  """Raises ``ValueError`` if a concrete ``value`` is <= 0 (traced values are not checked)."""
  if isinstance(value, jax.core.Tracer):
    return
  v = np.asarray(value)
  if v.size and not np.all(v > 0):
    raise ValueError(f"{fn}: {name} must be > 0, got {value!r}")


def check_where(fn: str, where: Any, shape: tuple[int, ...], what: str) -> jax.Array:
  """Checks a boolean mask broadcastable to ``shape``."""
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise TypeError(f"{fn}: where must be a boolean mask, got dtype {where.dtype}")
  try:
    out = jnp.broadcast_shapes(where.shape, shape)
  except ValueError:
    out = None
  if out != tuple(shape):
    raise ValueError(f"{fn}: where (shape {where.shape}) must broadcast to {what} "
                     f"(shape {tuple(shape)})")
  return jnp.broadcast_to(where, shape)


def compute_dtype(*arrays: jax.Array) -> jnp.dtype:
  """float32, or float64 when any input is float64: low-precision inputs are upcast."""
  return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """``x / max(||x||, eps)`` (``torch.nn.functional.normalize``), NaN-free gradient at 0."""
  return x / jnp.maximum(optax.safe_norm(x, 0.0, axis=axis, keepdims=True), eps)


def take_class(x: jax.Array, labels: jax.Array, axis: int) -> jax.Array:
  """``x`` at the (in-range) ``labels`` along ``axis``."""
  return jnp.squeeze(jnp.take_along_axis(x, jnp.expand_dims(labels, axis), axis=axis), axis)


def select_rows(valid: jax.Array, axis: int, *arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Zeroes the rows (everything but ``axis``) where ``valid`` is False, before any math."""
  keep = jnp.expand_dims(valid, axis)
  return tuple(jnp.where(keep, a, jnp.zeros((), a.dtype)) for a in arrays)
