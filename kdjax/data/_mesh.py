"""Device meshes: the one place kdjax builds a ``jax.sharding.Mesh``."""

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh


def make_mesh(axes: Mapping[str, int], num_devices: int = 0, *, name: str = "mesh") -> Mesh:
  """A mesh over the first ``num_devices`` devices (0: all) with ``axes`` in their given
  order and Auto axis types (GSPMD propagates shardings).

  Args:
    axes: ``{axis name: size}``; one size may be -1 (the rest of the devices).
    num_devices: devices used (0: every device).
    name: what the caller calls ``axes`` in error messages (``"config.mesh"``).

  Raises:
    ValueError: more devices than exist, more than one -1, or sizes whose product is not
      the number of devices.
  """
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
    devices = devices[:num_devices]
  axes = dict(axes)
  sizes = [int(s) for s in axes.values()]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{name}={axes}: sizes must be positive, with at most one -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{name}={axes}: {len(devices)} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"{name}={axes} needs {int(np.prod(sizes))} devices but "
                     f"{len(devices)} are used (set a size to -1 to take the rest)")
  return Mesh(np.asarray(devices).reshape(sizes), tuple(axes),
              axis_types=(AxisType.Auto,) * len(axes))


def make_data_mesh(num_devices: int = 0, axis: str = "data") -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (0: all of them)."""
  return make_mesh({axis: -1}, num_devices)
