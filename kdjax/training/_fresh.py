"""Fresh transfer inputs for the train loop (``config.transfer.fresh``), prepared ahead.

Every step draws new MNIST-1D inputs (:class:`kdjax.data.FreshMNIST1D`, a pure function of
``(config.transfer.seed, step)``, so a resumed run sees the same inputs). The frozen
teacher's targets for them are computed per chunk, never cached across steps: with
``teacher.cache=True`` here on the host side of the step, in one batched (ensemble) call
per chunk, fused like cached targets (``teacher.fusion``, ``fusion_temperature``); with
``teacher.cache=False`` the step's online teacher sees the inputs. The next chunk is
generated in a background thread while the device trains on the current one.
"""

import concurrent.futures

import numpy as np

from kdjax import data as kd_data
from kdjax.training._padding import map_in_batches


class FreshChunks:
  """``chunk(step, num)``: device-placed ``{"x": [num, B, 40]}`` blocks of fresh inputs (plus
  ``"teacher_logits": [num, B, C]`` when the teacher is not in the step), this host's slice
  of each global batch, like :class:`kdjax.training._inputs.InMemoryBatches`.

  Args:
    config: the training config (``transfer.seed``, ``batch_size``, ``log_every``,
      ``num_steps``, ``teacher.*``).
    teachers: the :class:`~kdjax.training.teachers._setup.Teachers` of the run; targets are
      computed here when it has cached ones (``teachers.cache`` is not ``None``).
    mesh: the data mesh.
  """

  def __init__(self, config, teachers, *, mesh):
    if config.data.name != "mnist1d":
      raise ValueError(f"config.transfer.fresh generates MNIST-1D inputs; data.name is "
                       f"{config.data.name!r}")
    self.stream = kd_data.FreshMNIST1D(config.transfer.seed, config.batch_size)
    self.config, self.mesh = config, mesh
    self.groups = teachers.groups if teachers.cache is not None else None
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._ahead: tuple[tuple[int, int], concurrent.futures.Future] | None = None
    self._program = None  # the teacher's jitted targets function, built once

  def _targets(self, x: np.ndarray) -> np.ndarray:
    """Fused teacher targets ``[N, C]`` of global inputs ``x`` in batches of
    ``eval_batch_size`` (the last one zero-padded), one compiled program for the run."""
    from kdjax.training.teachers._cache import targets_program
    from kdjax.training.teachers._setup import fusion_weights

    if self._program is None:
      t = self.config.teacher
      self._program = targets_program(
          self.groups, mesh=self.mesh, space=t.fusion, weights=fusion_weights(t, self.groups),
          temperature=t.fusion_temperature, strategy=t.member_strategy)
    run, variables, sharded = self._program
    devices = self.mesh.shape["data"]
    batch = max(self.config.eval_batch_size // devices, 1) * devices
    targets = map_in_batches(lambda xb: run(variables, xb), x, batch_size=batch, sharding=sharded)
    return targets.astype(np.float32, copy=False)

  def _build(self, start: int, num: int) -> dict[str, np.ndarray]:
    x = self.stream.chunk(start, num)  # the global batches, [num, B, 40]
    mine = kd_data.host_slice(np.arange(x.shape[1]))
    block = {"x": x[:, mine]}
    if self.groups is not None:
      flat = self._targets(x.reshape(-1, x.shape[-1]))
      block["teacher_logits"] = flat.reshape(x.shape[0], x.shape[1], -1)[:, mine]
    return block

  def chunk(self, step: int, num: int) -> dict:
    """Steps ``step .. step + num - 1``; starts preparing the next chunk in the background."""
    if self._ahead is not None and self._ahead[0] == (step, num):
      block = self._ahead[1].result()
    else:
      block = self._build(step, num)
    self._ahead = None
    ahead = min(num, self.config.num_steps - step - num)  # calls are usually steps_per_call
    if ahead > 0:
      self._ahead = ((step + num, ahead), self._pool.submit(self._build, step + num, ahead))
    return kd_data.shard_batch(block, self.mesh, batch_axis=1)

  def get_state(self) -> None:
    return None  # the inputs are a function of (transfer.seed, step)

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)
