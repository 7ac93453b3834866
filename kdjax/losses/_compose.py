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

Adding a loss term touches one place, the :data:`TERMS` registry: one entry per term,
holding its function, the inputs it takes (positional, in order, by the names of
:data:`INPUTS`) and its keywords with defaults (``REQUIRED`` for none). For example a
per-example term ``forward_kl(student_logits, teacher_logits, *, temperature)`` is::

    "forward_kl": TermSpec(_seq.forward_kl, ("student_logits", "teacher_logits"),
                           {"temperature": 1.0}),

The composer then validates its keywords, fetches its inputs from :class:`LossInputs`,
masks padded rows, and averages its ``[B]`` values over the valid rows. Set
``batch_level=True`` for a function that returns one scalar for the batch and takes
``where=`` (``[B]`` valid rows) itself. A term that takes ``"labels"`` needs them unless
its ``needs_labels(kwargs)`` says otherwise (then it gets ``None``); rows whose label is
outside ``[0, C)`` are left out of its average (see :func:`kdjax.losses.label_mask`).
Soft targets (``LossInputs.label_probs``, ``[B, C]``, e.g. mixup's) reach the terms that
also take ``"label_probs"`` (``cross_entropy``, ``hinton_kd``): they replace the one-hot
labels; with ``labels`` too, rows with an ignored label still give 0, and with
``labels=None`` every (non-padding) row is used. A term that needs hard labels (``dkd``)
raises a ``ValueError`` naming it when only ``label_probs`` is given. A term
that takes ``"student_feature"``/``"teacher_feature"`` gets the keywords
``student_feature`` (required) and ``teacher_feature`` (default: the same name) to pick
them; ``projector=True`` adds the ``projector``/``norm`` keywords of a learned
:class:`~kdjax.losses.Projector` on the student feature (its params live in ``aux``).

Masks select, never multiply: the rows that ``inputs.where`` marks as padding are replaced
by zeros in every per-example input *before* any term runs, so NaN, inf or an
out-of-range label there reaches neither the loss nor its gradient.

A term's ``weight`` is a number, or a schedule of the training step: ``{"value": w,
"warmup_steps": n}`` (linear warm-up from 0 to ``w`` over ``n`` steps, as in DKD's
official recipe), ``{"init": a, "end": b, "steps": n}`` (linear from ``a`` to ``b``), or
any callable ``step -> weight`` (e.g. an ``optax`` schedule). Its float hyperparameters
(``temperature``, ``alpha``, ``beta``, ``gamma``, ``label_smoothing``) take the same
schedules (a temperature must stay > 0, so it takes no warm-up from 0), e.g.
``{"hinton_kd": {"weight": 1.0, "temperature": 4.0, "alpha": {"init": 0.0, "end": 0.9,
"steps": 1000}}}``. An objective with a schedule needs ``objective(aux, inputs,
step=step)``.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from kdjax.losses import _checks
from kdjax.losses import _divergences
from kdjax.losses import _features
from kdjax.losses import _fused
from kdjax.losses import _fused_ce
from kdjax.losses import _kd
from kdjax.losses import _relational
from kdjax.losses import _schedules
from kdjax.losses import _sparse
from kdjax.losses import _targets
from kdjax.losses import _weights


