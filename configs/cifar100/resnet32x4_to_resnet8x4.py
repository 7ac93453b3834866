"""CIFAR-100 resnet32x4 -> resnet8x4: the published recipe, method as the argument.

Recipe (kdjax.config.recipes.cifar100_distill; one shared function, this file only picks the
pair): 240 epochs, batch 64, SGD lr 0.05, momentum 0.9, weight decay 5e-4, lr x0.1 at
epochs 150/180/210, pad-4 crop + flip, the teacher online on the student's view; KD at
T=4 (0.1 CE + 0.9 KD), FitNets (CE + 100 hint on stage 2), AT (CE + 1000 AT, p=2), DKD
(CE + DKD alpha 1, beta 8, T=4, weight warmed up over 20 epochs, mdistiller's beta
for this pair). The FitNets regressor is mdistiller's ConvReg (1x1 conv + BatchNorm
with batch statistics + ReLU, projector "conv_reg"), on post-ReLU stage-2 features.

Published top-1 on the test set to match (as quoted in the DKD paper, Zhao et al. 2022, Table 1/2):
  student alone 72.50, KD 73.33, FitNets 73.50, AT 73.44, DKD 76.32.
Not reproduced here yet: `kdjax train` runs these configs end to end (each file's
teacher and KD smoke variants, and every method of resnet56_to_resnet20, run in
tests/test_config_smokes.py on mock data), but no full-length run has been made.

Data: prepare CIFAR-100 once in the array_record format (README, "Training on a TPU VM")
and point `--config.data.data_dir` (or $TFDS_DATA_DIR) at it.

Launch (method = teacher | student | kd | fitnets | at | dkd; teacher and student
train that network alone with cross-entropy):
  kdjax train --config configs/cifar100/resnet32x4_to_resnet8x4.py:dkd \
      --workdir runs/c100_resnet8x4_dkd \
      --config.teacher.params_file=save/models/resnet32x4_vanilla/ckpt_epoch_240.pth
Teacher: `teacher.params_file` takes RepDistiller's / mdistiller's pretrained resnet32x4
(`save/models/resnet32x4_vanilla/ckpt_epoch_240.pth`, a `{"model": state_dict}`), read by
`kdjax.convert.load_pth` and converted by
`kdjax.convert.torch_state_dict("resnet32x4", state_dict, num_classes=100)`; or use a kdjax
workdir trained with this file's `teacher` method (`--config.teacher.workdir=...`).
The same command resumes from the workdir's latest checkpoint.
Args: "<method>", "<method>,smoke" (4 steps on tfds mock data).
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.config import recipes


# The words --config cifar100/resnet32x4_to_resnet8x4.py:ARG accepts, comma-separated.
ARGS = (*recipes.METHODS, "smoke")


def get_config(arg: str | None = None):
  method, smoke = recipes.parse_arg(arg, recipes.METHODS, default="kd")
  return recipes.cifar100_distill("resnet32x4", "resnet8x4", method, dkd_beta=8.0, smoke_run=smoke)
