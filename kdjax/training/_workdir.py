"""A workdir holds one run: its config is checked on every rerun, and one process writes it.

A rerun of ``kdjax train`` with a workdir that already trained (it has checkpoints or
metrics) resumes it, so the config must be the one that made it, except the fields in
:data:`SAFE_ON_RESUME`. Any other difference stops the run before anything is written, with
a one-line error naming each field and both values. ``config.resume = "override"`` accepts
the differences: the earlier config is appended to ``config_history.jsonl`` (with the step
it had reached and the changed fields), then ``config.json`` is replaced.

While a run writes the workdir it holds ``kdjax.lock`` (``{"pid", "host", "started"}``,
written by process 0 alone on several hosts). A second run into the same workdir is refused;
a lock left by a process that died on this host (``kill -9``, a crash of the machine's
session) is taken over with a warning; a lock from another host is refused, naming the file
to delete if that run is dead.
"""

import contextlib
import datetime
import json
import os
import pathlib
import socket
from collections.abc import Iterator
from typing import Any

import ml_collections
from absl import logging

from kdjax.config import default_config
from kdjax.training import _checkpoint as ckpt

CONFIG_FILE, HISTORY_FILE, LOCK_FILE = "config.json", "config_history.jsonl", "kdjax.lock"

# Fields a resumed run may change: how long it runs, how often it reports, how it reads
# its inputs; none changes the result of a training step.
SAFE_ON_RESUME = frozenset({
    "num_steps", "num_epochs",  # extend a run (not with a schedule over num_steps: below)
    "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "steps_per_call",
    "eval_batch_size", "progress_bar", "resume",
    "data.data_dir", "data.num_threads", "data.num_workers", "data.prefetch",
    "teacher.cache_dir", "teacher.disk_cache", "teacher.member_strategy",
})
# Learning-rate schedules that read num_steps: changing the length changes every later step.
_LENGTH_SCHEDULES = ("cosine", "warmup_cosine")
RESUME_MODES = ("check", "override")


class WorkdirInUse(RuntimeError):
  """Another run holds the workdir's lock."""


def check_workdir(workdir: pathlib.Path) -> None:
  """Creates ``workdir`` and checks that files can be written there.

  Raises:
    OSError: naming the workdir and why it cannot be written.
  """
  probe = workdir / f".kdjax_write_test.{os.getpid()}"  # per process: hosts share a workdir
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise OSError(f"workdir {str(workdir)!r} is not writable: {e.strerror or e}") from None


def has_trained(workdir: pathlib.Path) -> bool:
  """Whether ``workdir`` holds a checkpoint or logged metrics of a run."""
  steps = ckpt.checkpoint_dir(workdir)
  metrics = workdir / "metrics.jsonl"
  return ((steps.is_dir() and any(p.name.isdigit() for p in steps.iterdir()))
          or (metrics.exists() and metrics.stat().st_size > 0))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict) or not tree:
    return {prefix.rstrip("."): tree}
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f"{prefix}{key}."))
  return out


def as_json(config: ml_collections.ConfigDict) -> dict:
  """``config`` as ``config.json`` stores it (tuples as lists)."""
  return json.loads(config.to_json_best_effort())


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """``{field: (saved value, new value)}`` for the fields a resume may not change.

  A field missing from ``saved`` (a workdir from an earlier kdjax) counts as its default.
  ``num_steps`` is derived when ``num_epochs > 0``; either one is safe to change only when
  the schedule does not read the run's length.
  """
  defaults = _flat(as_json(default_config()))
  old, new = _flat(saved), _flat(as_json(config))
  if config.num_epochs > 0:  # num_steps is derived from num_epochs: compare num_epochs
    old.pop("num_steps", None), new.pop("num_steps", None)
  safe = set(SAFE_ON_RESUME)
  if config.optimizer.schedule in _LENGTH_SCHEDULES:
    safe -= {"num_steps", "num_epochs"}
  changes = {}
  for key in sorted(set(old) | set(new)):
    if key in safe:
      continue
    before, after = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
    if before != after:
      changes[key] = (before, after)
  return changes


