"""Several processes (hosts) training one model: start-up, one writer, host <-> global arrays.

JAX runs one process per host (multi-controller): every process runs the same program on
its own devices, feeds its own slice of each global batch and sees global ``jax.Array`` s
whose shards partly live on other hosts. This module holds what the trainer needs on top
of that:

- :func:`initialize` starts ``jax.distributed`` from explicit flags
  (``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``), or through JAX's
  own cluster detection (Cloud TPU VMs, SLURM, Open MPI) when no flag is given, and
  otherwise leaves a single process alone (it never waits for peers that do not exist).
- :func:`is_writer`: process 0 writes the run's files (``metrics.jsonl``, ``summary.json``,
  ``run.json``) and shows the progress bar; checkpoints are written by all processes
  together (orbax is multi-host aware).
- :func:`to_host`: a global array as a NumPy array on every process (gathered across
  processes when this host does not hold all of it).

References:
  JAX multi-process guide, https://docs.jax.dev/en/latest/multi_process.html;
  ``jax.distributed.initialize``, ``jax.experimental.multihost_utils.process_allgather``.
"""

import os
import re
from typing import Any

import jax
import numpy as np

_ADDRESS = re.compile(r"^\[?[A-Za-z0-9_.:\-]+\]?:\d{1,5}$")
# What jax.distributed.initialize() raises when it is called without arguments and none of
# its cluster environments (TPU VM, SLURM, Open MPI, ...) is detected.
_NOT_DETECTED = "coordinator_address should be defined"


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1, *,
               timeout_s: int = 300) -> bool:
  """Joins this process to a multi-process JAX run when there is one; call before any
  other JAX operation.

  With any of the three arguments set, all three must be set (one command per host, the
  same ``coordinator_address`` and ``num_processes`` everywhere, ``process_id`` 0 .. N-1).
  With none set, ``jax.distributed.initialize()`` auto-detects Cloud TPU VMs, SLURM and
  Open MPI; on a plain machine nothing is detected and the run stays single-process.

  Args:
    coordinator_address: ``HOST:PORT`` of process 0 (every process connects there).
    num_processes: number of processes ``N`` (0: unset).
    process_id: this process, ``0 <= I < N`` (-1: unset).
    timeout_s: how long to wait for the other processes to connect.

  Returns:
    Whether ``jax.distributed`` is initialized (then call :func:`shutdown` at the end).

  Raises:
    ValueError: a partial or inconsistent set of arguments (named in the message).
  """
  given = {"coordinator_address": bool(coordinator_address), "num_processes": num_processes > 0,
           "process_id": process_id >= 0}
  if jax.distributed.is_initialized():
    return True
  if any(given.values()):
    if not all(given.values()):
      missing = [f"--{name}" for name, ok in given.items() if not ok]
      raise ValueError(f"multi-process training needs --coordinator_address=HOST:PORT, "
                       f"--num_processes=N and --process_id=I together; missing {missing}")
    if not _ADDRESS.match(coordinator_address):
      raise ValueError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT, "
                       "e.g. 10.0.0.1:1234 (the address of process 0)")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                       f"{num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s)
    return True
  if _single_task_launch():
    return False  # e.g. `srun -n 1`: JAX would otherwise show this process one GPU only
  try:  # JAX's cluster detection: TPU VM metadata, SLURM / Open MPI environment variables
    jax.distributed.initialize(initialization_timeout=timeout_s)
  except ValueError as e:
    if _NOT_DETECTED in str(e):
      return False  # a plain machine: one process
    raise
  except RuntimeError:  # JAX already runs (e.g. called from a notebook): keep it as it is
    return jax.process_count() > 1
  return True


def _single_task_launch() -> bool:
  """Whether a SLURM or Open MPI launcher started exactly one task."""
  for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if os.environ.get(name, "").strip() == "1":
      return True
  return False


def shutdown() -> None:
  """Leaves the multi-process run (no-op for a single process)."""
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()


def is_writer() -> bool:
  """Whether this process writes the run's files and shows progress (process 0)."""
  return jax.process_index() == 0


def to_host(x: Any) -> np.ndarray:
  """``x`` (a ``jax.Array``, possibly spread over several hosts) as a NumPy array holding
  all of it, on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def local_batch_size(global_batch: int, name: str = "batch_size") -> int:
  """This host's share of a global batch: ``global_batch / process_count``.

  Raises:
    ValueError: if the hosts cannot take equal shares (names the sizes that work).
  """
  count = jax.process_count()
  if global_batch % count:
    below, above = global_batch // count * count, -(-global_batch // count) * count
    raise ValueError(f"{name}={global_batch} cannot be split over {count} processes (hosts "
                     f"feed equal shares); use a multiple of {count}, e.g. "
                     f"{', '.join(str(b) for b in (below, above) if b > 0)}")
  return global_batch // count


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches ``barrier(name)`` (no-op for one process).

  Placed after work whose length differs between hosts (loading teachers, computing their
  targets, compiling): the first collective after it then finds every process ready. It
  uses the coordination service of ``jax.distributed`` (as orbax's distributed barrier
  does), which waits up to ``timeout_s``; a collective used as a barrier would give up
  after the CPU collectives' (gloo's) 30 s.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # the client has no public accessor (orbax reads it too)

  distributed.global_state.client.wait_at_barrier(f"kdjax_{name}", timeout_s * 1000)
