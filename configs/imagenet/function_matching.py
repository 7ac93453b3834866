"""Function matching (Beyer et al. 2022): a patient, consistent teacher on ImageNet.

The teacher and the student see the SAME aggressively augmented view of every example:
an Inception crop + flip, then mixup of the batch (``data.mixup_alpha=1``: Beta(1, 1),
big_vision's ``mixup(p=1.0, n=2)``); the student matches the teacher's distribution with
KL at T=1 and no labels (``soft_target_kl``), for many epochs. Optimiser after
big_vision's ``configs/proj/distill/bit_i1k.py``: Adam, lr 0.03, 5,000 warm-up steps then
cosine decay, global-norm clipping at 1, batch 4096, 1200 epochs. big_vision's decoupled
weight decay 3e-4 is not scaled by the base lr (``big_vision/optax.py``), optax.adamw's
is, so ``weight_decay = 3e-4 / 0.03 = 0.01`` here (big_vision decays kernels only;
adamw here decays every parameter).

Pair: the zoo's ResNet-50 (torchvision weights, converted) -> ResNet-18. The paper's
pair is BiT-M R152x2 -> ResNet-50 (82.8% top-1 after 9600 epochs); there is no
published number for this pair, and nothing has been measured here.

Launch:
  kdjax train --config configs/imagenet/function_matching.py --workdir runs/in1k_fm \
      --config.teacher.params_file=resnet50.pth
Teacher: ``torchvision.models.resnet50(weights="IMAGENET1K_V1")``'s state dict, converted
by ``kdjax.convert.torch_state_dict("resnet50", state_dict, num_classes=1000)``.
The same command resumes from the workdir's latest checkpoint.
Args: "smoke" (4 steps on mock data).
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

import ml_collections

from kdjax.config import recipes


# The words --config imagenet/function_matching.py:ARG accepts, comma-separated.
ARGS = ("fm", "smoke")


def get_config(arg: str | None = None):
  _, smoke = recipes.parse_arg(arg, ("fm",), default="fm")
  losses = {"soft_target_kl": {"weight": 1.0, "temperature": 1.0}}
  c = recipes.imagenet_distill("resnet50", "resnet18", losses=losses)
  c.data.mixup_alpha = 1.0
  c.batch_size = 4096
  c.num_epochs = 1200
  steps_per_epoch = recipes.IMAGENET_TRAIN_SIZE // c.batch_size  # 312
  c.num_steps = c.num_epochs * steps_per_epoch
  c.optimizer = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": 0.03, "schedule": "warmup_cosine",
      "warmup_steps": 5000, "grad_clip_norm": 1.0, "weight_decay": 0.01})
  c.log_every = 104                 # 312 = 3 * 104
  c.eval_every = c.checkpoint_every = 10 * steps_per_epoch
  return recipes.smoke(c) if smoke else c
