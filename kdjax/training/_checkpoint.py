"""Orbax checkpoints of the train state under ``WORKDIR/checkpoints``.

Saves are asynchronous; a process killed mid-save leaves a ``*.orbax-checkpoint-tmp``
folder that orbax ignores, so the previous complete step is restored. Orbax deletes the
steps beyond ``max_to_keep`` only after the newer step is committed (in its finalize
thread), so a good checkpoint never goes before a newer one is complete. A committed
step whose files were damaged later (truncated, overwritten) fails to restore: the
trainer then warns, naming the step, moves it to ``WORKDIR/damaged_checkpoints/`` and
falls back to the previous step.

A streaming run saves its data position beside the state: item ``data``, one
``process_<i>-of-<n>.json`` per host written by grain's orbax handler
(``grain.checkpoint.CheckpointSave``), so each host resumes its own shard's stream.
"""

import json
import pathlib
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

import grain.checkpoint
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import handlers
from orbax.checkpoint._src.metadata import array_metadata_store


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / "checkpoints"


def newest_step(workdir: str | pathlib.Path) -> int | None:
  """The step of the newest checkpoint folder in ``workdir`` (``None``: none)."""
  steps = checkpoint_dir(workdir)
  found = [int(p.name) for p in steps.iterdir() if p.name.isdigit()] if steps.is_dir() else []
  return max(found) if found else None