@flax.struct.dataclass
class LossInputs:
  """Everything a loss term may read; a pytree, so it passes through ``jit``.

  Attributes:
    student_logits: ``[B, C]`` student logits.
    labels: ``[B]`` integer labels, or ``None``.
    label_probs: ``[B, C]`` soft targets (rows summing to 1, e.g. mixup's), or ``None``.
      Terms that take them (``cross_entropy``, ``hinton_kd``'s hard part) use them
      instead of one-hot ``labels``; a row is then used when its label is valid, or
      always when ``labels`` is ``None``. Terms that need hard labels (``dkd``) raise.
    teacher_logits: ``[B, C]`` teacher logits or (fused) log-probabilities; every
      logit term is shift-invariant per example, so either works.
    student_features: name -> ``[B, ...]`` array (``kdjax.models.apply_with_features``).
    teacher_features: name -> ``[B, ...]`` array.
    student_params: student parameter pytree (for ``weight_matching``).
    teacher_params: teacher parameter pytree.
    student_head, teacher_head: ``[d, C]`` output projections (a language model's head,
      read by the fused terms with the final hidden states as features), or ``None``.
    teacher_topk_log_probs, teacher_topk_indices: ``[B, k]`` a teacher stored as its top-k
      log-probabilities and their token ids (the ``sparse_kl`` term), or ``None``.
    where: ``[B]`` bool, the valid (non-padding) examples, or ``None`` for all.
  """

  student_logits: jax.Array
  labels: jax.Array | None = None
  label_probs: jax.Array | None = None
  teacher_logits: jax.Array | None = None
  student_features: dict = flax.struct.field(default_factory=dict)
  teacher_features: dict = flax.struct.field(default_factory=dict)
  student_params: Any = None
  teacher_params: Any = None
  student_head: jax.Array | None = None
  teacher_head: jax.Array | None = None
  teacher_topk_log_probs: jax.Array | None = None
  teacher_topk_indices: jax.Array | None = None
  where: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class TermSpec:
  """One registered loss term: its function and what it takes.

  Attributes:
    fn: the loss, called as ``fn(*inputs, **kwargs)``; returns ``[B]`` (or a scalar when
      ``batch_level``).
    inputs: names from :data:`INPUTS`, passed positionally in this order.
    kwargs: the function's keywords -> default (``REQUIRED`` when it has none).
    batch_level: ``fn`` returns a scalar for the batch and takes ``where`` (``[B]``).
    needs_labels: for terms taking ``"labels"``: ``kwargs -> bool``; when it returns
      False the term gets ``labels=None`` (default: labels always needed).
    projector: the student feature may pass through a learned :class:`Projector`
      (adds the ``projector`` and ``norm`` keywords).
  """

  fn: Callable[..., jax.Array]
  inputs: tuple[str, ...]
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  batch_level: bool = False
  needs_labels: Callable[[Mapping[str, Any]], bool] | None = None
  projector: bool = False

  def __post_init__(self):
    unknown = [name for name in self.inputs if name not in INPUTS]
    if unknown:
      raise ValueError(f"TermSpec({getattr(self.fn, '__name__', self.fn)}): unknown input(s) "
                       f"{unknown}; known inputs: {list(INPUTS)}")

  def keywords(self) -> dict[str, Any]:
    """Every keyword the term accepts in ``make_objective`` -> default."""
    kw = dict(self.kwargs)
    if "student_feature" in self.inputs:  # a spec may give the feature a default
      kw = {"student_feature": REQUIRED, "teacher_feature": None, **kw}
    if self.projector:
      kw.update(projector=None, norm=None)
    return kw


REQUIRED = object()


def _fused_kd(student_hidden, teacher_hidden, student_head, teacher_head, *, divergence,
              temperature, chunk_size):
  """The ``fused_kd`` term: :func:`kdjax.losses.fused_distillation_loss`, ``[N]``."""
  return _fused.fused_distillation_loss(student_hidden, student_head, teacher_hidden,
                                        teacher_head, divergence=divergence,
                                        temperature=temperature, chunk_size=chunk_size)

INPUTS = ("student_logits", "teacher_logits", "labels", "label_probs", "student_feature",
          "teacher_feature", "student_params", "teacher_params", "student_head", "teacher_head",
          "teacher_topk_log_probs", "teacher_topk_indices")
_LOGITS = ("student_logits", "teacher_logits")
_FEATURES = ("student_feature", "teacher_feature")
_PARAMS = ("student_params", "teacher_params")
_TOPK = ("teacher_topk_log_probs", "teacher_topk_indices")

