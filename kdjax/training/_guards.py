"""Checks that run before any training step: config fields and types, the workdir,
and teachers that cannot take the student's inputs. Each failure is one line that
names the field or the path."""

import difflib
import json
import pathlib
from typing import Any

import jax
import ml_collections

from kdjax.models import as_model

# Sub-trees whose keys are free-form (loss labels, loader or model keyword arguments).
FREE_FORM = ("losses", "data.kwargs", "model", "init.mapping")


def _type_ok(default: Any, value: Any) -> bool:
  if default is None or value is None:
    return True  # optional / FieldReference(None) fields take any type
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def check_fields(config: ml_collections.ConfigDict,
                 defaults: ml_collections.ConfigDict | None = None) -> None:
  """Every field of ``config`` must exist in :func:`kdjax.training.default_config` with a
  value of the same type (an int where a float is expected is fine).

  Raises:
    ValueError: ``config has unknown field 'optimizer.momentun' (did you mean 'momentum'?)``.
    TypeError: ``config.num_steps must be an int, got '10' (str)``.
  """
  from kdjax.training._config import default_config

  defaults = default_config() if defaults is None else defaults

  def walk(node, ref, prefix):
    for key in node.keys():
      path = f"{prefix}{key}"
      if key not in ref:
        close = difflib.get_close_matches(key, list(ref.keys()), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"config has unknown field {path!r}{hint}; known fields of "
                         f"{prefix.rstrip('.') or 'config'}: {sorted(ref.keys())}")
      value, default = node[key], ref[key]
      if path in FREE_FORM:
        continue
      if isinstance(default, ml_collections.ConfigDict):
        if not isinstance(value, (ml_collections.ConfigDict, dict)):
          raise TypeError(f"config.{path} must be a group of fields, got {value!r}")
        walk(value if isinstance(value, ml_collections.ConfigDict)
             else ml_collections.ConfigDict(value), default, path + ".")
      elif not _type_ok(default, value):
        raise TypeError(f"config.{path} must be a {type(default).__name__}, got {value!r} "
                        f"({type(value).__name__})")

  walk(config, defaults, "")


def check_workdir(workdir: pathlib.Path) -> None:
  """Creates ``workdir`` and checks that files can be written there.

  Raises:
    OSError: naming the workdir and why it cannot be written.
  """
  probe = workdir / ".kdjax_write_test"
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise OSError(f"workdir {str(workdir)!r} is not writable: {e.strerror or e}") from None


def read_run_info(path: pathlib.Path) -> dict:
  """A teacher's ``run.json``; an unreadable or damaged file names its path."""
  try:
    return json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}); is this a kdjax "
                     "run that finished writing?") from None


def check_teachers_take(groups, sample_x) -> None:
  """Each teacher group must accept the student's inputs (checked on shapes only,
  with ``jax.eval_shape``; nothing is computed).

  Raises:
    ValueError: naming the teacher workdirs and the input shape.
  """
  spec = jax.ShapeDtypeStruct(sample_x.shape, sample_x.dtype)
  for group in groups:
    variables = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype),
                             group.variables)  # one member: drop the member axis
    model = as_model(group.model)
    try:
      jax.eval_shape(lambda v, x, m=model: m.apply(v, x, train=False).logits, variables, spec)
    except Exception as e:  # flax raises shape errors of several types
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(f"Teacher {', '.join(group.workdirs)} cannot take the student's inputs "
                       f"of shape {tuple(sample_x.shape[1:])} per example ({first}); was it "
                       "trained on another data set?") from None
