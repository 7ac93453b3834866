"""Stacked ensembles: M members of one architecture as one pytree with a leading member axis.

A *stacked* ensemble holds the parameters of ``M`` members of one architecture as a single
pytree whose every leaf has a leading member axis of size ``M``. Running it gives member
outputs ``[M, B, ...]`` (``member_logits [M, B, C]`` for classifiers). Members of different
architectures form one :class:`EnsembleGroup` each; :func:`apply_groups` concatenates them.

Execution strategies of :func:`apply` (all give the same numbers):

* ``"vmap"``: one jitted ``jax.vmap`` over the member axis (one kernel per layer).
* ``"map"``: one jitted ``lax.map`` over members (a loop inside one XLA program).
* ``"loop"``: a Python loop of one jitted single-member call, results stacked.
* ``"auto"``: ``"map"`` on the CPU, ``"vmap"`` elsewhere (see :func:`choose_strategy` and
  ``benchmarks/results/ensemble_speed.json``: on XLA:CPU ``"map"`` was fastest or tied for
  both MLP and im2col-CNN members, ``"vmap"`` slower than a Python loop from M = 4).

:func:`sharded_apply` places the member axis on a mesh axis so each device holds and runs
only its own members.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from kdjax import data as kd_data

ApplyFn = Callable[[Any, jax.Array], Any]
STRATEGIES = ("auto", "vmap", "map", "loop")


@functools.lru_cache(maxsize=256)
def linen_apply_fn(model: nn.Module) -> ApplyFn:
  """``lambda params, x: model.apply({"params": params}, x)``, one object per model.

  ``apply_fn`` is a static ``jit`` argument, so a fresh lambda per call recompiles every
  call. Linen modules with equal fields are equal and hash alike, so this cache returns
  the same function for them and the compiled programs are reused. :func:`apply`,
  :func:`sharded_apply` and :class:`EnsembleGroup` call it for you when given a module.
  """
  return lambda params, x: model.apply({"params": params}, x)


def _as_apply_fn(apply_fn: ApplyFn | nn.Module) -> ApplyFn:
  return linen_apply_fn(apply_fn) if isinstance(apply_fn, nn.Module) else apply_fn


# ----------------------------------------------------------------------------- stacking


def _path_str(path) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def stack(params_list: Sequence[Any]) -> Any:
  """Stacks ``M`` member pytrees of one architecture into one with a leading member axis.

  Args:
    params_list: ``M >= 1`` pytrees with the same structure, leaf shapes and dtypes.

  Returns:
    One pytree whose leaves are ``[M, *leaf_shape]``.

  Raises:
    ValueError: if the list is empty or two members differ; the message names the member
      and the differing path (or the structures).

  Examples:
    >>> import jax.numpy as jnp
    >>> s = stack([{"w": jnp.zeros(3)}, {"w": jnp.ones(3)}])
    >>> s["w"].shape
    (2, 3)
  """
  params_list = list(params_list)
  if not params_list:
    raise ValueError("stack: params_list is empty; need at least one member")
  ref = params_list[0]
  ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(ref)
  for m, p in enumerate(params_list[1:], start=1):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(p)
    if treedef != ref_def:
      ref_paths = {_path_str(k) for k, _ in ref_leaves}
      paths = {_path_str(k) for k, _ in leaves}
      diff = sorted(ref_paths ^ paths) or [f"{ref_def} vs {treedef}"]
      raise ValueError(f"stack: member {m} has a different tree structure than member 0; "
                       f"differing paths: {diff[:5]}")
    for (path, a), (_, b) in zip(ref_leaves, leaves):
      if np.shape(a) != np.shape(b) or jnp.result_type(a) != jnp.result_type(b):
        raise ValueError(
            f"stack: member {m} differs from member 0 at {_path_str(path)}: "
            f"{np.shape(b)} {jnp.result_type(b)} vs {np.shape(a)} {jnp.result_type(a)}")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *params_list)


def num_members(stacked_params: Any) -> int:
  """Size ``M`` of the leading member axis; checks that every leaf agrees."""
  leaves = jax.tree_util.tree_flatten_with_path(stacked_params)[0]
  if not leaves:
    raise ValueError("num_members: stacked_params has no leaves")
  sizes = {}
  for path, leaf in leaves:
    if np.ndim(leaf) == 0:
      raise ValueError(f"num_members: leaf {_path_str(path)} is a scalar; stacked leaves "
                       "need a leading member axis")
    sizes.setdefault(np.shape(leaf)[0], _path_str(path))
  if len(sizes) != 1:
    raise ValueError(f"num_members: leaves disagree on the member axis size: "
                     f"{ {v: k for k, v in sizes.items()} }")
  return next(iter(sizes))


_count_members = num_members


def unstack(stacked_params: Any) -> list[Any]:
  """Inverse of :func:`stack`: a list of ``M`` member pytrees."""
  m = num_members(stacked_params)
  return [jax.tree.map(lambda leaf, i=i: leaf[i], stacked_params) for i in range(m)]


def take_members(stacked_params: Any, indices: Sequence[int] | jax.Array) -> Any:
  """Stacked params of the members at ``indices`` (repeats allowed)."""
  idx = jnp.asarray(indices, dtype=jnp.int32)
  return jax.tree.map(lambda leaf: jnp.take(leaf, idx, axis=0), stacked_params)


# ----------------------------------------------------------------------------- apply


@functools.partial(jax.jit, static_argnums=0)
def _apply_vmap(apply_fn, stacked_params, x):
  return jax.vmap(apply_fn, in_axes=(0, None))(stacked_params, x)


@functools.partial(jax.jit, static_argnums=0)
def _apply_map(apply_fn, stacked_params, x):
  return jax.lax.map(lambda p: apply_fn(p, x), stacked_params)


@functools.partial(jax.jit, static_argnums=0)
def _apply_member(apply_fn, stacked_params, index, x):
  params = jax.tree.map(lambda leaf: jax.lax.dynamic_index_in_dim(leaf, index, 0, False),
                        stacked_params)
  return apply_fn(params, x)


def _apply_loop(apply_fn, stacked_params, x):
  m = num_members(stacked_params)
  outs = [_apply_member(apply_fn, stacked_params, np.int32(i), x) for i in range(m)]
  return jax.tree.map(lambda *ys: jnp.stack(ys), *outs)


_AUTO_BY_BACKEND = {"cpu": "map"}  # benchmarks/ensemble_speed.py; other backends: "vmap"


def choose_strategy(apply_fn: ApplyFn, stacked_params: Any, x: Any) -> str:
  """The strategy ``"auto"`` picks for these arguments.

  On the CPU, ``"map"``: ``lax.map`` runs each member's unbatched program inside one XLA
  call, so it keeps a Python loop's kernels without its dispatches, while ``vmap`` turns
  the im2col convolutions into batched 3-D matmuls (and native convolutions into grouped
  ones), which are slower there (``benchmarks/ensemble_speed.py``, results in
  ``benchmarks/results/``). On GPU/TPU, ``"vmap"`` (one wide kernel per layer).

  ``apply_fn``, ``stacked_params`` and ``x`` are accepted so that a rule by layer type
  (e.g. inspecting ``jax.make_jaxpr(apply_fn)``) can be added where a backend needs one;
  the CPU measurements showed none was needed there.
  """
  del apply_fn, stacked_params, x
  return _AUTO_BY_BACKEND.get(jax.default_backend(), "vmap")


def apply(apply_fn: ApplyFn, stacked_params: Any, x: Any, *, strategy: str = "auto") -> Any:
  """Runs every member of a stacked ensemble on the same inputs.

  .. math::
    y[m] = f(\\theta_m, x), \\quad m = 0, \\dots, M-1

  Args:
    apply_fn: ``apply_fn(params, x) -> outputs`` for one member, or a linen module (then
      ``model.apply({"params": p}, x)`` via :func:`linen_apply_fn`). It is a static
      argument of ``jit``: pass the same (hashable) object on every call; a fresh
      ``lambda`` per call recompiles every call.
    stacked_params: member params with a leading member axis ``M`` (see :func:`stack`).
    x: inputs shared by all members, e.g. ``[B, ...]``.
    strategy: ``"auto"``, ``"vmap"``, ``"map"`` or ``"loop"`` (see the module docstring).

  Returns:
    Outputs with a leading member axis, e.g. ``member_logits [M, B, C]``.

  Raises:
    ValueError: for an unknown strategy (the message lists the known ones).
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"apply: unknown strategy {strategy!r}; known: {list(STRATEGIES)}")
  apply_fn = _as_apply_fn(apply_fn)
  num_members(stacked_params)  # checks the member axis
  if strategy == "auto":
    strategy = choose_strategy(apply_fn, stacked_params, x)
  if strategy == "vmap":
    return _apply_vmap(apply_fn, stacked_params, x)
  if strategy == "map":
    return _apply_map(apply_fn, stacked_params, x)
  return _apply_loop(apply_fn, stacked_params, x)


