"""Non-finite losses and gradients, found without a host sync per step.

Inside a chunk (``K`` steps in one ``lax.scan``) every step records its metrics; the
chunk reduces them on device to the means over its *finite* steps plus three health
fields: how many steps were non-finite, the index of the first one, and which metrics
were non-finite there. The host reads them once a chunk, with the metrics it logs
anyway, and then stops the run (``config.on_nonfinite = "stop"``, the default) or lets
it go on (``"skip"``: the optimizer is wrapped in ``optax.apply_if_finite``, which drops
updates whose gradients are not finite and counts them).

A step is non-finite when its loss, its gradient norm or its parameter norm is.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

POLICIES = ("stop", "skip")
_HEALTH = "nonfinite/"


class NonFiniteError(FloatingPointError):
  """The loss or the gradient of a training step was NaN or infinite."""


def wrap_optimizer(tx: optax.GradientTransformation, policy: str,
                   num_steps: int) -> optax.GradientTransformation:
  """``tx`` itself for ``"stop"``; for ``"skip"``, ``optax.apply_if_finite(tx)`` (an
  update with a non-finite gradient leaves params and optimizer state unchanged)."""
  if policy not in POLICIES:
    raise ValueError(f"config.on_nonfinite={policy!r}; known: {list(POLICIES)}")
  if policy == "stop":
    return tx
  return optax.apply_if_finite(tx, max_consecutive_errors=max(num_steps, 1))


def skipped_updates(opt_state: Any) -> int:
  """Total updates dropped by ``optax.apply_if_finite`` (0 without the wrapper)."""
  total = getattr(opt_state, "total_notfinite", None)
  return 0 if total is None else int(total)


def summarize_chunk(step_metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-step metrics ``{name: [K]}`` -> means over finite steps + health fields.

  Health fields (popped by :func:`check_chunk`): ``nonfinite/steps`` (count),
  ``nonfinite/first`` (index in the chunk, -1 if none) and ``nonfinite/<name>``
  (whether metric ``name`` was non-finite at that first step).
  """
  finite = jnp.ones_like(step_metrics["loss"], dtype=bool)
  for name in ("loss", "grad_norm", "param_norm"):
    if name in step_metrics:
      finite = finite & jnp.isfinite(step_metrics[name])
  count = jnp.sum(finite)
  out = {name: jnp.sum(jnp.where(finite, value, 0.0)) / count
         for name, value in step_metrics.items()}  # NaN when no step was finite
  first = jnp.argmax(~finite)  # first non-finite step; 0 when all are finite
  any_bad = ~jnp.all(finite)
  out[_HEALTH + "steps"] = jnp.sum(~finite)
  out[_HEALTH + "first"] = jnp.where(any_bad, first, -1)
  for name, value in step_metrics.items():
    out[_HEALTH + name] = ~jnp.isfinite(value[first]) & any_bad
  return out


def check_chunk(chunk_metrics: dict[str, Any], *, chunk_start: int, policy: str) -> dict[str, Any]:
  """Pops the health fields of a chunk's metrics; returns the rest (to log).

  With ``policy="stop"`` a non-finite step raises; with ``"skip"`` the number of
  skipped steps is logged as ``skipped_steps``. Non-finite *parameters* stop the run
  under both policies (they can never be checkpointed).

  Raises:
    NonFiniteError: ``step 12 (1-based update count): non-finite loss/hinton_kd, loss,
      grad_norm``.
  """
  metrics = {k: v for k, v in chunk_metrics.items() if not k.startswith(_HEALTH)}
  count = int(chunk_metrics[_HEALTH + "steps"])
  if not count:
    return metrics
  first = int(chunk_metrics[_HEALTH + "first"])
  bad = [k[len(_HEALTH):] for k, v in chunk_metrics.items()
         if k.startswith(_HEALTH) and k not in (_HEALTH + "steps", _HEALTH + "first")
         and bool(np.asarray(v))]
  bad_params = "param_norm" in bad
  if policy == "stop" or bad_params:
    order = {"loss": 0, "grad_norm": 1, "param_norm": 2}
    terms = sorted(b for b in bad if b.startswith("loss/"))
    what = ", ".join(terms + sorted((b for b in bad if not b.startswith("loss/")),
                                    key=lambda b: (order.get(b, 3), b)))
    hint = ("the parameters themselves overflowed" if bad_params and not terms else
            "the loss term(s) named first went non-finite; lower the learning rate, clip "
            "gradients (optimizer.grad_clip_norm) or set on_nonfinite='skip'")
    raise NonFiniteError(f"step {chunk_start + first + 1}: non-finite {what} ({hint}); "
                         "no checkpoint was written after the last good one")
  metrics["skipped_steps"] = count
  return metrics
