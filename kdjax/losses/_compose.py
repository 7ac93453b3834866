"""Composes named, weighted loss terms into one training objective.

``make_objective(terms)`` validates the terms up front (unknown names or keywords fail
here, not at trace time) and returns an :class:`Objective`:

>>> import jax, jax.numpy as jnp
>>> from kdjax.losses import LossInputs, make_objective
>>> objective = make_objective([("hinton_kd", 1.0, {"temperature": 4.0, "alpha": 0.9})])
>>> inputs = LossInputs(student_logits=jnp.zeros((2, 3)), labels=jnp.array([0, 1]),
...                     teacher_logits=jnp.zeros((2, 3)))
>>> aux = objective.init(jax.random.key(0), inputs)
>>> loss, metrics = objective(aux, inputs)
>>> sorted(metrics)
['loss', 'loss/hinton_kd']
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from kdjax.losses import _checks
from kdjax.losses import _features
from kdjax.losses import _kd
from kdjax.losses import _relational
from kdjax.losses import _weights


@flax.struct.dataclass
class LossInputs:
  """Everything a loss term may read; a pytree, so it passes through ``jit``.

  Attributes:
    student_logits: ``[B, C]`` student logits.
    labels: ``[B]`` integer labels, or ``None``.
    teacher_logits: ``[B, C]`` teacher logits or (fused) log-probabilities; every
      logit term is shift-invariant per example, so either works.
    student_features: name -> ``[B, ...]`` array (``kdjax.models.apply_with_features``).
    teacher_features: name -> ``[B, ...]`` array.
    student_params: student parameter pytree (for ``weight_matching``).
    teacher_params: teacher parameter pytree.
    where: ``[B]`` bool, the valid (non-padding) examples, or ``None`` for all.
  """

  student_logits: jax.Array
  labels: jax.Array | None = None
  teacher_logits: jax.Array | None = None
  student_features: dict = flax.struct.field(default_factory=dict)
  teacher_features: dict = flax.struct.field(default_factory=dict)
  student_params: Any = None
  teacher_params: Any = None
  where: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class _TermSpec:
  """How to compute one registered term."""

  kind: str  # "per_example" or "batch"
  source: str  # "logits", "features" or "params"
  kwargs: Mapping[str, Any]  # allowed keyword -> default (_REQUIRED if none)
  needs_labels: Callable[[Mapping[str, Any]], bool]


_REQUIRED = object()
_FEATURE_KWARGS = {"student_feature": _REQUIRED, "teacher_feature": None}

# A literal registry: name -> spec. No import-time registration.
TERMS: dict[str, _TermSpec] = {
    "cross_entropy": _TermSpec("per_example", "logits", {}, lambda kw: True),
    "soft_target_kl": _TermSpec("per_example", "logits", {"temperature": 1.0},
                                lambda kw: False),
    "hinton_kd": _TermSpec("per_example", "logits",
                           {"temperature": _REQUIRED, "alpha": _REQUIRED},
                           lambda kw: kw["alpha"] != 1),
    "dkd": _TermSpec("per_example", "logits",
                     {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}, lambda kw: True),
    "dist": _TermSpec("batch", "logits", {"beta": 1.0, "gamma": 1.0, "temperature": 1.0},
                      lambda kw: False),
    "hint": _TermSpec("per_example", "features",
                      {**_FEATURE_KWARGS, "projector": None, "norm": None}, lambda kw: False),
    "attention_transfer": _TermSpec("per_example", "features", {**_FEATURE_KWARGS, "p": 2},
                                    lambda kw: False),
    "similarity_preserving": _TermSpec("batch", "features", _FEATURE_KWARGS, lambda kw: False),
    "rkd_distance": _TermSpec("batch", "features", _FEATURE_KWARGS, lambda kw: False),
    "rkd_angle": _TermSpec("batch", "features", _FEATURE_KWARGS, lambda kw: False),
    "pkt": _TermSpec("batch", "features", _FEATURE_KWARGS, lambda kw: False),
    "weight_matching": _TermSpec("batch", "params", {"mapping": None, "normalize": True},
                                 lambda kw: False),
}

_RELATIONAL = {
    "similarity_preserving": _relational.similarity_preserving,
    "rkd_distance": _relational.rkd_distance,
    "rkd_angle": _relational.rkd_angle,
    "pkt": _relational.pkt,
}


@dataclasses.dataclass(frozen=True)
class Term:
  """One validated term: ``label`` (metric name), registered ``name``, weight, kwargs."""

  label: str
  name: str
  weight: float
  kwargs: Mapping[str, Any]


def _to_plain(x: Any) -> Any:
  return x.to_dict() if hasattr(x, "to_dict") else x


def _make_term(label: str, name: str, weight: Any, kwargs: Mapping[str, Any]) -> Term:
  if name not in TERMS:
    raise ValueError(f"make_objective: unknown loss term {name!r} (label {label!r}); known "
                     f"terms: {sorted(TERMS)}")
  spec = TERMS[name]
  kwargs = dict(_to_plain(kwargs) or {})
  unknown = set(kwargs) - set(spec.kwargs)
  if unknown:
    raise ValueError(f"make_objective: term {label!r} ({name}) got unknown keyword(s) "
                     f"{sorted(unknown)}; known keywords: {sorted(spec.kwargs)}")
  missing = [k for k, v in spec.kwargs.items() if v is _REQUIRED and k not in kwargs]
  if missing:
    raise ValueError(f"make_objective: term {label!r} ({name}) needs keyword(s) {missing}")
  full = {k: kwargs.get(k, v) for k, v in spec.kwargs.items()}
  if spec.source == "features" and full["teacher_feature"] is None:
    full["teacher_feature"] = full["student_feature"]
  if "temperature" in full:
    _checks.check_positive(f"make_objective: term {label!r}", "temperature", full["temperature"])
  if name == "hint":
    if full["projector"] not in (None, "dense", "conv"):
      raise ValueError(f"make_objective: term {label!r}: projector must be None, 'dense' or "
                       f"'conv', got {full['projector']!r}")
    if full["norm"] not in (None, "layer"):
      raise ValueError(f"make_objective: term {label!r}: norm must be None or 'layer', got "
                       f"{full['norm']!r}")
  try:
    weight = float(weight)
  except (TypeError, ValueError):
    raise ValueError(f"make_objective: term {label!r} weight must be a number, "
                     f"got {weight!r}") from None
  return Term(label, name, weight, full)


def _parse_terms(terms: Any) -> list[Term]:
  terms = _to_plain(terms)
  parsed = []
  if isinstance(terms, Mapping):
    for label, cfg in terms.items():
      cfg = dict(_to_plain(cfg))
      if "weight" not in cfg:
        raise ValueError(f"make_objective: term {label!r} needs a 'weight'")
      weight = cfg.pop("weight")
      name = cfg.pop("loss", label)
      parsed.append(_make_term(str(label), name, weight, cfg))
  elif isinstance(terms, Sequence) and not isinstance(terms, str):
    for item in terms:
      if not (isinstance(item, (tuple, list)) and len(item) in (2, 3)):
        raise ValueError(f"make_objective: each term must be (name, weight, kwargs), "
                         f"got {item!r}")
      parsed.append(_make_term(item[0], item[0], item[1], item[2] if len(item) == 3 else {}))
  else:
    raise TypeError(f"make_objective: terms must be a sequence of (name, weight, kwargs) or a "
                    f"mapping label -> {{'weight': w, ...}}, got {type(terms).__name__}")
  labels = [t.label for t in parsed]
  dupes = sorted({x for x in labels if labels.count(x) > 1})
  if dupes:
    raise ValueError(f"make_objective: duplicate term label(s) {dupes}; use the mapping form "
                     "with distinct labels and a 'loss' key, e.g. "
                     "{'hint_a': {'loss': 'hint', ...}}")
  if not parsed:
    raise ValueError("make_objective: no terms given")
  return parsed


def _feature(inputs: LossInputs, side: str, name: str, label: str) -> jax.Array:
  feats = inputs.student_features if side == "student" else inputs.teacher_features
  if name not in feats:
    raise ValueError(f"objective term {label!r}: {side}_features has no {name!r}; available: "
                     f"{sorted(feats)}")
  return feats[name]


class Objective:
  """A weighted sum of loss terms; build it with :func:`make_objective`.

  ``init(rng, inputs)`` returns the trainable auxiliary parameters (hint projectors,
  keyed by term label); ``objective(aux_params, inputs)`` returns
  ``(loss, metrics)`` with ``metrics = {"loss/<label>": unweighted term, "loss": total}``.
  Per-example terms are averaged over the valid examples (``inputs.where``); batch-level
  terms get ``where`` themselves.
  """

  def __init__(self, terms: Sequence[Term]):
    self.terms = tuple(terms)

  def __repr__(self) -> str:
    return f"Objective({[(t.label, t.name, t.weight) for t in self.terms]})"

  @property
  def needs_teacher(self) -> bool:
    return any(t.name != "cross_entropy" for t in self.terms)

  @property
  def needs_labels(self) -> bool:
    return any(TERMS[t.name].needs_labels(t.kwargs) for t in self.terms)

  @property
  def needs_params(self) -> bool:
    return any(TERMS[t.name].source == "params" for t in self.terms)

  @property
  def student_features(self) -> frozenset[str]:
    return frozenset(t.kwargs["student_feature"] for t in self.terms
                     if TERMS[t.name].source == "features")

  @property
  def teacher_features(self) -> frozenset[str]:
    return frozenset(t.kwargs["teacher_feature"] for t in self.terms
                     if TERMS[t.name].source == "features")

  def _projector(self, term: Term, inputs: LossInputs) -> _features.Projector:
    target = _feature(inputs, "teacher", term.kwargs["teacher_feature"], term.label).shape[1:]
    return _features.Projector(target_shape=tuple(target), kind=term.kwargs["projector"],
                               norm=term.kwargs["norm"])

  def init(self, rng: jax.Array, inputs: LossInputs) -> dict[str, Any]:
    """Initialises the auxiliary parameters (``{}`` when no term has any)."""
    aux = {}
    with_params = [t for t in self.terms if t.name == "hint" and t.kwargs["projector"]]
    for i, term in enumerate(with_params):
      x = _feature(inputs, "student", term.kwargs["student_feature"], term.label)
      variables = self._projector(term, inputs).init(jax.random.fold_in(rng, i), x)
      aux[term.label] = variables["params"]
    return aux

  def _require(self, term: Term, inputs: LossInputs, field: str) -> Any:
    value = getattr(inputs, field)
    if value is None:
      raise ValueError(f"objective term {term.label!r} ({term.name}) needs inputs.{field}, "
                       "which is None")
    return value

  def _term_value(self, term: Term, aux_params: Mapping[str, Any],
                  inputs: LossInputs) -> jax.Array:
    kw, name = term.kwargs, term.name
    spec = TERMS[name]
    if spec.source == "logits":
      s = inputs.student_logits
      labels = inputs.labels
      if spec.needs_labels(kw):
        labels = self._require(term, inputs, "labels")
      if name == "cross_entropy":
        return _kd.cross_entropy(s, labels)
      t = self._require(term, inputs, "teacher_logits")
      if name == "soft_target_kl":
        return _kd.soft_target_kl(s, t, temperature=kw["temperature"])
      if name == "hinton_kd":
        return _kd.hinton_kd(s, t, labels, temperature=kw["temperature"], alpha=kw["alpha"])
      if name == "dkd":
        return _kd.dkd(s, t, labels, alpha=kw["alpha"], beta=kw["beta"],
                       temperature=kw["temperature"])
      return _kd.dist(s, t, beta=kw["beta"], gamma=kw["gamma"], temperature=kw["temperature"],
                      where=inputs.where)
    if spec.source == "params":
      return _weights.weight_matching(self._require(term, inputs, "student_params"),
                                      self._require(term, inputs, "teacher_params"),
                                      mapping=kw["mapping"], normalize=kw["normalize"])
    fs = _feature(inputs, "student", kw["student_feature"], term.label)
    ft = _feature(inputs, "teacher", kw["teacher_feature"], term.label)
    if name == "hint":
      if kw["projector"]:
        if term.label not in aux_params:
          raise ValueError(f"objective term {term.label!r} has a projector but aux_params has "
                           f"no {term.label!r} (keys {sorted(aux_params)}); call "
                           "objective.init(rng, inputs) first")
        fs = self._projector(term, inputs).apply({"params": aux_params[term.label]}, fs)
      return _features.hint(fs, ft)
    if name == "attention_transfer":
      return _features.attention_transfer(fs, ft, p=kw["p"])
    return _RELATIONAL[name](fs, ft, where=inputs.where)

  def __call__(self, aux_params: Mapping[str, Any],
               inputs: LossInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(sum_i weight_i * term_i, metrics)``."""
    aux_params = {} if aux_params is None else aux_params
    batch = inputs.student_logits.shape[0]
    if inputs.where is None:
      mask = jnp.ones((batch,), jnp.float32)
    else:
      mask = _checks.check_where("objective", inputs.where, (batch,), "the batch")
      mask = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    metrics = {}
    total = jnp.zeros((), jnp.float32)
    for term in self.terms:
      value = self._term_value(term, aux_params, inputs)
      if TERMS[term.name].kind == "per_example":
        if value.shape != (batch,):
          raise ValueError(f"objective term {term.label!r} gave per-example shape "
                           f"{value.shape}, expected ({batch},)")
        value = jnp.sum(value * mask) / count
      metrics[f"loss/{term.label}"] = value
      total = total + term.weight * value
    metrics["loss"] = total
    return total, metrics


