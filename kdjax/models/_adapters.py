"""One small protocol for every model kdjax trains or distils from.

A model is anything with

* ``init(rng, x) -> variables``: ``{"params": ..., **other collections}`` (e.g.
  ``"batch_stats"``), and
* ``apply(variables, x, *, train, rng=None, features=()) -> ModelOutput(logits,
  features, state)``, further keywords going to the module's call (e.g. a decoder's
  ``attention_mask``): ``features`` maps a path (``"penultimate"``, ``"block_2/conv"``)
  to an array; ``state`` holds the non-``params`` collections after the call (updated
  BatchNorm statistics when ``train``; unchanged otherwise).

:func:`as_model` wraps what users bring: a Flax linen module (:class:`LinenModel`), a
Flax NNX module (:class:`NNXModel`, via ``nnx.split`` / ``nnx.merge``) or a function
``apply_fn(variables, x, train) -> logits | (logits, features)`` (:class:`FunctionModel`).
The train step only ever calls this protocol.

Features are addressed by path. Everything a linen module sows into ``"intermediates"``
is returned under its flattened path (``flax.traverse_util.flatten_dict(sep="/")``), so
``self.sow("intermediates", "out", h)`` inside submodule ``block_2`` is ``"block_2/out"``.
A requested path that is not sown names a submodule whose ``__call__`` output is captured
(``capture_intermediates`` with a filter that matches only the requested paths, so a big
model does not keep every intermediate).
"""

import dataclasses
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import flax.linen as nn
import jax
from flax import nnx, traverse_util

Variables = Mapping[str, Any]

# Collections that are outputs of a call, never model state.
_OUTPUT_COLLECTIONS = ("intermediates",)


class ModelOutput(NamedTuple):
  """What :meth:`Model.apply` returns."""

  logits: jax.Array
  features: dict[str, jax.Array]
  state: dict[str, Any]


@runtime_checkable
class Model(Protocol):
  """The protocol the train step uses (see the module docstring)."""

  def init(self, rng: jax.Array, x: jax.Array) -> dict[str, Any]: ...

  def apply(self, variables: Variables, x: jax.Array, *, train: bool,
            rng: jax.Array | None = None, features: Collection[str] = (),
            **kwargs: Any) -> ModelOutput: ...


def split_variables(variables: Variables) -> tuple[Any, dict[str, Any]]:
  """``(params, state)``: the trainable params and every other collection."""
  if "params" not in variables:
    raise ValueError(f"variables must hold a 'params' collection; got {sorted(variables)}")
  state = {k: v for k, v in variables.items() if k not in ("params", *_OUTPUT_COLLECTIONS)}
  return variables["params"], state


