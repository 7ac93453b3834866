"""The ``kdjax`` command line: ``kdjax train | demo | fuse``.

  kdjax train --config configs/mnist1d/teacher_cnn.py --workdir runs/teacher
  kdjax train --config configs/mnist1d/kd_cnn_to_mlp.py --workdir runs/kd \
      --config.teacher.workdir=runs/teacher
  kdjax demo --workdir runs/demo
  kdjax fuse --config configs/mnist1d/fuse_cnn5.py --workdir runs/fuse
  kdjax train ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0  # host 0 of 2

Any config field can be overridden with ``--config.FIELD=VALUE``; a misspelt field is
a one-line error (set ``KDJAX_TRACEBACK=1`` to see tracebacks of run-time errors). Binaries are thin: the work happens in importable functions.

``--config configs/X.py`` that does not exist in the working directory names the config
shipped inside the package (``kdjax/_configs``), so the commands above work from any
folder. SIGTERM stops a run at the next chunk boundary after a checkpoint: exit 0.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "demo", "fuse")
_USAGE = f"usage: kdjax {{{'|'.join(COMMANDS)}}} [--config FILE[:ARG]] --workdir DIR [--config.FIELD=VALUE ...]"

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


class _OneLineError(Exception):
  """An error the CLI prints as one line, without a traceback."""


def _main(argv, command: str) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; {_USAGE}")
  if not _WORKDIR.value:
    raise app.UsageError(f"--workdir is required; {_USAGE}")
  if command == "train":
    if _CONFIG.value is None:
      raise app.UsageError(f"kdjax train needs --config; {_USAGE}")
    if _CONFIG.value.get("trainer") == "lm_distill":  # configs/sequence/: token data, [B, T] steps
      from kdjax.lm_distill import run as run_lm_distill
      for r in run_lm_distill(_CONFIG.value, _WORKDIR.value):
        print(f"student val perplexity {r['student_val_perplexity']:.3f}  teacher "
              f"{r['teacher_val_perplexity']:.3f}  method {r['method']}  -> {_WORKDIR.value}")
      return
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
    from kdjax.demo import run_demo
    run_demo(_WORKDIR.value, seeds=_SEEDS.value, fusion=_FUSION.value, smoke=_SMOKE.value)
  elif command == "fuse":
    if _CONFIG.value is None:
      raise app.UsageError(f"kdjax fuse needs --config; {_USAGE}")
    from kdjax.fuse import run_fuse
    run_fuse(_CONFIG.value, _WORKDIR.value)


def _resolve_config_flag(argv: list[str]) -> list[str]:
  """``--config FILE[:ARG]`` with FILE looked up by :func:`kdjax.configs.resolve_config_path`
  (the working directory first, then the configs shipped in the package)."""
  from kdjax.configs import resolve_config_path

  out = list(argv)
  for i, arg in enumerate(out):
    if arg == "--config" and i + 1 < len(out):
      index, value, prefix = i + 1, out[i + 1], ""
    elif arg.startswith("--config="):
      index, value, prefix = i, arg[len("--config="):], "--config="
    else:
      continue
    path, sep, config_arg = value.partition(":")
    try:
      out[index] = prefix + str(resolve_config_path(path)) + sep + config_arg
    except FileNotFoundError:
      pass  # config_flags reports it
    break
  return out


def run(argv: list[str] | None = None) -> None:
  """Console-script entry point."""
  argv = _resolve_config_flag(list(sys.argv if argv is None else argv))
  if len(argv) < 2 or argv[1] not in COMMANDS:
    got = argv[1] if len(argv) > 1 else "nothing"
    sys.exit(f"kdjax: unknown command {got!r}; {_USAGE}")
  command = argv.pop(1)
  logging.set_verbosity(logging.WARNING)

  def main(args):
    from kdjax.training import NonFiniteError, Preempted
    try:
      _main(args, command)
    except Preempted as e:  # SIGTERM: the checkpoint is saved; the rerun continues
      print(f"kdjax {command}: {e}", file=sys.stderr)
      sys.exit(0)
    except (ValueError, OSError, KeyError, TypeError, NonFiniteError) as e:
      if os.environ.get("KDJAX_TRACEBACK"):
        raise
      sys.exit(f"kdjax {command}: error: {type(e).__name__}: {_one_line(e)}")

  def parse_flags(args):
    try:
      return flags.FLAGS(args)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
      sys.exit(f"kdjax {command}: config error: {type(e).__name__}: {_one_line(e)} "
               "(a --config.FIELD=VALUE override must name a field the config file defines)")

  app.run(main, argv=argv, flags_parser=parse_flags)


def _one_line(error: BaseException) -> str:
  text = str(error).replace("\\n", " ").replace("\\'", "'").strip().strip("'\"")
  return " ".join(text.split())


if __name__ == "__main__":
  run()
