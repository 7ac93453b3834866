"""Orbax checkpoints of the train state under ``WORKDIR/checkpoints``.

Saves are asynchronous; a process killed mid-save leaves a ``*.orbax-checkpoint-tmp``
folder that orbax ignores, so the previous complete step is restored.
"""

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / "checkpoints"


def make_manager(workdir, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> Any | None:
  """The latest complete checkpoint restored into ``target``'s structure and
  shardings, or ``None`` when there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  return restored.state


def load_params(workdir: str | pathlib.Path) -> Any:
  """Student params of the latest checkpoint in ``workdir`` (for teachers and fusion).

  Raises:
    FileNotFoundError: if ``workdir`` has no complete checkpoint.
  """
  path = checkpoint_dir(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f"No checkpoints in {workdir!r} (expected {path}/): "
                            "train it first with `kdjax train --workdir ...`")
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False)) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"No complete checkpoint in {path}")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored.state["params"]["student"]


def load_variables(workdir: str | pathlib.Path) -> dict[str, Any]:
  """Student variables of the latest checkpoint: ``{"params": ..., **model_state}``
  (e.g. BatchNorm's ``"batch_stats"``), what a teacher's ``apply`` takes.

  Raises:
    FileNotFoundError: if ``workdir`` has no complete checkpoint.
  """
  path = checkpoint_dir(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f"No checkpoints in {workdir!r} (expected {path}/): "
                            "train it first with `kdjax train --workdir ...`")
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False)) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"No complete checkpoint in {path}")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = restored.state
  return {"params": state["params"]["student"], **(state.get("model_state") or {})}