def flat_features(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
  """``{"a/b/name": array}`` from a nested ``"intermediates"`` collection.

  A sown value is a tuple of every value sown under that name (the last one is
  returned); a captured submodule output ends in ``"__call__"``, dropped from the path.
  """
  flat = traverse_util.flatten_dict(dict(intermediates), sep="/")
  out = {}
  for path, values in flat.items():
    if path == "__call__":  # the top module's own output: the logits
      continue
    value = values[-1] if isinstance(values, tuple) else values
    if path.endswith("/__call__"):
      path = path[:-len("/__call__")]
    out[path] = value
  return out


def _check_requested(features: dict, requested: Collection[str], model_name: str) -> None:
  missing = sorted(set(requested) - set(features))
  if missing:
    raise ValueError(f"{model_name}: no feature or submodule at path(s) {missing}; sown "
                     f"features: {sorted(features)} (a submodule path such as 'block_2/conv' "
                     "captures that submodule's output)")


def _takes_train(fn: Callable) -> bool:
  try:
    return "train" in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


@dataclasses.dataclass(frozen=True)
class LinenModel:
  """A Flax linen module behind the :class:`Model` protocol.

  ``train`` is passed to ``__call__`` only if it takes a ``train`` argument (the MLP and
  CNN1D do not, a BatchNorm ResNet does); ``rng`` becomes ``rngs={"dropout": rng}``.
  In training every non-``params`` collection is mutable (BatchNorm's ``batch_stats``).
  """

  module: nn.Module

  @property
  def takes_train(self) -> bool:
    return _takes_train(self.module.__call__)

  def _train_kwargs(self, train: bool) -> dict:
    return {"train": train} if self.takes_train else {}

  def init(self, rng, x):
    # The params stream is ``rng`` itself: the same init as ``module.init(rng, x)``.
    variables = self.module.init({"params": rng, "dropout": jax.random.fold_in(rng, 1)}, x,
                                 **self._train_kwargs(False))
    return {k: v for k, v in variables.items() if k not in _OUTPUT_COLLECTIONS}

  def apply(self, variables, x, *, train, rng=None, features=(), **kwargs):
    _, state = split_variables(variables)
    wanted = frozenset(features)
    capture = False
    if wanted:
      capture = lambda mdl, method: method == "__call__" and "/".join(mdl.path) in wanted  # noqa: E731
    mutable = [*_OUTPUT_COLLECTIONS, *(state if train else ())]
    rngs = {"dropout": rng} if (train and rng is not None) else None
    logits, updates = self.module.apply(dict(variables), x, rngs=rngs, mutable=mutable,
                                        capture_intermediates=capture,
                                        **self._train_kwargs(train), **kwargs)
    found = flat_features(updates.get("intermediates", {}))
    _check_requested(found, wanted, type(self.module).__name__)
    new_state = {k: updates[k] for k in state} if train else state
    return ModelOutput(logits, found, new_state)


@dataclasses.dataclass(frozen=True, eq=False)
class NNXModel:
  """A Flax NNX module behind the :class:`Model` protocol.

  ``nnx.split(module, nnx.Param, nnx.RngState, ...)`` gives a pure ``(graphdef,
  params, rng state, other state)``; variables are ``{"params": pure dict}`` plus
  ``{"state": pure dict}`` when the module has other state (BatchNorm statistics). Each
  call merges them back, sets train/eval mode (``deterministic`` / ``use_running_average``
  as ``Module.train()`` / ``eval()`` do), reseeds the module's rng streams from ``rng``
  (dropout stays a pure function of the step's key) and captures ``nnx.Intermediate``
  values sown with ``self.sow``. A requested path that is not sown is a submodule whose
  ``__call__`` output is captured (``nnx.capture(..., method_outputs=...)``).
  """

  module: Any

  def __post_init__(self):
    graphdef, params, rng_state, rest = nnx.split(self.module, nnx.Param, nnx.RngState, ...)
    object.__setattr__(self, "_parts", (graphdef, params, rng_state, rest))

  def init(self, rng, x):
    del rng, x  # an NNX module is built with its weights
    _, params, _, rest = self._parts
    variables = {"params": nnx.to_pure_dict(params)}
    if jax.tree.leaves(rest):
      variables["state"] = nnx.to_pure_dict(rest)
    return variables

  def apply(self, variables, x, *, train, rng=None, features=()):
    graphdef, params_t, rng_t, rest_t = self._parts
    params = jax.tree.map(lambda a: a, params_t)
    nnx.replace_by_pure_dict(params, variables["params"])
    rest = jax.tree.map(lambda a: a, rest_t)
    if "state" in variables:
      nnx.replace_by_pure_dict(rest, variables["state"])
    module = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, rng_t), rest)
    module.set_attributes(deterministic=not train, use_running_average=not train,
                          raise_if_not_found=False)
    if train and rng is not None and jax.tree.leaves(rng_t):
      nnx.reseed(module, default=rng, dropout=rng)
    wanted = frozenset(features)
    capture_kwargs = {"method_outputs": nnx.Intermediate} if wanted else {}
    logits, inter = nnx.capture(module, nnx.Intermediate, **capture_kwargs)(x)
    found = flat_features(nnx.to_pure_dict(inter))
    _check_requested(found, wanted, type(self.module).__name__)
    state = {}
    if "state" in variables:
      _, _, _, new_rest = nnx.split(module, nnx.Param, nnx.RngState, ...)
      state = {"state": nnx.to_pure_dict(new_rest) if train else variables["state"]}
    return ModelOutput(logits, found, state)


