"""Every loss's backends, by name: the one table the dispatcher and the bridges read.

A loss registers how to reach its generic backend (NumPy's too), its CuPy backend and its
Dask adapter; each is an object (or module) with ``forward``, ``backward`` and
``loss_and_grad``.  The CuPy and Dask backends are looked up on first use, so a NumPy-only
user never imports CuPy or Dask.  Nothing here knows a loss's math, and no shared layer keeps
a list of losses of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._agnostic import cross_entropy, gaussian_nll, nll

__all__ = ["Backends", "backends", "register"]


@dataclass(frozen=True)
class Backends:
    """How to reach one loss's backends (each callable returns the backend object)."""

    generic: Callable[[], Any]
    cupy: Callable[[], Any]
    dask: Callable[[], Any]


_BACKENDS: dict[str, Backends] = {}


def register(name: str, entry: Backends) -> None:
    """Make ``name``'s backends known; a name is registered once."""
    if name in _BACKENDS:
        raise ValueError(f"a loss named {name!r} is registered already")
    _BACKENDS[name] = entry


def backends(name: str) -> Backends:
    """The backends of the loss called ``name``."""
    return _BACKENDS[name]


def _module_backends(name: str, generic: Any) -> Backends:
    """A loss whose backends are modules named after it (the first three losses); the
    generic one imported already (TorchDynamo traces no import while compiling)."""

    def dask() -> Any:
        from . import _dask

        return _dask.backend(name)

    return Backends(
        generic=lambda: generic,
        cupy=lambda: importlib.import_module(f"arrayloss._cupy.{name}"),
        dask=dask,
    )


for _name, _generic in (("gaussian_nll", gaussian_nll), ("nll", nll),
                        ("cross_entropy", cross_entropy)):
    register(_name, _module_backends(_name, _generic))
