"""Hinton KD: the CNN teacher distilled into the MLP 40-100-100-10 on MNIST-1D.

By default the student learns from the teacher's soft targets (T=4, alpha=1) on the
4,000 training inputs plus 100,000 generated unlabelled inputs (the transfer set),
with Adam 1e-2, 1,000 warmup steps and cosine decay over 40,000 steps.

Launch:
  kdjax train --config configs/mnist1d/teacher_cnn.py --workdir runs/teacher_cnn
  kdjax train --config configs/mnist1d/kd_cnn_to_mlp.py --workdir runs/kd \
      --config.teacher.workdir=runs/teacher_cnn
  # plain KD on the 4,000 labelled inputs only (alpha=0.9, no transfer set):
  kdjax train --config configs/mnist1d/kd_cnn_to_mlp.py:labelled --workdir runs/kd_labelled \
      --config.teacher.workdir=runs/teacher_cnn
Expected (measured, one place): README.md "Results: kdjax demo", rows kd_transfer and kd_labelled
(with the transfer set / on the labelled inputs only; compare row mlp).
Args: "labelled" (no transfer set), "smoke" (seconds), "labelled,smoke".
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.training import default_config, smoke_variant


# The words --config mnist1d/kd_cnn_to_mlp.py:ARG accepts, comma-separated.
ARGS = ("labelled", "smoke")


def get_config(arg: str | None = None):
  args = set((arg or "").split(","))
  c = default_config()
  c.model.name = "mlp"
  c.model.hidden = (100, 100)
  c.losses = {"hinton_kd": {"weight": 1.0, "temperature": 4.0, "alpha": 1.0}}
  c.transfer.num_samples = 100_000
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 1000
  c.num_steps = 40_000
  c.log_every = 1000
  c.eval_every = 4000
  c.checkpoint_every = 4000
  if "labelled" in args:
    c.transfer.num_samples = 0
    c.losses = {"hinton_kd": {"weight": 1.0, "temperature": 4.0, "alpha": 0.9}}
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 0
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 6000, 500, 1000, 1000
  if "smoke" in args:
    smoke_variant(c)
  return c
