"""`kdjax fuse` over five CNN members (configs/mnist1d/member_cnn.py, seeds 0-4).

Launch (after training the members, see member_cnn.py):
  kdjax fuse --config configs/mnist1d/fuse_cnn5.py --workdir runs/fuse
  kdjax fuse --config configs/mnist1d/fuse_cnn5.py --workdir runs/fuse_mixed \
      --config.members=runs/members/cnn0,runs/members/cnn1,runs/members/mlp0,runs/members/mlp1
Expected (measured, one place): README.md "Results: kdjax demo", rows ensemble_average, ensemble_fitted
and ensemble_deep; soups: benchmarks/results/mnist1d_accuracy.json, "independent inits: uniform soup".
Args: "soup" (members runs/soup/ft1..5).
"""

import ml_collections


# The words --config mnist1d/fuse_cnn5.py:ARG accepts, comma-separated.
ARGS = ("soup",)


def get_config(arg: str | None = None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.members = ",".join(f"runs/members/cnn{k}" for k in range(5))
  if arg == "soup":
    c.members = ",".join(f"runs/soup/ft{k}" for k in range(1, 6))
  c.data = ml_collections.ConfigDict({"name": "mnist1d", "val_size": 500, "kwargs": {}})
  c.space = "prob"                 # fusion space of weighted / fitted / deep fusion
  c.fixed_weights = ()             # optional fixed weights to report, length M
  c.fit_temperature = False
  c.repair_examples = 0            # > 0: soups of BatchNorm members re-estimate the statistics
                                   # on this many training examples (else: averaged)
  c.deep = ml_collections.ConfigDict({"folds": 5, "hidden": (), "steps": 300})
  return c
