"""An MNIST-1D CNN ensemble member: the teacher recipe on 3,500 examples (500 held out).

The last 500 training examples are kept as the validation split that `kdjax fuse`
fits on. Train five members:
  for k in 0 1 2 3 4; do
    kdjax train --config configs/mnist1d/member_cnn.py --workdir runs/members/cnn$k --config.seed=$k
  done
Expected (measured, one place): README.md "Results: kdjax demo", rows member_cnn0 and ensemble_average.
Args: "smoke".
"""

from kdjax.training import default_config, smoke_variant


# The words --config mnist1d/member_cnn.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = default_config()
  c.model.name = "cnn1d"
  c.model.conv_implementation = "im2col"  # or "xla" (lax.conv_general_dilated)
  c.data.val_size = 500
  c.losses = {"cross_entropy": {"weight": 1.0}}
  c.num_steps = 6000
  if arg == "smoke":
    smoke_variant(c)
  return c