# orbax writes a replicated array "replica-parallel" by default on the CPU and TPU: one slice
# per replica, each cut by an eager slice program compiled per shape and device (README:
# the cost on a CIFAR ResNet smoke over 8 devices). That pays off for large
# arrays on several hosts; below a megabyte per slice the whole array is written by one
# replica (orbax's ``min_slice_bytes_for_replica_parallel``), as on a GPU.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _state_save_handler() -> ocp.PyTreeCheckpointHandler:
  """orbax's standard pytree handler and type handlers, with ``jax.Array`` written
  replica-parallel only in slices of at least :data:`MIN_REPLICA_SLICE_BYTES`."""
  arrays = ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
      array_metadata_store=array_metadata_store.Store())  # as orbax's default handler
  others = [(ty, ocp.type_handlers.get_type_handler(ty))
            for ty in ocp.type_handlers.supported_types() if ty is not jax.Array]
  registry = ocp.type_handlers.create_type_handler_registry(*others, (jax.Array, arrays))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def make_manager(workdir, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """The run's checkpoint manager: item ``state`` is saved with :func:`_state_save_handler`
  (``ocp.args.PyTreeSave``, the format ``StandardRestore`` reads) and restored with
  orbax's ``StandardCheckpointHandler``; item ``data`` uses grain's handler."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=True)
  registry = handlers.DefaultCheckpointHandlerRegistry()
  registry.add("state", ocp.args.PyTreeSave, _state_save_handler())
  registry.add("state", ocp.args.StandardRestore, ocp.StandardCheckpointHandler())
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               handler_registry=registry)


class _DataPosition:
  """A data iterator's position (a JSON-serialisable dict) in the interface grain's
  checkpoint handler reads and writes: ``get_state() -> bytes``, ``set_state(bytes)``."""

  def __init__(self, state: Any = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, raw: bytes) -> None:
    self.state = json.loads(raw)

  def start_prefetch(self) -> None:  # called by the handler after set_state
    pass


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False,
         data_state: Any = None) -> None:
  """Saves ``state`` (and, when given, this host's data position) as step ``step``."""
  items = {"state": ocp.args.PyTreeSave(state)}
  if data_state is not None:
    items["data"] = grain.checkpoint.CheckpointSave(_DataPosition(data_state))
  manager.save(step, args=ocp.args.Composite(**items), force=force)


class DamagedCheckpointWarning(UserWarning):
  """A checkpoint step could not be restored; an earlier one was used."""


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _readable(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether ``step`` restores as raw arrays (no target structure): its files are intact."""
  try:
    manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return True
  except Exception:  # noqa: BLE001 - any failure to read means damaged files
    return False


def _restore_newest_good(manager: ocp.CheckpointManager, restore: Callable[[int], Any], *,
                         quarantine: pathlib.Path | None) -> Any | None:
  """``restore(step)`` of the newest step that restores; damaged newer steps are warned
  about (and moved to ``quarantine`` when given). ``None`` when no step exists.

  Raises:
    ValueError: if steps exist but none of them restores, or a step's files are intact
      but do not fit the target (another model or optimizer: not damage).
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      result = restore(step)
    except Exception as e:  # TensorStore, JSON, msgpack, ... errors of a damaged step
      if _readable(manager, step):
        raise ValueError(f"checkpoint step {step} in {manager.directory} is intact but does "
                         f"not fit this run's train state (another model, objective or "
                         f"optimizer?): {_first_line(e)}. Use a new --workdir") from None
      damaged.append(step)
      where = manager.directory / str(step)
      note = ""
      if quarantine is not None:
        quarantine.mkdir(parents=True, exist_ok=True)
        moved = quarantine / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(where), str(moved))
        note = f"; moved to {moved}"
      warnings.warn(f"checkpoint step {step} in {manager.directory} is damaged "
                    f"({_first_line(e)}); falling back to an earlier step{note}",
                    DamagedCheckpointWarning, stacklevel=3)
      continue
    if damaged and quarantine is not None:
      manager.reload()  # forget the moved steps, so they can be saved again
    return result
  if damaged:
    raise ValueError(f"every checkpoint in {manager.directory} is damaged (steps {damaged})")
  return None


def restore_latest(manager: ocp.CheckpointManager, target: Any, *,
                   with_data: bool = False) -> tuple[Any, Any]:
  """``(state, data_state)`` of the newest checkpoint that restores: the state in
  ``target``'s structure and shardings (``target`` itself when there is no checkpoint),
  and with ``with_data`` this host's saved data position (else ``None``). Damaged newer
  steps are warned about (:class:`DamagedCheckpointWarning`, naming the step) and moved
  to ``WORKDIR/damaged_checkpoints/``."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)

  def restore(step):
    items = {"state": ocp.args.StandardRestore(abstract)}
    if with_data:
      items["data"] = grain.checkpoint.CheckpointRestore(_DataPosition())
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored.state, (restored.data.state if with_data else None)

  found = _restore_newest_good(
      manager, restore, quarantine=pathlib.Path(manager.directory).parent / "damaged_checkpoints")
  return (target, None) if found is None else found


def _restore_here(manager: ocp.CheckpointManager, step: int) -> Any:
  """Step ``step``'s arrays. A checkpoint written by another device topology (e.g.
  several processes) needs a target: its shapes and dtypes from the checkpoint's metadata,
  read through this process's first device and returned as NumPy arrays."""
  try:
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  except ValueError as e:
    if "topology" not in str(e).lower():
      raise
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step)["state"])
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return jax.device_get(restored.state)  # NumPy: placed wherever the caller computes


def load_variables(workdir: str | pathlib.Path) -> dict[str, Any]:
  """Student variables of the newest good checkpoint in ``workdir``:
  ``{"params": ..., **model_state}`` (e.g. BatchNorm's ``"batch_stats"``), what a
  teacher's ``apply`` takes. Damaged newer steps are skipped with a warning.

  Raises:
    FileNotFoundError: if ``workdir`` has no complete checkpoint.
  """
  path = checkpoint_dir(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f"No checkpoints in {workdir!r} (expected {path}/): "
                            "train it first with `kdjax train --workdir ...`")
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False),
                             item_handlers={"state": ocp.StandardCheckpointHandler()}) as manager:
    restored = _restore_newest_good(manager, lambda step: _restore_here(manager, step),
                                    quarantine=None)  # a teacher's workdir is only read
  if restored is None:
    raise FileNotFoundError(f"No complete checkpoint in {path}")
  return {"params": restored["params"]["student"], **(restored.get("model_state") or {})}


def load_params(workdir: str | pathlib.Path) -> Any:
  """Student params of the newest good checkpoint in ``workdir`` (for fusion and soups).

  Raises:
    FileNotFoundError: if ``workdir`` has no complete checkpoint.
  """
  return load_variables(workdir)["params"]