# A literal registry: name -> spec. No import-time registration.
TERMS: dict[str, TermSpec] = {
    "cross_entropy": TermSpec(_targets.cross_entropy_term,
                              ("student_logits", "labels", "label_probs"),
                              {"label_smoothing": 0.0}),
    "soft_target_kl": TermSpec(_kd.soft_target_kl, _LOGITS, {"temperature": 1.0}),
    "forward_kl": TermSpec(_divergences.forward_kl, _LOGITS, {"temperature": 1.0}),
    "reverse_kl": TermSpec(_divergences.reverse_kl, _LOGITS, {"temperature": 1.0}),
    "generalized_jsd": TermSpec(_divergences.generalized_jsd, _LOGITS,
                                {"beta": 0.5, "temperature": 1.0}),
    "skew_kl": TermSpec(_divergences.skew_kl, _LOGITS, {"alpha": 0.1, "temperature": 1.0}),
    "skew_reverse_kl": TermSpec(_divergences.skew_reverse_kl, _LOGITS,
                                {"alpha": 0.1, "temperature": 1.0}),
    "total_variation": TermSpec(_divergences.total_variation, _LOGITS, {"temperature": 1.0}),
    "hinton_kd": TermSpec(_kd.hinton_kd, (*_LOGITS, "labels", "label_probs"),
                          {"temperature": REQUIRED, "alpha": REQUIRED, "label_smoothing": 0.0},
                          needs_labels=lambda kw: kw["alpha"] != 1),
    "dkd": TermSpec(_kd.dkd, (*_LOGITS, "labels"),
                    {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}),
    "dist": TermSpec(_kd.dist, _LOGITS, {"beta": 1.0, "gamma": 1.0, "temperature": 1.0},
                     batch_level=True),
    "hint": TermSpec(_features.hint, _FEATURES, projector=True),
    "attention_transfer": TermSpec(_features.attention_transfer, _FEATURES, {"p": 2}),
    "similarity_preserving": TermSpec(_relational.similarity_preserving, _FEATURES,
                                      batch_level=True),
    "rkd_distance": TermSpec(_relational.rkd_distance, _FEATURES, batch_level=True),
    "rkd_angle": TermSpec(_relational.rkd_angle, _FEATURES, batch_level=True),
    "pkt": TermSpec(_relational.pkt, _FEATURES, batch_level=True),
    # Language models: the final hidden states (feature "hidden" of kdjax.models.Decoder)
    # and the output heads, never the [tokens, V] logits.
    "fused_kd": TermSpec(_fused_kd, ("student_feature", "teacher_feature", "student_head",
                                     "teacher_head"),
                         {"student_feature": "hidden", "divergence": "forward_kl",
                          "temperature": 1.0, "chunk_size": 1024}),
    "fused_cross_entropy": TermSpec(_fused_ce.fused_cross_entropy,
                                    ("student_feature", "student_head", "labels"),
                                    {"student_feature": "hidden", "chunk_size": 1024}),
    "sparse_kl": TermSpec(_sparse.sparse_kl, ("student_logits", "teacher_topk_log_probs",
                                              "teacher_topk_indices"), {"variant": "tail"}),
    "weight_matching": TermSpec(_weights.weight_matching, _PARAMS,
                                {"mapping": None, "normalize": True}, batch_level=True),
}
_OWN_KEYWORDS = ("student_feature", "teacher_feature", "projector", "norm")


@dataclasses.dataclass(frozen=True)
class Term:
  """One validated term: ``label`` (metric name), registered ``name``, weight, kwargs.

  ``weight`` is a number, or a callable ``step -> weight`` (a schedule); so is each
  value of ``kwargs`` named in ``schedules`` (the keywords that are schedules).
  """

  label: str
  name: str
  weight: float | Callable[[jax.Array], jax.Array]
  kwargs: Mapping[str, Any]
  schedules: frozenset[str] = frozenset()

  @property
  def spec(self) -> TermSpec:
    return TERMS[self.name]

  def needs_labels(self) -> bool:
    spec = self.spec
    return "labels" in spec.inputs and (spec.needs_labels is None
                                        or bool(spec.needs_labels(self.kwargs)))


def _to_plain(x: Any) -> Any:
  return x.to_dict() if hasattr(x, "to_dict") else x


