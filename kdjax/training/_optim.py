"""Optimizers and learning-rate schedules built from a config (optax)."""

import ml_collections
import optax

OPTIMIZERS = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
}
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def make_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """``constant``; ``cosine`` (decay to 0 over ``num_steps``); ``warmup_cosine`` (linear
  warmup over ``warmup_steps``, then cosine decay to 0 at ``num_steps``)."""
  lr = config.learning_rate
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, num_steps)
  if config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, num_steps)
  raise ValueError(f"Unknown schedule {config.schedule!r}; known schedules: {list(SCHEDULES)}")


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """``optimizer.name`` in {adam, adamw, sgd} with the configured schedule.

  ``weight_decay`` applies to adamw; ``momentum`` to sgd; ``grad_clip_norm > 0``
  clips the global gradient norm first.
  """
  if config.name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {config.name!r}; known optimizers: {sorted(OPTIMIZERS)}")
  schedule = make_schedule(config, num_steps)
  kwargs = {}
  if config.name == "adamw":
    kwargs["weight_decay"] = config.get("weight_decay", 1e-4)
  if config.name == "sgd":
    kwargs["momentum"] = config.get("momentum", 0.9) or None
  tx = OPTIMIZERS[config.name](schedule, **kwargs)
  if config.get("grad_clip_norm", 0.0):
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
