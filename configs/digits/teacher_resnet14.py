"""resnet14 (BatchNorm, zoo) on scikit-learn's 8x8 digits as NHWC images, cross-entropy.

The teacher of ``kd_resnet14_to_resnet8.py``. Digits ship with scikit-learn (1,437
train / 360 test images, no download). Adam 1e-3 with cosine decay over 200 steps, batch 100.

Launch:
  kdjax train --config configs/digits/teacher_resnet14.py --workdir runs/digits_resnet14
  kdjax train --config configs/digits/teacher_resnet14.py:smoke --workdir /tmp/t   # seconds
Expected: benchmarks/results/digits_resnet.json (3 seeds; README "Model state").
Args: "smoke" (seconds).
"""

import ml_collections

from kdjax.training import default_config, smoke_variant


# The words --config digits/teacher_resnet14.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = default_config()
  c.data.name = "digits"
  c.data.kwargs = ml_collections.ConfigDict({"image_shape": (8, 8, 1)})
  c.model.name = "resnet14"
  c.losses = {"cross_entropy": {"weight": 1.0}}
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.batch_size = 100
  c.num_steps = 200
  c.log_every, c.eval_every, c.checkpoint_every = 50, 100, 100
  c.eval_batch_size = 360
  if arg == "smoke":
    smoke_variant(c)
  return c
