"""Published training recipes as configs, shared by the files under ``configs/``.

One function per benchmark family, so the per-pair config files stay a few lines:

* :func:`cifar100_distill`: the CIFAR-100 protocol of CRD / RepDistiller and DKD /
  mdistiller (240 epochs, batch 64, SGD 0.05, momentum 0.9, weight decay 5e-4,
  lr x0.1 at epochs 150/180/210, pad-4 crop + flip) with the method's loss weights from
  mdistiller's ``engine/cfg.py`` and per-pair yaml files.
* :func:`imagenet_distill`: mdistiller's ImageNet ResNet-34 -> ResNet-18 protocol.

Field names follow the trainer branches in flight: ``optimizer.momentum``,
``optimizer.weight_decay`` (L2, as ``torch.optim.SGD``), ``optimizer.boundary_epochs``,
``optimizer.decay_factor`` (issue 7) and ``teacher.params_file`` / ``teacher.model``
(a PyTorch ``.pth`` teacher and its architecture, issue 8). One is new and must be read
by the trainer: ``num_epochs`` (the configs also set the ``num_steps`` it implies).
DKD's 20-epoch warm-up is a loss weight schedule of kdjax.losses (``{"value": 1,
"warmup_steps": 20 epochs of steps}``), linear per step where mdistiller's
``min(epoch / 20, 1)`` changes once an epoch.

References:
  Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020
  (RepDistiller). Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation",
  CVPR 2022 (mdistiller).
"""

import ml_collections

from kdjax.config._defaults import default_config

# The zoo's name of stage ``i``'s output feature (after its ReLU; mdistiller's feats[i],
# whose feats[0] the zoo calls "stem").
STAGE_FEATURE = "stage{}"
# Stages whose outputs AT matches (mdistiller: feats[1:]); FitNets uses stage 2.
CIFAR_STAGES = {"resnet8x4": 3, "resnet32x4": 3, "resnet20": 3, "resnet56": 3,
                "wrn_16_2": 3, "wrn_40_2": 3, "vgg8": 4, "vgg13": 4}
CIFAR100_TRAIN_SIZE = 50_000
IMAGENET_TRAIN_SIZE = 1_281_167
METHODS = ("teacher", "student", "kd", "fitnets", "at", "dkd")