# ----------------------------------------------------------------------------- sharding


def _axis_size(mesh: Mesh, member_axis: str) -> int:
  if member_axis not in mesh.shape:
    raise ValueError(f"mesh has no axis {member_axis!r}; its axes: {list(mesh.shape)}")
  return mesh.shape[member_axis]


def _pad_members(stacked_params: Any, multiple: int) -> Any:
  """Pads the member axis to a multiple by repeating members 0, 1, ... (cyclically)."""
  m = num_members(stacked_params)
  padded = -(-m // multiple) * multiple
  if padded == m:
    return stacked_params
  return take_members(stacked_params, np.arange(padded) % m)


def shard_stacked(stacked_params: Any, mesh: Mesh, member_axis: str = "member", *,
                  pad: bool = True) -> Any:
  """Places stacked params so the member axis is split over ``mesh`` axis ``member_axis``.

  Each device then holds only the weights of its ``M / D`` members (``D`` the size of the
  axis); other mesh axes replicate. If ``M`` is not divisible by ``D`` and ``pad`` is true,
  members ``0, 1, ...`` are repeated to the next multiple of ``D``: pass
  ``num_members=M`` to :func:`sharded_apply` to drop the repeats' outputs.

  Raises:
    ValueError: if the mesh lacks ``member_axis``, or ``M % D != 0`` and ``pad`` is false.
  """
  d = _axis_size(mesh, member_axis)
  m = num_members(stacked_params)
  if m % d:
    if not pad:
      raise ValueError(f"shard_stacked: {m} members do not divide over {d} devices of "
                       f"axis {member_axis!r}; pass pad=True")
    stacked_params = _pad_members(stacked_params, d)
  sharding = NamedSharding(mesh, P(member_axis))
  return jax.device_put(stacked_params, sharding)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6))
