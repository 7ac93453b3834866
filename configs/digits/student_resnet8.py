"""resnet8 (BatchNorm, zoo) trained alone on 8x8 digits images, cross-entropy: the
baseline of ``kd_resnet14_to_resnet8.py`` (the recipe of ``teacher_resnet14.py``).

Launch:
  kdjax train --config configs/digits/student_resnet8.py --workdir runs/digits_resnet8
  kdjax train --config configs/digits/student_resnet8.py:smoke --workdir /tmp/s   # seconds
Expected: benchmarks/results/digits_resnet.json (3 seeds; README "Model state").
Args: "smoke" (seconds).
"""

from kdjax.config import load_config


# The words --config digits/student_resnet8.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = load_config("digits/teacher_resnet14.py", arg)  # the same recipe, a smaller network
  c.model.name = "resnet8"
  return c
