"""Optimizers and learning-rate schedules built from a config (optax).

Every optimizer is one optax chain, ``[add_decayed_weights (L2)] -> moment transform ->
[add_decayed_weights (decoupled)] -> scale_by_learning_rate(schedule)``:

- ``sgd``: heavy-ball momentum (``optax.trace``; ``momentum=0`` is plain SGD,
  ``nesterov=True`` Nesterov's variant), which is PyTorch's ``torch.optim.SGD`` with
  ``dampening=0``.
- ``adam``: ``optax.scale_by_adam``.
- ``adamw``: Adam with *decoupled* weight decay (Loshchilov & Hutter, 2019), ``optax.adamw``.

Weight decay :math:`\\lambda` comes in two forms (``weight_decay_mode``):

- ``"l2"`` (the default for ``sgd`` and ``adam``): :math:`g \\leftarrow g + \\lambda\\theta`
  before the moment transform, as ``torch.optim.SGD(weight_decay=...)`` does. The
  published CIFAR KD recipes (RepDistiller, mdistiller: SGD, momentum 0.9, weight decay
  5e-4) use this form, so :math:`v \\leftarrow \\mu v + g + \\lambda\\theta`,
  :math:`\\theta \\leftarrow \\theta - \\eta v`.
- ``"decoupled"`` (always for ``adamw``): :math:`\\theta \\leftarrow \\theta - \\eta(u +
  \\lambda\\theta)` where :math:`u` is the moment transform's output.

Weight decay applies to every parameter (biases included), as in those recipes.
"""

import math

import ml_collections
import optax

from kdjax.config import default_config, with_defaults

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "multistep")
WEIGHT_DECAY_MODES = ("l2", "decoupled")


def _boundaries(config: ml_collections.ConfigDict, steps_per_epoch: int | None) -> list[int]:
  steps = [int(b) for b in config.boundaries]
  epochs = list(config.boundary_epochs)
  if steps and epochs:
    raise ValueError("Set optimizer.boundaries (steps) or optimizer.boundary_epochs, not both")
  if epochs:
    if not steps_per_epoch:
      raise ValueError("optimizer.boundary_epochs needs the number of steps per epoch")
    steps = [int(round(e * steps_per_epoch)) for e in epochs]
  if not steps:
    raise ValueError("schedule 'multistep' needs optimizer.boundaries (steps) or "
                     "optimizer.boundary_epochs, e.g. --config.optimizer.boundaries=150,180")
  if any(b <= 0 for b in steps) or steps != sorted(set(steps)):
    raise ValueError(f"optimizer.boundaries must be increasing positive steps, got {steps}")
  return steps


def make_schedule(config: ml_collections.ConfigDict, num_steps: int, *,
                  steps_per_epoch: int | None = None) -> optax.Schedule:
  r"""The learning rate :math:`\eta_t` at step :math:`t` (0-based) for ``config.schedule``:

  - ``constant``: :math:`\eta`.
  - ``cosine``: :math:`\frac{\eta}{2}(1 + \cos(\pi t / T))`, ``T = num_steps``.
  - ``warmup_cosine``: :math:`\eta t / W` for :math:`t < W` (``warmup_steps``), then the
    cosine from :math:`\eta` to 0 over the remaining :math:`T - W` steps.
  - ``multistep``: :math:`\eta\,\gamma^{k(t)}` with :math:`k(t)` the number of
    ``boundaries`` :math:`\le t` and :math:`\gamma` = ``decay_factor`` (PyTorch's
    ``MultiStepLR``); ``boundary_epochs`` gives them in epochs (times ``steps_per_epoch``).

  ``warmup_steps > 0`` with ``constant`` or ``multistep`` prepends the linear warmup
  (boundaries stay absolute steps).
  """
  config = with_defaults(config, default_config().optimizer)
  lr = config.learning_rate
  warmup = int(config.warmup_steps)
  name = config.schedule
  if name == "warmup_cosine":
    if not 0 < warmup < num_steps:
      raise ValueError(f"schedule 'warmup_cosine' needs 0 < optimizer.warmup_steps < num_steps, "
                       f"got warmup_steps={warmup}, num_steps={num_steps}")
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, num_steps)
  if name == "cosine":
    if warmup:
      raise ValueError("schedule 'cosine' has no warmup; use schedule 'warmup_cosine'")
    return optax.cosine_decay_schedule(lr, num_steps)
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name == "multistep":
    factor = config.decay_factor
    main = optax.piecewise_constant_schedule(
        lr, {b - warmup: factor for b in _boundaries(config, steps_per_epoch)})
  else:
    raise ValueError(f"Unknown schedule {name!r}; known schedules: {list(SCHEDULES)}")
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int, *,
                   steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  """``optimizer.name`` in {adam, adamw, sgd} with the configured schedule (see the module
  docstring for the update rules).

  Fields: ``learning_rate``, ``schedule`` (:func:`make_schedule`), ``momentum`` and
  ``nesterov`` (sgd), ``weight_decay``, ``weight_decay_mode`` (``""``: the optimizer's
  own convention, ``"l2"`` or ``"decoupled"``), ``b1``/``b2``/``eps`` (adam, adamw),
  ``grad_clip_norm`` (``> 0`` clips the global gradient norm first). A field ``config``
  does not set takes its value in ``default_config().optimizer``.
  """
  config = with_defaults(config, default_config().optimizer)
  name = config.name
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; known optimizers: {list(OPTIMIZERS)}")
  wd = float(config.weight_decay)
  mode = config.weight_decay_mode or ("decoupled" if name == "adamw" else "l2")
  if mode not in WEIGHT_DECAY_MODES:
    raise ValueError(f"Unknown optimizer.weight_decay_mode {mode!r}; known: {list(WEIGHT_DECAY_MODES)}")
  if name == "adamw" and mode != "decoupled":
    raise ValueError("adamw is Adam with decoupled weight decay; for L2 weight decay use "
                     "optimizer.name='adam' with weight_decay_mode='l2'")
  if wd < 0 or not math.isfinite(wd):
    raise ValueError(f"optimizer.weight_decay must be >= 0, got {wd}")
  momentum = float(config.momentum)
  if name == "sgd":
    moments = optax.trace(decay=momentum, nesterov=bool(config.nesterov))
  else:
    moments = optax.scale_by_adam(b1=config.b1, b2=config.b2,
                                  eps=config.eps)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if wd and mode == "l2":
    parts.append(optax.add_decayed_weights(wd))
  parts.append(moments)
  if wd and mode == "decoupled":
    parts.append(optax.add_decayed_weights(wd))
  schedule = make_schedule(config, num_steps, steps_per_epoch=steps_per_epoch)
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)