def _make_term(label: str, name: str, weight: Any, kwargs: Mapping[str, Any]) -> Term:
  if name not in TERMS:
    raise ValueError(f"make_objective: unknown loss term {name!r} (label {label!r}); known "
                     f"terms: {sorted(TERMS)}")
  allowed = TERMS[name].keywords()
  kwargs = dict(_to_plain(kwargs) or {})
  unknown = set(kwargs) - set(allowed)
  if unknown:
    raise ValueError(f"make_objective: term {label!r} ({name}) got unknown keyword(s) "
                     f"{sorted(unknown)}; known keywords: {sorted(allowed)}")
  missing = [k for k, v in allowed.items() if v is REQUIRED and k not in kwargs]
  if missing:
    raise ValueError(f"make_objective: term {label!r} ({name}) needs keyword(s) {missing}")
  full = {k: kwargs.get(k, v) for k, v in allowed.items()}
  if "teacher_feature" in full and full["teacher_feature"] is None:
    full["teacher_feature"] = full["student_feature"]
  schedules = set()
  for key in _schedules.SCHEDULABLE:
    if key in full and full[key] is not REQUIRED and full[key] is not None:
      full[key] = _schedules.parse_schedule(f"term {label!r}", key, full[key],
                                            positive=key in _schedules.POSITIVE)
      if callable(full[key]):
        schedules.add(key)
  if "temperature" in full and "temperature" not in schedules:
    _checks.check_positive(f"make_objective: term {label!r}", "temperature", full["temperature"])
  if full.get("projector") not in (None, "dense", "conv", "conv_reg"):
    raise ValueError(f"make_objective: term {label!r}: projector must be None, 'dense', "
                     f"'conv' or 'conv_reg', got {full['projector']!r}")
  if full.get("projector") == "conv_reg" and full.get("norm") is not None:
    raise ValueError(f"make_objective: term {label!r}: projector 'conv_reg' has its own "
                     f"BatchNorm; norm must be None, got {full['norm']!r}")
  if full.get("norm") not in (None, "layer"):
    raise ValueError(f"make_objective: term {label!r}: norm must be None or 'layer', got "
                     f"{full['norm']!r}")
  weight = _schedules.parse_schedule(f"term {label!r}", "weight", weight)
  return Term(label, name, weight, full, frozenset(schedules))


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
  keyed by term label); ``objective(aux_params, inputs, step=None)`` returns
  ``(loss, metrics)`` with ``metrics = {"loss/<label>": unweighted term, "loss": total}``.
  Per-example terms are averaged over the valid examples (``inputs.where``, and for
  terms that take labels, the rows whose label is in ``[0, C)``; none valid gives 0);
  batch-level terms get that mask as ``where``.
  """

  def __init__(self, terms: Sequence[Term]):
    self.terms = tuple(terms)

  def __repr__(self) -> str:
    return f"Objective({[(t.label, t.name, t.weight) for t in self.terms]})"

  def _takes(self, *names: str) -> list[Term]:
    return [t for t in self.terms if any(n in t.spec.inputs for n in names)]

  @property
  def needs_teacher(self) -> bool:
    return bool(self._takes("teacher_logits", "teacher_feature", "teacher_params",
                            "teacher_head", *_TOPK))

  @property
  def needs_topk(self) -> bool:
    """A term reads a stored top-k teacher (``sparse_kl``)."""
    return bool(self._takes(*_TOPK))

  @property
  def needs_heads(self) -> bool:
    """A term reads ``inputs.student_head`` / ``teacher_head`` (the fused terms)."""
    return bool(self._takes("student_head", "teacher_head"))

  @property
  def uses_logits(self) -> bool:
    """A term reads the student's logits (else, e.g. with the fused terms, nothing
    needs them and ``jit`` never computes them)."""
    return bool(self._takes("student_logits"))

  @property
  def needs_labels(self) -> bool:
    return any(t.needs_labels() for t in self.terms)

  @property
  def accepts_label_probs(self) -> bool:
    """Every term that needs labels can use ``LossInputs.label_probs`` instead (mixup)."""
    return all("label_probs" in t.spec.inputs for t in self.terms if t.needs_labels())

  @property
  def needs_params(self) -> bool:
    return bool(self._takes("student_params"))

  @property
  def student_features(self) -> frozenset[str]:
    return frozenset(t.kwargs["student_feature"] for t in self._takes("student_feature"))

  @property
  def teacher_features(self) -> frozenset[str]:
    return frozenset(t.kwargs["teacher_feature"] for t in self._takes("teacher_feature"))

  def _projector(self, term: Term, inputs: LossInputs) -> _features.Projector:
    target = _feature(inputs, "teacher", term.kwargs["teacher_feature"], term.label).shape[1:]
    return _features.Projector(target_shape=tuple(target), kind=term.kwargs["projector"],
                               norm=term.kwargs["norm"])

  def init(self, rng: jax.Array, inputs: LossInputs) -> dict[str, Any]:
    """Initialises the auxiliary parameters (``{}`` when no term has any)."""
    aux = {}
    with_params = [t for t in self.terms if t.kwargs.get("projector")]
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

  def _input(self, term: Term, name: str, aux_params: Mapping[str, Any],
             inputs: LossInputs) -> Any:
    """The value of input ``name`` (one of :data:`INPUTS`) for ``term``."""
    if name == "labels":
      if not term.needs_labels():
        return None
      if inputs.labels is None and inputs.label_probs is not None:
        if "label_probs" in term.spec.inputs:
          return None  # soft targets instead; every (non-padding) row is used
        raise ValueError(f"objective term {term.label!r} ({term.name}) needs hard "
                         "inputs.labels; it cannot use inputs.label_probs (soft targets)")
      return self._require(term, inputs, "labels")
    if name == "label_probs":
      return inputs.label_probs if term.needs_labels() else None
    if name in _FEATURES:
      side = name.split("_")[0]
      value = _feature(inputs, side, term.kwargs[name], term.label)
      if side == "student" and term.kwargs.get("projector"):
        if term.label not in aux_params:
          raise ValueError(f"objective term {term.label!r} has a projector but aux_params has "
                           f"no {term.label!r} (keys {sorted(aux_params)}); call "
                           "objective.init(rng, inputs) first")
        # conv_reg's BatchNorm uses this batch's statistics (valid rows only); the running
        # averages it would keep are never used, so they are dropped here.
        value, _ = self._projector(term, inputs).apply(
            {"params": aux_params[term.label]}, value, inputs.where, mutable=["batch_stats"])
      return value
    if name == "student_logits":
      return inputs.student_logits
    return self._require(term, inputs, name)

  def _at_step(self, term: Term, what: str, value: Any, step: Any) -> Any:
    if not callable(value):
      return value
    if step is None:
      raise ValueError(f"objective term {term.label!r} has a {what} schedule; call "
                       "objective(aux_params, inputs, step=step)")
    return value(step)

  def __call__(self, aux_params: Mapping[str, Any], inputs: LossInputs, *,
               step: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(sum_i weight_i(step) * term_i, metrics)``."""
    aux_params = {} if aux_params is None else aux_params
    batch, num_classes = inputs.student_logits.shape[0], inputs.student_logits.shape[-1]
    rows = None
    if inputs.where is not None:
      rows = _checks.check_where("objective", inputs.where, (batch,), "the batch")
      # Select, don't multiply: padded rows become zeros before any term sees them.
      row_wise = lambda x: x if x is None else _checks.select(rows, jnp.asarray(x))  # noqa: E731
      inputs = inputs.replace(
          student_logits=row_wise(inputs.student_logits),
          labels=row_wise(inputs.labels), label_probs=row_wise(inputs.label_probs),
          teacher_logits=row_wise(inputs.teacher_logits),
          teacher_topk_log_probs=row_wise(inputs.teacher_topk_log_probs),
          teacher_topk_indices=row_wise(inputs.teacher_topk_indices),
          student_features=jax.tree.map(row_wise, inputs.student_features),
          teacher_features=jax.tree.map(row_wise, inputs.teacher_features))
    metrics = {}
    total = jnp.zeros((), jnp.float32)
    for term in self.terms:
      args = [self._input(term, name, aux_params, inputs) for name in term.spec.inputs]
      kwargs = {k: (self._at_step(term, k, v, step) if k in term.schedules else v)
                for k, v in term.kwargs.items() if k not in _OWN_KEYWORDS}
      valid = rows
      if "labels" in term.spec.inputs and args[term.spec.inputs.index("labels")] is not None:
        labels = args[term.spec.inputs.index("labels")]
        ok = _checks.label_mask(labels, num_classes)
        valid = ok if valid is None else valid & ok
      if term.spec.batch_level:
        if any(name not in _PARAMS for name in term.spec.inputs):  # it has a batch axis
          kwargs["where"] = valid
        value = term.spec.fn(*args, **kwargs)
      else:
        value = term.spec.fn(*args, **kwargs)
        if value.shape != (batch,):
          raise ValueError(f"objective term {term.label!r} gave per-example shape "
                           f"{value.shape}, expected ({batch},)")
        value = _checks.masked_mean(value, valid)
      metrics[f"loss/{term.label}"] = value
      total = total + self._at_step(term, "weight", term.weight, step) * value
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
      values are accepted. Known names and keywords are in :data:`TERMS`
      (:func:`term_keywords` lists them). A ``weight`` may be a schedule (see the
      module docstring).

  Returns:
    An :class:`Objective`.

  Raises:
    ValueError: an unknown term name or keyword (the message lists the known ones), a
      missing required keyword, a duplicate label or a bad value.
  """
  return Objective(_parse_terms(terms))


def term_keywords() -> dict[str, dict[str, Any]]:
  """``{term name: {keyword: default or "<required>"}}`` for documentation and errors."""
  return {name: {k: ("<required>" if v is REQUIRED else v) for k, v in spec.keywords().items()}
          for name, spec in TERMS.items()}

