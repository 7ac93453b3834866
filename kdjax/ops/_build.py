"""Compiles ``_conv2d_onednn.cc`` against oneDNN and the XLA FFI headers, and registers it.

The shared library is built once per (source, compiler flags, oneDNN, jaxlib) into
``$KDJAX_CACHE_DIR`` (default ``~/.cache/kdjax``)/``ops/<hash>/``; a build writes a temporary
file and renames it, so concurrent processes (pytest workers) never load a half-written one.

oneDNN >= 3 is looked up, in order, under ``$KDJAX_ONEDNN_ROOT``, the Python prefix (where
``pip install onednn-devel`` puts ``include/oneapi/dnnl/dnnl.hpp`` and ``lib/libdnnl.so``),
and ``/usr`` / ``/usr/local``.
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import jax

_SOURCE = pathlib.Path(__file__).with_name("_conv2d_onednn.cc")
_TARGETS = {
    "kdjax_conv2d_fwd": "KdjaxConv2dFwd",
    "kdjax_conv2d_bwd_data": "KdjaxConv2dBwdData",
    "kdjax_conv2d_bwd_weights": "KdjaxConv2dBwdWeights",
}
_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC")


class OnednnUnavailableError(RuntimeError):
  """The oneDNN convolution cannot be built or loaded here (the message says why)."""


def _candidate_roots() -> list[pathlib.Path]:
  roots = []
  if os.environ.get("KDJAX_ONEDNN_ROOT"):
    roots.append(pathlib.Path(os.environ["KDJAX_ONEDNN_ROOT"]))
  roots += [pathlib.Path(sys.prefix), pathlib.Path(sysconfig.get_config_var("prefix") or sys.prefix),
            pathlib.Path("/usr/local"), pathlib.Path("/usr")]
  return roots


def find_onednn() -> tuple[pathlib.Path, pathlib.Path]:
  """``(include_dir, lib_dir)`` of a oneDNN >= 3 install.

  Raises:
    OnednnUnavailableError: naming the places searched, if none has ``dnnl.hpp`` and
      ``libdnnl.so`` of major version 3 or later.
  """
  searched = []
  for root in _candidate_roots():
    header = root / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
    for lib_dir in (root / "lib", root / "lib64", root / "lib" / "x86_64-linux-gnu"):
      searched.append(str(root))
      if header.is_file() and (lib_dir / "libdnnl.so").exists():
        version = (root / "include" / "oneapi" / "dnnl" / "dnnl_version.h").read_text()
        major = [line.split()[-1] for line in version.splitlines()
                 if line.startswith("#define DNNL_VERSION_MAJOR")]
        if major and int(major[0]) >= 3:
          return root / "include", lib_dir
  raise OnednnUnavailableError(
      "oneDNN >= 3 not found (looked for include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so under "
      f"{sorted(set(searched))}); install it with `pip install 'kdjax[onednn]'` or set "
      "KDJAX_ONEDNN_ROOT")


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("KDJAX_CACHE_DIR") or pathlib.Path.home() / ".cache" / "kdjax"
  return pathlib.Path(root) / "ops"


def build(force: bool = False, verbose: bool = False) -> pathlib.Path:
  """Compiles the oneDNN convolution (if not already in the cache) and returns its path.

  Args:
    force: rebuild even when the cached library exists.
    verbose: print the compiler command.

  Returns:
    Path of ``libkdjax_conv2d.so``.

  Raises:
    OnednnUnavailableError: if ``g++`` or oneDNN is missing, or the compiler fails (with its
      error output).
  """
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise OnednnUnavailableError("no C++ compiler: install g++ (or set CXX) to build the "
                                 "oneDNN convolution")
  include_dir, lib_dir = find_onednn()
  ffi_include = jax.ffi.include_dir()
  digest = hashlib.sha256()
  for part in (_SOURCE.read_bytes(), " ".join(_FLAGS).encode(), str(include_dir).encode(),
               (include_dir / "oneapi" / "dnnl" / "dnnl_version.h").read_bytes(),
               jax.__version__.encode(), compiler.encode()):
    digest.update(part)
  out_dir = _cache_dir() / digest.hexdigest()[:16]
  target = out_dir / "libkdjax_conv2d.so"
  if target.exists() and not force:
    return target
  out_dir.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
  os.close(fd)
  # DT_RPATH (not RUNPATH) so libdnnl's own dependencies (libtbb, ... in the same lib dir of a
  # pip install) are found too.
  cmd = [compiler, *_FLAGS, f"-I{include_dir}", f"-I{ffi_include}", str(_SOURCE), "-o", tmp,
         f"-L{lib_dir}", "-ldnnl", f"-Wl,--disable-new-dtags,-rpath,{lib_dir}"]
  if verbose:
    print(" ".join(cmd))
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    os.unlink(tmp)
    raise OnednnUnavailableError(f"building the oneDNN convolution failed ({' '.join(cmd)}):\n"
                                 f"{proc.stderr[-4000:]}")
  os.replace(tmp, target)
  return target


@functools.cache
def _load() -> ctypes.CDLL:
  path = build()
  try:
    lib = ctypes.CDLL(str(path))
  except OSError as err:
    raise OnednnUnavailableError(f"loading {path} failed: {err}") from err
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return lib


def load() -> None:
  """Builds (if needed), loads and registers the oneDNN FFI targets; idempotent.

  Raises:
    OnednnUnavailableError: as :func:`build`, or if the library does not load.
  """
  _load()


@functools.cache
def onednn_unavailable_reason() -> str | None:
  """``None`` when the oneDNN convolution loads here, else the reason it does not (cached)."""
  try:
    _load()
  except OnednnUnavailableError as err:
    return str(err)
  return None


def onednn_available() -> bool:
  """Whether the oneDNN convolution can be used in this process (builds it on first call)."""
  return onednn_unavailable_reason() is None
