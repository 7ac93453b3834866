"""MNIST-1D CNN teacher (the paper's ConvBase, 5,210 parameters), cross-entropy.

Launch:
  kdjax train --config configs/mnist1d/teacher_cnn.py --workdir runs/teacher_cnn
  kdjax train --config configs/mnist1d/teacher_cnn.py:smoke --workdir /tmp/t   # seconds
Expected (measured, one place): README.md "Results: kdjax demo", row teacher_cnn.
"""

from kdjax.training import default_config, smoke_variant


# The words --config mnist1d/teacher_cnn.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = default_config()
  c.model.name = "cnn1d"
  c.model.conv_implementation = "im2col"  # or "xla" (lax.conv_general_dilated)
  c.losses = {"cross_entropy": {"weight": 1.0}}
  c.optimizer.learning_rate = 1e-2
  c.num_steps = 6000
  if arg == "smoke":
    smoke_variant(c)
  return c
