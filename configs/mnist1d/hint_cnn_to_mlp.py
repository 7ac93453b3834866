"""FitNets hint: the MLP learns labels plus the CNN teacher's last conv features.

Loss: cross-entropy + 30 * hint(Projector(student penultimate), teacher block_2), with a
learned linear projector (100 -> 5x25) trained with the student. The teacher runs inside
the step (feature losses cannot use cached logits). 4,000 labelled inputs.

Launch:
  kdjax train --config configs/mnist1d/hint_cnn_to_mlp.py --workdir runs/hint \
      --config.teacher.workdir=runs/teacher_cnn
Expected (measured, one place): benchmarks/results/mnist1d_accuracy.json, "hint (MLP)".
Args: "smoke".
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.training import default_config, smoke_variant


# The words --config mnist1d/hint_cnn_to_mlp.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = default_config()
  c.model.name = "mlp"
  c.model.hidden = (100, 100)
  c.losses = {
      "cross_entropy": {"weight": 1.0},
      "hint": {"weight": 30.0, "student_feature": "penultimate", "teacher_feature": "block_2",
               "projector": "dense"},
  }
  c.num_steps = 6000
  if arg == "smoke":
    smoke_variant(c)
  return c
