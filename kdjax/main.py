"""The ``kdjax`` command line: ``kdjax train | demo | fuse | merge``.

  kdjax train --config configs/mnist1d/teacher_cnn.py --workdir runs/teacher
  kdjax train --config configs/mnist1d/kd_cnn_to_mlp.py --workdir runs/kd \\
      --config.teacher.workdir=runs/teacher
  kdjax demo --workdir runs/demo
  kdjax fuse --config configs/mnist1d/fuse_cnn5.py --workdir runs/fuse
  kdjax merge --config configs/merge/mlp5_mnist1d.py --workdir runs/merge
  kdjax train ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0  # host 0 of 2

Any config field can be overridden with ``--config.FIELD=VALUE``; a misspelt field, a
value of the wrong type or an argument the config file does not accept is a one-line
error (set ``KDJAX_TRACEBACK=1`` to see tracebacks of run-time errors). Binaries are thin:
the work happens in importable functions.

``--config configs/X.py`` that does not exist in the working directory names the config
shipped inside the package (``kdjax/_configs``), so the commands above work from any
folder. SIGTERM stops a run at the next chunk boundary after a checkpoint (exit 0); Ctrl-C
does the same and exits 130 (a second Ctrl-C stops at once; the rerun resumes from the
last checkpoint).
"""

import os
import re
import sys
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = {"train": "train a student (or a teacher) from a config file",
            "demo": "the MNIST-1D tour: teacher, students, KD, ensembles, fusion, a report",
            "fuse": "fuse trained models: fitted ensemble weights and weight-space soups",
            "merge": "merge trained models into one set of weights (TIES, Fisher, RegMean, ...)"}
_USAGE = (f"usage: kdjax {{{'|'.join(COMMANDS)}}} [--config FILE[:ARG]] --workdir DIR "
          "[--config.FIELD=VALUE ...]")
_CONFIG_DOCS = ("Config fields: every field of kdjax.config.default_config() (kdjax/config/"
                "_defaults.py, one comment a field; README section 'Configs'); print a file's "
                "with `python -c \"import kdjax.config as c; print(c.load_config('FILE'))\"`.")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, `path.py` or `path.py:arg`.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "demo: number of seeds per stage.")
_FUSION = flags.DEFINE_bool("fusion", True, "demo: include the ensemble and fusion stage.")
_SMOKE = flags.DEFINE_bool("smoke", False, "demo: run every stage's smoke config (seconds).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "train on several hosts: HOST:PORT of process 0, with "
    "--num_processes and --process_id (unset: auto-detected on TPU VMs / SLURM, else one process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "train on several hosts: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "train on several hosts: this process, 0..N-1.")
_FLAGS_OF = {"train": ("config", "workdir", "coordinator_address", "num_processes", "process_id"),
             "demo": ("workdir", "seeds", "fusion", "smoke"),
             "fuse": ("config", "workdir"),
             "merge": ("config", "workdir")}
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def _version() -> str:
  from kdjax import __version__
  return __version__


def _overview() -> str:
  commands = "\n".join(f"  {name:6s} {text}" for name, text in COMMANDS.items())
  return (f"kdjax {_version()}: knowledge distillation and model fusion in JAX\n{_USAGE}\n\n"
          f"commands:\n{commands}\n\n`kdjax COMMAND --help` lists a command's flags; "
          "`kdjax --version` prints the version.")


def _command_help(command: str) -> str:
  lines = [f"kdjax {command}: {COMMANDS[command]}", _USAGE, "", "flags:"]
  for name in _FLAGS_OF[command]:
    flag = flags.FLAGS[name]
    default = "" if flag.default in (None, "") else f" (default {flag.default})"
    lines.append(f"  --{name:22s} {flag.help}{default}")
  if "config" in _FLAGS_OF[command]:
    lines += ["  --config.FIELD=VALUE     set one config field", "", _CONFIG_DOCS]
  return "\n".join(lines)


class _Exit(Exception):
  """A one-line message for the user, and the exit code."""

  def __init__(self, message: str, code: int = 1):
    super().__init__(message)
    self.code = code


