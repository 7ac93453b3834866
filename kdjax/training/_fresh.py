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


class FreshChunks:
  """Host blocks ``{"x": [num, B, 40]}`` (plus ``"teacher_logits": [num, B, C]`` when the
  teacher is not in the step) for steps ``start .. start + num - 1``.

  Args:
    config: the training config (``transfer.seed``, ``batch_size``, ``teacher.*``).
    groups: teacher groups to compute targets with, or ``None`` (an online teacher).
  """

  def __init__(self, config, groups=None):
    if config.data.name != "mnist1d":
      raise ValueError(f"config.transfer.fresh generates MNIST-1D inputs; data.name is "
                       f"{config.data.name!r}")
    self.stream = kd_data.FreshMNIST1D(config.transfer.seed, config.batch_size)
    self.config, self.groups = config, groups
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._ahead: tuple[tuple[int, int], concurrent.futures.Future] | None = None

  def _build(self, start: int, num: int) -> dict[str, np.ndarray]:
    x = self.stream.chunk(start, num)
    x = x[:, kd_data.host_slice(np.arange(x.shape[1]))]  # this host's share of each batch
    block = {"x": x}
    if self.groups is not None:
      from kdjax.training._teacher import teacher_log_probs

      t = self.config.teacher
      flat = teacher_log_probs(self.groups, x.reshape(-1, x.shape[-1]), space=t.fusion,
                               weights=t.weights, temperature=t.fusion_temperature)
      block["teacher_logits"] = np.asarray(flat).reshape(x.shape[0], x.shape[1], -1)
    return block

  def chunk(self, start: int, num: int, next_num: int = 0) -> dict[str, np.ndarray]:
    """The block for ``start``; starts building the one for ``start + num`` (``next_num``
    steps) in the background."""
    if self._ahead is not None and self._ahead[0] == (start, num):
      block = self._ahead[1].result()
    else:
      block = self._build(start, num)
    self._ahead = None
    if next_num:
      self._ahead = ((start + num, next_num),
                     self._pool.submit(self._build, start + num, next_num))
    return block

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)
