"""Ensemble distillation: five CNNs (probability average) teach the MLP 40-100-100-10.

The teacher is the fused ensemble: its members (configs/mnist1d/member_cnn.py) are
stacked and run as one call, their tempered probabilities softmax(z_m / 4) averaged
(``teacher.fusion_temperature=4``; README.md "Results: kdjax demo" gives the effect of
averaging at T=1 instead), and the fused targets cached over the training inputs plus 100,000 generated unlabelled
inputs. Adam 1e-2, 1,000 warmup steps, cosine decay over 40,000 steps, T=4, alpha=1.

Launch:
  kdjax train --config configs/mnist1d/kd_ensemble_to_mlp.py --workdir runs/kd_ens \
      --config.teacher.workdir=runs/members/cnn0,runs/members/cnn1,runs/members/cnn2,runs/members/cnn3,runs/members/cnn4
Expected (measured, one place): README.md "Results: kdjax demo", row kd_ensemble (compare rows kd_transfer
and mlp).
Args: "smoke".
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.training import default_config, smoke_variant


# The words --config mnist1d/kd_ensemble_to_mlp.py:ARG accepts, comma-separated.
ARGS = ("smoke",)


def get_config(arg: str | None = None):
  c = default_config()
  c.model.name = "mlp"
  c.model.hidden = (100, 100)
  c.data.val_size = 500          # the members never saw these; keep them out here too
  c.losses = {"hinton_kd": {"weight": 1.0, "temperature": 4.0, "alpha": 1.0}}
  c.teacher.fusion = "prob"
  c.teacher.fusion_temperature = 4.0   # average the members' softmax(z / 4), see the docstring
  c.transfer.num_samples = 100_000
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 1000
  c.num_steps = 40_000
  c.log_every = 1000
  c.eval_every = 4000
  c.checkpoint_every = 4000
  if arg == "smoke":
    smoke_variant(c)
  return c
