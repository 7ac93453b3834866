"""A non-editable install (a built wheel) runs `kdjax` from a folder outside the repository."""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """A fresh venv holding only the kdjax wheel; its dependencies come from this
  interpreter's site-packages through a .pth file (no network, no editable finder)."""
  root = tmp_path_factory.mktemp("install")
  src = root / "src"
  src.mkdir()
  for name in ("kdjax", "configs", "pyproject.toml", "README.md"):
    path = REPO / name
    if path.is_dir():
      shutil.copytree(path, src / name, symlinks=True,
                      ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy(path, src / name)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--quiet", "-w", str(root / "dist"), str(src)], check=True)
  wheel = next((root / "dist").glob("kdjax-*.whl"))
  venv = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
  pathlib.Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--force-reinstall",
                  "--no-index", "--quiet", str(wheel)], check=True)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  cwd = root / "elsewhere"
  cwd.mkdir()
  return venv, env, cwd


def test_wheel_ships_the_configs_and_kdjax_train_runs_from_another_folder(installed):
  venv, env, cwd = installed
  where = subprocess.run([venv / "bin/python", "-c", "import kdjax, kdjax.config as c; "
                          "print(kdjax.__file__); print(c.CONFIG_ROOT.is_symlink())"],
                         cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.split()
  assert where[0].startswith(str(venv)) and where[1] == "False"  # real files, not a link
  result = subprocess.run(
      [venv / "bin/kdjax", "train", "--config", "configs/mnist1d/mlp.py:smoke", "--workdir", "w",
       "--config.num_steps=10", "--config.log_every=10", "--config.eval_every=10",
       "--config.checkpoint_every=10", "--config.progress_bar=False"],
      cwd=cwd, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "test accuracy" in result.stdout and (cwd / "w/summary.json").exists()


def test_demo_finds_every_config_it_needs_when_installed(installed, tmp_path):
  venv, env, cwd = installed
  script = ("import pathlib, kdjax.programs.demo as d, kdjax.config as c\n"
            "stages = d.demo_stages(pathlib.Path('demo'), 0, fusion=True, smoke=True)\n"
            "c.load_config('mnist1d/fuse_cnn5.py')\n"
            "print(len(stages))\n")
  result = subprocess.run([venv / "bin/python", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert int(result.stdout.split()[-1]) == 10  # 4 single-model stages, 5 members, kd_ensemble
