"""Time saved by the on-disk teacher target cache at the start of a KD run.

MNIST-1D, the 5-CNN ensemble of ``configs/mnist1d/kd_ensemble_to_mlp.py`` (probability
average at fusion temperature 4) over that config's training inputs: 3,500 labelled
training examples plus 100,000 generated transfer inputs. For each round it times

* ``cold``: :func:`kdjax.training.teachers._cache.cached_teacher_targets` with an empty
  cache directory (the teachers run over every input, the file is written), and
* ``warm``: the same call again (the key is fingerprinted and the file read),

interleaved over ``--rounds`` rounds, and checks that both give identical arrays. It reports
the medians and the spread, the machine load before and after, the device and versions.

The members are ``--members`` workdirs (``kdjax train --config configs/mnist1d/member_cnn.py``;
their weights do not change the compute), e.g.::

  python benchmarks/teacher_cache.py --members runs/members/cnn0,runs/members/cnn1,...

Writes ``benchmarks/results/teacher_cache.json``.
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import jax
import numpy as np

from kdjax.config import load_config
from kdjax.data import load_dataset, load_mnist1d_transfer
from kdjax.training import load_teachers
from kdjax.training.teachers._cache import cached_teacher_targets

RESULTS = os.path.join(os.path.dirname(__file__), "results", "teacher_cache.json")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--members", required=True, help="comma-separated member workdirs")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  config = load_config("mnist1d/kd_ensemble_to_mlp.py")
  splits = load_dataset("mnist1d", val_size=config.data.val_size)
  transfer = load_mnist1d_transfer(num_samples=config.transfer.num_samples,
                                   seed=config.transfer.seed)
  x = np.concatenate([splits["train"]["x"], transfer["x"]])
  groups = load_teachers(args.members, num_classes=10)
  kwargs = {"data": {"name": "mnist1d", "transfer": config.transfer.to_dict()},
            "space": config.teacher.fusion, "temperature": config.teacher.fusion_temperature}
  load_before = os.getloadavg()
  times = {"cold": [], "warm": []}
  for _ in range(args.rounds):
    folder = tempfile.mkdtemp(prefix="kdjax_cache_bench_")
    try:
      t = time.perf_counter()
      cold, info = cached_teacher_targets(groups, x, cache_dir=folder, **kwargs)
      times["cold"].append(time.perf_counter() - t)
      assert not info["reused"]
      t = time.perf_counter()
      warm, info = cached_teacher_targets(groups, x, cache_dir=folder, **kwargs)
      times["warm"].append(time.perf_counter() - t)
      assert info["reused"] and np.array_equal(cold, warm)
    finally:
      shutil.rmtree(folder)
  stats = {k: {"median_s": float(np.median(v)), "min_s": float(np.min(v)),
               "max_s": float(np.max(v)), "all_s": [round(s, 3) for s in v]}
           for k, v in times.items()}
  result = {
      "what": "cached_teacher_targets cold (compute + write) vs warm (fingerprint + read)",
      "members": len(args.members.split(",")), "inputs": int(len(x)),
      "times": stats, "saved_s": stats["cold"]["median_s"] - stats["warm"]["median_s"],
      "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
      "devices": jax.device_count(), "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version(),
  }
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
