"""Gaussian NLL kernels for C-contiguous inputs: several elements per thread, vector loads.

:mod:`.gaussian_nll` sends a call here when ``input`` and ``target`` are C-contiguous arrays of
the loss's shape (not 0-d, not empty) and ``var`` is a Python number, a C-contiguous array of
the loss's shape (*flat* kernels) or a C-contiguous one-per-row variance of shape ``(..., 1)``
against ``(..., D)`` (*row* kernels).  Every other layout keeps the general kernels there.

* **Chunks.**  Elements are taken ``width`` at a time, ``width = 16 // the largest itemsize``
  of the arrays read or written element by element, so one chunk of each is at most 16 bytes.
  When every such pointer is a multiple of its chunk's bytes (checked on the host) a chunk is
  one vector load or store; otherwise the *scalar-load* variant loads it element by element.
  The two give each thread the same elements in the same order, so they give the same bits.
  All loads of a chunk are issued before any branch on their values.
* **Ordinary and rare elements.**  A chunk whose variances the device would not flush (nor
  eps), and none of them negative when checked, goes through the plain float math, written
  once in a loop that is not unrolled (unrolled, ``width`` elements' divisions and logarithms
  would hold twice the registers).  Other chunks, and a last partial chunk, go element by
  element through the general forms of ``kernels.cuh``, called rather than inlined, in a loop
  beside the first one rather than inside it: their double-precision branches then cost the
  ordinary loop no registers.
* **Flat kernels.**  A grid-stride loop over chunks, at most :data:`MAX_BLOCKS` blocks (so the
  partials need no fold before the second pass), at least :data:`CHUNKS_PER_THREAD` chunks per
  thread.  A last partial chunk goes to the thread whose next chunk it would be, last in its
  order.
* **Row kernels.**  ``lanes`` consecutive threads of a warp share a row (a power of two up to
  32, the fewest that cover its chunks), and the row's variance, clamp and weight are computed
  once.  ``grad_var`` is the sum over the row's elements, each lane's chunks in order and then
  a fixed shuffle tree over the lanes: one value per row is written, no scratch of the loss's
  shape.  Every thread of a block runs the same number of row iterations (shuffles are called
  by whole warps).
* Per-thread setup (the double options converted once, a scalar variance's clamp and weight,
  the upstream factor) is done before the loop, and ``log_var``, ``beta == 0`` and the
  validation check are compile-time constants.  Sums are in the compute type ``A`` (float for
  float32 and narrower; double only for float64, as PyTorch's parity needs): each thread's
  chunk sums in order, then :func:`~._kernels.block_partial`'s fixed tree, then
  :func:`.reduce.finish`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cupy

from . import reduce
from ._kernels import REDUCE_BLOCK
from .gaussian_nll_contiguous_kernels import (
    gaussian_flat,
    gaussian_rows,
    has_gradients,
    has_partials,
)

Array = Any

#: At most this many blocks: their partials go to the second pass without a fold.
MAX_BLOCKS = reduce.FOLD_ABOVE
#: A flat kernel gives each thread at least this many chunks (when there are enough).
CHUNKS_PER_THREAD = 2
#: Bytes of the widest load or store (``ld.global.v4``).
VECTOR_BYTES = 16

@dataclass
class Layout:
    """How a call's arrays are laid out, as far as these kernels care."""

    #: ``"flat"`` (scalar or full variance) or ``"rows"`` (one variance per row).
    kind: str
    #: Elements per chunk.
    width: int
    #: Elements of the loss, and (rows only) the row length.
    numel: int
    columns: int


def _itemsize(array: Array) -> int:
    return int(array.dtype.itemsize)


