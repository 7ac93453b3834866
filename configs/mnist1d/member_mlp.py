"""An MNIST-1D MLP ensemble member (40-100-100-10) on 3,500 examples (500 held out).

Mixed CNN + MLP pools are where fitted fusion weights matter:
  kdjax train --config configs/mnist1d/member_mlp.py --workdir runs/members/mlp0 --config.seed=0
Expected (measured, one place): benchmarks/results/mnist1d_accuracy.json, "mixed 5 CNN + 5 MLP: probability average"
(the pool); alone it is the MLP of README.md "Results: kdjax demo", row mlp.
"""

from kdjax.training import default_config, smoke_variant


# The words --config mnist1d/member_mlp.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = default_config()
  c.model.name = "mlp"
  c.model.hidden = (100, 100)
  c.data.val_size = 500
  c.losses = {"cross_entropy": {"weight": 1.0}}
  c.num_steps = 6000
  if arg == "smoke":
    smoke_variant(c)
  return c