def make_objective(terms: Any) -> Objective:
  """Builds an :class:`Objective` from weighted loss terms.

  Args:
    terms: either a sequence of ``(name, weight, kwargs)`` tuples, e.g.
      ``[("hinton_kd", 1.0, {"temperature": 4.0, "alpha": 0.9}),
      ("hint", 30.0, {"student_feature": "penultimate", "teacher_feature": "block_2",
      "projector": "dense"})]``, or a mapping ``label -> {"weight": w, **kwargs}`` whose
      ``label`` is the term name unless a ``"loss"`` key names it (so two ``hint``
      terms can coexist as ``"hint_a"``/``"hint_b"``). ``ml_collections.ConfigDict``
      values are accepted. Known names and keywords are in :data:`TERMS`.

  Returns:
    An :class:`Objective`.

  Raises:
    ValueError: an unknown term name or keyword (the message lists the known ones), a
      missing required keyword, a duplicate label or a bad value.
  """
  return Objective(_parse_terms(terms))


def term_keywords() -> dict[str, dict[str, Any]]:
  """``{term name: {keyword: default or "<required>"}}`` for documentation and errors."""
  return {name: {k: ("<required>" if v is _REQUIRED else v) for k, v in spec.kwargs.items()}
          for name, spec in TERMS.items()}

