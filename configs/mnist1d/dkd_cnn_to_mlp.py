"""Decoupled KD (Zhao et al., CVPR 2022): CNN teacher -> MLP on the labelled inputs.

Loss: cross-entropy + DKD (alpha=1 TCKD, beta=8 NCKD, T=4), as in mdistiller's DKD.

Launch:
  kdjax train --config configs/mnist1d/dkd_cnn_to_mlp.py --workdir runs/dkd \
      --config.teacher.workdir=runs/teacher_cnn
Expected (measured, one place): benchmarks/results/mnist1d_accuracy.json, "dkd (MLP)" (compare
README.md "Results: kdjax demo", row kd_labelled: with 4,000 inputs the student is data-limited).
Args: "smoke".
"""

from kdjax.training import default_config, smoke_variant


def get_config(arg: str | None = None):
  c = default_config()
  c.model.name = "mlp"
  c.model.hidden = (100, 100)
  c.losses = {
      "cross_entropy": {"weight": 1.0},
      "dkd": {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0},
  }
  c.num_steps = 6000
  if arg == "smoke":
    smoke_variant(c)
  return c
