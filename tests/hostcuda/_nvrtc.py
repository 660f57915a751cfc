"""Every source the harness launches is also compiled for the device with NVRTC.

So what CI compiles is exactly what runs: the same generated text, with CuPy's headers and
flags (``-ftz=true``, ``--std=c++17``).  Every launched source goes through NVRTC's front end
and NVVM for ``compute_80`` and ``compute_90`` (:func:`compile_for_device`: PTX, where any
error in the C++ or in what an architecture offers shows).  Machine code, ptxas's cubins for
sm_80 and sm_90, is built where its registers and stack frame are asked for
(:func:`machine_resources`, read by :mod:`._cubin`): the performance proxy's kernels.  ptxas
was most of a compile (0.44 s of 0.61 s per source for both architectures here) and checks
nothing the kernels use that NVVM does not (they have no inline PTX, and their static shared
memory is a few hundred bytes).  Results are remembered per content hash in the cache
directory.  NVRTC comes from the ``nvidia-cuda-nvrtc`` wheel (the ``kernels`` extra); without
it the compile is skipped and :func:`unavailable` says why.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from . import _compiler, _cubin

ARCHITECTURES = ("80", "90")

compiled: set[str] = set()  # digests of the sources compiled (or found compiled) this run
#: digest -> architecture -> kernel name (as launched) -> {"registers", "frame_bytes"}.
resources: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
#: digest -> (name expressions, kernel options) of each source compiled: how to build its
#: machine code if asked.
_how: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}


@functools.cache
def unavailable() -> str | None:
    try:
        from cupy._core import core  # noqa: F401
        from cupy.cuda import compiler, nvrtc

        compiler._NVRTCProgram  # noqa: B018
        nvrtc.getVersion()
    except Exception as error:  # a missing library is found only when first called
        return f"NVRTC is not available: {error}"
    return None


def digest_of(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:32]


def compile_for_device(source: str, name_expressions: tuple[str, ...] = (),
                       kernel_options: tuple[str, ...] = ()) -> None:
    """Compile ``source`` as CuPy would for each architecture's PTX, with the kernel's own
    NVRTC ``kernel_options`` (``ElementwiseKernel(options=...)``); raises with NVRTC's log."""
    digest = digest_of(source)
    if digest in compiled:
        return
    _how[digest] = (name_expressions, kernel_options)
    marker = _marker(digest, kernel_options, "ptx")
    if not marker.exists():
        # Workers side by side (pytest-xdist) meet the same sources: one of them compiles.
        with _compiler.locked(marker.with_suffix(".lock")):
            if not marker.exists():
                for arch in ARCHITECTURES:
                    _check_ptx(device_ptx(source, name_expressions, kernel_options, arch), arch)
                _publish(marker, "")
    compiled.add(digest)


def machine_resources(source: str) -> dict[str, dict[str, dict[str, int]]]:
    """architecture -> kernel name (as launched) -> ``{"registers", "frame_bytes"}`` of a
    source :func:`compile_for_device` compiled, from its cubins for sm_80 and sm_90 (built
    once per cache)."""
    digest = digest_of(source)
    if digest in resources:
        return resources[digest]
    if digest not in _how:
        raise KeyError("machine_resources: the source was never compiled for the device")
    name_expressions, kernel_options = _how[digest]
    marker = _marker(digest, kernel_options, "nvrtc")
    if not _read_marker(digest, marker):
        with _compiler.locked(marker.with_suffix(".lock")):
            if not _read_marker(digest, marker):
                found = _compile(source, name_expressions, kernel_options)
                _publish(marker, json.dumps(found))
                resources[digest] = found
    return resources[digest]


def _marker(digest: str, kernel_options: tuple[str, ...], kind: str) -> Path:
    # The options are part of what is compiled (a kernel's are fixed by its factory).
    suffix = hashlib.sha256(" ".join(kernel_options).encode()).hexdigest()[:8] \
        if kernel_options else ""
    return _compiler.cache_dir() / f"{digest}{suffix}.{kind}"


