"""Two real JAX processes (jax.distributed on localhost, CPU): each host streams its own
shard, and the prefetcher assembles global batches that hold the single-host examples."""

import json
import os
import socket
import subprocess
import sys

_CHILD = r"""
import json, sys
import jax
import numpy as np
port, pid = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid, initialization_timeout=120)
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from kdjax import data

def make(**kw):
  source = data.SyntheticSource(64, (8, 8, 3), num_classes=5, seed=1)
  return data.make_pipeline(source, batch_size=8, seed=3, train=True, num_classes=5,
                            image_size=8, mean=(0.5,) * 3, std=(0.25,) * 3,
                            augment="pad_crop_flip", **kw)

mesh = Mesh(np.asarray(jax.devices()), ("data",))
gather = jax.jit(lambda b: (b["id"], b["x"]), out_shardings=NamedSharding(mesh, P()))
single = make(process_index=0, process_count=1)
same = True
local_ids = []
with data.DevicePrefetcher(make().iterator(), mesh=mesh) as batches:  # JAX's process index/count
  for step in range(10):
    batch = next(batches)
    if step < 8:  # one epoch: 64 examples / 8 a step
      local_ids += [int(i) for shard in batch["id"].addressable_shards
                    for i in np.asarray(shard.data)]
    ids, x = (np.asarray(a) for a in gather(batch))
    ref = single[step]
    order, ref_order = np.argsort(ids), np.argsort(ref["id"])  # same examples, host-major rows
    same &= bool(np.array_equal(ids[order], ref["id"][ref_order])
                 and np.array_equal(x[order], ref["x"][ref_order]))
print(json.dumps({"pid": pid, "devices": jax.device_count(), "same": same,
                  "local_ids": local_ids}), flush=True)
jax.distributed.shutdown()
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_read_disjoint_shards_and_form_the_single_host_global_batches():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, "-c", _CHILD, port, str(i)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  results = []
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  assert [r["devices"] for r in results] == [4, 4]
  assert all(r["same"] for r in results)
  # Over one epoch the hosts' own devices held disjoint examples covering the data set.
  host0, host1 = (set(r["local_ids"]) for r in results)
  assert len(host0) == len(host1) == 32 and host0 | host1 == set(range(64))
