"""Reproduction configs: recipes as published, valid objectives, smoke data pipelines.

The smoke variants' training runs need the model zoo and the trainer integration (issues
8 and 9); here each smoke config's data section builds its pipelines on tfds mock data.
"""

import pathlib

import numpy as np
import pytest

from kdjax import data, losses
from kdjax.config import recipes
from kdjax.config import load_config

import tensorflow_datasets as tfds  # noqa: E402  (a runtime dependency)

ROOT = pathlib.Path(__file__).resolve().parent.parent / "configs"
CIFAR_PAIRS = {"resnet32x4_to_resnet8x4": 8.0, "wrn_40_2_to_wrn_16_2": 6.0,
               "resnet56_to_resnet20": 2.0, "vgg13_to_vgg8": 6.0}
CASES = ([(f"cifar100/{p}.py", m) for p in CIFAR_PAIRS for m in recipes.METHODS]
         + [("imagenet/resnet34_to_resnet18.py", m) for m in ("kd", "student")]
         + [("imagenet/function_matching.py", "fm")]
         + [("mnist/hinton.py", m) for m in ("teacher", "student", "kd")])


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))

  def refuse(*args, **kwargs):
    raise AssertionError("a test tried to download")

  for name in ("download", "download_and_extract"):
    monkeypatch.setattr(tfds.download.DownloadManager, name, refuse)


def test_every_config_file_is_covered():
  files = {str(p.relative_to(ROOT)) for d in ("cifar100", "imagenet", "mnist")
           for p in (ROOT / d).glob("*.py")}
  assert files == {path for path, _ in CASES}


