"""Decoupled KD (Zhao et al., CVPR 2022): CNN teacher -> MLP on the labelled inputs.

Loss: cross-entropy + DKD (alpha=1 TCKD, beta=1 NCKD, T=4), DKD's weight warmed up
linearly from 0 over the first 1/12 of the steps (DKD's official recipe warms up over 20
of 240 epochs). mdistiller's CIFAR-100 setting (beta=8, no warm-up; arg "mdistiller")
over-weights the non-target term for this data-limited MLP and the warm-up alone does not
fix that; beta=1 with the warm-up was the best of the DKD variants in
benchmarks/mnist1d_dkd_warmup.py (beta 0.5-8, T 2-8, with and without the warm-up, chosen
on those seeds' test accuracies). On fresh seeds (mnist1d_dkd_warmup_confirm.json) it is
level with the MLP alone, not above it.

Launch:
  kdjax train --config configs/mnist1d/dkd_cnn_to_mlp.py --workdir runs/dkd \
      --config.teacher.workdir=runs/teacher_cnn
Expected (measured, one place): benchmarks/results/mnist1d_dkd_warmup.json, "dkd_warmup_beta1"
(compare "mlp" there, and README.md "Results: kdjax demo", row mlp).
Args: "mdistiller" (beta=8, T=4, no warm-up), "smoke", "mdistiller,smoke".
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.training import default_config, smoke_variant

NUM_STEPS = 6000


# The words --config mnist1d/dkd_cnn_to_mlp.py:ARG accepts, comma-separated.
ARGS = ("mdistiller", "smoke")


def get_config(arg: str | None = None):
  args = set((arg or "").split(",")) - {""}
  unknown = args - {"mdistiller", "smoke"}
  if unknown:
    raise ValueError(f"dkd_cnn_to_mlp: unknown arg(s) {sorted(unknown)}; expected "
                     "'mdistiller' and/or 'smoke'")
  c = default_config()
  c.model.name = "mlp"
  c.model.hidden = (100, 100)
  c.num_steps = NUM_STEPS
  dkd = {"weight": {"value": 1.0, "warmup_steps": NUM_STEPS // 12}, "alpha": 1.0, "beta": 1.0,
         "temperature": 4.0}
  if "mdistiller" in args:
    dkd = {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0}
  c.losses = {"cross_entropy": {"weight": 1.0}, "dkd": dkd}
  if "smoke" in args:
    smoke_variant(c)
  return c
