"""Small helpers shared by the CuPy backends."""

from __future__ import annotations

from typing import Any

import cupy
import numpy as np

from . import _kernels


def compute_dtype(result_dtype: Any) -> np.dtype:
    """The kernels' compute type: float64 for float64 results, float32 otherwise."""
    return np.dtype(np.float64 if np.dtype(result_dtype) == np.float64 else np.float32)


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
