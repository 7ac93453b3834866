"""grain pipeline over a synthetic source: order, sharding, resume, views, mixup, prefetch."""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import data

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _pipeline(n=48, *, batch_size=8, seed=0, train=True, process_index=0, process_count=1,
              augment="pad_crop_flip", **kwargs):
  source = data.SyntheticSource(n, (8, 8, 3), num_classes=5, seed=1)
  return data.make_pipeline(source, batch_size=batch_size, seed=seed, train=train,
                            num_classes=5, image_size=8, mean=MEAN, std=STD, augment=augment,
                            process_index=process_index, process_count=process_count, **kwargs)


def _ids(pipeline, steps):
  return np.stack([pipeline[j]["id"] for j in range(steps)])


def test_synthetic_source_is_deterministic_and_checked():
  a = data.SyntheticSource(10, (4, 5, 2), num_classes=3, seed=2)
  b = data.SyntheticSource(10, (4, 5, 2), num_classes=3, seed=2)
  np.testing.assert_array_equal(a[7]["image"], b[7]["image"])
  assert a[7]["image"].shape == (4, 5, 2) and a[7]["image"].dtype == np.uint8
  assert not np.array_equal(a[7]["image"], a[8]["image"])
  assert 0 <= a[3]["label"] < 3
  with pytest.raises(IndexError):
    a[10]
  with pytest.raises(ValueError, match="shape"):
    data.SyntheticSource(10, (4, 5))


def test_batches_shapes_dtypes():
  batch = next(_pipeline().iterator())
  assert batch["x"].shape == (8, 8, 8, 3) and batch["x"].dtype == np.float32
  assert batch["y"].shape == (8,) and batch["y"].dtype == np.int32
  assert batch["id"].dtype == np.int64 and batch["mask"].all()
  flat = next(_pipeline(flatten=True).iterator())
  assert flat["x"].shape == (8, 192)


def test_order_is_a_function_of_the_seed_and_reshuffles_every_epoch():
  np.testing.assert_array_equal(_ids(_pipeline(seed=3), 12), _ids(_pipeline(seed=3), 12))
  assert not np.array_equal(_ids(_pipeline(seed=3), 6), _ids(_pipeline(seed=4), 6))
  ids = _ids(_pipeline(seed=3), 12).reshape(2, 48)  # 6 steps of 8 = one epoch of 48
  for epoch in ids:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(48))
  assert not np.array_equal(ids[0], ids[1])


