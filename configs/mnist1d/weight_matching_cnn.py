"""Parameter (weight) distillation: a CNN student pulled toward the teacher's weights.

Loss: cross-entropy + 1e-2 * weight_matching(student, teacher), the size-normalised sum
of squared differences over every mapped leaf (identity mapping: same architecture).
``:init`` also starts the student from the teacher (teacher-initialised student).

Launch:
  kdjax train --config configs/mnist1d/weight_matching_cnn.py --workdir runs/wm \
      --config.teacher.workdir=runs/teacher_cnn
Expected (measured, one place): benchmarks/results/mnist1d_accuracy.json, "weight matching (CNN)".
Args: "init", "smoke" (comma-separated).
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.training import default_config, smoke_variant


# The words --config mnist1d/weight_matching_cnn.py:ARG accepts, comma-separated.
ARGS = ("init", "smoke")


def get_config(arg: str | None = None):
  args = set((arg or "").split(","))
  c = default_config()
  c.model.name = "cnn1d"
  c.model.conv_implementation = "im2col"  # or "xla" (lax.conv_general_dilated)
  c.losses = {
      "cross_entropy": {"weight": 1.0},
      "weight_matching": {"weight": 1e-2, "normalize": True},
  }
  c.init.from_teacher = "init" in args
  c.num_steps = 6000
  if "smoke" in args:
    smoke_variant(c)
  return c
