"""The default training config that every ``configs/*.py`` file starts from."""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with defaults. Config files override fields;
  any field can be overridden on the command line (``--config.optimizer.learning_rate=3e-3``),
  and a misspelt field is an error."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist1d"
  c.data.val_size = 0          # last N training examples held out as "val"
  c.data.kwargs = ml_collections.ConfigDict()  # passed to the data set loader

  # Unlabelled transfer set (generated MNIST-1D inputs) added to the training inputs.
  c.transfer = ml_collections.ConfigDict()
  c.transfer.num_samples = 0
  c.transfer.seed = 1

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"

  # Loss terms: label -> {"weight": w, **kwargs}; see kdjax.losses.make_objective.
  c.losses = ml_collections.ConfigDict({"cross_entropy": {"weight": 1.0}})

  c.teacher = ml_collections.ConfigDict()
  c.teacher.workdir = ""       # one workdir, or several comma-separated (an ensemble)
  c.teacher.fusion = "prob"    # how ensemble members combine: prob | logit | log_prob
  c.teacher.weights = ()       # fixed fusion weights (empty: uniform)
  c.teacher.fusion_temperature = 1.0  # fuse members' softmax(z / T); set T = the KD temperature
  c.teacher.cache = True       # compute teacher targets once (inputs are not augmented)
  # A teacher from a file kdjax did not write (instead of workdir): an orbax checkpoint
  # directory, a flax msgpack file (*.msgpack) or a PyTorch state_dict (*.pth), and its
  # architecture {"name": registry name, **fields}; see kdjax.training._teacher_files.
  c.teacher.params_file = ""
  c.teacher.model = ml_collections.ConfigDict({"name": ""})

  # Structure distillation: copy teacher layers into the student before training.
  c.init = ml_collections.ConfigDict()
  c.init.from_teacher = False
  c.init.mapping = ml_collections.FieldReference(None, field_type=object)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-2
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.grad_clip_norm = 0.0

  c.batch_size = 100
  c.num_steps = 6000
  c.log_every = 500           # steps per jitted chunk; metrics are logged once a chunk
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2
  c.eval_batch_size = 1000
  c.num_devices = 0           # 0: every device
  c.progress_bar = True
  return c


def smoke_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a run of seconds (40 steps), for tests and ``:smoke``."""
  c.batch_size = 80  # divisible by the 8 virtual test devices
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 40, 10, 20, 20
  if c.optimizer.warmup_steps:
    c.optimizer.warmup_steps = 5
  if c.transfer.num_samples:
    c.transfer.num_samples = 2000
  return c
