r"""Cached teacher targets: computed data-parallel, written to disk once, reused.

:func:`teacher_targets` runs the step's own teacher function
(:func:`~kdjax.training.teachers._apply.make_teacher_apply`) over all inputs, each batch split
over the devices of a ``data`` mesh axis (every device runs every member on its slice; the
member axis is never padded to the device count). :func:`cached_teacher_targets` stores the
result under a key of everything it depends on, so later runs and resumes load it instead of
running the teachers again:

* the teachers: each member's path, newest checkpoint step and a BLAKE2 fingerprint of its
  variables (so a retrained teacher in the same workdir is a different key);
* the data: the caller's description (name, loader kwargs, transfer set, sizes) and a
  fingerprint of the input bytes;
* the fusion: space, weights, temperature.

Files are ``CACHE_DIR/<sha256 of the key>.npy`` with a ``.json`` beside it holding the key.
Both are written to a temporary name and renamed (``os.replace``, atomic on POSIX), so a
process killed mid-write never leaves a partial file under the final name.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax.data import make_data_mesh
from kdjax.training._checkpoint import newest_step
from kdjax.training._padding import map_in_batches
from kdjax.training.teachers._apply import (make_sharded_teacher_apply, make_teacher_apply,
                                            sharded_teacher_variables, teacher_variables)

CACHE_ENV = "KDJAX_CACHE_DIR"


def targets_program(groups: Sequence, *, mesh: Mesh, data_axis: str = "data", space: str = "prob",
                    weights=None, temperature: float = 1.0, strategy: str = "auto",
                    member_axis: str = ""):
  """``(run, variables, sharding)``: the jitted ``run(variables, x [B, ...]) -> [B, C]`` with
  ``x`` and the result sharded over ``data_axis`` (``sharding``) and ``variables`` (the
  teachers', placed) replicated, or split over ``member_axis`` when given
  (:mod:`kdjax.training.teachers._apply`)."""
  if data_axis not in mesh.shape:
    raise ValueError(f"teacher_targets: mesh has no axis {data_axis!r}; its axes: "
                     f"{list(mesh.shape)}")
  fusion_args = {"space": space, "weights": weights, "temperature": temperature,
                 "strategy": strategy}
  if member_axis:
    apply = make_sharded_teacher_apply(groups, mesh=mesh, member_axis=member_axis,
                                       data_axis=data_axis, **fusion_args)
    variables = sharded_teacher_variables(groups, mesh, member_axis)
  else:
    apply = make_teacher_apply(groups, **fusion_args)
    variables = jax.device_put(teacher_variables(groups), NamedSharding(mesh, P()))
  sharded = NamedSharding(mesh, P(data_axis))
  run = jax.jit(lambda v, xb: apply(v, xb)[0], out_shardings=sharded)  # inputs come placed
  return run, variables, sharded


def teacher_targets(groups: Sequence, x: np.ndarray, *, mesh: Mesh | None = None,
                    data_axis: str = "data", space: str = "prob", weights=None,
                    temperature: float = 1.0, batch_size: int = 4096,
                    strategy: str = "auto", member_axis: str = "") -> np.ndarray:
  r"""Teacher targets for all of ``x``, data-parallel: the logits of a single teacher, or
  the ensemble's :math:`\tau \log \mathrm{fuse}_m(\mathrm{softmax}(z_m/\tau))`
  (:func:`~kdjax.training.teachers._apply.fuse_member_logits`).

  Each batch (``batch_size`` rounded to a multiple of the data axis, the last one
  zero-padded and the padding dropped) is sharded over ``mesh``'s ``data_axis``; the teacher
  variables are replicated, so every device runs every member on ``B / D`` inputs.

  Args:
    groups: :class:`~kdjax.training.TeacherGroup` s.
    x: ``[N, ...]`` inputs, the same global array on every process.
    mesh: a mesh with axis ``data_axis`` (default: every device on one ``"data"`` axis).
    space, weights, temperature, strategy: as :func:`make_teacher_apply`.
    member_axis: a mesh axis to split the members over (``""``: each device runs every
      member on its slice of the batch).
    batch_size: global inputs per call.

  Returns:
    ``[N, C]`` float32 NumPy array, all ``N`` rows on every process (gathered from the
    processes' shards when there are several).
  """
  mesh = make_data_mesh() if mesh is None else mesh
  run, variables, sharded = targets_program(groups, mesh=mesh, data_axis=data_axis, space=space,
                                            weights=weights, temperature=temperature,
                                            strategy=strategy, member_axis=member_axis)
  devices = mesh.shape[data_axis]
  batch = min(max(batch_size // devices, 1), -(-len(x) // devices)) * devices
  targets = map_in_batches(lambda xb: run(variables, xb), x, batch_size=batch, sharding=sharded)
  return targets.astype(np.float32, copy=False)



# ----------------------------------------------------------------------------- disk cache


def default_cache_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  """``$KDJAX_CACHE_DIR`` if set, else ``<workdir's parent>/.kdjax_cache``: runs that share
  a parent folder (``runs/``) share their teacher targets."""
  env = os.environ.get(CACHE_ENV)
  return pathlib.Path(env) if env else pathlib.Path(workdir).absolute().parent / ".kdjax_cache"


def _fingerprint(tree: Any) -> str:
  """BLAKE2b of every leaf's path, dtype, shape and bytes."""
  h = hashlib.blake2b(digest_size=16)
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def model_identity(model: Any) -> Any:
  """A JSON-ready description of a model that equals for two models exactly when their
  settings do: a dataclass (every linen module, kdjax's model wrappers) by its class and
  fields (``parent`` and ``name`` left out), recursively; a function by its module and
  name; a dtype by its name (a scalar type such as ``jnp.bfloat16`` is a class). Settings that change the outputs but not the parameters
  (a compute dtype, an activation) are in it."""
  if isinstance(model, type):
    return f"{model.__module__}.{model.__qualname__}"
  if dataclasses.is_dataclass(model):
    fields = {f.name: model_identity(getattr(model, f.name)) for f in dataclasses.fields(model)
              if f.name not in ("parent", "name")}
    return {"class": model_identity(type(model)), "fields": fields}
  if isinstance(model, (list, tuple)):
    return [model_identity(v) for v in model]
  if isinstance(model, dict):
    return {str(k): model_identity(v) for k, v in sorted(model.items(), key=lambda kv: str(kv[0]))}
  if isinstance(model, (str, int, float, bool)) or model is None:
    return model
  if isinstance(model, np.dtype):
    return str(model)
  if callable(model):
    fn = getattr(model, "__wrapped__", model)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
  return repr(model)


def teacher_identity(groups: Sequence) -> list[dict]:
  """Per member, in the order the teachers were given: its path, newest checkpoint step,
  a fingerprint of its variables and its model's settings (:func:`model_identity`)."""
  members = []
  for g in groups:
    model = model_identity(g.model)
    for i, (workdir, index) in enumerate(zip(g.workdirs, g.indices)):
      member = jax.tree.map(lambda leaf, i=i: leaf[i], g.variables)
      members.append({"index": int(index), "path": str(pathlib.Path(workdir).absolute()),
                      "step": newest_step(workdir), "fingerprint": _fingerprint(member),
                      "model": model})
  return sorted(members, key=lambda m: m["index"])


def cache_key(groups: Sequence, x: np.ndarray, *, data: dict, space: str, weights,
              temperature: float) -> dict:
  """Everything the targets depend on, as a JSON-ready dict (see the module docstring)."""
  return {"teachers": teacher_identity(groups),
          "data": {**data, "num_inputs": int(len(x)), "input_shape": list(np.shape(x)[1:]),
                   "input_fingerprint": _fingerprint(np.asarray(x))},
          "fusion": {"space": space, "weights": [float(w) for w in (weights or ())],
                     "temperature": float(temperature)}}


def _atomic_write(path: pathlib.Path, write: Callable[[Any], None]) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _read(path: pathlib.Path, num_inputs: int) -> np.ndarray | None:
  """The cached array, or ``None`` (with a warning) when it is unreadable or the wrong shape."""
  try:
    targets = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    warnings.warn(f"teacher target cache {path} is unreadable ({type(e).__name__}: {e}); "
                  "recomputing it", stacklevel=3)
    return None
  if targets.ndim != 2 or len(targets) != num_inputs:
    warnings.warn(f"teacher target cache {path} holds shape {targets.shape}, expected "
                  f"[{num_inputs}, C]; recomputing it", stacklevel=3)
    return None
  return targets


def cached_teacher_targets(groups: Sequence, x: np.ndarray, *, cache_dir: str | pathlib.Path,
                           data: dict, space: str = "prob", weights=None,
                           temperature: float = 1.0, mesh: Mesh | None = None,
                           data_axis: str = "data", batch_size: int = 4096,
                           strategy: str = "auto", member_axis: str = "") -> tuple[np.ndarray, dict]:
  """:func:`teacher_targets`, read from ``cache_dir`` when an earlier run stored them under
  the same :func:`cache_key`, else computed and stored (atomically; by process 0 only).

  With several processes, process 0 decides whether the file exists and tells the others
  (``cache_dir`` must then be a filesystem every host reads).

  Args:
    data: the inputs' identity, e.g. ``{"name", "kwargs", "val_size", "transfer"}``.
    Others: as :func:`teacher_targets`.

  Returns:
    ``(targets [N, C], info)`` with ``info = {"path", "reused", "seconds"}``: the file, whether
    it was read rather than computed, and the wall time either took.
  """
  start = time.time()
  key = cache_key(groups, x, data=data, space=space, weights=weights, temperature=temperature)
  text = json.dumps(key, sort_keys=True)
  name = hashlib.sha256(text.encode()).hexdigest()[:32]
  folder = pathlib.Path(cache_dir)
  path = folder / f"teacher_targets_{name}.npy"
  exists = path.is_file()
  if jax.process_count() > 1:
    exists = bool(multihost_utils.broadcast_one_to_all(np.int32(exists)))
  targets = _read(path, len(x)) if exists else None
  reused = targets is not None
  if jax.process_count() > 1:  # every process computes (a collective) or none does
    agreed = bool(multihost_utils.broadcast_one_to_all(np.int32(reused)))
    if agreed and not reused:
      raise FileNotFoundError(f"process {jax.process_index()} cannot read the teacher target "
                              f"cache {path} that process 0 read: put the cache directory on "
                              f"a filesystem every host shares (${CACHE_ENV})")
    reused = agreed
  if not reused:
    targets = teacher_targets(groups, x, mesh=mesh, data_axis=data_axis, space=space,
                              weights=weights,
                              temperature=temperature, batch_size=batch_size, strategy=strategy,
                              member_axis=member_axis)
    if jax.process_index() == 0:
      folder.mkdir(parents=True, exist_ok=True)
      _atomic_write(path, lambda f: np.save(f, targets, allow_pickle=False))
      _atomic_write(path.with_suffix(".json"),
                    lambda f: f.write(json.dumps(key, indent=2, sort_keys=True).encode()))
  return targets, {"path": str(path), "reused": reused, "seconds": round(time.time() - start, 3)}