def cifar100_losses(method: str, student: str, *, dkd_beta: float = 8.0,
                    dkd_warmup_steps: int = 20 * (CIFAR100_TRAIN_SIZE // 64)) -> dict:
  """Loss terms of ``method`` with mdistiller's CIFAR-100 weights.

  ``teacher`` / ``student``: CE only (that network alone). ``kd``: 0.1 CE + 0.9 T^2 KL
  at T=4 (``hinton_kd`` alpha=0.9).
  ``fitnets``: CE + 100 * hint on stage 2 (post-ReLU, mdistiller's ``feats[2]``) through
  mdistiller's regressor ``ConvReg`` (1x1 conv + batch-statistics BatchNorm + ReLU:
  projector ``"conv_reg"``). ``at``: CE + 1000 *
  attention transfer (p=2) on every stage but the stem. ``dkd``: CE + DKD (alpha 1,
  ``dkd_beta``, T=4), its weight warmed up linearly over ``dkd_warmup_steps`` (20 epochs).
  """
  if method in ("teacher", "student"):
    return {"cross_entropy": {"weight": 1.0}}
  if method == "kd":
    return {"hinton_kd": {"weight": 1.0, "temperature": 4.0, "alpha": 0.9}}
  if method == "fitnets":
    stage = STAGE_FEATURE.format(2)
    return {"cross_entropy": {"weight": 1.0},
            "hint": {"weight": 100.0, "student_feature": stage, "teacher_feature": stage,
                     "projector": "conv_reg"}}
  if method == "at":
    terms = {"cross_entropy": {"weight": 1.0}}
    for i in range(1, CIFAR_STAGES[student] + 1):
      terms[f"at_{i}"] = {"loss": "attention_transfer", "weight": 1000.0, "p": 2,
                          "student_feature": STAGE_FEATURE.format(i),
                          "teacher_feature": STAGE_FEATURE.format(i)}
    return terms
  if method == "dkd":
    return {"cross_entropy": {"weight": 1.0},
            "dkd": {"weight": {"value": 1.0, "warmup_steps": dkd_warmup_steps},
                    "alpha": 1.0, "beta": dkd_beta, "temperature": 4.0}}
  raise ValueError(f"Unknown method {method!r}; known: {METHODS}")


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few steps on ``tfds.testing.mock_data`` (random images of the data set's shape)."""
  c.smoke = True
  c.data.mock_examples = 64
  c.batch_size = 16  # divisible by the 8 virtual test devices
  c.eval_batch_size = 16
  c.num_epochs = 0
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 2, 4, 4
  if c.optimizer.get("warmup_steps"):
    c.optimizer.warmup_steps = 1
  c.progress_bar = False
  if c.data.name in ("imagenet2012", "imagenette"):
    c.data.image_size = 32  # the crops resize to any side: no 224-pixel compute in a smoke
  return c


def cifar100_distill(teacher: str, student: str, method: str, *, dkd_beta: float = 8.0,
                     smoke_run: bool = False) -> ml_collections.ConfigDict:
  """The CIFAR-100 recipe for ``teacher -> student`` with ``method`` (:data:`METHODS`).

  ``num_steps`` is derived from the epochs: 240 * floor(50,000 / 64) = 187,440 steps.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown method {method!r}; known: {METHODS}")
  for arch in (teacher, student):
    if arch not in CIFAR_STAGES:
      raise ValueError(f"{arch!r} is not a CIFAR recipe model; known: {sorted(CIFAR_STAGES)}")
  c = default_config()
  c.data.name, c.data.source = "cifar100", "tfds"  # pad-4 crop + flip, CIFAR-100 mean/std
  c.model = ml_collections.ConfigDict({"name": teacher if method == "teacher" else student})
  c.losses = cifar100_losses(method, student, dkd_beta=dkd_beta)
  c.teacher.params_file = ""  # a RepDistiller/mdistiller .pth (converted by kdjax.convert)
  c.teacher.model = ml_collections.ConfigDict(
      {"name": "" if method in ("teacher", "student") else teacher})
  c.teacher.cache = False          # augmented inputs: the teacher runs online on the same view
  c.batch_size = 64
  c.eval_batch_size = 1000
  c.num_epochs = 240
  steps_per_epoch = CIFAR100_TRAIN_SIZE // c.batch_size
  c.num_steps = c.num_epochs * steps_per_epoch
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "multistep"
  c.optimizer.boundary_epochs = (150, 180, 210)
  c.optimizer.decay_factor = 0.1
  c.log_every = 71                 # 781 steps an epoch = 11 * 71
  c.eval_every = c.checkpoint_every = 10 * steps_per_epoch
  return smoke(c) if smoke_run else c


def imagenet_distill(teacher: str, student: str, *, losses: dict, smoke_run: bool = False,
                     data_name: str = "imagenet2012") -> ml_collections.ConfigDict:
  """mdistiller's ImageNet protocol: 100 epochs, batch 512, SGD 0.2, momentum 0.9, weight
  decay 1e-4, lr x0.1 at epochs 30/60/90, Inception crop + flip, 224 center crop eval."""
  c = default_config()
  c.data.name, c.data.source = data_name, "tfds"
  c.data.num_threads = 16
  c.model = ml_collections.ConfigDict({"name": student})
  c.losses = losses
  c.teacher.params_file = ""  # torchvision weights as a .pth (converted by kdjax.convert)
  c.teacher.model = ml_collections.ConfigDict({"name": teacher})
  c.teacher.cache = False
  c.batch_size = 512
  c.eval_batch_size = 1024
  c.num_epochs = 100
  steps_per_epoch = IMAGENET_TRAIN_SIZE // c.batch_size  # 2,502
  c.num_steps = c.num_epochs * steps_per_epoch
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.2
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "multistep"
  c.optimizer.boundary_epochs = (30, 60, 90)
  c.optimizer.decay_factor = 0.1
  c.log_every = 139                # 2,502 = 18 * 139
  c.eval_every = c.checkpoint_every = 5 * steps_per_epoch
  return smoke(c) if smoke_run else c


def parse_arg(arg: str | None, known: tuple[str, ...], default: str) -> tuple[str, bool]:
  """``"dkd,smoke"`` -> ``("dkd", True)``; the one non-smoke word must be in ``known``."""
  words = [w for w in (arg or "").split(",") if w]
  is_smoke = "smoke" in words
  rest = [w for w in words if w != "smoke"]
  if len(rest) > 1 or (rest and rest[0] not in known):
    raise ValueError(f"config argument {arg!r}: expected one of {known} (default {default!r}), "
                     "optionally with ',smoke'")
  return (rest[0] if rest else default), is_smoke
