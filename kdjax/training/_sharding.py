"""Device mesh with ``data`` and ``model`` axes, parameter sharding rules, and the
per-device memory report.

The mesh comes from ``config.mesh``, e.g. ``{"data": -1, "model": 1}`` (-1: the devices
left over). Batches are sharded over ``data`` and replicated over ``model``. Parameters
follow *rules*: a list of ``(path regex, spec)`` pairs matched with ``re.search`` against
each leaf's ``/``-joined path (``"student/dense_0/kernel"`` in the train state,
``"params/layer1_0/conv1/kernel"`` in teacher variables); the first match wins and an
unmatched leaf is replicated. A spec is

* a tuple with one entry per array dimension: a mesh axis name, a tuple of axis names,
  or ``None`` (a ``PartitionSpec``), e.g. ``(None, "model")`` splits a Dense kernel's
  output features;
* ``"fsdp"``: the largest dimension divisible by the ``model`` axis size is split over it
  (ZeRO-3 / FSDP-style: each device holds ``1 / n`` of the array, XLA gathers it where it
  is used); ``"fsdp:data"`` or ``"fsdp:data,model"`` split over those axes instead;
* ``"replicated"`` or ``None``: every device holds the whole array.

Optimizer state follows its params (``optax.tree_map_params``): Adam's ``mu`` and ``nu``
of a sharded kernel are sharded the same way; counters are replicated.

References:
  Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
  Models", 2020. Xu et al., "GSPMD: General and Scalable Parallelization for ML
  Computation Graphs", 2021. JAX's "Distributed arrays and automatic parallelization".
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax import data as kd_data

MESH_AXES = ("data", "model")


def make_mesh(axes: Mapping[str, int], num_devices: int = 0) -> Mesh:
  """The training mesh (:func:`kdjax.data.make_mesh`) with ``axes`` in :data:`MESH_AXES`
  order.

  Args:
    axes: ``{"data": n_data, "model": n_model}``; one size may be -1 (the rest of the
      devices). A missing axis has size 1.
    num_devices: devices used (0: every device).

  Returns:
    A ``Mesh`` of shape ``(n_data, n_model)``.

  Raises:
    ValueError: an unknown axis, more than one -1, or sizes whose product is not the
      number of devices.
  """
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh has unknown axis {sorted(unknown)}; mesh axes: {MESH_AXES}")
  return kd_data.make_mesh({name: axes.get(name, 1) for name in MESH_AXES}, num_devices,
                           name="config.mesh")


def _check_rules(rules: Sequence, field: str) -> list[tuple[re.Pattern, Any]]:
  checked = []
  for i, rule in enumerate(rules or ()):
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"{field}[{i}] must be a (path regex, spec) pair, got {rule!r}")
    try:
      pattern = re.compile(rule[0])
    except re.error as e:
      raise ValueError(f"{field}[{i}]: bad path regex {rule[0]!r} ({e})") from None
    checked.append((pattern, rule[1]))
  return checked


def _fsdp_spec(shape: tuple[int, ...], axes: tuple[str, ...], mesh: Mesh) -> P:
  """The largest dimension divisible by the product of ``axes``' sizes, split over them."""
  size = int(np.prod([mesh.shape[a] for a in axes]))
  if size == 1:
    return P()
  dims = [d for d in np.argsort(shape, kind="stable")[::-1] if shape[d] % size == 0]
  if not dims:
    return P()  # too small or indivisible: replicated
  spec: list[Any] = [None] * len(shape)
  spec[int(dims[0])] = axes[0] if len(axes) == 1 else axes
  return P(*spec)


def leaf_spec(spec: Any, shape: tuple[int, ...], mesh: Mesh, *, where: str) -> P:
  """The ``PartitionSpec`` a rule's ``spec`` gives an array of ``shape``.

  Raises:
    ValueError: a spec longer than the array's rank, an axis the mesh lacks, or a
      dimension not divisible by the axes it is split over (``where`` names the rule and
      the parameter path).
  """
  if spec is None or spec == "replicated":
    return P()
  if isinstance(spec, str):
    kind, _, axes = spec.partition(":")
    axes = tuple(a.strip() for a in axes.split(",")) if axes else ("model",)
    if kind != "fsdp" or not all(a in mesh.shape for a in axes):
      raise ValueError(f"{where}: unknown spec {spec!r}; use 'fsdp', 'fsdp:AXIS[,AXIS]', "
                       f"'replicated' or a tuple of mesh axes {tuple(mesh.shape)} / None")
    return _fsdp_spec(shape, axes, mesh)
  spec = tuple(spec)
  if len(spec) > len(shape):
    raise ValueError(f"{where}: spec {spec} has {len(spec)} entries but the array has shape "
                     f"{shape}")
  for dim, entry in enumerate(spec):
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    missing = [a for a in names if a not in mesh.shape]
    if missing:
      raise ValueError(f"{where}: spec {spec} names axis {missing}; mesh axes: {tuple(mesh.shape)}")
    size = int(np.prod([mesh.shape[a] for a in names]))
    if shape[dim] % size:
      raise ValueError(f"{where}: dimension {dim} of shape {shape} is not divisible by the "
                       f"{size} devices of {names}")
  return P(*(tuple(e) if isinstance(e, list) else e for e in spec))


