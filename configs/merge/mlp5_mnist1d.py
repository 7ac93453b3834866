"""`kdjax merge` over five independently trained MLP members (configs/mnist1d/member_mlp.py,
seeds 0-4): the plain average, the average after permutation alignment (git re-basin),
Fisher merging and RegMean; hyperparameters chosen on the 500 held-out examples.

Launch (after training the members, see member_mlp.py):
  kdjax merge --config configs/merge/mlp5_mnist1d.py --workdir runs/merge
  kdjax merge --config configs/merge/mlp5_mnist1d.py:finetuned --workdir runs/merge_ft \\
      --config.base=runs/base --config.members=runs/ft0,runs/ft1
Expected (measured, seeds 0-4 of member_mlp.py): benchmarks/results/merge_mlp5_mnist1d.md
(the average 0.111 test accuracy, aligned average 0.487, members 0.635-0.676); the
fine-tuned case: benchmarks/results/merge_multitask.md.
Args: "finetuned" (members fine-tuned from config.base: every method, the task-vector ones
included).
"""

import ml_collections

# The words --config merge/mlp5_mnist1d.py:ARG accepts.
ARGS = ("finetuned",)


def get_config(arg: str | None = None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.members = ",".join(f"runs/members/mlp{k}" for k in range(5))
  c.base = ""  # the run the members were fine-tuned from (task-vector methods)
  c.data = ml_collections.ConfigDict({"name": "mnist1d", "val_size": 500, "kwargs": {}})
  c.repair_examples = 1000  # BatchNorm members: training examples for the statistics repair
  c.methods = ("average", "align_average", "fisher", "regmean")
  if arg == "finetuned":
    c.methods = ("average", "task_arithmetic", "ties", "dare", "model_stock", "fisher",
                 "regmean")
  c.grid = ml_collections.ConfigDict({"scale": (0.3, 0.5, 0.7, 1.0), "density": (0.2, 0.5),
                                      "alpha": (0.5, 0.9)})
  return c
