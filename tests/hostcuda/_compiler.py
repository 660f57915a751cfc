"""Host compilation of CuPy-generated kernel source, cached by content hash.

Each distinct source is compiled once into a shared library (g++, C++20, ``-O1``) and loaded
with ctypes.  The cache directory is ``$ARRAYLOSS_HOSTCUDA_CACHE`` or
``~/.cache/arrayloss-hostcuda``; the key covers the source, the shim headers and the flags, so a
change to any of them compiles afresh.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM_DIR = HERE / "include"
FLAGS = ("-std=c++20", "-O1", "-fPIC", "-shared", "-w", "-fno-strict-aliasing",
         "-ffp-contract=off")

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}


@cache
def compiler() -> str | None:
    """The host C++ compiler, or None."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


@cache
def cupy_include_dir() -> Path:
    import cupy

    return Path(cupy.__file__).resolve().parent / "_core" / "include"


def cache_dir() -> Path:
    root = os.environ.get("ARRAYLOSS_HOSTCUDA_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "arrayloss-hostcuda"
    path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def _shim_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(SHIM_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    digest.update((cupy_include_dir() / "cupy" / "carray.cuh").read_bytes())
    return digest.hexdigest()


class CompileError(RuntimeError):
    """The host compiler rejected a kernel source; the message holds its log."""


def load(source: str) -> ctypes.CDLL:
    """The shared library built from ``source`` (compiled on first use, then cached)."""
    cxx = compiler()
    if cxx is None:
        raise CompileError("no host C++ compiler (g++ or clang++) found")
    key = hashlib.sha256(
        "\0".join((source, _shim_digest(), cxx, *FLAGS)).encode()).hexdigest()[:32]
    with _lock:
        if key in _loaded:
            return _loaded[key]
        library = cache_dir() / f"{key}.so"
        if not library.exists():
            _build(cxx, source, library)
        _loaded[key] = ctypes.CDLL(str(library))
        return _loaded[key]


def _build(cxx: str, source: str, library: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="hostcuda-") as work:
        source_path = Path(work) / "kernel.cpp"
        source_path.write_text(source)
        partial = Path(work) / "kernel.so"
        command = [cxx, *FLAGS, "-include", str(SHIM_DIR / "hostcuda.h"), f"-I{SHIM_DIR}",
                   f"-I{cupy_include_dir()}", str(source_path), "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode:
            raise CompileError(f"host compilation failed:\n{result.stderr[-6000:]}\n"
                               f"--- source ---\n{source[-3000:]}")
        # Atomic publish: parallel test processes may build the same key.
        os.replace(partial, library)
