"""A CNN fine-tuned from a shared initialisation, for model soups (Wortsman et al. 2022).

Soups average weights, which only works for members in one loss basin: train a base
member, then fine-tune several copies with different data orders (seeds) at a lower
learning rate:
  kdjax train --config configs/mnist1d/member_cnn.py --workdir runs/soup/base --config.num_steps=3000
  for k in 1 2 3 4 5; do
    kdjax train --config configs/mnist1d/soup_member_cnn.py --workdir runs/soup/ft$k \
        --config.seed=$k --config.teacher.workdir=runs/soup/base
  done
  kdjax fuse --config configs/mnist1d/fuse_cnn5.py:soup --workdir runs/soup/fuse
Expected (measured, one place): benchmarks/results/mnist1d_accuracy.json, "fine-tuned: greedy soup" and
"independent inits: uniform soup".
Args: "smoke".
"""

from kdjax.training import default_config, smoke_variant


# The words --config mnist1d/soup_member_cnn.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = default_config()
  c.model.name = "cnn1d"
  c.model.conv_implementation = "im2col"  # or "xla" (lax.conv_general_dilated)
  c.data.val_size = 500
  c.losses = {"cross_entropy": {"weight": 1.0}}
  c.init.from_teacher = True   # copy every layer of config.teacher.workdir (the shared init)
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "cosine"
  c.num_steps = 3000
  if arg == "smoke":
    smoke_variant(c)
  return c
