"""ImageNet ResNet-34 -> ResNet-18 with KD, mdistiller's protocol, torchvision teacher.

Recipe (kdjax.config.recipes.imagenet_distill): 100 epochs, batch 512, SGD lr 0.2, momentum 0.9,
weight decay 1e-4, lr x0.1 at epochs 30/60/90; Inception crop (scale 0.08-1, aspect
3/4-4/3) + flip at 224, ImageNet mean/std; evaluation resizes to 256 and center-crops 224.
KD as in mdistiller's r34_r18/kd.yaml: 0.5 CE + 0.5 KD at T=1 (``hinton_kd`` alpha=0.5,
T=1); the teacher runs online on the student's view.

Published top-1 to match (DKD paper, Zhao et al. 2022, Table 3): teacher 73.31, student
alone 69.75, KD 70.66.
Not reproduced here: `kdjax train` runs it end to end (its smoke variants run in
tests/test_config_smokes.py on mock data), but no full-length run has been made.

Data: imagenet2012 prepared once in the array_record format from the manually downloaded
ILSVRC2012 archives (README, "Training on a TPU VM").

Launch:
  kdjax train --config configs/imagenet/resnet34_to_resnet18.py --workdir runs/in1k_r18_kd \
      --config.data.data_dir=$TFDS_DATA_DIR --config.teacher.params_file=resnet34.pth
Teacher: torchvision's ``resnet34(weights="IMAGENET1K_V1")`` state dict saved with
``torch.save(model.state_dict(), "resnet34.pth")``, converted by
``kdjax.convert.torch_state_dict("resnet34", state_dict, num_classes=1000)``.
The same command resumes from the workdir's latest checkpoint.
Args: "kd" (default), "student" (ResNet-18 alone, CE), ",smoke" (4 steps on mock data).
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.config import recipes


# The words --config imagenet/resnet34_to_resnet18.py:ARG accepts, comma-separated.
ARGS = ("kd", "student", "smoke")


def get_config(arg: str | None = None):
  method, smoke = recipes.parse_arg(arg, ("kd", "student"), default="kd")
  losses = ({"hinton_kd": {"weight": 1.0, "temperature": 1.0, "alpha": 0.5}} if method == "kd"
            else {"cross_entropy": {"weight": 1.0}})
  c = recipes.imagenet_distill("resnet34", "resnet18", losses=losses, smoke_run=smoke)
  if method == "student":
    c.teacher.model.name = ""
  return c
