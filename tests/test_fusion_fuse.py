"""`kdjax fuse` (run_fuse) on an interleaved CNN/MLP pool: members stay in the user's order."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import data as kd_data
from kdjax import metrics
from kdjax.config import load_config
from kdjax.programs.fuse import run_fuse
from kdjax.training import load_run, train_and_evaluate

MEMBERS = (("cnn_a", "mnist1d/member_cnn.py", 0), ("mlp_b", "mnist1d/member_mlp.py", 1),
           ("cnn_c", "mnist1d/member_cnn.py", 2))


@pytest.fixture(scope="module")
def mixed_pool(tmp_path_factory):
  """Three 40-step members, architectures interleaved: cnn_a, mlp_b, cnn_c."""
  root = tmp_path_factory.mktemp("pool")
  for name, config_path, seed in MEMBERS:
    config = load_config(config_path, "smoke", {"seed": seed, "progress_bar": False})
    train_and_evaluate(config, str(root / name))
  return root


def _test_scores(workdir, split):
  model, variables, _ = load_run(workdir)  # {"params": ..., **model state}
  logits = jax.jit(model.apply)(variables, jnp.asarray(split["x"]))
  return {"accuracy": float(metrics.accuracy(logits, split["y"])),
          "nll": float(metrics.nll(logits, split["y"]))}


def test_fixed_weights_land_on_the_members_in_the_given_order(mixed_pool, tmp_path):
  """Defect 3: weights (0, 1, 0) must select mlp_b, the second member as given."""
  config = load_config("mnist1d/fuse_cnn5.py")
  config.members = ",".join(str(mixed_pool / name) for name, _, _ in MEMBERS)
  config.fixed_weights = (0.0, 1.0, 0.0)
  config.deep.steps = 20
  report = run_fuse(config, str(tmp_path / "fuse"))
  rows = report["test"]
  assert report["members"] == ["cnn_a", "mlp_b", "cnn_c"]
  assert [k for k in rows if k.startswith("member")] == [
      "member 0 (cnn_a)", "member 1 (mlp_b)", "member 2 (cnn_c)"]

  splits = kd_data.load_dataset(config.data.name, val_size=config.data.val_size)
  for i, (name, _, _) in enumerate(MEMBERS):  # each row is that workdir's own model
    want = _test_scores(mixed_pool / name, splits["test"])
    got = rows[f"member {i} ({name})"]
    np.testing.assert_allclose([got["accuracy"], got["nll"]], [want["accuracy"], want["nll"]],
                               rtol=1e-4)
  mlp = rows["member 1 (mlp_b)"]
  fixed = rows["weighted (fixed)"]
  np.testing.assert_allclose([fixed["accuracy"], fixed["nll"]], [mlp["accuracy"], mlp["nll"]],
                             rtol=1e-4)
  # The reliability diagram shows the predictor the report calls best.
  assert report["reliability_predictor"] == report["best"]
  best = rows[report["best"]]  # chosen by NLL, the score the diagram's calibration is about
  assert best["nll"] == min(v["nll"] for k, v in rows.items() if not k.startswith("member"))
  np.testing.assert_allclose(report["reliability_ece"], best["ece"], rtol=1e-4, atol=1e-6)
  bins = report["reliability_bins"]
  assert sum(bins["count"]) == len(splits["test"]["y"])  # every test example in one bin
  md = (tmp_path / "fuse" / "report.md").read_text()
  shown = [line for line in md.splitlines() if line.startswith("| 0.") or line.startswith("| 1.")]
  assert sum(int(line.split("|")[2]) for line in shown) == len(splits["test"]["y"])
  # A soup near chance is explained; one above it is not.
  for k, v in rows.items():
    if "soup" in k:
      assert (f"**{k}** is near chance" in md) == (v["accuracy"] < 2 / splits["num_classes"])
  saved = json.loads((tmp_path / "fuse" / "report.json").read_text())
  assert saved["best"] == report["best"]
  assert report["best"] in (tmp_path / "fuse" / "report.md").read_text()
  # Greedy soup members are numbered like the report's members (the CNNs are 0 and 2).
  assert set(saved["soups"]["CNN1D"]["greedy_members"]) <= {0, 2}


def test_fixed_weights_of_the_wrong_length_are_refused(mixed_pool, tmp_path):
  config = load_config("mnist1d/fuse_cnn5.py")
  config.members = ",".join(str(mixed_pool / name) for name, _, _ in MEMBERS)
  config.fixed_weights = (0.5, 0.5)
  with pytest.raises(ValueError, match="fixed_weights has 2 entries but config.members names 3"):
    run_fuse(config, str(tmp_path / "fuse"))


def test_a_member_trained_on_the_fitting_split_is_refused(mixed_pool, tmp_path):
  """mlp.py holds nothing out (data.val_size=0): it trained on the 500 examples fusion fits
  its weights on, and would win them by memory."""
  saw = tmp_path / "saw_val"
  train_and_evaluate(load_config("mnist1d/mlp.py", "smoke", {"progress_bar": False}), str(saw))
  config = load_config("mnist1d/fuse_cnn5.py")
  config.members = f"{mixed_pool / 'cnn_a'},{saw}"
  with pytest.raises(ValueError, match=f"member '{saw}' trained on examples fusion fits on: it "
                     r"held out data.val_size=0 of the last training examples, fusion fits on "
                     r"the last 500"):
    run_fuse(config, str(tmp_path / "fuse"))
  assert not (tmp_path / "fuse" / "report.json").exists()
  # A member distilled from that run learnt from the teacher's view of the split, too.
  import shutil
  student = tmp_path / "student"
  shutil.copytree(mixed_pool / "cnn_a", student)
  saved = json.loads((student / "config.json").read_text())
  saved["teacher"]["workdir"] = str(saw)
  (student / "config.json").write_text(json.dumps(saved))
  config.members = f"{mixed_pool / 'cnn_a'},{student}"
  with pytest.raises(ValueError, match=f"member '{student}' was distilled from a teacher that "
                     f"saw the fitting split: .*member '{saw}' trained on examples"):
    run_fuse(config, str(tmp_path / "fuse"))
  other = load_config("mnist1d/fuse_cnn5.py")
  other.members = str(mixed_pool / "cnn_a")
  other.data.kwargs = {"seed": 7}  # another draw of the data set
  with pytest.raises(ValueError, match="its training examples may include the fitting split"):
    run_fuse(other, str(tmp_path / "fuse2"))