def _main(argv, command: str) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; {_USAGE}")
  if not _WORKDIR.value:
    raise app.UsageError(f"--workdir is required; {_USAGE}")
  if command == "train":
    if _CONFIG.value is None:
      raise app.UsageError(f"kdjax train needs --config; {_USAGE}")
    from kdjax.training import _distributed, train_and_evaluate
    _distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    try:
      summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
      writer = _distributed.is_writer()
    finally:
      _distributed.shutdown()
    if not writer:  # process 0 reports
      return
    print(f"test accuracy {summary['test']['accuracy']:.4f}  nll {summary['test']['nll']:.4f}  "
          f"steps {summary['steps']}  wall {summary['wall_s']:.1f}s  -> {_WORKDIR.value}/summary.json")
  elif command == "demo":
    from kdjax.programs.demo import run_demo
    run_demo(_WORKDIR.value, seeds=_SEEDS.value, fusion=_FUSION.value, smoke=_SMOKE.value)
  elif command == "fuse":
    if _CONFIG.value is None:
      raise app.UsageError(f"kdjax fuse needs --config; {_USAGE}")
    from kdjax.programs.fuse import run_fuse
    run_fuse(_CONFIG.value, _WORKDIR.value)
  elif command == "merge":
    if _CONFIG.value is None:
      raise app.UsageError(f"kdjax merge needs --config; {_USAGE}")
    from kdjax.programs.merge import run_merge
    report = run_merge(_CONFIG.value, _WORKDIR.value)
    best = max((k for k in report["rows"] if not k.startswith("member")),
               key=lambda k: report["rows"][k]["val"]["accuracy"])
    print(f"best on validation: {best} (test accuracy "
          f"{report['rows'][best]['test']['accuracy']:.4f})  -> {_WORKDIR.value}/report.md")


def _config_flag(argv: list[str]) -> tuple[int, str, str] | None:
  """``(index, prefix, value)`` of ``--config FILE[:ARG]`` in ``argv``."""
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return i + 1, "", argv[i + 1]
    if arg.startswith("--config="):
      return i, "--config=", arg[len("--config="):]
  return None


def _resolve_config_flag(argv: list[str]) -> list[str]:
  """``--config FILE[:ARG]`` with FILE looked up by :func:`kdjax.config.resolve_config_path`
  (the working directory first, then the configs shipped in the package) and ARG checked
  against the file's ``ARGS``.

  Raises:
    _Exit: the file does not exist, or does not accept ARG.
  """
  from kdjax.config import check_config_arg, load_module, resolve_config_path

  found = _config_flag(argv)
  if found is None:
    return list(argv)
  index, prefix, value = found
  path, sep, config_arg = value.partition(":")
  try:
    resolved = resolve_config_path(path)
    check_config_arg(load_module(resolved), config_arg if sep else None, path)
  except (FileNotFoundError, ValueError) as e:
    raise _Exit(f"config error: {e}") from None
  out = list(argv)
  out[index] = prefix + str(resolved) + sep + config_arg
  return out


def _override_error(error: Exception) -> str:
  """The message of a ``--config.FIELD=VALUE`` that config_flags could not apply."""
  text = _one_line(error)
  bad_value = re.search(r"flag --config\.([\w.]+)=(.*?): ", text)
  if bad_value:  # the field exists; the value does not parse as its type
    field, value = bad_value.groups()
    current = _CONFIG.value
    try:
      for part in field.split("."):
        current = current[part]
      kind = type(current).__name__
    except (KeyError, TypeError, AttributeError):
      kind = "value of its type"
    article = "an" if kind[0] in "aeiou" else "a"
    return f"config error: config.{field} takes {article} {kind}, got {value!r}"
  unknown = re.match(r"(\w+)'? Did you mean \"(\w+)\"", text)
  if unknown:
    return (f"config error: the config has no field {unknown[1]!r} (did you mean "
            f"{unknown[2]!r}?)")
  return (f"config error: {type(error).__name__}: {text} (a --config.FIELD=VALUE override "
          "must name a field the config file defines)")


