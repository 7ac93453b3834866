"""Born-again network (Furlanello et al., 2018): a CNN distilled from a CNN of the same
architecture, on the labelled inputs (hinton_kd, T=4, alpha=0.5).

``:init`` starts the student as a copy of the teacher (born-again initialisation via
``kdjax.losses.init_from_teacher`` with the identity mapping) instead of from scratch.

Launch:
  kdjax train --config configs/mnist1d/born_again_cnn.py --workdir runs/ban \
      --config.teacher.workdir=runs/teacher_cnn
Expected (measured, one place): benchmarks/results/mnist1d_accuracy.json, "born-again (CNN)" and
"born-again from teacher init (CNN)".
Args: "init", "smoke" (comma-separated).
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.training import default_config, smoke_variant


# The words --config mnist1d/born_again_cnn.py:ARG accepts, comma-separated.
ARGS = ("init", "smoke")


def get_config(arg: str | None = None):
  args = set((arg or "").split(","))
  c = default_config()
  c.model.name = "cnn1d"
  c.model.conv_implementation = "im2col"  # or "xla" (lax.conv_general_dilated)
  c.losses = {"hinton_kd": {"weight": 1.0, "temperature": 4.0, "alpha": 0.5}}
  c.init.from_teacher = "init" in args
  c.num_steps = 6000
  if "smoke" in args:
    smoke_variant(c)
  return c
