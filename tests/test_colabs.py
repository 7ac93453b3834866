"""The notebooks in colabs/: stored clean, and each runs top to bottom with a figure.

Every notebook is executed headless with nbclient in a fresh kernel (the environment's
``python3`` ipykernel) with ``KDJAX_COLAB_SMALL=1`` (tiny runs). The kernel imports this
checkout's kdjax (its root goes first on ``PYTHONPATH``), shares the test data cache
(``KDJAX_DATA_DIR``) and one JAX compilation cache per test session, and does *not*
inherit the suite's 8 virtual devices from ``XLA_FLAGS``: a notebook picks its own device
count (04 splits the CPU itself). Set ``KDJAX_COLAB_PNG_DIR=DIR`` to keep the last figure of
each executed notebook as ``DIR/<notebook>.png`` (and the run times in ``DIR/times.json``).
"""

import base64
import json
import os
import pathlib
import re
import time

import nbclient
import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLABS = ROOT / "colabs"
NOTEBOOKS = sorted(COLABS.glob("*.ipynb"))
EXPECTED = ["01_quickstart", "02_losses_in_your_flax_code", "03_fusion", "04_sharded_ensembles",
            "05_language_model_distillation"]
BADGE = re.compile(r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
                   r"\(https://colab\.research\.google\.com/github/([\w.-]+)/kdjax/blob/main/colabs/([\w.-]+)\)")
INSTALL = re.compile(r'%pip install -q "kdjax @ git\+https://github\.com/([\w.-]+)/kdjax"')
DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\d+")


def _ids(paths):
  return [p.stem for p in paths]


def _read(path: pathlib.Path):
  return nbformat.read(str(path), as_version=4)


def _first_code_cell(nb):
  return next(c for c in nb.cells if c.cell_type == "code")


def test_every_expected_notebook_is_there():
  assert [p.stem for p in NOTEBOOKS][:len(EXPECTED)] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_stored_without_outputs(path):
  nb = _read(path)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"{path.name} cell {i} has stored outputs: strip them"
      assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "execution" not in cell.metadata, f"{path.name} cell {i} has execution timings"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_badge_and_install_cell(path):
  nb = _read(path)
  first = nb.cells[0]
  assert first.cell_type == "markdown"
  badge = BADGE.search(first.source)
  assert badge, f"{path.name}: the first cell must open with an Open-in-Colab badge"
  assert badge.group(2) == path.name, f"{path.name}: the badge links {badge.group(2)}"
  install = _first_code_cell(nb).source
  pip = INSTALL.search(install)
  assert pip, f"{path.name}: the first code cell must pip-install kdjax from its repository"
  assert pip.group(1) == badge.group(1), f"{path.name}: badge and install cell name different orgs"
  # Installs only where kdjax is missing: `try: import kdjax / except ImportError: %pip ...`.
  lines = [l.strip() for l in install.splitlines()]
  pip_line = next(i for i, l in enumerate(lines) if l.startswith("%pip install"))
  assert lines.index("try:") < lines.index("import kdjax") < lines.index("except ImportError:") < pip_line
  assert install.splitlines()[pip_line].startswith((" ", "\t")), "the pip line must sit under except"
  rest = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and c.source != install)
  assert re.search(r"^from kdjax[\w.]* import ", rest, flags=re.M), f"{path.name} must import kdjax"


def test_one_org_everywhere():
  orgs = {BADGE.search(_read(p).cells[0].source).group(1) for p in NOTEBOOKS}
  readme = (ROOT / "README.md").read_text()
  orgs |= {m.group(1) for m in BADGE.finditer(readme)}
  assert len(orgs) == 1, f"notebooks and README name several GitHub orgs: {sorted(orgs)}"


def _kernel_env(cache_dir: pathlib.Path, tmp_dir: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  env["TMPDIR"] = str(tmp_dir)                     # the notebooks' tempfile workdirs land here
  env["KDJAX_COLAB_SMALL"] = "1"
  env["KDJAX_DATA_DIR"] = os.path.abspath(os.environ.get("KDJAX_DATA_DIR", ROOT / ".pytest_data"))
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  flags = DEVICE_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("MPLBACKEND", None)                      # figures must come out inline
  # Repeated trainer runs in one notebook compile the same programs: reuse them.
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("colab_jax_cache")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_runs_top_to_bottom_with_a_figure(path, tmp_path, jax_cache_dir):
  nb = _read(path)
  client = nbclient.NotebookClient(nb, timeout=600, startup_timeout=180, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  start = time.time()
  try:
    client.execute(env=_kernel_env(jax_cache_dir, tmp_path))
  except CellExecutionError as e:
    pytest.fail(f"{path.name} failed:\n{e}")
  seconds = time.time() - start
  print(f"{path.name}: {seconds:.1f} s (small settings)")

  pngs = [base64.b64decode(out.data["image/png"])
          for cell in nb.cells if cell.cell_type == "code"
          for out in cell.outputs if "image/png" in out.get("data", {})]
  assert pngs, f"{path.name} produced no figure (no image/png output)"
  assert all(png.startswith(b"\x89PNG") and len(png) > 2000 for png in pngs)
  errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
            if out.output_type == "error"]
  assert not errors

  png_dir = os.environ.get("KDJAX_COLAB_PNG_DIR")
  if png_dir:
    out_dir = pathlib.Path(png_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{path.stem}.png").write_bytes(pngs[-1])
    times_path = out_dir / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    times[path.name] = round(seconds, 1)
    times_path.write_text(json.dumps(times, indent=2))
