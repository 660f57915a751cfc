"""Host compilation of CuPy-generated kernel source, cached by content hash.

Each distinct source is compiled once into a shared library (g++, C++20, ``-O1``) and loaded
with ctypes.  The cache directory is ``$ARRAYLOSS_HOSTCUDA_CACHE`` or
``~/.cache/arrayloss-hostcuda``; the key covers the source, the shim headers and the flags, so a
change to any of them compiles afresh.

What is the same for every kernel is compiled once per cache: the fiber scheduler
(``runtime.cpp``) into a shared library that each kernel's library links, and what every source
starts with (the shim, ``hostcuda.h``, and CuPy's ``cupy/carray.cuh``) into a precompiled header;
a compiler that cannot use it parses the headers as before.  Test processes running side by
side (pytest-xdist) share the cache: each library and the header are built under a file lock,
so by one of them, and published atomically.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM_DIR = HERE / "include"
RUNTIME = HERE / "runtime.cpp"
FLAGS = ("-std=c++20", "-O1", "-fPIC", "-w", "-fno-strict-aliasing", "-ffp-contract=off")
#: The first line of every host source (``_launch._host_source``), after the shim.
PRELUDE = "#include <cupy/carray.cuh>\n"

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
    digest.update(RUNTIME.read_bytes())
    return digest.hexdigest()


class CompileError(RuntimeError):
    """The host compiler rejected a kernel source; the message holds its log."""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) across processes."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
            with locked(cache_dir() / f"{key}.lock"):
                if not library.exists():  # another process may have built it meanwhile
                    _build(cxx, source, library)
        _loaded[key] = ctypes.CDLL(str(library))
        return _loaded[key]


def _include_flags() -> list[str]:
    return [f"-I{SHIM_DIR}", f"-I{cupy_include_dir()}"]


@cache
def _precompiled_prelude(cxx: str) -> Path | None:
    """``prelude.h`` (the shim and :data:`PRELUDE`) beside its precompiled ``.gch``, built once
    per cache directory; None where the compiler cannot build one."""
    key = hashlib.sha256("\0".join((_shim_digest(), cxx, *FLAGS)).encode()).hexdigest()[:32]
    directory = cache_dir() / f"prelude-{key}"
    header = directory / "prelude.h"
    with locked(cache_dir() / f"prelude-{key}.lock"):
        if (directory / "prelude.h.gch").exists():
            return header
        work = Path(tempfile.mkdtemp(prefix="prelude-", dir=cache_dir()))
        try:
            (work / "prelude.h").write_text(f'#include "{SHIM_DIR / "hostcuda.h"}"\n{PRELUDE}')
            command = [cxx, *FLAGS, *_include_flags(), "-x", "c++-header",
                       str(work / "prelude.h"), "-o", str(work / "prelude.h.gch")]
            if subprocess.run(command, capture_output=True, check=False).returncode:
                return None
            os.replace(work, directory)  # published whole: a .gch is never seen half written
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return header


@cache
def _runtime_library(cxx: str) -> Path:
    """The fiber scheduler's shared library, built once per cache directory."""
    key = hashlib.sha256("\0".join((_shim_digest(), cxx, *FLAGS)).encode()).hexdigest()[:32]
    library = cache_dir() / f"runtime-{key}.so"
    with locked(cache_dir() / f"runtime-{key}.lock"):
        if not library.exists():
            partial = library.with_suffix(f".{os.getpid()}")
            command = [cxx, *FLAGS, "-shared", *_include_flags(), str(RUNTIME), "-o", str(partial)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode:
                raise CompileError(f"the hostcuda runtime failed to compile:\n{result.stderr}")
            os.replace(partial, library)
    return library


def _build(cxx: str, source: str, library: Path) -> None:
    runtime = _runtime_library(cxx)
    prelude = _precompiled_prelude(cxx)
    # With the precompiled prelude first, the source's own `#include <cupy/carray.cuh>` is a
    # no-op (#pragma once): the same text, parsed once per cache instead of once per kernel.
    first = str(prelude) if prelude is not None else str(SHIM_DIR / "hostcuda.h")
    with tempfile.TemporaryDirectory(prefix="hostcuda-") as work:
        source_path = Path(work) / "kernel.cpp"
        source_path.write_text(source)
        partial = Path(work) / "kernel.so"
        # Linked by its path (it has no soname), so loading a kernel's library loads it too.
        command = [cxx, *FLAGS, "-shared", "-include", first, *_include_flags(),
                   str(source_path), str(runtime), "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode:
            raise CompileError(f"host compilation failed:\n{result.stderr[-6000:]}\n"
                               f"--- source ---\n{source[-3000:]}")
        # Atomic publish: a reader sees no library or a whole one.
        os.replace(partial, library)
