"""Fresh MNIST-1D inputs (kdjax.data.FreshMNIST1D) and config.transfer.fresh in the trainer."""

import jax
import numpy as np
import pytest

from kdjax.config import load_config
from kdjax.data import FreshMNIST1D, mnist1d_transform_batch
from kdjax.training import train_and_evaluate


def test_batch_transform_equals_the_packages_per_example_transform():
  """Same random draws -> the vectorised chain equals mnist1d.transform.transform."""
  from mnist1d.data import get_dataset_args, get_templates
  from mnist1d.transform import transform

  args, templates = get_dataset_args(), get_templates()
  labels = np.arange(30) % 10
  expected, draws = [], {k: [] for k in ("pad", "scale", "shift", "corr", "iid", "shear")}
  for i, label in enumerate(labels):
    np.random.seed(i)  # the package draws from the global generator
    expected.append(transform(templates["x"][label], templates["t"], args)[0])
    r = np.random.RandomState(i)  # the same draws, in the package's order
    draws["pad"].append(r.rand())
    draws["scale"].append(r.rand())
    draws["shift"].append(r.choice(args.max_translation))
    draws["corr"].append(r.randn(72))
    draws["iid"].append(r.randn(72))
    draws["shear"].append(r.rand())
  d = {k: np.asarray(v) for k, v in draws.items()}
  got = mnist1d_transform_batch(labels, pad=d["pad"], scale=d["scale"], shift=d["shift"],
                                corr_noise=d["corr"], iid_noise=d["iid"], shear=d["shear"])
  np.testing.assert_allclose(got, np.stack(expected), rtol=0, atol=1e-12)


def test_deterministic_per_step_and_independent_of_chunking():
  a, b = FreshMNIST1D(3, 16), FreshMNIST1D(3, 16)
  np.testing.assert_array_equal(a.chunk(5, 4), np.stack([b.batch(s) for s in range(5, 9)]))
  np.testing.assert_array_equal(a.chunk(0, 9)[5:], b.chunk(5, 4))  # resume at step 5
  assert not np.allclose(a.batch(0), a.batch(1))
  assert not np.allclose(a.batch(0), FreshMNIST1D(4, 16).batch(0))
  assert a.chunk(0, 3).shape == (3, 16, 40) and a.batch(0).dtype == np.float32


def test_distribution_matches_make_dataset():
  """Scale, per-position means and class balance of 4,000 stream inputs vs make_dataset."""
  from mnist1d.data import get_dataset_args, make_dataset

  args = get_dataset_args()
  args.num_samples, args.train_split = 4000, 1.0
  ref = make_dataset(args)["x"]
  x, y = FreshMNIST1D(0, 4000).batch(0, labels=True)
  assert x.shape == (4000, 40) and ref.shape == (4000, 40)
  assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05
  # a standard error of a position mean is about 1 / sqrt(4000) = 0.016
  np.testing.assert_allclose(x.mean(0), ref.mean(0), atol=0.08)
  np.testing.assert_allclose(x.std(0), ref.std(0), atol=0.08)
  assert np.bincount(y, minlength=10).min() > 300


def test_bad_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="batch_size"):
    FreshMNIST1D(0, 0)
  with pytest.raises(ValueError, match="step"):
    FreshMNIST1D(0, 8).batch(-1)


def test_fresh_training_resumes_to_the_same_params(teacher_dir, tmp_path):
  """transfer.fresh: a run resumed from its step-20 checkpoint ends where the straight run
  ended (the resumed run draws the same fresh inputs for steps 20..39)."""
  import shutil

  from kdjax.training import load_params

  c = load_config("mnist1d/kd_cnn_to_mlp.py", "smoke",
                  {"progress_bar": False, "teacher.workdir": str(teacher_dir)})
  c.transfer.fresh = True
  straight = train_and_evaluate(c, str(tmp_path / "a"))
  assert straight["steps"] == 40 and straight["test"]["accuracy"] > 0.1
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "40")  # as if stopped after step 20
  (tmp_path / "b" / "summary.json").unlink()
  resumed = train_and_evaluate(c, str(tmp_path / "b"))
  assert resumed["resumed_from"] == 20 and resumed["steps"] == 40
  a, b = load_params(str(tmp_path / "a")), load_params(str(tmp_path / "b"))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                                                      atol=1e-6), a, b)


def test_kd_ensemble10_config_smoke(teacher_dir, tmp_path):
  """configs/mnist1d/kd_ensemble10_to_mlp.py:smoke trains (ten members: one smoke teacher
  listed ten times) and reports the ten-member teacher."""
  c = load_config("mnist1d/kd_ensemble10_to_mlp.py", "smoke",
                  {"progress_bar": False, "teacher.workdir": ",".join([str(teacher_dir)] * 10)})
  summary = train_and_evaluate(c, str(tmp_path / "w"))
  assert summary["steps"] == 40 and summary["teacher_test"]["members"] == 10
  assert np.isfinite(summary["test"]["nll"])


def test_kd_above_teacher_config_smoke(teacher_dir, tmp_path):
  """configs/mnist1d/kd_above_teacher_mlp.py:smoke trains with fifteen members (one smoke
  teacher listed fifteen times) and KD at T=2 on targets fused at T=4."""
  c = load_config("mnist1d/kd_above_teacher_mlp.py", "smoke",
                  {"progress_bar": False, "teacher.workdir": ",".join([str(teacher_dir)] * 15)})
  assert (c.losses.hinton_kd.temperature, c.teacher.fusion_temperature) == (2.0, 4.0)
  summary = train_and_evaluate(c, str(tmp_path / "w"))
  assert summary["steps"] == 40 and summary["teacher_test"]["members"] == 15
  assert np.isfinite(summary["test"]["nll"])


def test_fresh_inputs_with_the_teacher_in_the_step_equal_per_chunk_targets(teacher_dir, tmp_path):
  """teacher.cache=False (teacher in the compiled step) and the per-chunk host targets train
  the same student on the same fresh inputs."""
  from kdjax.training import load_params

  params = []
  for cache in (True, False):
    c = load_config("mnist1d/kd_cnn_to_mlp.py", "smoke",
                    {"progress_bar": False, "teacher.workdir": str(teacher_dir),
                     "teacher.cache": cache, "num_steps": 20})
    c.transfer.fresh = True
    assert train_and_evaluate(c, str(tmp_path / str(cache)))["steps"] == 20
    params.append(load_params(str(tmp_path / str(cache))))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4,
                                                      atol=1e-5), *params)
