"""MNIST-1D MLP 40-100-100-10 trained alone on the 4,000 labelled examples.

Launch:
  kdjax train --config configs/mnist1d/mlp.py --workdir runs/mlp
Expected (measured, one place): README.md "Results: kdjax demo", row mlp.
"""

from kdjax.training import default_config, smoke_variant


# The words --config mnist1d/mlp.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = default_config()
  c.model.name = "mlp"
  c.model.hidden = (100, 100)
  c.losses = {"cross_entropy": {"weight": 1.0}}
  c.num_steps = 6000
  if arg == "smoke":
    smoke_variant(c)
  return c
