"""Step schedules for loss-term weights and hyperparameters (private).

A term's ``weight`` and its float hyperparameters (:data:`SCHEDULABLE`: ``temperature``,
``alpha``, ``beta``, ...) are each a number or a schedule of the training step:

* ``{"value": v, "warmup_steps": n}``: linear warm-up from 0 to ``v`` over ``n`` steps,
  then ``v`` (DKD's official recipe warms its loss weight up over 20 epochs);
* ``{"init": a, "end": b, "steps": n}``: linear from ``a`` to ``b`` over ``n`` steps, then
  ``b`` (as MaxText's distillation anneals alpha and the temperature);
* any callable ``step -> value``, e.g. an ``optax`` schedule.

Both dict forms are ``optax.linear_schedule``.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

Schedule = Callable[[jax.Array], jax.Array]

# Keywords of the registered terms that may be schedules.
SCHEDULABLE = ("temperature", "alpha", "beta", "gamma", "label_smoothing")
# Keywords that must stay > 0 at every step (a warm-up from 0 would divide by zero).
POSITIVE = ("temperature",)

_FORMS = "{'value': w, 'warmup_steps': n} or {'init': a, 'end': b, 'steps': n}"


def _steps(where: str, name: str, steps: Any) -> int:
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
    raise ValueError(f"make_objective: {where} {name} must be an int >= 1, got {steps!r}")
  return steps


def _number(where: str, what: str, value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    raise ValueError(f"make_objective: {where} {what} must be a number or a schedule, got "
                     f"{value!r}") from None


def parse_schedule(where: str, what: str, value: Any, *,
                   positive: bool = False) -> float | Schedule:
  """A number (``float``) or a schedule (a callable of the step) from a config value.

  Args:
    where: names the term in errors, e.g. ``"term 'dkd'"``.
    what: the field, e.g. ``"weight"`` or ``"temperature"``.
    value: a number, a schedule dict (module docstring) or a callable.
    positive: the value must stay > 0 (temperatures): a warm-up from 0 is refused and
      a linear schedule's ends must be > 0.

  Raises:
    ValueError: an unknown dict form, a bad step count, a non-number, or (``positive``)
      a schedule that reaches 0.
  """
  value = value.to_dict() if hasattr(value, "to_dict") else value
  if callable(value):
    return value
  if not isinstance(value, Mapping):
    return _number(where, what, value)
  if set(value) == {"value", "warmup_steps"}:
    if positive:
      raise ValueError(f"make_objective: {where} {what} cannot warm up from 0 (it must stay "
                       f"> 0); use {{'init': a, 'end': b, 'steps': n}} with a, b > 0")
    end = _number(where, what, value["value"])
    return optax.linear_schedule(0.0, end, _steps(where, "warmup_steps", value["warmup_steps"]))
  if set(value) == {"init", "end", "steps"}:
    init, end = _number(where, what, value["init"]), _number(where, what, value["end"])
    if positive and not (init > 0 and end > 0):
      raise ValueError(f"make_objective: {where} {what} schedule must stay > 0, got "
                       f"init={init!r}, end={end!r}")
    return optax.linear_schedule(init, end, _steps(where, "steps", value["steps"]))
  raise ValueError(f"make_objective: {where} {what} schedule must be {_FORMS}, got keys "
                   f"{sorted(value)}")
