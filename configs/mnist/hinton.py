"""Hinton, Vinyals & Dean 2015 ("Distilling the Knowledge in a Neural Network"), MNIST.

teacher: 784-1200-1200-10 ReLU MLP with dropout 0.5 on the hidden layers and 0.2 on the
  inputs (the regularisation of Hinton et al. 2012, "Improving neural networks by
  preventing co-adaptation of feature detectors", which the paper uses), trained on the
  60,000 training images jittered by up to 2 pixels (``pad_crop`` with pad 2, no flip).
student: 784-800-800-10 alone, no regularisation, un-jittered images.
kd: the same student trained on soft targets at T=20 (``hinton_kd`` alpha=0.9, i.e. a
  lower weight on the hard labels, as the paper advises); no augmentation. The teacher
  runs online on each streamed batch (``teacher.cache`` caches targets of in-memory data
  only).

Published test errors to match (of 10,000): teacher 67, student alone 146, distilled
student 74. The paper does not give its optimiser; the SGD settings here (lr 0.1,
momentum 0.9, batch 100, 60 epochs) are ours and untuned, and the paper's max-norm weight
constraints are not expressed; nothing has been measured yet.

Launch:
  kdjax train --config configs/mnist/hinton.py:teacher --workdir runs/mnist_teacher
  kdjax train --config configs/mnist/hinton.py:kd --workdir runs/mnist_kd \
      --config.teacher.workdir=runs/mnist_teacher
Data: mnist prepared once in the array_record format (README, "Training on a TPU VM").
Args: "teacher" | "student" | "kd" (default), each optionally with ",smoke".
The smoke variant needs a teacher as the full one does (--config.teacher.workdir=, e.g. a
teacher config's own smoke run, or teacher.params_file).
"""

from kdjax.config import recipes
from kdjax.training import default_config

MNIST_TRAIN_SIZE = 60_000


# The words --config mnist/hinton.py:ARG accepts, comma-separated.
ARGS = ("teacher", "student", "kd", "smoke")


def get_config(arg: str | None = None):
  method, smoke = recipes.parse_arg(arg, ("teacher", "student", "kd"), default="kd")
  c = default_config()
  c.data.name, c.data.source = "mnist", "tfds"
  c.data.flatten = True
  c.data.augment = "none"
  c.model.name = "mlp"
  if method == "teacher":
    c.model.hidden = (1200, 1200)
    c.model.dropout_rate = 0.5       # hidden layers (train mode only)
    c.model.input_dropout_rate = 0.2
    c.data.augment, c.data.pad = "pad_crop", 2
    c.losses = {"cross_entropy": {"weight": 1.0}}
  else:
    c.model.hidden = (800, 800)
    c.losses = ({"hinton_kd": {"weight": 1.0, "temperature": 20.0, "alpha": 0.9}}
                if method == "kd" else {"cross_entropy": {"weight": 1.0}})
  c.teacher.cache = False  # streamed data: the teacher runs online in the step
  c.batch_size = 100
  c.num_epochs = 60
  c.num_steps = c.num_epochs * MNIST_TRAIN_SIZE // c.batch_size
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 0.1, 0.9
  c.log_every, c.eval_every, c.checkpoint_every = 600, 6000, 6000
  return recipes.smoke(c) if smoke else c
