"""Weight-space distillation: parameter matching and initialisation from the teacher.

Parameters are addressed by ``"/"``-joined key paths, e.g. ``"dense_0/kernel"`` (the
same strings as ``flax.traverse_util.flatten_dict(params, sep="/")``). A ``mapping``
from student to teacher parameters is one of:

* ``None``: identity, every student path (it must exist in the teacher);
* a dict ``{student_path: teacher_path}`` or ``{student_path: (teacher_path, fn)}``;
* a list of rules ``(regex, replacement)`` or ``(regex, replacement, fn)``: each student
  path is tried against the rules in order with ``re.fullmatch``; the first match gives
  the teacher path ``re.sub``-style (``\\1`` groups allowed); unmatched paths are skipped.

``fn`` (a projection) maps the teacher leaf to the student leaf's shape, e.g. a slice
or a fixed random projection; without one the shapes must be equal.
"""

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.losses import _checks

ParamMapping = (Mapping[str, str | tuple[str, Callable[[jax.Array], jax.Array]]]
                | Sequence[tuple[str, str] | tuple[str, str, Callable[[jax.Array], jax.Array]]]
                | None)


def flatten_params(params: Any) -> dict[str, jax.Array]:
  """``{"a/b/kernel": leaf}`` for any pytree of parameters (dicts, FrozenDicts, lists)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in leaves}


def _missing(fn: str, what: str, path: str, available: Sequence[str]) -> ValueError:
  close = difflib.get_close_matches(path, available, n=3, cutoff=0.3)
  shown = list(dict.fromkeys(close + list(available)[:5]))
  return ValueError(f"{fn}: {what} path {path!r} does not exist; available paths include "
                    f"{shown} ({len(available)} in all)")


def resolve_mapping(fn: str, student: Mapping[str, Any], teacher: Mapping[str, Any],
                    mapping: ParamMapping) -> list[tuple[str, str, Callable | None]]:
  """``[(student_path, teacher_path, projection_or_None)]``, validated (private helper)."""
  if hasattr(mapping, "to_dict"):
    mapping = mapping.to_dict()
  pairs: list[tuple[str, str, Callable | None]] = []
  if mapping is None:
    pairs = [(p, p, None) for p in student]
  elif isinstance(mapping, Mapping):
    for s_path, value in mapping.items():
      if s_path not in student:
        raise _missing(fn, "student", s_path, list(student))
      if isinstance(value, str):
        pairs.append((s_path, value, None))
      elif isinstance(value, (tuple, list)) and len(value) == 2 and callable(value[1]):
        pairs.append((s_path, str(value[0]), value[1]))
      else:
        raise TypeError(f"{fn}: mapping[{s_path!r}] must be a teacher path or (teacher_path, "
                        f"projection_fn), got {value!r}")
  elif isinstance(mapping, Sequence) and not isinstance(mapping, str):
    rules = []
    for rule in mapping:
      if not (isinstance(rule, (tuple, list)) and len(rule) in (2, 3)
              and all(isinstance(r, str) for r in rule[:2])
              and (len(rule) == 2 or callable(rule[2]))):
        raise TypeError(f"{fn}: each mapping rule must be (regex, replacement) or (regex, "
                        f"replacement, projection_fn), got {rule!r}")
      rules.append((re.compile(rule[0]), rule[1], rule[2] if len(rule) == 3 else None))
    for s_path in student:
      for pattern, repl, proj in rules:
        if pattern.fullmatch(s_path):
          pairs.append((s_path, pattern.sub(repl, s_path, count=1), proj))
          break
    if not pairs:
      raise ValueError(f"{fn}: no mapping rule matched any student path; rules "
                       f"{[r[0] for r in mapping]}, student paths {list(student)[:5]}...")
  else:
    raise TypeError(f"{fn}: mapping must be None, a dict or a list of (regex, replacement) "
                    f"rules, got {type(mapping).__name__}")
  for s_path, t_path, proj in pairs:
    if t_path not in teacher:
      raise _missing(fn, f"teacher (mapped from student {s_path!r})", t_path, list(teacher))
    if proj is None and jnp.shape(student[s_path]) != jnp.shape(teacher[t_path]):
      raise ValueError(f"{fn}: shape mismatch between student {s_path!r} "
                       f"{jnp.shape(student[s_path])} and teacher {t_path!r} "
                       f"{jnp.shape(teacher[t_path])}; pass (teacher_path, projection_fn)")
  return pairs


def _teacher_leaf(fn: str, s_path: str, s_leaf: Any, t_path: str, t_leaf: Any,
                  proj: Callable | None) -> jax.Array:
  if proj is None:
    return jnp.asarray(t_leaf)
  out = jnp.asarray(proj(t_leaf))
  if out.shape != jnp.shape(s_leaf):
    raise ValueError(f"{fn}: projection for teacher {t_path!r} {jnp.shape(t_leaf)} returned "
                     f"shape {out.shape}, but student {s_path!r} has {jnp.shape(s_leaf)}")
  return out


def weight_matching(student_params: Any, teacher_params: Any, *, mapping: ParamMapping = None,
                    normalize: bool = True) -> jax.Array:
  r"""Squared distance between mapped student and teacher parameters. **Batch-level.**

  .. math::
    \sum_{(s, t) \in \mathcal{M}} \frac{\|\theta^s_s - \pi(\theta^t_t)\|_2^2}{n_s}

  with :math:`n_s` the leaf size when ``normalize`` (else 1) and :math:`\pi` the optional
  projection. See the module docstring for the ``mapping`` formats.

  Args:
    student_params: pytree of student parameters.
    teacher_params: pytree of teacher parameters.
    mapping: which student leaves to match to which teacher leaves (``None``: all
      student paths, identically named in the teacher).
    normalize: divide each leaf's squared distance by its size (a mean).

  Returns:
    Scalar, float32 (or float64 when a leaf is float64).

  Raises:
    ValueError: a mapped path doesn't exist (the message lists available ones), or
      shapes differ without a projection.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import weight_matching
    >>> p = {"dense_0": {"kernel": jnp.ones((2, 3))}}
    >>> weight_matching(p, {"dense_0": {"kernel": jnp.zeros((2, 3))}})
    Array(1., dtype=float32)

  References:
    Hinton, Vinyals & Dean (2015) list parameter-space matching as an alternative to
    matching outputs; the regulariser :math:`\|\theta - \theta_0\|^2` towards a
    reference model is L2-SP (Li, Grandvalet & Davoine, ICML 2018).
  """
  fn = "weight_matching"
  student = flatten_params(student_params)
  teacher = flatten_params(teacher_params)
  total = jnp.zeros((), jnp.float32)
  for s_path, t_path, proj in resolve_mapping(fn, student, teacher, mapping):
    s_leaf = _checks.check_floating(f"student_params[{s_path!r}]", fn, student[s_path])
    t_leaf = _teacher_leaf(fn, s_path, s_leaf, t_path, teacher[t_path], proj)
    dtype = _checks.compute_dtype(s_leaf, t_leaf)
    sq = jnp.sum(jnp.square(s_leaf.astype(dtype) - t_leaf.astype(dtype)))
    total = total + (sq / max(s_leaf.size, 1) if normalize else sq)
  return total


def init_from_teacher(student_params: Any, teacher_params: Any, *,
                      mapping: ParamMapping) -> tuple[Any, list[str]]:
  """Copies mapped teacher parameters into the student (structure distillation).

  DistilBERT initialises its student from every other teacher layer, e.g.
  ``mapping=[(r"layer_(\\d+)/(.*)", ...)]`` or an explicit dict; ``mapping=None`` on
  identical architectures is a born-again initialisation (returns the teacher's
  values). Copied leaves are cast to the student leaf's dtype; unmapped student leaves
  are kept. See the module docstring for the ``mapping`` formats.

  Args:
    student_params: pytree of student parameters (its structure is kept).
    teacher_params: pytree of teacher parameters.
    mapping: ``None`` (identity), a dict or a list of regex rules.

  Returns:
    ``(new_student_params, copied_paths)``: the student pytree with mapped leaves
    replaced, and the student paths that were copied, in order.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import init_from_teacher
    >>> s = {"a": {"kernel": jnp.zeros(2)}, "b": {"kernel": jnp.zeros(2)}}
    >>> t = {"a": {"kernel": jnp.ones(2)}}
    >>> new, copied = init_from_teacher(s, t, mapping={"a/kernel": "a/kernel"})
    >>> copied
    ['a/kernel']

  References:
    Sanh, Debut, Chaumond & Wolf, "DistilBERT, a distilled version of BERT", 2019.
    Furlanello et al., "Born-Again Neural Networks", ICML 2018.
  """
  fn = "init_from_teacher"
  leaves, treedef = jax.tree_util.tree_flatten_with_path(student_params)
  student = {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
             for path, leaf in leaves}
  teacher = flatten_params(teacher_params)
  new = dict(student)
  copied = []
  for s_path, t_path, proj in resolve_mapping(fn, student, teacher, mapping):
    t_leaf = _teacher_leaf(fn, s_path, student[s_path], t_path, teacher[t_path], proj)
    new[s_path] = t_leaf.astype(jnp.asarray(student[s_path]).dtype)
    copied.append(s_path)
  return jax.tree_util.tree_unflatten(treedef, list(new.values())), copied
