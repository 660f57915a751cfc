"""What every fused CUDA kernel shares: the header, the conventions, the factory registry.

Each loss's kernels live beside its backend (``gaussian_nll``, ``nll``, ``cross_entropy``; the
second pass of the reductions in ``reduce``), as CuPy kernel objects built by small memoized
factories (:func:`kernel_factory`).  Each kernel's body is a few lines that call the
per-element math of ``kernels.cuh``, which every kernel includes through its preamble.
Building a kernel object needs no GPU (CuPy compiles on the first call), so importing these
modules is safe on any machine with CuPy.

Conventions shared by all kernels:

* ``A`` is the compute type (float, or double when a floating argument is float64).
* ``invalid`` is a one-element uint64 array: the smallest flat index of an invalid element
  (negative variance, target outside ``[0, C)``), left at its initial ``2**64 - 1`` if none.
  It is written only when ``check`` is non-zero.
* Scalar reductions are two-pass and deterministic: each block sums its elements in a fixed
  tree order into ``partials[blockIdx.x]`` (``after_loop``, :func:`block_partial`), then
  :mod:`.reduce` adds the partials in a fixed order.  No atomics touch a loss or a weight.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar, cast

#: Threads per block of the reduction kernels; the number of partials follows from it.
REDUCE_BLOCK = 256

#: The initial value of an ``invalid`` flag: no invalid element seen.
NO_INVALID = 2**64 - 1

#: Every kernel factory, in the order the modules defined them.  A factory keeps the kernel
#: objects it built, so whoever swaps CuPy's kernel classes (the CPU harness in
#: ``tests/hostcuda``) clears them all through this list, and checks that each one ran.
FACTORIES: list[functools._lru_cache_wrapper[Any]] = []

_Factory = TypeVar("_Factory", bound=Callable[..., Any])


def kernel_factory(build: _Factory) -> _Factory:
    """``build`` memoized (one kernel object per distinct arguments) and registered in
    :data:`FACTORIES`."""
    cached = functools.cache(build)
    FACTORIES.append(cached)
    return cast(_Factory, cached)


def clear_factories() -> None:
    """Drop every kernel object built so far (the next call of a factory builds anew)."""
    for factory in FACTORIES:
        factory.cache_clear()


@functools.cache
def header() -> str:
    """The text of ``kernels.cuh``, pasted into every preamble (NVRTC sees no file path)."""
    return resources.files("arrayloss._cupy").joinpath("kernels.cuh").read_text()


def preamble(compute_type: str) -> str:
    """The header and ``A``, the compute type, for kernels whose types CuPy does not name."""
    return f"{header()}\ntypedef {compute_type} A;\n"


_BLOCK_PARTIAL = """
{
    const A block_total = al::block_sum(%(value)s);
    if (threadIdx.x == 0) %(partials)s[blockIdx.x] = block_total;
}
"""


def block_partial(value: str, partials: str) -> str:
    """``after_loop`` code: the block's sum of ``value`` (fixed tree order) into
    ``partials[blockIdx.x]``."""
    return _BLOCK_PARTIAL % {"value": value, "partials": partials}


#: ``loop_prep`` and ``after_loop`` of a kernel that sums a loss and a weight per block (a
#: weighted mean's two sums in one pass) into ``loss_partials`` and ``weight_partials``.
LOSS_AND_WEIGHT_PREP = "A thread_loss = 0;\nA thread_weight = 0;"
LOSS_AND_WEIGHT_PARTIALS = (block_partial("thread_loss", "loss_partials")
                            + block_partial("thread_weight", "weight_partials"))