def _publish(marker: Path, text: str) -> None:
    partial = marker.with_suffix(f".{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, marker)  # a reader sees no marker or a whole one


def _check_ptx(ptx: bytes, arch: str) -> None:
    text = ptx.decode(errors="replace")
    if f".target sm_{arch}" not in text or ".entry" not in text:
        raise RuntimeError(f"NVRTC returned no kernel for compute_{arch}:\n{text[:2000]}")


def _read_marker(digest: str, marker: Path) -> bool:
    """Whether ``marker`` records a compile of ``digest`` (its resources then remembered)."""
    try:
        resources[digest] = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return True


def _compile(source: str, name_expressions: tuple[str, ...], kernel_options: tuple[str, ...]
             ) -> dict[str, dict[str, dict[str, int]]]:
    """Each architecture's kernels' resources (registers, stack frame) by name."""
    found: dict[str, dict[str, dict[str, int]]] = {}
    for arch in ARCHITECTURES:
        cubin, lowered = device_binary(source, name_expressions, kernel_options, arch)
        by_symbol = _cubin.resources(cubin)
        # A RawModule's kernels by their name expressions, an ElementwiseKernel's by name.
        names = {symbol: symbol for symbol in by_symbol}
        names.update({symbol: expression for expression, symbol in (lowered or {}).items()})
        found[arch] = {names[symbol]: usage for symbol, usage in by_symbol.items()}
    return found


def device_binary(source: str, name_expressions: tuple[str, ...], kernel_options: tuple[str, ...],
                  arch: str, precompiled: bool = True) -> tuple[bytes, dict[str, str] | None]:
    """(the cubin, the lowered name of each name expression) of ``source`` for ``sm_<arch>``,
    compiled as CuPy compiles it; ``precompiled=False`` parses every header afresh."""
    cubin, lowered = _nvrtc(source, name_expressions, kernel_options, f"sm_{arch}", "cubin",
                            precompiled)
    if cubin[:4] != b"\x7fELF":
        raise RuntimeError(f"NVRTC returned no device binary for sm_{arch}")
    return cubin, lowered


def device_ptx(source: str, name_expressions: tuple[str, ...], kernel_options: tuple[str, ...],
               arch: str) -> bytes:
    """The PTX of ``source`` for ``compute_<arch>``, compiled as CuPy compiles it."""
    ptx, _ = _nvrtc(source, name_expressions, kernel_options, f"compute_{arch}", "ptx", True)
    return ptx if isinstance(ptx, bytes) else ptx.encode()


def _nvrtc(source: str, name_expressions: tuple[str, ...], kernel_options: tuple[str, ...],
           target: str, method: str, precompiled: bool) -> tuple[bytes, dict[str, str] | None]:
    from cupy._core import core
    from cupy.cuda import compiler

    options = (*core.assemble_cupy_compiler_options(("-ftz=true",)), *kernel_options)
    if name_expressions:  # a RawModule: its code as written
        text = source
    else:  # an ElementwiseKernel: CuPy prepends its headers
        text = "".join(f"#include <{h}>\n" for h in core._cupy_header_list) + source
        options = (*options, "--device-as-default-execution-space")
    options = (*options, f"-arch={target}", "--std=c++17")
    with _precompiled_headers(text, options, precompiled) as pch_options:
        program = compiler._NVRTCProgram(text, "arrayloss_kernel.cu",
                                         name_expressions=name_expressions or None,
                                         method=method)
        return program.compile((*options, *pch_options))  # type: ignore[no-any-return]


# ------------------------------------------------------------------ precompiled headers
#
# Every NVRTC compile parses CuPy's headers, which the first lines of every source include: about
# a seventh of a compile here (0.58 -> 0.51 s for both architectures; NVVM and ptxas are the
# rest).  NVRTC (12.8+) can precompile what a source's first preprocessing directives bring in
# (``--create-pch``) and start later compiles from it (``--use-pch``) when their first
# directives and their options are the same.  So one precompiled header is kept per
# (directives, options, architecture): the first source of each builds it under a lock, into a
# file of its own that is then published whole, and the others only read it.  A precompiled
# header changes how fast NVRTC compiles, not what (tests/test_hostcuda.py compares the bits).

#: A source's first preprocessing directives (and the blank and comment lines among them).
_DIRECTIVES = re.compile(r"(?:[ \t]*(?:#[^\n]*|//[^\n]*)?\n)*")


@functools.cache
def _pch_directory() -> Path | None:
    """Where precompiled headers live (per NVRTC and CuPy version), or None where NVRTC has
    none (before 12.8)."""
    import cupy
    from cupy.cuda import nvrtc

    version = nvrtc.getVersion()
    if version < (12, 8):
        return None
    key = hashlib.sha256(f"{version} {cupy.__version__}".encode()).hexdigest()[:16]
    directory = _compiler.cache_dir() / f"nvrtc-pch-{key}"
    directory.mkdir(exist_ok=True)
    return directory


@contextlib.contextmanager
def _precompiled_headers(text: str, options: tuple[str, ...], wanted: bool = True
                         ) -> Iterator[tuple[str, ...]]:
    """The options that compile ``text`` (with ``options``) from a precompiled header, or
    build that header on the way (none where NVRTC has none, or ``wanted`` is false)."""
    directives = _DIRECTIVES.match(text).group(0)  # type: ignore[union-attr]
    directory = _pch_directory() if wanted and "#include" in directives else None
    if directory is None:
        yield ()
        return
    key = hashlib.sha256("\0".join((directives, *options)).encode()).hexdigest()[:24]
    header = directory / f"{key}.pch"
    if header.exists():
        yield (f"--use-pch={header}",)
        return
    with _compiler.locked(directory / f"{key}.lock"):
        if header.exists():  # built by another process meanwhile
            yield (f"--use-pch={header}",)
            return
        partial = directory / f"{key}.{os.getpid()}.partial"
        try:
            yield (f"--create-pch={partial}",)
            if partial.exists():  # NVRTC may decline (a full PCH heap): compiled without
                os.replace(partial, header)
        finally:
            partial.unlink(missing_ok=True)