def _sharded_apply(apply_fn, stacked_params, x, mesh, member_axis, batch_axis, num_out):
  d = mesh.shape[member_axis]
  stacked_params = _pad_members(stacked_params, d)
  x_spec = P(batch_axis) if batch_axis is not None else P()
  out_spec = P(member_axis, batch_axis) if batch_axis is not None else P(member_axis)
  body = lambda p, xb: jax.vmap(apply_fn, in_axes=(0, None))(p, xb)  # noqa: E731
  run = jax.shard_map(body, mesh=mesh, in_specs=(P(member_axis), x_spec), out_specs=out_spec)
  out = run(stacked_params, x)
  return jax.tree.map(lambda y: y[:num_out], out)


def sharded_apply(apply_fn: ApplyFn, stacked_params: Any, x: Any, *, mesh: Mesh,
                  member_axis: str = "member", batch_axis: str | None = None,
                  num_members: int | None = None) -> Any:
  """:func:`apply` with the member axis split over a mesh axis (``jax.shard_map`` + vmap).

  Each device holds and runs only its ``M / D`` members (``D = mesh.shape[member_axis]``);
  ``x`` is replicated, or split over ``batch_axis`` if given. The result equals
  :func:`apply` and is sharded ``P(member_axis[, batch_axis])``.

  Padding: if ``M`` is not a multiple of ``D``, members ``0, 1, ...`` are repeated up to
  the next multiple (so every device runs the same program), and the repeats' outputs are
  dropped. Params already padded by :func:`shard_stacked` need ``num_members=M`` to drop
  them; place params with :func:`shard_stacked` once to avoid moving weights every call.

  Args:
    apply_fn: ``apply_fn(params, x)`` for one member, or a linen module (static under
      ``jit``; see :func:`apply`).
    stacked_params: ``[M, ...]`` stacked member params (placed or not).
    x: inputs ``[B, ...]`` shared by all members.
    mesh: a ``jax.sharding.Mesh`` with axis ``member_axis`` (use ``AxisType.Auto``).
    member_axis: mesh axis that splits the members.
    batch_axis: optional mesh axis that splits the batch.
    num_members: keep only the first ``num_members`` outputs (default: all ``M``).

  Returns:
    Outputs ``[num_members, B, ...]``.
  """
  _axis_size(mesh, member_axis)
  apply_fn = _as_apply_fn(apply_fn)
  m = _count_members(stacked_params)
  keep = m if num_members is None else int(num_members)
  if not 1 <= keep <= m:
    raise ValueError(f"sharded_apply: num_members={keep} must be in [1, {m}]")
  return _sharded_apply(apply_fn, stacked_params, x, mesh, member_axis, batch_axis, keep)


def make_member_mesh(num_devices: int | None = None, member_axis: str = "member") -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices with an ``Auto`` axis type."""
  return kd_data.make_mesh({member_axis: -1}, num_devices or 0)


# ----------------------------------------------------------------------------- groups


class EnsembleGroup(NamedTuple):
  """Members of one architecture: a single-member ``apply_fn`` (or linen module) and their
  stacked params."""

  apply_fn: ApplyFn | nn.Module
  stacked_params: Any

  @property
  def num_members(self) -> int:
    return num_members(self.stacked_params)


def apply_groups(groups: Sequence[EnsembleGroup], x: Any, *, strategy: str = "auto") -> Any:
  """Runs several groups (e.g. CNNs and MLPs) and concatenates their outputs.

  Args:
    groups: :class:`EnsembleGroup` s whose members give outputs of equal trailing shape.
    x: inputs shared by all members.
    strategy: passed to :func:`apply` for each group.

  Returns:
    ``[M_total, B, ...]`` with ``M_total`` the sum of the groups' sizes, in group order.
  """
  if not groups:
    raise ValueError("apply_groups: groups is empty")
  outs = [apply(g.apply_fn, g.stacked_params, x, strategy=strategy) for g in groups]
  shapes = [jax.tree.map(lambda y: y.shape[1:], o) for o in outs]
  if any(s != shapes[0] for s in shapes[1:]):
    raise ValueError(f"apply_groups: groups give different per-member output shapes {shapes}")
  return jax.tree.map(lambda *ys: jnp.concatenate(ys, axis=0), *outs)
