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
  # Streaming image data (kdjax.data.pipelines_from_config) when source is "tfds" or
  # "synthetic"; "local" loads the whole arrays with kdjax.data.load_dataset.
  c.data.source = "local"
  c.data.data_dir = ""         # tfds data dir ("": $TFDS_DATA_DIR, else ~/tensorflow_datasets)
  c.data.augment = ""          # "": the data set's training view; see kdjax.data.AUGMENTATIONS
  c.data.pad = 4               # padding of the pad_crop_flip view
  c.data.mixup_alpha = 0.0     # > 0: mixup of every training batch (teacher sees it too)
  c.data.flatten = False       # x as [B, H * W * C] (MLPs)
  c.data.image_size = 0        # tfds: 0 the data set's side (32 CIFAR, 224 ImageNet); > 0 resize
  c.data.num_threads = 0       # grain threads preparing examples on the host
  c.data.num_workers = 0       # grain worker processes preparing batches (many-core hosts)
  c.data.prefetch = 2          # device batches prepared ahead of the step (0: none)
  c.data.mock_examples = 0     # > 0: tfds.testing.mock_data examples (smoke runs only)
  c.data.synthetic = ml_collections.ConfigDict(
      {"num_examples": 1024, "eval_examples": 256, "shape": (32, 32, 3), "num_classes": 10})

  # Unlabelled transfer set (generated MNIST-1D inputs) added to the training inputs.
  c.transfer = ml_collections.ConfigDict()
  c.transfer.num_samples = 0
  c.transfer.seed = 1
  c.transfer.fresh = False     # True: new generated inputs every step (kdjax.data.FreshMNIST1D)

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
  # False: the teachers (one, or an ensemble) run inside the train step on every batch.
  c.teacher.fitted_weights = ""  # instead of weights: "REPORT.json[:nll|random]" of kdjax fuse
  c.teacher.member_strategy = "auto"  # members of a group per device: auto | vmap | map | loop
  c.teacher.member_axis = ""   # "": every device runs all members on its batch slice;
  # a mesh axis ("data"): each device holds and runs only its share of the members
  c.teacher.disk_cache = True  # cached targets stored on disk and reused by later runs
  c.teacher.cache_dir = ""     # "": $KDJAX_CACHE_DIR, else <workdir's parent>/.kdjax_cache
  # A teacher from a file kdjax did not write (instead of workdir): an orbax checkpoint
  # directory, a flax msgpack file (*.msgpack) or a PyTorch state_dict (*.pth), and its
  # architecture {"name": registry name, **fields}; see kdjax.training.teachers._load.
  c.teacher.params_file = ""
  c.teacher.model = ml_collections.ConfigDict({"name": ""})
  # A Hugging Face causal LM folder (config.json + *.safetensors) as the teacher
  # (kdjax.convert.from_hf); the student's is config.model = {"name": "decoder", "hf_path": DIR}.
  c.teacher.hf_path = ""
  # Language models: k > 0 writes the teacher's top-k log-probabilities of every training
  # token once to an ArrayRecord store (in cache_dir) and trains from it (the sparse_kl
  # term); the teacher never runs in the step (kdjax.training.teachers._topk).
  c.teacher.topk = 0
  c.teacher.topk_shards = 4
  c.teacher.dtype = ""         # teacher compute dtype ("": config.dtype); params stay as loaded

  # Structure distillation: copy teacher layers into the student before training.
  c.init = ml_collections.ConfigDict()
  c.init.from_teacher = False
  c.init.mapping = ml_collections.FieldReference(None, field_type=object)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"       # adam | adamw | sgd (kdjax.training.make_optimizer)
  c.optimizer.learning_rate = 1e-2
  c.optimizer.schedule = "constant"  # constant | cosine | warmup_cosine | multistep
  c.optimizer.warmup_steps = 0
  c.optimizer.boundaries = ()      # multistep: steps where lr *= decay_factor
  c.optimizer.boundary_epochs = ()  # ... or the same in epochs of the training inputs
  c.optimizer.decay_factor = 0.1
  c.optimizer.momentum = 0.9       # sgd only (0: plain SGD)
  c.optimizer.nesterov = False     # sgd only
  c.optimizer.weight_decay = 0.0
  c.optimizer.weight_decay_mode = ""  # "": l2 for sgd/adam (torch), decoupled for adamw
  c.optimizer.b1 = 0.9             # adam, adamw
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.grad_clip_norm = 0.0

  c.batch_size = 100
  # Length: num_epochs > 0 takes precedence and derives num_steps = num_epochs *
  # (training examples // batch_size); num_steps must then be 0 or that number (else an
  # error). num_epochs = 0 trains num_steps.
  c.num_epochs = 0
  c.num_steps = 6000
  c.log_every = 500           # metrics are read and logged once every log_every steps
  c.steps_per_call = 0        # steps per jitted lax.scan call (divides log_every; 0: log_every)
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2
  c.eval_batch_size = 1000
  c.num_devices = 0           # 0: every device
  # Device mesh and parameter sharding (kdjax.training._sharding): batches split over
  # "data"; params by rules [(path regex, spec)], spec a tuple of mesh axes / None,
  # "fsdp" (largest divisible dim over "model"), "fsdp:data,model" or "replicated".
  c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})  # -1: the rest of the devices
  c.sharding = ml_collections.ConfigDict({"student": (), "teacher": ()})
  c.dtype = "float32"         # compute dtype: float32 | bfloat16 | float16 (params stay float32)
  c.progress_bar = True
  c.on_nonfinite = "stop"     # NaN/inf loss or gradient: "stop" (error) or "skip" the update
  # A rerun into a workdir that trained resumes it with the same config, except the fields
  # kdjax.training._workdir.SAFE_ON_RESUME lists (num_steps, log_every, ...): "check" refuses
  # any other change; "override" accepts it, keeping the old config in config_history.jsonl.
  c.resume = "check"
  c.smoke = False             # set by the smoke variant: a smoke run never resumes a full one
  return c


def smoke_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a run of seconds (40 steps), for tests and ``:smoke``."""
  c.smoke = True
  c.batch_size = 80  # divisible by the 8 virtual test devices
  c.num_epochs = 0
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 40, 10, 20, 20
  if c.optimizer.warmup_steps:
    c.optimizer.warmup_steps = 5
  if c.transfer.num_samples:
    c.transfer.num_samples = 2000
  return c