@dataclasses.dataclass(frozen=True)
class FunctionModel:
  """``apply_fn(variables, x, train) -> logits | (logits, features)`` as a :class:`Model`.

  Stateless: ``state`` is returned unchanged. ``init_fn(rng, x) -> variables`` is needed
  only to train it as a student (a teacher's variables come from a file).
  """

  apply_fn: Callable
  init_fn: Callable | None = None

  def init(self, rng, x):
    if self.init_fn is None:
      raise ValueError("FunctionModel has no init_fn: pass init_fn(rng, x) -> variables to "
                       "train it as a student, or give a teacher its variables")
    return dict(self.init_fn(rng, x))

  def apply(self, variables, x, *, train, rng=None, features=()):
    del rng
    _, state = split_variables(variables)
    out = self.apply_fn(variables, x, train)
    logits, found = out if isinstance(out, tuple) else (out, {})
    found = flat_features(found)
    _check_requested(found, features, getattr(self.apply_fn, "__name__", "apply_fn"))
    return ModelOutput(logits, found, state)


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedModel:
  """A model that starts from given ``variables`` (e.g. a Hugging Face checkpoint's, from
  :func:`kdjax.convert.from_hf`): ``init`` returns them, as float32 master weights;
  ``apply`` is the wrapped model's."""

  model: Any
  variables: Any

  def init(self, rng, x):
    del rng, x
    return jax.tree.map(
        lambda a: a.astype("float32") if jax.numpy.issubdtype(a.dtype, jax.numpy.floating) else a,
        dict(self.variables))

  def apply(self, variables, x, *, train, rng=None, features=(), **kwargs):
    return as_model(self.model).apply(variables, x, train=train, rng=rng, features=features,
                                      **kwargs)


def output_head(model: Any) -> Callable[[Any], jax.Array]:
  """``params -> [D, V]``: the output projection of a language model (a module with an
  ``output_head(params)`` method, e.g. :class:`kdjax.models.Decoder`, possibly wrapped by
  kdjax's adapters), for the fused losses.

  Raises:
    ValueError: if the model has none.
  """
  seen = model
  for _ in range(6):
    if hasattr(seen, "output_head"):
      return seen.output_head
    seen = getattr(seen, "module", None) or getattr(seen, "model", None)
    if seen is None:
      break
  raise ValueError(f"{type(model).__name__} has no output_head(params): the fused terms "
                   "(fused_kd, fused_cross_entropy) need a language model such as "
                   "kdjax.models.Decoder")


def as_model(model: Any) -> Model:
  """Wraps a linen module, an NNX module or an ``apply_fn`` as a :class:`Model`;
  an object that already is one is returned as it is.

  Raises:
    TypeError: for anything else.
  """
  if isinstance(model, (LinenModel, NNXModel, FunctionModel, PretrainedModel)):
    return model
  if isinstance(model, nn.Module):
    return LinenModel(model)
  if isinstance(model, nnx.Module):
    return NNXModel(model)
  if isinstance(model, Model):
    return model
  if callable(model):
    return FunctionModel(model)
  raise TypeError(f"model must be a flax linen module, an NNX module, an "
                  f"apply_fn(variables, x, train) or a kdjax Model; got {type(model).__name__}")



_EVAL_FNS: dict = {}  # (model, features) -> the function built for it


def _cached(key, build: Callable) -> Callable:
  """``build()``, once per hashable ``key`` (an unhashable model, an NNX module: each call)."""
  try:
    return _EVAL_FNS[key]
  except TypeError:
    return build()
  except KeyError:
    fn = _EVAL_FNS[key] = build()
    return fn


def eval_apply(model: Any, features: Collection[str] = ()
               ) -> Callable[[Variables, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
  """``(variables, x) -> (logits [B, C], features)`` in eval mode (``train=False``:
  BatchNorm uses its running statistics and never updates them, dropout is off).

  One function object per ``(model, features)`` where the model is hashable, so jitted
  callers (``jax.jit``, :mod:`kdjax.ensemble`) compile once per architecture.
  """
  features = tuple(sorted(features))

  def build():
    adapter = as_model(model)

    def apply(variables, x):
      logits, found, _ = adapter.apply(variables, x, train=False, features=features)
      return logits, found

    return apply

  return _cached((model, features), build)


def eval_logits(model: Any) -> Callable[[Variables, jax.Array], jax.Array]:
  """``(variables, x) -> logits [B, C]`` in eval mode (:func:`eval_apply` without features)."""

  def build():
    adapter = as_model(model)
    return lambda variables, x: adapter.apply(variables, x, train=False).logits

  return _cached((model, None), build)
