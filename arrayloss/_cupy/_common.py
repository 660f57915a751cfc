"""Small helpers shared by the CuPy backends."""

from __future__ import annotations

from typing import Any

import array_api_compat.cupy as cupy_namespace
import cupy
import numpy as np

from .._agnostic._helpers import compute_dtype as generic_compute_dtype
from . import _kernels


def compute_dtype(result_dtype: Any) -> np.dtype:
    """The kernels' compute type: the generic path's rule (float32 below 32 bits)."""
    return np.dtype(generic_compute_dtype(cupy_namespace, result_dtype))


def invalid_flag(validate: bool) -> cupy.ndarray:
    """The one-element flag a kernel records its first invalid element in.

    Without validation the kernels never write it, so it is left uninitialised: no fill kernel.
    """
    if validate:
        # A NumPy scalar: a Python int above the int64 range would not convert.
        return cupy.full((1,), np.uint64(_kernels.NO_INVALID), dtype=cupy.uint64)
    return cupy.empty((1,), dtype=cupy.uint64)


def first_invalid(flag: cupy.ndarray) -> int | None:
    """The flat index a kernel recorded, or None: the one device-to-host read of a checked call."""
    index = int(flag.get()[0])
    return None if index == _kernels.NO_INVALID else index


def upstream_arguments(grad_output: Any, reduction: str, stand_in: cupy.ndarray
                       ) -> tuple[int, cupy.ndarray, float]:
    """The gradient kernels' ``(upstream_mode, upstream, upstream_scalar)``: mode 0 for a
    Python float (``stand_in``, never read, as the array), 1 for a reduced loss's 0-d array,
    2 for ``'none'``'s per-element upstream, flat."""
    if isinstance(grad_output, float):
        return 0, stand_in, grad_output
    if reduction == "none":
        return 2, cupy.ascontiguousarray(grad_output).reshape(-1), 0.0
    return 1, grad_output.reshape(1), 0.0
