"""Batches that the devices do not divide: padded with masked rows.

A global batch of ``B`` examples over ``P`` hosts with ``L`` devices each gives every host
``b = B / P`` rows, which ``jit`` splits over its ``L`` devices. When ``L`` does not
divide ``b`` (the README's batch 100 on an 8-device host), each host pads its rows to
``b' = L * ceil(b / L)`` with copies of its first row and sends a boolean ``mask``
(``True`` = real row). The step then

- averages every loss term over the real rows only (``LossInputs.where``; the objective
  *selects* padded rows away before any term runs, so they reach neither loss nor
  gradient),
- computes BatchNorm statistics over the real rows only (``nn.BatchNorm(mask=...)``,
  injected into every linen BatchNorm of the student by :func:`mask_batch_norm`),
- averages its accuracy metrics over the real rows.

So losses, gradients, BatchNorm statistics and parameters equal those of the unpadded
batch (up to float rounding), whatever the device count. Dropout masks are drawn for the
padded shape, so a dropout student sees other (equally distributed) masks than without
padding.
"""

import contextlib
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from kdjax.training._distributed import to_host


def padded_size(rows: int, num_devices: int) -> int:
  """The smallest multiple of ``num_devices`` that holds ``rows`` rows."""
  return -(-rows // num_devices) * num_devices


def pad_indices(indices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray | None]:
  """Pads the last axis of ``[..., b]`` example indices to ``size`` with copies of the
  first index.

  Returns:
    ``(indices [..., size], mask [..., size] bool)``; ``mask`` is ``None`` when nothing
    was padded (``size == b``).
  """
  rows = indices.shape[-1]
  if size < rows:
    raise ValueError(f"cannot pad {rows} rows to {size}")
  if size == rows:
    return indices, None
  fill = np.repeat(indices[..., :1], size - rows, axis=-1)
  mask = np.zeros(indices.shape[:-1] + (size,), bool)
  mask[..., :rows] = True
  return np.concatenate([indices, fill], axis=-1), mask


def pad_rows(batch: dict, size: int, *, axis: int = 0) -> dict:
  """Pads every array of a host batch along ``axis`` to ``size`` rows with copies of its
  first row and adds (or narrows) ``batch["mask"]``: a streaming pipeline's batch, where
  :func:`pad_indices` has no indices to pad. Returns ``batch`` itself when nothing is
  padded."""
  rows = np.shape(batch["x"])[axis]
  index, mask = pad_indices(np.arange(rows), size)
  if mask is None:
    return batch
  out = {k: np.take(np.asarray(v), index, axis=axis) for k, v in batch.items()}
  lead = np.shape(batch["x"])[:axis]
  mask = np.broadcast_to(mask.reshape((1,) * axis + (size,)), lead + (size,))
  out["mask"] = mask if "mask" not in batch else out["mask"] & mask
  return out


@contextlib.contextmanager
def mask_batch_norm(mask: jax.Array | None) -> Iterator[None]:
  """Within the block, every linen ``nn.BatchNorm`` call on a batch of ``len(mask)`` rows
  computes its statistics over the rows where ``mask`` is ``True`` only (flax's
  ``mask=`` argument, combined with a mask the caller passes). ``None``: no change.

  Raises:
    ValueError: (at trace time) a BatchNorm input whose leading axis is not the batch.
  """
  if mask is None:
    yield
    return

  def interceptor(next_fun, args, kwargs, context):
    if not (isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__"):
      return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs["x"]
    if x.shape[0] != mask.shape[0]:
      raise ValueError(f"BatchNorm {'/'.join(context.module.path)} gets inputs {x.shape} whose "
                       f"leading axis is not the padded batch ({mask.shape[0]} rows): the "
                       "padding cannot be masked; use a batch size the devices divide")
    rows = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
    rows = jnp.broadcast_to(rows, x.shape)
    given = kwargs.get("mask")
    kwargs = {**kwargs, "mask": rows if given is None else (given & rows)}
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield


def local_data_shards(mesh, axis: str = "data") -> int:
  """How many positions of ``mesh``'s ``axis`` (the batch's shards) this host's devices hold:
  its local device count on a 1-D data mesh, fewer when a ``model`` axis splits it."""
  if axis not in mesh.shape:
    return len(mesh.local_devices)
  rows = np.moveaxis(mesh.devices, mesh.axis_names.index(axis), 0).reshape(mesh.shape[axis], -1)
  here = jax.process_index()
  return sum(any(d.process_index == here for d in row) for row in rows)


def local_rows(batch_size: int, mesh, axis: str = "data") -> tuple[int, int]:
  """``(rows, padded rows)`` this host feeds a step: its share ``B / P`` of the global
  batch, and that share padded to a multiple of its shards of ``mesh``'s ``axis``.

  Raises:
    ValueError: if the hosts cannot take equal shares of ``batch_size``, or this host has
      no device in ``mesh``.
  """
  from kdjax.training._distributed import local_batch_size

  rows = local_batch_size(batch_size)
  shards = local_data_shards(mesh, axis)
  if not shards:
    raise ValueError(f"process {jax.process_index()} holds none of the mesh's {mesh.size} "
                     "devices; with several processes use every device (config.num_devices=0)")
  return rows, padded_size(rows, shards)


def check_padding(*, batch_size: int, local_rows: int, mesh, model, model_state,
                  axis: str = "data") -> None:
  """Refuses padding that the student's batch statistics could not mask: a model with
  state (BatchNorm) that is not a linen module (NNX, a plain ``apply_fn``).

  Raises:
    ValueError: naming the batch sizes and device counts that need no padding.
  """
  shards = local_data_shards(mesh, axis)
  if local_rows % shards == 0 or not jax.tree.leaves(model_state):
    return
  from kdjax.models import as_model
  from kdjax.models._adapters import LinenModel

  if isinstance(as_model(model), LinenModel):
    return
  hosts = jax.process_count()
  devices = shards * hosts
  below = batch_size // devices * devices
  sizes = ", ".join(str(b) for b in (below, below + devices) if b > 0)
  counts = [d for d in range(hosts, devices + 1, hosts) if batch_size % d == 0]
  raise ValueError(f"batch_size={batch_size} is not divisible by {devices} devices, and the "
                   f"student's batch statistics (model state {sorted(model_state)}) can only "
                   "mask padded rows in linen nn.BatchNorm layers; use a batch_size divisible "
                   f"by {devices} (e.g. {sizes}) or --config.num_devices in {counts}")


def map_in_batches(fn: Callable[[jax.Array], jax.Array], x, *, batch_size: int,
                   sharding: NamedSharding | None = None) -> np.ndarray:
  """``fn`` over all rows of ``x [N, ...]`` in batches of ``batch_size`` rows, as NumPy.

  The last batch is zero-padded to ``batch_size`` (one compiled program serves every
  batch) and the padded rows of the result are dropped. With ``sharding`` each batch is
  placed with it from ``x``, the same global array on every process (each device takes
  its rows), and every process receives all rows of the result; ``batch_size`` must then
  divide over the sharded axis.

  Returns:
    ``concatenate([fn(x[i:i + batch_size]) ...])``: ``[N, ...]``.
  """
  outputs = []
  for start in range(0, len(x), batch_size):
    xb = np.asarray(x[start:start + batch_size])
    rows = len(xb)
    if rows < batch_size:
      xb = np.concatenate([xb, np.zeros((batch_size - rows, *xb.shape[1:]), xb.dtype)])
    if sharding is not None:
      xb = jax.make_array_from_callback(xb.shape, sharding, lambda index, xb=xb: xb[index])
    outputs.append(to_host(fn(xb))[:rows])
  return np.concatenate(outputs)

