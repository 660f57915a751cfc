"""Backend selection: the one place that decides between fused CuPy kernels and generic code."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from array_api_compat import is_cupy_namespace, is_dask_namespace, is_torch_namespace

from . import _registry, _torch_cpu, _torch_cuda
from ._agnostic._helpers import torch_compiling
from ._settings import use_fused
from ._validation import _numpy_namespace, check_flag

_use_fused = use_fused  # the setting of fused_kernels(), read by the torch CPU lane too


@contextlib.contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """Turn the fused CuPy kernels on or off inside a ``with`` block.

    CuPy arrays normally go to arrayloss's fused CUDA kernels (and torch tensors to them on
    CUDA, to NumPy's fast paths on the CPU).  Inside ``with fused_kernels(False):`` they take
    the generic array-API path instead, the code every other backend runs; tests and
    benchmarks use this to compare the two.  The setting is per thread and per asyncio task,
    and the previous one is restored on exit.

    It is held in a :class:`contextvars.ContextVar`, so a thread started inside the block
    (a :class:`~concurrent.futures.ThreadPoolExecutor` worker, say) does *not* see it: it
    starts from the default, fused kernels on.  Hand the setting to such a thread by running
    its work in a copy of the current context (one copy per task: a context can be entered
    by one thread at a time)::

        with al.fused_kernels(False):
            pool.submit(contextvars.copy_context().run, train_step, batch)

    Parameters
    ----------
    enabled : bool
        Whether CuPy arrays use the fused kernels.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> with al.fused_kernels(False):
    ...     loss = al.gaussian_nll_loss(np.zeros(3), np.ones(3), 1.0)
    >>> float(loss)
    0.5
    """
    token = _use_fused.set(check_flag("enabled", enabled))
    try:
        yield
    finally:
        _use_fused.reset(token)


@functools.cache
def _bridge(loss: str) -> _torch_cuda.Bridge:
    return _torch_cuda.Bridge(loss)


@functools.cache
def _torch_bridge(loss: str) -> _torch_cpu.Router:
    """CPU tensors to NumPy's fast paths, the others to the CUDA bridge (with CuPy) or the
    generic code."""
    def others() -> Any:
        if _torch_cuda.cupy_available():
            return _bridge(loss)
        return _registry.backends(loss).generic()

    return _torch_cpu.Router(loss, others)


def backend(xp: ModuleType, loss: str) -> Any:
    """The backend implementing ``loss`` (a name in :mod:`arrayloss._registry`) for
    namespace ``xp``."""
    entry = _registry.backends(loss)
    if xp is _numpy_namespace():  # the common case, decided at once
        return entry.generic()
    if is_dask_namespace(xp):
        # Lazily, chunk by chunk, each chunk through arrayloss again (NumPy or CuPy).
        return entry.dask()
    if is_torch_namespace(xp) and torch_compiling():
        # TorchDynamo traces neither a ContextVar nor CuPy: a compiled graph runs the generic
        # code (torch.compile(fullgraph=True) with validate=False has no graph break).
        return entry.generic()
    if _use_fused.get() and is_torch_namespace(xp):
        # Zero-copy: CPU tensors to NumPy's fast paths, CUDA tensors to the fused kernels.
        return _torch_bridge(loss)
    if _use_fused.get() and is_cupy_namespace(xp):
        # Imported on first use, so NumPy-only users never import CuPy.
        return entry.cupy()
    return entry.generic()