def layout(call: Any, upstream: Array | float | None = None) -> Layout | None:
    """The layout these kernels take for ``call`` (and an array ``upstream``), or None.

    ``upstream`` may be a number, a 0-d array or a C-contiguous array of the loss's shape.
    An empty or 0-d loss takes the general kernels.
    """
    shape = call.loss_shape
    numel = call.numel
    if numel == 0 or not shape:
        # Nothing to do, or one element: a 0-d CArray gives no address to read chunks from.
        return None
    chunked = [call.input, call.target]
    for array in chunked:
        if tuple(array.shape) != shape or not array.flags.c_contiguous:
            return None
    if upstream is not None and not isinstance(upstream, float) and upstream.ndim:
        if tuple(upstream.shape) != shape or not upstream.flags.c_contiguous:
            return None
        chunked.append(upstream)
    var = call.var
    if isinstance(var, float):
        kind = "flat"
    elif not var.flags.c_contiguous:
        return None
    elif tuple(var.shape) == shape:
        kind = "flat"
        chunked.append(var)
    elif shape and tuple(var.shape) == (*shape[:-1], 1) and shape[-1] < 2**30:
        kind = "rows"  # (the row kernels count in 32 bits within a row)
    else:
        return None
    # The outputs are of the loss's dtype or an argument's, no wider than the widest input.
    widest = max([_itemsize(array) for array in chunked] + [call.dtype.itemsize])
    width = max(VECTOR_BYTES // widest, 1)
    return Layout(kind=kind, width=width, numel=numel,
                  columns=shape[-1] if kind == "rows" else 1)


def aligned(arrays: list[Array], plan: Layout) -> bool:
    """Whether every array read or written by chunks starts on its chunk's bytes (and, for
    rows, every row does), so that each chunk is one vector access."""
    if plan.kind == "rows" and plan.columns % plan.width:
        return False
    return all(array.data.ptr % (plan.width * _itemsize(array)) == 0 for array in arrays)


def launch_threads(plan: Layout) -> tuple[int, int]:
    """``(threads, lanes)``: the launch's thread count (whole blocks) and lanes per row."""
    if plan.kind == "flat":
        chunks = -(-plan.numel // plan.width)
        blocks = -(-chunks // (REDUCE_BLOCK * CHUNKS_PER_THREAD))
        lanes = 1
    else:
        chunks_per_row = -(-plan.columns // plan.width)
        lanes = min(32, 1 << max(chunks_per_row - 1, 0).bit_length())
        rows = plan.numel // plan.columns
        blocks = -(-rows // (REDUCE_BLOCK // lanes))
    return REDUCE_BLOCK * max(1, min(MAX_BLOCKS, blocks)), lanes


def partial_count(threads: int) -> int:
    """The partials a launch of ``threads`` writes: one per block."""
    return threads // REDUCE_BLOCK


# ------------------------------------------------------------------ the launches


def _upstream_kind(upstream: Array | float | None) -> str:
    if upstream is None:
        return "none"
    if isinstance(upstream, float):
        return "number"
    return "device" if upstream.ndim == 0 else "array"


def launch(operation: str, call: Any, plan: Layout, options: tuple[float, int, float],
           constant: float, upstream: Array | float | None, divisor: float, want: int,
           check: bool, outputs: list[Array], flag: Array) -> int:
    """Run one kernel; returns its thread count (``partial_count`` gives its partials).

    ``outputs`` are the kernel's output arrays in order (loss or partials, then the three
    gradients, never-written stand-ins for the unwanted ones).
    """
    scalar_var = isinstance(call.var, float)
    kind = _upstream_kind(upstream)
    chunked = [call.input, call.target]
    if plan.kind == "flat" and not scalar_var:
        chunked.append(call.var)
    if kind == "array":
        chunked.append(upstream)
    if operation == "forward":
        chunked.append(outputs[0])
    if has_gradients(operation):
        gradients = outputs[1:] if has_partials(operation) else outputs
        chunked += [array for bit, array in zip((1, 2, 4), gradients, strict=False)
                    if want & bit and (bit != 4 or plan.kind == "flat")]
    vector = aligned(chunked, plan)
    eps, log_var, beta = options
    flags = (bool(log_var), beta == 0)
    if plan.kind == "flat":
        kernel = gaussian_flat(operation, scalar_var, kind, vector, plan.width, flags)
    else:
        kernel = gaussian_rows(operation, kind, vector, plan.width, flags)
    threads, lanes = launch_threads(plan)
    upstream_arguments = () if upstream is None else (_flat(upstream),)
    kernel(_flat(call.input), _flat(call.target), _flat(call.var), *upstream_arguments,
           plan.numel, plan.columns, threads, lanes, eps, beta, constant, divisor, want,
           int(check), *(_flat(output) for output in outputs),
           flag, size=threads, block_size=REDUCE_BLOCK)
    return threads


def _flat(value: Any) -> Any:
    """A C-contiguous array as the kernels read it, by element pointers: flat, so that the
    generated source is the same whatever the number of dimensions (a Python var as it is)."""
    return value.reshape(-1) if isinstance(value, cupy.ndarray) else value


def finish(partials: Array, threads: int, call: Any, mode: int) -> Array:
    """The reduced loss from a launch's partials (one per block, at most :data:`MAX_BLOCKS`,
    so :func:`.reduce.finish` adds them in one launch)."""
    assert partial_count(threads) <= MAX_BLOCKS
    return reduce.finish(partials, threads, mode, divisor=call.numel)


def empty_partials(threads: int, dtype: Any) -> Array:
    return cupy.empty(partial_count(threads), dtype=dtype)


def gradient_outputs(call: Any, plan: Layout, wrt: frozenset[str]) -> list[Array]:
    """The three gradient outputs: each wanted one in its final shape and dtype (``grad_var``
    of a row variance one value per row), a one-element stand-in for each other."""
    outputs = []
    for name in ("input", "target", "var"):
        argument = getattr(call, name)
        if isinstance(argument, float):
            continue  # a scalar var has no gradient output at all
        if name not in wrt:
            outputs.append(cupy.empty(1, dtype=argument.dtype))  # never written
        elif name == "var" and plan.kind == "rows":
            outputs.append(cupy.empty(call.var_shape, dtype=argument.dtype))
        else:
            outputs.append(cupy.empty(call.loss_shape, dtype=argument.dtype))
    return outputs


def gradient_results(call: Any, wrt: frozenset[str],
                     outputs: list[Array]) -> tuple[Array | None, Array | None, Array | None]:
    """The caller's gradients from :func:`gradient_outputs`'s arrays."""
    names = ("input", "target", "var")
    results: list[Array | None] = [None, None, None]
    for position, array in enumerate(outputs):
        name = names[position]
        if name in wrt:
            shape = call.var_shape if name == "var" else tuple(getattr(call, name).shape)
            results[position] = array.reshape(shape) if tuple(array.shape) != shape else array
    return results[0], results[1], results[2]
