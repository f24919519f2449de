"""Compile a C++ torch operator library on first use and load it; cached per source and machine.

The package ships C++ sources, not binaries: a wheel built here would have to match the user's
torch build exactly. So the first process that needs an op runs the system C++ compiler with
torch's own headers and libraries (about 12 s here), writes the library atomically into the cache
(``$JDNET_CACHE_DIR`` or ``~/.cache/jdnet``), and every later process just loads it. Nothing here
is required: without a compiler, or with ``JDNET_NATIVE=0``, callers fall back to plain torch ops,
and ``native_status`` says why.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

_loaded: dict[str, bool] = {}
_status: dict[str, str] = {}


def cache_dir() -> Path:
    """Where compiled libraries are kept."""
    env = os.environ.get("JDNET_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "jdnet"


def _cpu_flags() -> list[str]:
    # AVX2/FMA roughly double the strip loops' speed; only asked for where the CPU has them, so
    # the cache key (which includes the flags) keeps libraries of different machines apart.
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = set(info.split())
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= words else []


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _compile_flags() -> list[str]:
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    # -ffast-math lets the compiler use glibc's vector exp; the kernels keep no NaN/inf logic
    # that it could break. -fopenmp makes at::parallel_for use torch's own OpenMP runtime.
    return [
        "-c", "-fPIC", "-std=c++17", "-O3", "-ffast-math", "-fopenmp",
        *_cpu_flags(),
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *includes,
    ]


def _link_flags() -> list[str]:
    # Linked in a separate step without -ffast-math: with it, GCC before 13 adds crtfastmath.o,
    # whose constructor turns on flush-to-zero for the whole process when the library loads
    # (every later torch op in the process then flushed subnormal floats to zero).
    # libgomp.so.1 is already loaded by torch, so the library binds to that one.
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    return ["-shared", "-fopenmp", f"-L{lib_dir}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib_dir}"]


def _library_path(source: Path) -> Path:
    key = hashlib.sha256()
    key.update(source.read_bytes())
    key.update(" ".join([torch.__version__, _compiler(), *_compile_flags(), *_link_flags(), platform.machine(), sys.version]).encode())
    return cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}"


def load_native(source: Path) -> bool:
    """Build (once per machine) and load the operator library compiled from ``source``."""
    name = source.stem
    if name in _loaded:
        return _loaded[name]
    ok = False
    if os.environ.get("JDNET_NATIVE", "1") == "0":
        _status[name] = "disabled by JDNET_NATIVE=0"
    elif not sys.platform.startswith("linux"):
        _status[name] = "only built on Linux"
    elif shutil.which(_compiler()) is None:
        _status[name] = "no C++ compiler found"
    else:
        try:
            library = _library_path(source)
            if not library.exists():
                _build(source, library)
            torch.ops.load_library(str(library))
            _status[name] = f"loaded {library}"
            ok = True
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _status[name] = f"build or load failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}"
    _loaded[name] = ok
    return ok


def _build(source: Path, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent first runs (several worker processes) each build into their own temp file; the
    # rename makes whichever finishes last win with an identical, complete library.
    fd, tmp = tempfile.mkstemp(dir=library.parent, prefix=f".{library.stem}-", suffix=".tmp")
    os.close(fd)
    try:
        obj = tmp + ".o"
        for command in (
            [_compiler(), str(source), "-o", obj, *_compile_flags()],
            [_compiler(), obj, "-o", tmp, *_link_flags()],
        ):
            proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"compiler exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, library)
    finally:
        for path in (tmp, tmp + ".o"):
            if os.path.exists(path):
                os.unlink(path)


def native_status(name: str) -> str:
    """One line on what happened to the named native library in this process."""
    return _status.get(name, "not requested")