def _quiet_exit(message: str, code: int) -> None:
  """Prints ``message`` as the process's last line: later log records (orbax's threads,
  asyncio at shutdown) and warnings are silenced."""
  import logging as std_logging

  std_logging.disable(std_logging.CRITICAL)
  logging.set_verbosity(logging.FATAL)
  warnings.simplefilter("ignore")
  print(message, file=sys.stderr, flush=True)
  sys.exit(code)


def _interrupted_at(workdir: str | None) -> str:
  if not workdir:
    return "interrupted"
  from kdjax.training import _workdir
  import pathlib
  return f"interrupted at step {_workdir.latest_step(pathlib.Path(workdir))}"


def _drop_closed_loop_callbacks(previous):
  """A ``sys.unraisablehook`` that drops ``RuntimeError: Event loop is closed``: tensorstore's
  callbacks of an orbax restore that failed (a damaged checkpoint) fire after orbax closed
  its asyncio loop, each an unraisable exception with a traceback (hundreds of lines for
  nothing a user can act on). Every other one goes to ``previous``."""

  def hook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    previous(unraisable)

  return hook


def _drop_unretrieved_task_errors(record) -> bool:
  """A ``logging`` filter for the ``asyncio`` logger: the futures of an orbax restore that
  failed (a damaged checkpoint, already reported as one warning line) are garbage-collected
  with their exception unread, and asyncio logs each as "Task exception was never
  retrieved" with a traceback. kdjax runs no asyncio code of its own."""
  return not str(record.msg).startswith("Task exception was never retrieved")


def run(argv: list[str] | None = None) -> None:
  """Console-script entry point."""
  import logging as std_logging
  sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)
  std_logging.getLogger("asyncio").addFilter(_drop_unretrieved_task_errors)
  argv = list(sys.argv if argv is None else argv)
  command_name = argv[1] if len(argv) > 1 else ""
  warnings.formatwarning = lambda message, category, *_: (  # one line a warning
      f"kdjax {command_name}: warning: {category.__name__}: {_one_line(message)}\n")
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_overview())
    sys.exit(0)
  if argv[1] == "--version":
    print(f"kdjax {_version()}")
    sys.exit(0)
  if argv[1] not in COMMANDS:
    sys.exit(f"kdjax: unknown command {argv[1]!r}; {_USAGE}")
  command = argv.pop(1)
  if {"-h", "--help", "--helpfull"} & set(argv[1:]):
    print(_command_help(command))
    sys.exit(0)
  try:
    argv = _resolve_config_flag(argv)
  except _Exit as e:
    _quiet_exit(f"kdjax {command}: {e}", e.code)
  logging.set_verbosity(logging.WARNING)

  def main(args):
    from kdjax.training import NonFiniteError, Preempted, WorkdirInUse
    try:
      _main(args, command)
    except Preempted as e:  # SIGTERM or Ctrl-C: the checkpoint is saved; the rerun continues
      _quiet_exit(f"kdjax {command}: {e}", EXIT_INTERRUPTED if e.signal_name == "SIGINT" else 0)
    except KeyboardInterrupt:  # before the loop, or a second Ctrl-C
      _quiet_exit(f"kdjax {command}: {_interrupted_at(_WORKDIR.value)}; rerun the same command "
                  "to resume", EXIT_INTERRUPTED)
    except (ValueError, OSError, KeyError, TypeError, NonFiniteError, WorkdirInUse) as e:
      if os.environ.get("KDJAX_TRACEBACK"):
        raise
      _quiet_exit(f"kdjax {command}: error: {type(e).__name__}: {_one_line(e)}", 1)

  def parse_flags(args):
    try:
      return flags.FLAGS(args)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
      _quiet_exit(f"kdjax {command}: {_override_error(e)}", 1)

  app.run(main, argv=argv, flags_parser=parse_flags)


def _one_line(error: BaseException) -> str:
  """The message of ``error`` on one line: a traceback quoted inside it is cut off."""
  text = str(error).split("Traceback (most recent call last)")[0]
  text = text.replace("\\n", " ").replace("\\'", "'").strip().strip("'\"")
  return " ".join(text.split())


if __name__ == "__main__":
  run()