def check_resume(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """Checks that ``config`` may resume the run in ``workdir`` (reads, never writes).

  Returns the changes ``config.resume = "override"`` accepts (empty: same run, or nothing
  trained yet).

  Raises:
    ValueError: ``workdir runs/t holds a run with another config: optimizer.learning_rate
      0.01 -> 0.5; ...`` with the ways out.
  """
  if config.resume not in RESUME_MODES:
    raise ValueError(f"config.resume must be one of {RESUME_MODES}, got {config.resume!r}")
  path = workdir / CONFIG_FILE
  if not (path.exists() and has_trained(workdir)):
    return {}
  try:
    saved = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}); the run it describes cannot "
                     "be checked: use a new --workdir, or --config.resume=override") from None
  changes = config_changes(saved, config)
  if changes and config.resume != "override":
    listed = "; ".join(f"{k} {_show(a)} -> {_show(b)}" for k, a, b in
                       ((k, *v) for k, v in changes.items()))
    hint = ""
    if {"num_steps", "num_epochs"} & set(changes):
      hint = (f" (the {config.optimizer.schedule} schedule reads the run's length, so it "
              "changes every later step)")
    raise ValueError(f"workdir {str(workdir)!r} holds a run with another config: {listed}"
                     f"{hint}. Use a new --workdir, or --config.resume=override to continue "
                     f"this run with the new values (the old config goes to {HISTORY_FILE})")
  return changes


def _show(value: Any) -> str:
  return "(unset)" if value is None else json.dumps(value)


def latest_step(workdir: pathlib.Path) -> int:
  """The step of the newest checkpoint in ``workdir`` (0: none)."""
  return ckpt.newest_step(workdir) or 0


def write_config(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                 changes: dict[str, tuple]) -> None:
  """Writes ``config.json``; with ``changes`` (an override), first appends the config it
  replaces to ``config_history.jsonl``."""
  path = workdir / CONFIG_FILE
  if changes:
    entry = {"replaced": _now(), "at_step": latest_step(workdir),
             "changes": {k: list(v) for k, v in changes.items()},
             "config": json.loads(path.read_text())}
    with (workdir / HISTORY_FILE).open("a") as f:
      f.write(json.dumps(entry) + "\n")
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(config.to_json_best_effort(indent=2))
  os.replace(tmp, path)


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


@contextlib.contextmanager
def locked(workdir: pathlib.Path, *, enabled: bool = True) -> Iterator[None]:
  """Holds ``workdir/kdjax.lock`` for the block (``enabled=False``: the processes that do not
  write the workdir).

  Raises:
    WorkdirInUse: the workdir is locked by a live process, or by one on another host.
  """
  if not enabled:
    yield
    return
  path = workdir / LOCK_FILE
  me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read_lock(path)
      if holder is None:
        continue  # the holder removed it between the two calls
      if holder and holder.get("host") != me["host"]:
        raise WorkdirInUse(
            f"workdir {str(workdir)!r} is locked by pid {holder.get('pid')} on host "
            f"{holder.get('host')} (since {holder.get('started')}); if that run is dead, "
            f"delete {path}") from None
      if holder and holder.get("pid") != me["pid"] and _alive(int(holder.get("pid", -1))):
        raise WorkdirInUse(
            f"workdir {str(workdir)!r} is in use by another run (pid {holder['pid']}, since "
            f"{holder.get('started')}); wait for it or use another --workdir") from None
      logging.warning("taking over the lock of %s from pid %s, which is no longer running",
                      workdir, holder.get("pid"))
      path.unlink(missing_ok=True)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    break
  else:
    raise WorkdirInUse(f"could not lock workdir {str(workdir)!r} ({path})")
  try:
    yield
  finally:
    if (_read_lock(path) or {}).get("pid") == me["pid"]:
      path.unlink(missing_ok=True)


def _read_lock(path: pathlib.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return {}  # half-written by a process that died while writing: stale


def check_same_run(workdir: pathlib.Path, run_info: dict) -> None:
  """A workdir with checkpoints resumes only the same model on the same data."""
  path = workdir / "run.json"
  if not (path.exists() and ckpt.checkpoint_dir(workdir).is_dir()):
    return
  saved = json.loads(path.read_text())
  current = json.loads(json.dumps(run_info))  # tuples -> lists, as saved
  if saved != current:
    raise ValueError(f"{workdir} holds checkpoints of another run ({saved}); this config trains "
                     f"{current}. Use a new --workdir, or delete the old one")
