"""The best MNIST-1D student recipe: ten CNNs teach the MLP 40-100-100-10 over 200,000 inputs.

The recipe of configs/mnist1d/kd_ensemble_to_mlp.py (Hinton KD T=4, alpha=1, members'
softmax(z / 4) averaged, Adam 1e-2, 1,000 warmup steps, cosine decay, batch 100) with the
three levers of benchmarks/mnist1d_above_teacher.py: a stronger teacher (ten CNN members,
configs/mnist1d/member_cnn.py, instead of five), twice the generated unlabelled inputs
(200,000 instead of 100,000; ``--config.transfer.fresh=True`` draws new ones every step
instead, with the targets computed per chunk) and twice the steps (80,000).

Launch (members trained as in member_cnn.py, seeds 0-9):
  kdjax train --config configs/mnist1d/kd_ensemble10_to_mlp.py --workdir runs/kd_ens10 \
      --config.teacher.workdir=runs/members/cnn0,runs/members/cnn1,...,runs/members/cnn9
The benchmark (benchmarks/mnist1d_above_teacher.py, README.md section "The MLP above its
teacher ensemble") draws the second 100,000 inputs from kdjax.data.FreshMNIST1D, the same
generator, and trains the student with the trainer's cached-target step.
Expected (measured, one place): benchmarks/results/mnist1d_above_teacher.json, row
"10 CNNs, 100k pool + 100k fresh inputs, long schedule" (it stays below 95%: see the
README section).
Args: "smoke".
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.config import load_config


# The words --config mnist1d/kd_ensemble10_to_mlp.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = load_config("mnist1d/kd_ensemble_to_mlp.py", arg)  # the five-CNN recipe
  if arg != "smoke":
    c.transfer.num_samples = 200_000
    c.num_steps = 80_000
  c.teacher.workdir = ",".join(f"runs/members/cnn{k}" for k in range(10))
  return c
