"""The command line a person expects: help and version exit 0; a config argument, path or
override that cannot work is one line naming it; progress is printed without a terminal.
(Ctrl-C: tests/test_faults_kill.py; errors of a run: tests/test_faults_config.py.)"""

import io
import pathlib
import subprocess
import sys

import pytest

from kdjax import main
from kdjax.config import CONFIG_ROOT, load_config, load_module
from kdjax.training._progress import Progress

REPO = pathlib.Path(__file__).resolve().parent.parent
SHIPPED = sorted(str(p.relative_to(CONFIG_ROOT)) for p in CONFIG_ROOT.glob("*/*.py"))


def run_main(capsys, *args: str) -> tuple[int, str, str]:
  """``kdjax ARGS`` in this process; the silencing of a quiet exit (logging disabled,
  warnings ignored: meant for the process's end) is undone for the tests that follow."""
  import logging
  import warnings
  from absl import logging as absl_logging
  absl_logger = absl_logging.get_absl_logger()
  level = absl_logger.level
  with warnings.catch_warnings(), pytest.raises(SystemExit) as e:
    try:
      main.run(["kdjax", *args])
    finally:
      logging.disable(logging.NOTSET)
      absl_logger.setLevel(level)
  out, err = capsys.readouterr()
  code = e.value.code
  return (0 if code is None else code if isinstance(code, int) else 1), out, err


@pytest.mark.parametrize("args", [(), ("-h",), ("--help",), ("help",)])
def test_overview_lists_the_commands_and_exits_0(capsys, args):
  code, out, _ = run_main(capsys, *args)
  assert code == 0
  assert out.startswith("kdjax ") and f"usage: kdjax {{{'|'.join(main.COMMANDS)}}}" in out
  for command in main.COMMANDS:
    assert f"\n  {command} " in out


def test_version(capsys):
  from kdjax import __version__
  assert run_main(capsys, "--version")[:2] == (0, f"kdjax {__version__}\n")


@pytest.mark.parametrize("command", list(main.COMMANDS))
def test_command_help_lists_its_flags_and_points_at_the_config_docs(capsys, command):
  code, out, _ = run_main(capsys, command, "--help")
  assert code == 0
  for name in main._FLAGS_OF[command]:
    assert f"--{name} " in out
  assert ("kdjax/config/_defaults.py" in out) == ("config" in main._FLAGS_OF[command])


def test_every_shipped_config_declares_its_arguments():
  assert len(SHIPPED) >= 25
  for name in SHIPPED:
    args = load_module(name).ARGS
    assert args and all(isinstance(a, str) for a in args), name
    for word in args:
      if not word.endswith("="):  # "k=" takes a value
        load_config(name, word)  # every declared word is accepted


@pytest.mark.parametrize("name", SHIPPED)
def test_an_argument_the_config_does_not_accept_is_refused(name):
  with pytest.raises(ValueError, match=rf"config argument 'smok,{'x'}' of {name}: unknown word "
                     r"'smok'; accepted words: '"):
    load_config(name, "smok,x")


def test_cli_config_argument_typo_is_one_line_listing_the_accepted(capsys):
  code, _, err = run_main(capsys, "train", "--config", "configs/mnist1d/kd_cnn_to_mlp.py:kdd,smoke",
                          "--workdir", "unused")
  assert code == 1
  assert err == ("kdjax train: config error: config argument 'kdd,smoke' of configs/mnist1d/"
                 "kd_cnn_to_mlp.py: unknown word 'kdd'; accepted words: 'labelled', 'smoke' "
                 "(comma-separated)\n")


def test_cli_missing_config_file_is_one_line(capsys, tmp_path):
  code, _, err = run_main(capsys, "train", "--config", str(tmp_path / "nope.py"),
                          "--workdir", str(tmp_path / "w"))
  assert code == 1
  assert err.count("\n") == 1
  assert err.startswith(f"kdjax train: config error: Config file '{tmp_path / 'nope.py'}' not found")
  assert not (tmp_path / "w").exists()


def cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "kdjax.main", *args], capture_output=True,
                        text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("override, message", [
    ("--config.num_steps=abc", "config.num_steps takes an int, got 'abc'"),
    ("--config.optimizer.learning_rate=fast", "config.optimizer.learning_rate takes a float, got 'fast'"),
    ("--config.optimizer.learnig_rate=0.1",
     "the config has no field 'learnig_rate' (did you mean 'learning_rate'?)"),
])
def test_cli_bad_override_names_the_field_in_one_line(tmp_path, override, message):
  result = cli("train", "--config", "configs/mnist1d/mlp.py:smoke", "--workdir",
               str(tmp_path / "w"), override)
  assert result.returncode == 1
  assert result.stderr == f"kdjax train: config error: {message}\n"


def test_progress_without_a_terminal_prints_one_line_per_interval():
  stream = io.StringIO()  # isatty() is False, as under Slurm or `> log`
  progress = Progress(total=30, initial=10, enabled=True, desc="run", stream=stream)
  progress.update(10, {"train/loss": 0.5, "step": 20})
  progress.update(10, {"train/loss": 0.25, "test/accuracy": 0.75, "step": 30})
  progress.close()
  lines = stream.getvalue().splitlines()
  assert len(lines) == 2
  assert lines[0].startswith("[run] step 20/30  loss 0.5000  ") and " steps/s  ETA 0:00:" in lines[0]
  assert lines[1].startswith("[run] step 30/30  loss 0.2500  test_acc 0.7500  ")
  assert lines[1].endswith("ETA 0:00:00")


def test_progress_disabled_prints_nothing():
  stream = io.StringIO()
  progress = Progress(total=30, initial=0, enabled=False, desc="run", stream=stream)
  progress.update(10, {"train/loss": 0.5})
  progress.close()
  assert stream.getvalue() == ""


def test_smoke_variants_that_need_a_teacher_say_so():
  from kdjax import losses
  needing = []
  for name in SHIPPED:
    module = load_module(name)
    if "smoke" not in module.ARGS:
      continue
    config = load_config(name, "smoke")
    if not losses.make_objective(config.losses).needs_teacher:
      continue
    needing.append(name)
    assert "The smoke variant needs a teacher" in module.__doc__, name
  assert "mnist1d/kd_cnn_to_mlp.py" in needing and len(needing) >= 10


def test_damaged_teacher_checkpoints_are_a_few_lines_ending_with_the_error(teacher_dir, tmp_path):
  """Every teacher checkpoint damaged: one warning line per step, then the error, as the
  last line; none of the tracebacks that orbax's failed restores leave behind."""
  import shutil
  damaged = tmp_path / "teacher"
  shutil.copytree(teacher_dir, damaged)
  for f in (damaged / "checkpoints").rglob("*"):
    if f.is_file() and "ocdbt" in str(f):
      f.write_bytes(b"\0" * 20)
  steps = sorted(p.name for p in (damaged / "checkpoints").iterdir() if p.name.isdigit())
  result = cli("train", "--config", "configs/mnist1d/kd_cnn_to_mlp.py:smoke", "--workdir",
               str(tmp_path / "kd"), f"--config.teacher.workdir={damaged}")
  lines = result.stderr.splitlines()
  assert result.returncode == 1
  assert lines[-1].startswith("kdjax train: error: ValueError: every checkpoint in ")
  assert not any("Traceback" in l or "Event loop is closed" in l for l in lines), result.stderr
  warned = [l for l in lines if l.startswith("kdjax train: warning: DamagedCheckpointWarning: "
                                             "checkpoint step ")]
  assert len(warned) == len(steps) and len(lines) <= 2 * len(steps) + 1, result.stderr


def test_unretrieved_asyncio_task_errors_are_dropped_and_other_asyncio_records_kept():
  """orbax's failed-restore futures, collected unread, are not logged by the CLI."""
  import logging as std_logging
  record = lambda msg: std_logging.LogRecord("asyncio", std_logging.ERROR, "x", 1, msg,  # noqa: E731
                                             None, None)
  assert not main._drop_unretrieved_task_errors(record("Task exception was never retrieved"))
  assert main._drop_unretrieved_task_errors(record("Executing <Task> took 0.2 seconds"))
