"""The backend matrix: one ``xp`` fixture over every array library that works here.

``ARRAYLOSS_BACKENDS`` (a comma list of numpy, array_api_strict, torch, jax, cupy) selects them;
by default every installed one runs.  CuPy runs only where a real CUDA device works: CuPy imports
fine on a machine without a GPU, so the probe allocates and launches a kernel.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from array_api_compat import array_namespace

ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")

# JAX compiles every operation again for each new shape (35 ms each on the CPU), about half of
# a warm suite's time: its persistent cache keeps them between runs, every one however quick
# (JAX's default skips those under a second).  Environment variables, read when JAX is first
# imported, so that the tests' own subprocesses share it; a caller's own settings win (the
# folder: see _jax_cache_per_worker).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The folder of the workers' folders, kept for them in the environment (the controller's
# pytest_configure points JAX_COMPILATION_CACHE_DIR at its own "main" first).
_JAX_CACHE = os.environ.setdefault("ARRAYLOSS_TESTS_JAX_CACHE", os.environ.get(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.expanduser("~"), ".cache", "arrayloss-tests-jax")))


def _jax_cache_per_worker() -> None:
    """JAX's cache in a folder per xdist worker (``gw0``, ``gw1``; ``main`` without xdist).

    With no size limit JAX's cache takes no lock, and a process could read an entry that
    another was still writing (a truncated-stream warning, an error here: the other
    worker's subprocess read the JAX worker's entry).  A worker waits for its own
    subprocesses, so no two processes that run at once share a folder.  A size limit turns on
    JAX's file lock instead, around every read and write: the JAX tests took 25% longer, and
    a cold suite 9.6 minutes against 6.9.  Set in ``pytest_configure``, where xdist has named
    the worker and before any test module imports JAX.
    """
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        _JAX_CACHE, os.environ.get("PYTEST_XDIST_WORKER", "main"))


def _cupy_works() -> bool:
    try:
        import cupy

        return int((cupy.arange(3) + 1).sum().get()) == 6
    except Exception:  # ImportError, CUDARuntimeError, a driver without NVRTC, ...
        return False


def _load(name: str) -> tuple[Any | None, str]:
    """(the library's namespace, or None) and why not."""
    if name == "numpy":
        return array_namespace(np.empty(0)), ""
    if name == "array_api_strict":
        try:
            import array_api_strict
        except ImportError:
            return None, "array_api_strict is not installed"
        return array_namespace(array_api_strict.empty(0)), ""
    if name == "torch":
        try:
            import torch
        except ImportError:
            return None, "torch is not installed"
        return array_namespace(torch.empty(0)), ""
    if name == "jax":
        try:
            import jax
            import jax.numpy as jnp
        except ImportError:
            return None, "jax is not installed"
        jax.config.update("jax_enable_x64", True)
        return array_namespace(jnp.empty(0)), ""
    if name == "cupy":
        if not _cupy_works():
            return None, "no working CUDA device for CuPy"
        import cupy

        return array_namespace(cupy.empty(0)), ""
    raise ValueError(f"unknown backend {name!r} in ARRAYLOSS_BACKENDS")


def _selected() -> list[str]:
    names = os.environ.get("ARRAYLOSS_BACKENDS", ",".join(ALL_BACKENDS))
    return [name.strip() for name in names.split(",") if name.strip()]


@pytest.fixture(
    params=[pytest.param(name, marks=pytest.mark.array_api_backends) for name in _selected()]
)
def xp(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The namespace of one array library of the matrix."""
    namespace, reason = _load(request.param)
    if namespace is None:
        pytest.skip(reason)
    for marker in request.node.iter_markers("skip_backend"):
        if request.param in marker.args:
            pytest.skip(marker.kwargs.get("reason", f"not for {request.param}"))
    context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if request.param == "array_api_strict":
        import array_api_strict

        # No data-dependent shapes or boolean masks: what runs here runs under jax.jit too.
        context = array_api_strict.ArrayAPIStrictFlags(
            boolean_indexing=False, data_dependent_shapes=False
        )
    with context:
        yield namespace


@pytest.fixture
def backend_name(xp: Any) -> str:
    """The short name of ``xp``'s library: numpy, array_api_strict, torch, jax or cupy."""
    if "jax" in xp.__name__:  # jax.numpy: its last part is "numpy"
        return "jax"
    name = xp.__name__.split(".")[-1]
    return {"numpy": "numpy", "cupy": "cupy", "torch": "torch"}.get(name, "array_api_strict")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "skip_backend(*names, reason=...): skip those backends")
    _jax_cache_per_worker()
    _one_thread_per_worker()


def _one_thread_per_worker() -> None:
    """Under pytest-xdist (one worker per core: pyproject's addopts), one BLAS and OpenMP
    thread per worker.  Two OpenBLAS threads per worker, spinning on the core the other
    worker uses, made the examples' small matrix products 13x slower (45 s against 3.4 s,
    measured on 2 cores).  NumPy is loaded already (by a plugin), so its BLAS is limited at
    run time; torch, not yet imported, reads ``OMP_NUM_THREADS`` when it is."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) < 2:
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


#: Module-scoped fixtures that cost seconds or hundreds of MiB to make: under pytest-xdist
#: (``-n auto`` in pyproject's addopts) the tests that use one run on one worker, which makes
#: it once (``--dist loadgroup``), instead of once per worker.
_EXPENSIVE_FIXTURES = frozenset({"cluster_client", "spatial", "library"})


def _runs_jax(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("xp") == "jax":
        return True
    return "jnp" in getattr(item, "fixturenames", ()) or "jax" in item.name.lower()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        shared = _EXPENSIVE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if shared:
            module = item.module.__name__ if isinstance(item, pytest.Function) else "tests"
            item.add_marker(pytest.mark.xdist_group(f"{module}:{min(shared)}"))
        elif _runs_jax(item):
            # JAX compiles each operation once per shape and dtype, per process: its tests on
            # one worker compile each once (measured: 73 s in one process for what costs
            # 179 s of test time split over two).
            item.add_marker(pytest.mark.xdist_group("jax"))
