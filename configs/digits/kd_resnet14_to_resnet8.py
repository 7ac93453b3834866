"""Hinton KD on 8x8 digits images: the BatchNorm resnet14 teacher (eval mode, frozen
statistics) distilled into a resnet8 student (train mode, its own statistics).

T=4, alpha=0.9 (0.9 soft targets + 0.1 labels), the recipe of ``student_resnet8.py``;
the teacher runs inside the step (``teacher.cache=False``), so every step exercises the
frozen-teacher path. ``teacher.workdir`` is a ``teacher_resnet14.py`` run, or use
``teacher.params_file`` + ``teacher.model.name`` for a teacher kdjax did not train.

Launch:
  kdjax train --config configs/digits/teacher_resnet14.py --workdir runs/digits_resnet14
  kdjax train --config configs/digits/kd_resnet14_to_resnet8.py --workdir runs/digits_kd \
      --config.teacher.workdir=runs/digits_resnet14
Expected: benchmarks/results/digits_resnet.json (3 seeds; README "Model state").
Args: "smoke" (seconds).
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.config import load_config


# The words --config digits/kd_resnet14_to_resnet8.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = load_config("digits/student_resnet8.py", arg)  # the student's recipe
  c.losses = {"hinton_kd": {"weight": 1.0, "temperature": 4.0, "alpha": 0.9}}
  c.teacher.cache = False
  return c