@pytest.mark.parametrize("path,method", CASES)
def test_config_objective_is_valid_and_steps_follow_epochs(path, method):
  c = load_config(ROOT / path, method)
  objective = losses.make_objective(c.losses)  # term names and kwargs are checked here
  assert objective.needs_teacher == (method not in ("teacher", "student"))
  assert c.data.source == "tfds" and c.data.name in data.TFDS_DATASETS
  sizes = {"cifar100": 50_000, "imagenet2012": 1_281_167, "mnist": 60_000}
  assert c.num_steps == c.num_epochs * (sizes[c.data.name] // c.batch_size)
  assert c.eval_every % c.log_every == 0 and c.checkpoint_every % c.log_every == 0
  if method not in ("teacher", "student") and c.data.augment != "none":
    assert not c.teacher.cache  # augmented views: the teacher must run online


@pytest.mark.parametrize("pair,beta", sorted(CIFAR_PAIRS.items()))
def test_cifar100_recipe_is_the_published_one(pair, beta):
  c = load_config(ROOT / f"cifar100/{pair}.py", "dkd")
  assert (c.num_epochs, c.batch_size) == (240, 64)
  o = c.optimizer
  assert (o.name, o.learning_rate, o.momentum, o.weight_decay) == ("sgd", 0.05, 0.9, 5e-4)
  assert (o.schedule, tuple(o.boundary_epochs), o.decay_factor) == ("multistep",
                                                                  (150, 180, 210), 0.1)
  assert c.losses.dkd.to_dict() == {"weight": {"value": 1.0, "warmup_steps": 20 * 781},
                                    "alpha": 1.0, "beta": beta, "temperature": 4.0}
  kd = load_config(ROOT / f"cifar100/{pair}.py", "kd").losses.hinton_kd
  assert (kd.temperature, kd.alpha) == (4.0, 0.9)
  at = load_config(ROOT / f"cifar100/{pair}.py", "at").losses
  assert {k: v.weight for k, v in at.items()} == {
      "cross_entropy": 1.0, **{f"at_{i}": 1000.0 for i in range(1, 4 if "vgg" not in pair else 5)}}
  fit = load_config(ROOT / f"cifar100/{pair}.py", "fitnets").losses.hint
  assert (fit.weight, fit.projector) == (100.0, "conv_reg")  # mdistiller ConvReg
  teacher_run = load_config(ROOT / f"cifar100/{pair}.py", "teacher")
  assert teacher_run.model.name == pair.split("_to_")[0] and not teacher_run.teacher.model.name
  assert c.teacher.model.name == pair.split("_to_")[0] and not c.teacher.cache


def test_unknown_method_is_an_error():
  with pytest.raises(ValueError, match="unknown word .*; accepted words"):
    load_config(ROOT / "cifar100/vgg13_to_vgg8.py", "crd")
  with pytest.raises(ValueError, match="expected one of"):  # two methods
    load_config(ROOT / "cifar100/vgg13_to_vgg8.py", "kd,at")


SMOKE_SHAPES = {"cifar100": (32, 32, 3), "imagenet2012": (32, 32, 3), "mnist": (784,)}  # data.image_size


@pytest.mark.parametrize("path,method", [c for c in CASES if c[1] in ("dkd", "kd", "fm", "teacher")
                                         and not c[0].startswith("cifar100/vgg")])
def test_smoke_variant_data_pipelines_run_on_mock_data(path, method):
  c = load_config(ROOT / path, f"{method},smoke")
  assert c.num_steps <= 10 and c.data.mock_examples > 0
  made = data.pipelines_from_config(c.data, batch_size=c.batch_size,
                                    eval_batch_size=c.eval_batch_size, seed=c.seed,
                                    process_index=0, process_count=1)
  shape = SMOKE_SHAPES[c.data.name]
  batch = next(made["train"].iterator())
  assert batch["x"].shape == (c.batch_size, *shape) and batch["x"].dtype == np.float32
  if c.data.mixup_alpha:
    assert batch["label_probs"].shape == (c.batch_size, made["num_classes"])
  evaluation = next(made["eval"].iterator())
  assert evaluation["x"].shape == (c.eval_batch_size, *shape)


def test_synthetic_source_from_config():
  c = load_config(ROOT / "cifar100/resnet56_to_resnet20.py", "kd,smoke")
  c.data.source = "synthetic"
  c.data.synthetic.shape = (16, 16, 3)
  made = data.pipelines_from_config(c.data, batch_size=8, eval_batch_size=8, seed=0,
                                    process_index=0, process_count=1)
  assert next(made["train"].iterator())["x"].shape == (8, 16, 16, 3)
  assert made["num_classes"] == 10 and made["image_shape"] == (16, 16, 3)
  c.data.source = "local"
  with pytest.raises(ValueError, match="streaming"):
    data.pipelines_from_config(c.data, batch_size=8, eval_batch_size=8, seed=0)


def _zoo_model(name):
  from kdjax.models import get_model

  return get_model(name, num_classes=100)


@pytest.mark.parametrize("pair", sorted(CIFAR_PAIRS))
def test_cifar100_objectives_trace_on_zoo_features_of_a_pipeline_batch(pair):
  """Feature names and shapes of the FitNets/AT terms fit the zoo's models (traced with
  ``jax.eval_shape``: shapes and names are checked, nothing is computed)."""
  import jax
  import jax.numpy as jnp

  t_name, s_name = pair.split("_to_")
  s_model, t_model = _zoo_model(s_name), _zoo_model(t_name)
  c = load_config(ROOT / f"cifar100/{pair}.py", "kd,smoke")
  made = data.pipelines_from_config(c.data, batch_size=4, eval_batch_size=4, seed=0,
                                    process_index=0, process_count=1)
  batch = next(made["train"].iterator())

  def loss_inputs(x, labels):
    def run(model, rng):
      variables = model.init(rng, x)
      logits, state = model.apply(variables, x, mutable=["intermediates"])
      return variables["params"], logits, {k: v[-1] for k, v in state["intermediates"].items()}

    s_params, s_logits, s_feats = run(s_model, jax.random.key(0))
    t_params, t_logits, t_feats = run(t_model, jax.random.key(1))
    return losses.LossInputs(student_logits=s_logits, labels=labels, teacher_logits=t_logits,
                             student_features=s_feats, teacher_features=t_feats,
                             student_params=s_params, teacher_params=t_params)

  inputs = jax.eval_shape(loss_inputs, jnp.asarray(batch["x"]), jnp.asarray(batch["y"]))
  for method in ("kd", "fitnets", "at", "dkd"):
    objective = losses.make_objective(load_config(ROOT / f"cifar100/{pair}.py", method).losses)
    out = jax.eval_shape(lambda i: objective(objective.init(jax.random.key(2), i), i, step=0)[0],
                         inputs)
    assert out.shape == () and out.dtype == jnp.float32, method


@pytest.mark.parametrize("method", ["teacher", "student"])
def test_hinton_mnist_models_from_config_on_a_mock_batch(method):
  """The teacher is the 784-1200-1200-10 MLP with dropout (train mode only), the student
  784-800-800-10 without; both built from the config and run on a mock pipeline batch."""
  import jax
  import jax.numpy as jnp
  from kdjax.models import as_model, count_params
  from kdjax.training.teachers._load import model_from_config

  c = load_config(ROOT / "mnist/hinton.py", f"{method},smoke")
  made = data.pipelines_from_config(c.data, batch_size=c.batch_size,
                                    eval_batch_size=c.eval_batch_size, seed=c.seed,
                                    process_index=0, process_count=1)
  x = jnp.asarray(next(made["train"].iterator())["x"])
  model = as_model(model_from_config(c.model.to_dict(), made["num_classes"]))
  variables = model.init(jax.random.key(0), x)
  width = 1200 if method == "teacher" else 800
  assert count_params(variables["params"]) == (784 * width + width + width * width + width
                                               + width * 10 + 10)
  eval_out = model.apply(variables, x, train=False).logits
  train_out = model.apply(variables, x, train=True, rng=jax.random.key(1)).logits
  assert bool(jnp.any(train_out != eval_out)) == (method == "teacher")
