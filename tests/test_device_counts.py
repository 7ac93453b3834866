"""Every shipped config runs as written on 1, 2, 4 and 8 devices: batches the devices do not
divide are padded with masked rows (kdjax.training._padding), and the result does not
depend on the device count. The step-level matrix (1/2/4/8 devices, MLP, CNN and a
BatchNorm ResNet) is in tests/test_padding.py."""

import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from kdjax import data as kd_data
from kdjax.config import recipes
from kdjax.config import load_config
from kdjax.training import _padding, load_variables, train_and_evaluate
from kdjax.models import MODELS

ROOT = pathlib.Path(__file__).resolve().parent.parent / "configs"
# Configs that take an argument to pick the run; every other file is loaded without one.
ARGS = {**{f"cifar100/{p.stem}.py": recipes.METHODS for p in (ROOT / "cifar100").glob("*.py")},
        "imagenet/resnet34_to_resnet18.py": ("kd", "student"),
        "mnist/hinton.py": ("teacher", "student", "kd")}
NOT_TRAIN = {"mnist1d/fuse_cnn5.py",  # kdjax fuse: one device, no batches
             "merge/mlp5_mnist1d.py"}  # kdjax merge


def _train_configs():
  for path in sorted(ROOT.glob("*/*.py")):
    name = str(path.relative_to(ROOT))
    if name not in NOT_TRAIN:
      for arg in ARGS.get(name, (None,)):
        yield name, arg


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_every_shipped_config_fits_the_device_count(devices):
  """Each config's batch is split (padded where needed) over ``devices``, and its student
  is a linen module whose BatchNorm layers can mask the padding."""
  mesh = kd_data.make_data_mesh(devices)
  checked = 0
  for name, arg in _train_configs():
    c = load_config(ROOT / name, arg)
    rows, padded = _padding.local_rows(c.batch_size, mesh)
    assert rows == c.batch_size and padded % devices == 0 and 0 <= padded - rows < devices
    model = MODELS[c.model.name]  # a linen Module class (or a partial of one): maskable
    assert issubclass(getattr(model, "func", model), nn.Module), name
    _padding.check_padding(batch_size=c.batch_size, local_rows=rows, mesh=mesh,
                           model=model(num_classes=10), model_state={"batch_stats": {"mean": np.zeros(1)}})
    checked += 1
  assert checked >= 40


@pytest.mark.slow
def test_quickstart_config_trains_the_same_on_1_and_8_devices(tmp_path):
  """The README's first config (the CNN teacher, batch 100), as written, on 8 devices (4
  padded rows a step) equals the 1-device run: losses, evaluation, params."""
  config = "mnist1d/teacher_cnn.py"
  runs = {}
  for devices in (1, 8):
    workdir = tmp_path / str(devices)
    overrides = {"num_devices": devices, "num_steps": 4, "log_every": 2, "eval_every": 4,
                 "checkpoint_every": 4, "progress_bar": False}
    summary = train_and_evaluate(load_config(config, None, overrides), str(workdir))
    assert summary["devices"] == devices
    runs[devices] = ([json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()],
                     load_variables(workdir))
  (one, params_one), (eight, params_eight) = runs[1], runs[8]
  assert [r["step"] for r in eight] == [2, 4] and "test/accuracy" in eight[-1]
  for got, want in zip(eight, one):
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params_eight, params_one)


def test_a_streaming_batch_the_devices_do_not_divide_trains_the_same(tmp_path):
  """Synthetic streaming data (mnist/hinton.py's path), batch 20 on 8 devices (24 rows, 4
  masked): losses and params equal the 1-device run."""
  from test_training_stream import stream_config

  runs = {}
  for devices in (1, 8):
    config = stream_config(batch_size=20, num_devices=devices, num_steps=4, log_every=2,
                           steps_per_call=2, eval_every=4, checkpoint_every=4,
                           **{"data.augment": "none"})
    train_and_evaluate(config, str(tmp_path / str(devices)))
    runs[devices] = ([json.loads(line) for line in (tmp_path / str(devices) /
                                                    "metrics.jsonl").read_text().splitlines()],
                     load_variables(tmp_path / str(devices)))
  for got, want in zip(runs[8][0], runs[1][0]):
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               runs[8][1], runs[1][1])
