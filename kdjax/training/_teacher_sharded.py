r"""Ensemble members split over a mesh axis inside the step (``config.teacher.member_axis``).

Each device holds only its ``ceil(M_g / D)`` members of every group (a group whose size
does not divide ``D`` is padded with copies of weight 0), runs them, and the partial fusions
are combined with one collective:

* ``member_axis == data_axis`` (a 1-D mesh): the batch is all-gathered, each device runs its
  members on the whole batch, and the partial sums are reduce-scattered
  (``psum_scatter``) back to the batch slices;
* otherwise (e.g. a ``data`` x ``member`` mesh): each device runs its members on its data
  slice, and the partial sums are ``psum``-ed over ``member_axis``.

Partial sums per space (weights :math:`w`, temperature :math:`\tau`, :math:`D` the devices):

.. math::
  \text{prob: } \log \textstyle\sum_d \exp \ell_d,\ \ell_d = \mathrm{logsumexp}_{m \in d}
  (\log\mathrm{softmax}(z_m/\tau) + \log w_m)\ \text{(max-shifted across devices)}

  \text{logit: } \log\mathrm{softmax}(\textstyle\sum_d \sum_{m \in d} w_m z_m / \tau)
  \qquad \text{log\_prob: } \log\mathrm{softmax}(\textstyle\sum_d \sum_{m \in d} w_m
  \log\mathrm{softmax}(z_m / \tau))

all times :math:`\tau`: the same targets as :func:`~kdjax.training._teacher_step.make_teacher_apply`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax import ensemble
from kdjax.training._step import TeacherApply
from kdjax.training._teacher import eval_apply_fn
from kdjax.training._teacher_step import _group_weights, _run_members, make_teacher_apply


def _padded_size(size: int, shards: int) -> int:
  return -(-size // shards) * shards


def sharded_teacher_variables(groups: Sequence, mesh: Mesh, member_axis: str):
  """Every group's stacked variables padded to a multiple of the axis size (repeating
  members) and placed with the member axis split over ``member_axis``."""
  shards = mesh.shape[member_axis]
  padded = [ensemble.take_members(g.variables, np.arange(_padded_size(g.size, shards)) % g.size)
            for g in groups]
  variables = {"params": tuple(v["params"] for v in padded),
               "model_state": tuple({k: a for k, a in v.items() if k != "params"} for v in padded)}
  return jax.device_put(variables, NamedSharding(mesh, P(member_axis)))


def make_sharded_teacher_apply(groups: Sequence, *, mesh: Mesh, member_axis: str,
                               data_axis: str = "data", space: str = "prob", weights=None,
                               temperature: float = 1.0, strategy: str = "auto") -> TeacherApply:
  """:func:`~kdjax.training._teacher_step.make_teacher_apply` with the members split over
  ``member_axis`` of ``mesh``; takes :func:`sharded_teacher_variables`. A single teacher is
  not split (its one member runs data-parallel, as unsharded).

  Raises:
    ValueError: if ``mesh`` lacks ``member_axis`` or ``data_axis``, and as
      ``make_teacher_apply``.
  """
  for name, axis in (("member_axis", member_axis), ("data_axis", data_axis)):
    if axis not in mesh.shape:
      raise ValueError(f"config.teacher.{name}={axis!r} is not an axis of the mesh "
                       f"{dict(mesh.shape)}")
  unsharded = make_teacher_apply(groups, space=space, weights=weights, temperature=temperature,
                                 strategy=strategy)  # checks every argument
  total = sum(g.size for g in groups)
  if total == 1:
    return unsharded
  shards = mesh.shape[member_axis]
  w = _group_weights(groups, weights)
  w = np.full(total, 1.0 / total) if w is None else w
  group_w, start = [], 0
  for g in groups:  # group order; padding copies get weight 0
    wg = np.zeros(_padded_size(g.size, shards), np.float32)
    wg[:g.size] = w[start:start + g.size]
    group_w.append(wg)
    start += g.size
  apply_fns = tuple(eval_apply_fn(g.model) for g in groups)
  gather = member_axis == data_axis

  def body(params, states, x):
    k = jax.lax.axis_index(member_axis)
    x_all = jax.lax.all_gather(x, member_axis, axis=0, tiled=True) if gather else x
    logits, local_w = [], []
    for fn, p, s, wg in zip(apply_fns, params, states, group_w):
      per = len(wg) // shards
      logits.append(_run_members(fn, {"params": p, **s}, x_all, strategy))
      local_w.append(jax.lax.dynamic_slice_in_dim(jnp.asarray(wg), k * per, per))
    z = jnp.concatenate(logits).astype(jnp.float32) / temperature
    lw = jnp.concatenate(local_w)[:, None, None]
    reduce = ((lambda a: jax.lax.psum_scatter(a, member_axis, scatter_dimension=0, tiled=True))
              if gather else (lambda a: jax.lax.psum(a, member_axis)))
    if space == "prob":
      local = jax.nn.logsumexp(jax.nn.log_softmax(z, axis=-1) + jnp.log(lw), axis=0)
      top = jax.lax.stop_gradient(jax.lax.pmax(local, member_axis))
      if gather:  # this device's rows of the max
        rows = x.shape[0]
        fused = jnp.log(reduce(jnp.exp(local - top))) + jax.lax.dynamic_slice_in_dim(
            top, k * rows, rows)
      else:
        fused = jnp.log(reduce(jnp.exp(local - top))) + top
    else:
      inner = z if space == "logit" else jax.nn.log_softmax(z, axis=-1)
      fused = jax.nn.log_softmax(reduce(jnp.sum(lw * inner, axis=0)), axis=-1)
    return fused * temperature

  run = jax.shard_map(body, mesh=mesh, in_specs=(P(member_axis), P(member_axis), P(data_axis)),
                      out_specs=P(data_axis), check_vma=False)

  def apply(variables, x):
    return run(variables["params"], variables["model_state"], x), {}

  return apply
