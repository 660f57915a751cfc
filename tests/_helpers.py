"""Helpers shared by the tests: moving arrays between NumPy and the backend under test."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from array_api_compat import is_cupy_array


def to_numpy(array: Any) -> np.ndarray:
    """Any backend's array (or a NumPy scalar) as a NumPy array, for assertions."""
    if isinstance(array, (np.ndarray, np.generic)):
        return np.asarray(array)
    if is_cupy_array(array):  # CuPy's, or the hostcuda harness's stand-in
        return array.get()
    if type(array).__module__.startswith("torch"):
        return array.detach().cpu().numpy()
    return np.from_dlpack(array)  # array_api_strict, jax: host copies via DLPack


def from_numpy(xp: Any, array: np.ndarray, dtype: str | None = None) -> Any:
    """A NumPy array moved into ``xp``, with the dtype named by ``dtype`` (default: its own)."""
    name = dtype or array.dtype.name
    return xp.asarray(np.asarray(array), dtype=getattr(xp, name))


def load_lazy_modules() -> None:
    """Finish loading every module that ``sys.modules`` holds half-loaded (CuPy's
    ``cupy.testing``, an ``importlib.util.LazyLoader`` module), before ``torch.compile``.

    Dynamo walks ``sys.modules`` when it traces a lookup in it (array-api-compat's, the CPU
    lane's); touching a lazy module there loads it, which adds its submodules to the dict under
    the walk: "dictionary changed size during iteration", in whichever test first compiles
    after CuPy was imported (an order of tests, not a defect of the test)."""
    for module in list(sys.modules.values()):
        if type(module).__name__ == "_LazyModule":
            dir(module)  # any attribute loads it
