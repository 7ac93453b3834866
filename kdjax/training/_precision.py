"""Mixed precision: compute in bfloat16 (or float16), keep params, optimizer state, model
state and loss reductions in float32.

:func:`with_compute_dtype` wraps any model of the :class:`kdjax.models.Model` protocol
(zoo, linen, NNX, ``apply_fn``). Its ``apply`` casts the float32 ``params`` and the float
inputs to the compute dtype before the call, so every layer (``Dense``, ``Conv``,
attention) multiplies in that dtype, and casts the logits and requested features back to
float32 after it, so the losses, their reductions and the metrics run in float32. The
gradient of the cast is the identity, so gradients arrive in float32 at the float32
params and the optimizer never sees bfloat16.

Flax's normalisation layers compute their statistics in float32 whatever the input dtype
(``force_float32_reductions``), and the ``batch_stats`` collection is never cast: running
BatchNorm statistics stay float32.

This is the "cast at use" policy of Micikevicius et al.'s mixed precision training with
float32 master weights (and of DeepMind's ``jmp``); bfloat16 needs no loss scaling
(Kalamkar et al.). A model with its own ``dtype`` field set (the MLP, CNN1D) keeps it.

References:
  Micikevicius et al., "Mixed Precision Training", ICLR 2018.
  Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", 2019.
"""

import dataclasses
from collections.abc import Collection
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.models import ModelOutput, as_model

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def parse_dtype(name: str, *, field: str = "config.dtype") -> jnp.dtype:
  """``jnp.dtype`` of ``"float32"``, ``"bfloat16"`` or ``"float16"``.

  Raises:
    ValueError: another name (the message names ``field`` and the known dtypes).
  """
  if name not in DTYPES:
    raise ValueError(f"{field}={name!r} is not a compute dtype; known: {sorted(DTYPES)}")
  return jnp.dtype(DTYPES[name])


def cast_floating(tree: Any, dtype: Any) -> Any:
  """``tree`` with every floating leaf cast to ``dtype`` (integer leaves unchanged)."""
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


@dataclasses.dataclass(frozen=True)
class MixedPrecisionModel:
  """A :class:`kdjax.models.Model` that computes in ``dtype`` (see the module docstring).

  ``init`` is the wrapped model's (float32 params); ``apply`` returns float32 logits and
  features and the wrapped model's state (float32 BatchNorm statistics).
  """

  model: Any
  dtype: Any

  def init(self, rng: jax.Array, x: jax.Array) -> dict[str, Any]:
    return self.model.init(rng, x)

  def apply(self, variables, x: jax.Array, *, train: bool, rng: jax.Array | None = None,
            features: Collection[str] = (), **kwargs: Any) -> ModelOutput:
    variables = {**variables, "params": cast_floating(variables["params"], self.dtype)}
    out = self.model.apply(variables, cast_floating(x, self.dtype), train=train, rng=rng,
                           features=features, **kwargs)
    return ModelOutput(logits=out.logits.astype(jnp.float32),
                       features=cast_floating(out.features, jnp.float32), state=out.state)


def with_compute_dtype(model: Any, dtype: str | Any, *, field: str = "config.dtype") -> Any:
  """``model`` as a :class:`kdjax.models.Model` computing in ``dtype``.

  Args:
    model: a linen or NNX module, an ``apply_fn`` or a :class:`kdjax.models.Model`.
    dtype: ``"float32"`` (the model unchanged), ``"bfloat16"`` or ``"float16"`` (or the
      dtype itself).
    field: the config field holding ``dtype``, for the error message.
  """
  dtype = parse_dtype(dtype, field=field) if isinstance(dtype, str) else jnp.dtype(dtype)
  model = as_model(model)
  if dtype == jnp.float32:
    return model
  return MixedPrecisionModel(model, dtype)


def teacher_groups_in(groups: list, dtype: str, *, field: str = "config.teacher.dtype") -> list:
  """Teacher groups (:class:`kdjax.training.TeacherGroup`) whose models compute in
  ``dtype`` (their variables unchanged)."""
  return [dataclasses.replace(g, model=with_compute_dtype(g.model, dtype, field=field))
          for g in groups]
