"""hostcuda: arrayloss's CUDA kernels, run on the CPU.

The real arrayloss CuPy backend (``arrayloss/_cupy``: kernel factories, launch sizes, partial
buffers, the finish module, the invalid flags) runs unchanged on :class:`HostArray`, a
CuPy-typed array in NumPy memory.  Every launch takes CuPy's exact generated CUDA source for
that call, compiles it as host C++ with the shim in ``include/`` (once per source, cached by
content hash) and runs it with the grid, block and index width CuPy would use, one fiber per
CUDA thread, float32 subnormals flushed as ``-ftz=true`` does.

Use :func:`activated` around calls; inside it, :func:`asarray` makes arrays and :data:`COUNTERS`
says what ran.  Nothing in arrayloss knows about this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import _arrays, _compiler, _launch
from ._arrays import (
    COUNTERS,
    INDEX_32_BITS_LIMIT,
    HostArray,
    HostDevice,
    asarray,
    asnumpy,
)
from ._launch import UninitialisedInputError, WrongDeviceError

__all__ = [
    "COUNTERS",
    "HostArray",
    "HostDevice",
    "UninitialisedInputError",
    "WrongDeviceError",
    "activated",
    "asarray",
    "asnumpy",
    "index_32_bits_limit",
    "unavailable",
]


def unavailable() -> str | None:
    """Why the harness cannot run here, or None."""
    try:
        import cupy
        from cupy._core import _kernel

        _kernel._get_elementwise_kernel_code  # noqa: B018
        _kernel._ArgInfo  # noqa: B018
        cupy.ElementwiseKernel  # noqa: B018
    except (ImportError, AttributeError) as error:
        return f"CuPy's kernel code generators are not available: {error}"
    if _compiler.compiler() is None:
        return "no host C++ compiler (g++ or clang++)"
    return None


@contextlib.contextmanager
def activated() -> Iterator[None]:
    """Make CuPy-typed host arrays and host launches stand in for CuPy's device parts."""
    import array_api_compat.cupy as cupy_namespace
    import cupy

    from arrayloss._cupy import _kernels

    patches: list[tuple[Any, str, Any]] = [
        (cupy, "ndarray", HostArray),
        (cupy, "empty", _arrays.empty),
        (cupy, "full", _arrays.full),
        (cupy, "zeros", _arrays.zeros),
        (cupy, "ones", _arrays.ones),
        (cupy, "asarray", _arrays.asarray),
        (cupy, "ascontiguousarray", _arrays.ascontiguousarray),
        (cupy, "asnumpy", _arrays.asnumpy),
        (cupy, "may_share_memory", _arrays.may_share_memory),
        (cupy, "concatenate", _arrays.concatenate),
        (cupy, "RawModule", _launch.HostRawModule),
        (cupy, "ElementwiseKernel", _launch.HostElementwiseKernel),
        (cupy_namespace, "expand_dims", _arrays.expand_dims),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    _kernels.clear_factories()  # they hold kernels of whichever kind built them
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        _kernels.clear_factories()


@contextlib.contextmanager
def index_32_bits_limit(limit: int) -> Iterator[None]:
    """Lower the size at which CuPy switches to 64-bit indexing (new arrays and launches)."""
    saved = INDEX_32_BITS_LIMIT[0]
    INDEX_32_BITS_LIMIT[0] = limit
    try:
        yield
    finally:
        INDEX_32_BITS_LIMIT[0] = saved


@contextlib.contextmanager
def recording_only() -> Iterator[dict[str, str]]:
    """Record the source of every launch without compiling or running it."""
    saved = COUNTERS.execute
    COUNTERS.execute = False
    try:
        yield COUNTERS.sources
    finally:
        COUNTERS.execute = saved