@pytest.mark.parametrize("count", [2, 4])
def test_hosts_read_disjoint_covering_shards_and_global_batches_do_not_depend_on_hosts(count):
  single = _ids(_pipeline(seed=5), 12)  # two epochs, one host
  hosts = [_ids(_pipeline(seed=5, process_index=p, process_count=count), 12)
           for p in range(count)]
  for h in hosts:
    assert h.shape == (12, 8 // count)
  for step in range(12):
    together = np.concatenate([h[step] for h in hosts])
    np.testing.assert_array_equal(np.sort(together), np.sort(single[step]))
  for epoch in range(2):
    per_host = [set(h[6 * epoch:6 * (epoch + 1)].ravel()) for h in hosts]
    assert sum(len(s) for s in per_host) == 48 and set.union(*per_host) == set(range(48))


def test_uneven_source_drops_the_remainder_so_hosts_have_equal_shards():
  hosts = [_pipeline(n=50, process_index=p, process_count=4) for p in range(4)]
  assert {h.steps_per_epoch for h in hosts} == {6}  # 48 ids used per epoch, 48 // 8
  ids = np.concatenate([_ids(h, 6).ravel() for h in hosts])
  np.testing.assert_array_equal(np.sort(ids), np.arange(48))


def test_resume_from_saved_state_reproduces_the_uninterrupted_order():
  it = _pipeline(seed=9, mixup_alpha=0.5).iterator()
  reference = [next(it) for _ in range(10)]
  it = _pipeline(seed=9, mixup_alpha=0.5).iterator()
  for _ in range(4):
    next(it)
  saved = json.dumps(it.get_state())  # what a checkpoint holds
  del it  # "killed"
  resumed = _pipeline(seed=9, mixup_alpha=0.5).iterator(json.loads(saved))
  for ref in reference[4:]:
    got = next(resumed)
    for key in ref:
      np.testing.assert_array_equal(got[key], ref[key])


def test_state_of_another_pipeline_is_refused():
  state = _pipeline(seed=1).iterator().get_state()
  with pytest.raises(ValueError, match="seed"):
    _pipeline(seed=2).iterator(state)
  with pytest.raises(ValueError, match="process_count"):
    _pipeline(seed=1, batch_size=8, process_count=2).iterator(state)
  with pytest.raises(ValueError, match="not a pipeline state"):
    _pipeline().iterator({"next_index": 3})


def test_views_are_keyed_by_seed_epoch_and_id_on_every_host_layout():
  source = data.SyntheticSource(48, (8, 8, 3), num_classes=5, seed=1)
  one = _pipeline(seed=2)
  two = _pipeline(seed=2, process_index=1, process_count=2)
  views = {}
  for step in range(12):
    batch = one[step]
    for i, key in enumerate(batch["id"]):
      epoch = step // 6
      rng = data.example_rng(2, epoch, key)
      expected = data.normalize(data.augment_image(source[key]["image"], rng,
                                                   kind="pad_crop_flip", size=8), MEAN, STD)
      np.testing.assert_array_equal(batch["x"][i], expected)
      views[(epoch, int(key))] = batch["x"][i]
  for step in range(12):
    batch = two[step]
    for i, key in enumerate(batch["id"]):
      np.testing.assert_array_equal(batch["x"][i], views[(step // 6, int(key))])
  # Each epoch sees a new view of an example.
  assert sum(not np.array_equal(views[(0, k)], views[(1, k)]) for k in range(48)) > 40


def test_teacher_and_student_see_the_same_view():
  """A teacher-view probe: a jitted KD step records what each network received."""
  pipeline = _pipeline(seed=4, mixup_alpha=0.4)
  w_t = jnp.ones((192, 5)) * 0.01
  w_s = jnp.ones((192, 5)) * 0.02

  def teacher(x):
    return x.reshape(x.shape[0], -1) @ w_t, x

  def student(x):
    return x.reshape(x.shape[0], -1) @ w_s, x

  @jax.jit
  def kd_step(batch):
    t_logits, t_seen = teacher(batch["x"])
    s_logits, s_seen = student(batch["x"])
    loss = -jnp.sum(jax.nn.softmax(t_logits) * jax.nn.log_softmax(s_logits), -1).mean()
    return loss, t_seen, s_seen

  it = pipeline.iterator()
  for _ in range(3):
    batch = next(it)
    assert [k for k in batch if k.startswith("x")] == ["x"]  # one view per example
    _, t_seen, s_seen = kd_step(batch)
    np.testing.assert_array_equal(np.asarray(t_seen), np.asarray(s_seen))
    np.testing.assert_array_equal(np.asarray(t_seen), batch["x"])


def test_mixup_batches_hold_convex_label_distributions():
  batch = next(_pipeline(seed=1, mixup_alpha=1.0).iterator())
  probs = batch["label_probs"]
  assert probs.shape == (8, 5)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  assert ((probs > 0).sum(-1) <= 2).all()
  assert (probs[np.arange(8), batch["y"]] > 0).all()
  with pytest.raises(ValueError, match="training pipelines"):
    _pipeline(train=False, mixup_alpha=1.0)


def test_eval_pipeline_covers_every_example_once_with_padding_masked():
  for count in (1, 2):
    seen = []
    for p in range(count):
      pipe = _pipeline(n=45, batch_size=8, train=False, augment="none", process_index=p,
                       process_count=count)
      assert len(pipe) == 6  # ceil(45 / 8) global batches, on every host
      for batch in pipe.iterator():
        seen.extend(batch["id"][batch["mask"]].tolist())
    assert sorted(seen) == list(range(45))


def test_bad_arguments_name_the_problem():
  with pytest.raises(ValueError, match="process_count"):
    _pipeline(batch_size=6, process_count=4)
  with pytest.raises(ValueError, match="larger than"):
    _pipeline(n=4, batch_size=8)
  with pytest.raises(ValueError, match="Unknown augmentation"):
    _pipeline(augment="cutout")
  with pytest.raises(ValueError, match="process_index"):
    _pipeline(process_index=2, process_count=2)
  with pytest.raises(ValueError, match="image_size"):
    data.make_pipeline(data.SyntheticSource(16, (8, 8, 3)), batch_size=4, seed=0, train=True,
                       num_classes=10, image_size=6, mean=MEAN, std=STD)[0]


def test_grain_threads_give_the_same_batches():
  a = _pipeline(seed=6).iterator()
  b = _pipeline(seed=6, num_threads=2, prefetch_buffer_size=4).iterator()
  for _ in range(7):
    np.testing.assert_array_equal(next(a)["x"], next(b)["x"])
  state = b.get_state()
  np.testing.assert_array_equal(next(_pipeline(seed=6).iterator(state))["id"], next(b)["id"])


# --- DevicePrefetcher -----------------------------------------------------------------

def _mesh():
  return jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))


@pytest.mark.parametrize("buffer_size", [0, 3])
def test_prefetcher_yields_the_iterator_batches_sharded_on_the_mesh(buffer_size):
  mesh = _mesh()
  expected = [b for b, _ in zip(_pipeline(seed=2).iterator(), range(5))]
  with data.DevicePrefetcher(_pipeline(seed=2).iterator(), mesh=mesh,
                             buffer_size=buffer_size) as prefetcher:
    for ref in expected:
      got = next(prefetcher)
      assert isinstance(got["x"], jax.Array)
      assert got["x"].sharding.spec == jax.sharding.PartitionSpec("data", None, None, None)
      np.testing.assert_array_equal(np.asarray(got["x"]), ref["x"])


def test_prefetcher_stacks_steps_per_call_with_the_batch_on_axis_1():
  mesh = _mesh()
  expected = [b for b, _ in zip(_pipeline(seed=2).iterator(), range(6))]
  with data.DevicePrefetcher(_pipeline(seed=2).iterator(), mesh=mesh, steps_per_call=3) as pf:
    block = next(pf)
    assert block["x"].shape == (3, 8, 8, 8, 3)
    assert block["x"].sharding.spec == jax.sharding.PartitionSpec(None, "data", None, None, None)
    np.testing.assert_array_equal(np.asarray(block["y"]), np.stack([b["y"] for b in expected[:3]]))
    np.testing.assert_array_equal(np.asarray(next(pf)["id"]),
                                  np.stack([b["id"] for b in expected[3:]]))


def test_prefetcher_state_is_the_consumed_position_not_the_read_ahead():
  pf = data.DevicePrefetcher(_pipeline(seed=3).iterator(), buffer_size=4)
  consumed = [next(pf) for _ in range(3)]
  time.sleep(0.2)  # let the thread read ahead
  state = pf.get_state()
  upcoming = next(pf)
  pf.close()
  assert state["grain"] != pf.get_state()["grain"]
  resumed = _pipeline(seed=3).iterator(json.loads(json.dumps(state)))
  np.testing.assert_array_equal(next(resumed)["id"], upcoming["id"])
  assert len(consumed) == 3


def test_prefetcher_ends_and_propagates_errors():
  finite = _pipeline(n=16, train=True, num_epochs=1)  # 2 batches
  pf = data.DevicePrefetcher(finite.iterator(), buffer_size=2)
  assert len(list(pf)) == 2
  with pytest.raises(StopIteration):
    next(pf)

  def broken():
    yield {"x": np.zeros(2)}
    raise RuntimeError("disk on fire")

  pf = data.DevicePrefetcher(broken(), buffer_size=2)
  next(pf)
  with pytest.raises(RuntimeError, match="disk on fire"):
    next(pf)
  with pytest.raises(ValueError, match="steps_per_call"):
    data.DevicePrefetcher(iter([]), steps_per_call=0)


_MP_CHILD = """
import json, numpy as np
from absl import flags
from kdjax import data

def make(workers):
  source = data.SyntheticSource(64, (8, 8, 3), num_classes=5, seed=1)
  return data.make_pipeline(source, batch_size=8, seed=0, train=True, num_classes=5,
                            image_size=8, mean=(0.5,) * 3, std=(0.25,) * 3,
                            augment="pad_crop_flip", process_index=0, process_count=1,
                            num_workers=workers)

try:
  make(2).iterator()
  refused = False
except ValueError as e:
  refused = "absl" in str(e)
flags.FLAGS.mark_as_parsed()
reference = [make(0)[j] for j in range(8)]
it = make(2).iterator()
first = [next(it) for _ in range(5)]
state = json.loads(json.dumps(it.get_state()))
it.close()
resumed = make(2).iterator(state)
rest = [next(resumed) for _ in range(3)]
resumed.close()
same = all(np.array_equal(a["x"], b["x"]) and np.array_equal(a["id"], b["id"])
           for a, b in zip(first + rest, reference))
print(json.dumps({"refused_without_flags": refused, "same_batches_and_resume": same}))
"""


def test_grain_worker_processes_give_the_same_batches_and_resume():
  env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
  out = subprocess.run([sys.executable, "-c", _MP_CHILD], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result == {"refused_without_flags": True, "same_batches_and_resume": True}