def tree_shardings(tree: Any, rules: Sequence, mesh: Mesh, *, field: str = "rules") -> Any:
  """A ``NamedSharding`` for every leaf of ``tree`` from ``rules`` (first match wins,
  unmatched leaves replicated).

  Args:
    tree: a pytree of arrays (or ``jax.ShapeDtypeStruct``).
    rules: ``[(path regex, spec), ...]`` (see the module docstring).
    mesh: from :func:`make_mesh`.
    field: the config field holding ``rules``, for error messages.

  Returns:
    A pytree of ``NamedSharding`` with ``tree``'s structure.
  """
  checked = _check_rules(rules, field)

  def one(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    for i, (pattern, spec) in enumerate(checked):
      if pattern.search(name):
        return NamedSharding(mesh, leaf_spec(spec, tuple(np.shape(leaf)), mesh,
                                             where=f"{field}[{i}] at {name!r}"))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, tree)


def state_shardings(state: Any, tx: optax.GradientTransformation, rules: Sequence, mesh: Mesh,
                    *, field: str = "config.sharding.student") -> Any:
  """Shardings of a :class:`kdjax.training.TrainState`: params by ``rules`` (paths
  ``student/...`` and ``aux/...``), the optimizer state mirroring its params, the rest
  (step, model state such as BatchNorm statistics, rng) replicated."""
  replicated = NamedSharding(mesh, P())
  params = tree_shardings(state.params, rules, mesh, field=field)
  opt_state = optax.tree_map_params(tx, lambda _, sharding: sharding, state.opt_state, params,
                                    transform_non_params=lambda _: replicated)
  return state.replace(step=replicated, params=params, opt_state=opt_state,
                       model_state=jax.tree.map(lambda _: replicated, state.model_state),
                       rng=replicated)


def place_state(state: Any, tx: optax.GradientTransformation, rules: Sequence, mesh: Mesh,
                *, field: str = "config.sharding.student") -> tuple[Any, Any]:
  """``(placed state, its shardings)``: :func:`state_shardings` applied with
  ``jax.device_put``; pass the shardings to ``make_train_chunk(state_shardings=...)``."""
  shardings = state_shardings(state, tx, rules, mesh, field=field)
  return jax.device_put(state, shardings), shardings


def place(tree: Any, rules: Sequence, mesh: Mesh, *, field: str = "config.sharding.teacher") -> Any:
  """``tree`` (e.g. teacher variables) placed on ``mesh`` by ``rules``."""
  return jax.device_put(tree, tree_shardings(tree, rules, mesh, field=field))


def per_device_bytes(tree: Any) -> int:
  """Bytes of ``tree``'s arrays on the fullest local device (from the placed shards)."""
  totals: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
  return max(totals.values(), default=0)


# CompiledMemoryStats fields reported (bytes per device of the SPMD program).
_COMPILED_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                    "temp_size_in_bytes", "generated_code_size_in_bytes")


def compiled_memory(compiled: Any) -> dict[str, int] | None:
  """XLA's memory analysis of a compiled program, per device: ``{"argument", "output",
  "alias", "temp", "generated_code"}`` bytes (``temp``: activations and other
  temporaries; ``alias``: outputs that reuse donated arguments). ``None`` where the
  backend gives no analysis. On XLA:CPU (jax 0.10.2) every field is filled except
  ``generated_code`` (0)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return {name.removesuffix("_size_in_bytes"): int(getattr(stats, name, 0))
          for name in _COMPILED_FIELDS}


class KeepCompiled:
  """Calls a jitted function and keeps the compiled program of its first call
  (``fn.lower(*args).compile()``, which the jit cache then reuses: no second compile),
  for :func:`compiled_memory`. ``compiled`` is ``None`` until the first call."""

  def __init__(self, fn: Any):
    self.fn = fn
    self.compiled = None

  def __call__(self, *args):
    if self.compiled is None:
      self.compiled = self.fn.lower(*args).compile()
    return self.fn(*args)


def memory_report(state: Any, teacher_variables: Any, compiled: Any = None) -> dict[str, Any]:
  """``summary.json``'s ``"memory"``: per-device bytes of the placed arrays (teacher
  params, teacher state such as BatchNorm statistics, student params, objective aux
  params, optimizer state) and of the compiled train chunk (:func:`compiled_memory`)."""
  teacher = teacher_variables or {}
  arrays = {
      "teacher_params": teacher.get("params", {}),
      "teacher_state": {k: v for k, v in teacher.items() if k != "params"},
      "student_params": state.params["student"],
      "aux_params": state.params["aux"],
      "optimizer_state": state.opt_state,
      "model_state": state.model_state,
  }
  return {"per_device_bytes": {k: per_device_bytes(v) for k, v in arrays.items()},
          "compiled_step": None if compiled is None else compiled_memory(compiled)}
