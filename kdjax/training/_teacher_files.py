"""Teacher variables from files kdjax did not write: orbax, flax msgpack, PyTorch.

``config.teacher.params_file`` names the file and ``config.teacher.model`` the
architecture (``{"name": registry name, **fields}``):

* a directory: an orbax checkpoint of a pytree (``ocp.StandardCheckpointer().save``);
* ``*.msgpack``: ``flax.serialization.to_bytes(variables)`` (read back with
  ``flax.serialization.msgpack_restore``, no target needed);
* ``*.pth`` / ``*.pt``: a PyTorch ``state_dict`` (or a dict holding one under
  ``"model"``, ``"state_dict"`` or ``"net"``, as RepDistiller and mdistiller save them),
  read by :func:`kdjax.convert.load_pth` and converted by
  :func:`kdjax.convert.torch_state_dict` for that architecture name (PyTorch needed).

The tree read is either the full variables ``{"params": ..., "batch_stats": ...}`` or
the params alone. Either way it is checked against the model's own variables (every
path and shape) before training starts.
"""

import pathlib
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from kdjax.models import as_model

_TORCH_SUFFIXES = (".pth", ".pt")
_MSGPACK_SUFFIXES = (".msgpack", ".flax")


def _read_torch(path: pathlib.Path, name: str, num_classes: int, input_shape) -> dict:
  from kdjax import convert  # PyTorch itself is imported by load_pth, lazily

  state_dict = convert.load_pth(str(path))
  return convert.torch_state_dict(name, state_dict, num_classes=num_classes,
                                  input_shape=tuple(input_shape))


def read_variables_file(path: str | pathlib.Path, *, model_name: str = "", num_classes: int = 0,
                        input_shape=(32, 32, 3)) -> dict[str, Any]:
  """The pytree stored in ``path`` (see the module docstring for the formats).

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    ValueError: for a file of an unknown kind.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"teacher.params_file {str(path)!r} does not exist")
  if path.is_dir():
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(path.absolute())
  if path.suffix in _MSGPACK_SUFFIXES:
    return flax.serialization.msgpack_restore(path.read_bytes())
  if path.suffix in _TORCH_SUFFIXES:
    return _read_torch(path, model_name, num_classes, input_shape)
  raise ValueError(f"teacher.params_file {str(path)!r}: unknown format; expected an orbax "
                   f"checkpoint directory, {'/'.join(_MSGPACK_SUFFIXES)} (flax msgpack) or "
                   f"{'/'.join(_TORCH_SUFFIXES)} (PyTorch state_dict)")


def check_variables(tree: Any, expected: Any, *, source: str) -> dict[str, Any]:
  """``tree`` as variables matching ``expected`` (shape/dtype structs), cast to their dtypes.

  ``tree`` is either full variables (with a ``"params"`` key) or the params alone.

  Raises:
    ValueError: naming the missing, unexpected or mis-shaped paths.
  """
  variables = dict(tree) if isinstance(tree, dict) and "params" in tree else {"params": tree}
  got = traverse_util.flatten_dict(variables, sep="/")
  want = traverse_util.flatten_dict(dict(expected), sep="/")
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  wrong = [f"{k}: file {tuple(np.shape(got[k]))} vs model {tuple(want[k].shape)}"
           for k in sorted(set(got) & set(want)) if tuple(np.shape(got[k])) != tuple(want[k].shape)]
  if missing or extra or wrong:
    parts = [f"missing {missing[:5]}" if missing else "",
             f"unexpected {extra[:5]}" if extra else "",
             f"shape mismatch {wrong[:5]}" if wrong else ""]
    raise ValueError(f"{source} does not fit the teacher model: "
                     + "; ".join(p for p in parts if p))
  # Through NumPy: arrays restored onto one device must not stay committed to it.
  flat = {k: jnp.asarray(np.asarray(got[k], dtype=want[k].dtype)) for k in want}
  return traverse_util.unflatten_dict(flat, sep="/")


def load_teacher_file(path: str | pathlib.Path, module: Any, sample_x: Any, *, model_name: str,
                      num_classes: int) -> dict[str, Any]:
  """Variables of ``module`` read from ``path`` and checked against its own init."""
  expected = jax.eval_shape(lambda: as_model(module).init(jax.random.key(0), sample_x))
  tree = read_variables_file(path, model_name=model_name, num_classes=num_classes,
                             input_shape=sample_x.shape[1:])
  return check_variables(tree, expected, source=f"teacher.params_file {str(path)!r}")
