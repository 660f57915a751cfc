"""NumPy only: run an elementwise loss over blocks of rows (or of columns), in worker threads.

The generic code makes one full-size temporary per operation, so a large NumPy call streams
every temporary through main memory.  Splitting the loss along its first axis into blocks of
about 64K elements keeps the temporaries in cache, and NumPy releases the GIL inside ufuncs, so
the blocks run in parallel threads.  The math is the generic code itself, applied to each block;
results land in fixed slots and partial sums are combined in block order, so the outcome does
not depend on thread timing.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from array_api_compat import is_numpy_namespace

Array = Any
Result = TypeVar("Result")

#: Elements per block: a few arrays of this many floats fit in a core's L2 cache (measured best).
BLOCK_ELEMENTS = 1 << 17
#: Below this many elements the thread hand-off costs more than it saves.
MIN_ELEMENTS = 1 << 20

_pool: ThreadPoolExecutor | None = None


@functools.cache
def worker_count() -> int:
    """The threads :func:`run_blocks` runs blocks in (``os.cpu_count`` reads the system
    each time: once is enough)."""
    return min(os.cpu_count() or 1, 8)

_pool_lock = threading.Lock()


def _forget_pool_after_fork() -> None:
    # A forked child (DataLoader workers, multiprocessing's "fork") inherits the pool object
    # but none of its threads: using it would wait forever.  The child starts a pool of its own.
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


@dataclass(frozen=True)
class Block:
    """A part of a broadcast result: ``span`` of its first axis, or of its last one when the
    rows are too few to split (a few very wide rows)."""

    axis: int
    span: slice

    def index(self) -> tuple[Any, ...]:
        """The block's index into an array of the result's shape."""
        return (*(slice(None),) * self.axis, self.span)

    def extent(self, size: int) -> int:
        return len(range(*self.span.indices(size)))


def row_blocks(xp: Any, shape: tuple[int, ...]) -> list[Block] | None:
    """The blocks of a result of ``shape``, or None to run unblocked.

    Blocks of whole rows where there are enough rows; otherwise parts of every row, along the
    last axis, so that a few very wide rows (shape ``(2, 2**25)``) are blocked too.
    """
    if not is_numpy_namespace(xp) or not shape:
        return None
    count = 1
    for size in shape:
        count *= size
    if count < MIN_ELEMENTS:
        return None
    rows = shape[0]
    per_row = count // rows
    rows_per_block = max(1, BLOCK_ELEMENTS // per_row)
    if per_row <= BLOCK_ELEMENTS and rows >= 2 * rows_per_block:
        return [Block(0, slice(start, min(start + rows_per_block, rows)))
                for start in range(0, rows, rows_per_block)]
    last, columns = len(shape) - 1, shape[-1]
    columns_per_block = max(1, BLOCK_ELEMENTS // (count // columns))
    if last == 0 or columns < 2 * columns_per_block:
        return None
    return [Block(last, slice(start, min(start + columns_per_block, columns)))
            for start in range(0, columns, columns_per_block)]


#: Block sizes, in elements, of :func:`plan_blocks`: one block per worker where that fits,
#: within these bounds.  Four float32 buffers of the largest block fill a 2 MiB L2 cache
#: (measured on a 2-core Xeon: 2**17 is the best block for an elementwise chain).
SMALLEST_BLOCK, LARGEST_BLOCK = 1 << 14, 1 << 17


def plan_blocks(shape: tuple[int, ...], largest: int = LARGEST_BLOCK) -> list[Block]:
    """Blocks of about an equal share of the work per worker, within the bounds above: whole
    rows where a row fits, else parts of every row along the last axis (the elementwise
    losses' planner)."""
    count = math.prod(shape)
    block = min(largest, max(SMALLEST_BLOCK, -(-count // worker_count())))
    rows = shape[0]
    if count <= block:
        return [Block(0, slice(0, rows))]
    per_row = count // rows
    if per_row <= block:
        step = max(1, block // per_row)
        return [Block(0, slice(start, min(start + step, rows))) for start in range(0, rows, step)]
    last, columns = len(shape) - 1, shape[-1]
    step = max(1, block // (count // columns))
    if last == 0 or columns < 2:
        return [Block(0, slice(0, rows))]
    return [Block(last, slice(start, min(start + step, columns)))
            for start in range(0, columns, step)]


def spans(array: Array, block: Block, ndim: int) -> bool:
    """Whether ``array`` (broadcast against an ``ndim``-dimensional result) is split by
    ``block``; else every block sees all of it (it is broadcast along the block's axis)."""
    if block.axis == 0:
        return bool(array.ndim == ndim and array.shape[0] != 1)
    return bool(array.ndim >= 1 and array.shape[-1] != 1)


def part_of(array: Array, block: Block, ndim: int) -> Array:
    """The part of ``array`` that ``block`` of the broadcast result reads."""
    if not spans(array, block, ndim):
        return array
    return array[block.span] if block.axis == 0 else array[..., block.span]


@functools.lru_cache(maxsize=8)
def arange(n: int) -> Any:
    """``np.arange(n)`` (int64), made once for each of the last few sizes and shared
    between calls (read-only): row indices of blocks cost no allocation."""
    rows = np.arange(n, dtype=np.int64)
    rows.flags.writeable = False
    return rows


@functools.lru_cache(maxsize=16)
def broadcast_constant(value: bool | float, shape: tuple[int, ...], dtype: Any) -> Any:
    """A read-only NumPy array of ``shape`` holding ``value`` everywhere in one element of
    memory (stride 0), made once for each of the last few requests and shared between calls
    (``np.broadcast_to`` costs 6 us a call, an nditer's set-up)."""
    return np.broadcast_to(np.asarray(value, dtype=dtype), shape)


class _ThreadBuffers(threading.local):
    """One thread's reused buffers (flat, by key) and the views handed out of them (by key
    and shape: the same view object for the same request, which costs a dictionary look-up
    where slicing and reshaping a buffer cost a microsecond, a small call's share)."""

    def __init__(self) -> None:
        self.buffers: dict[Any, Any] = {}
        self.views: dict[Any, Any] = {}


_local = _ThreadBuffers()
#: Views a thread keeps (shapes change with the sizes of calls); past this it starts over.
_MOST_VIEWS = 64
#: Buffers a thread keeps (each scratch slot and dtype, each constant: a caller sweeping
#: ``eps`` makes a new one per value); past this it starts over.
_MOST_BUFFERS = 32


def _view(key: Any, shape: tuple[int, ...], dtype: Any, value: float | None) -> Any:
    """A view of ``shape`` into the thread's buffer ``key``: made, or grown (dropping the
    views of the smaller one, which would keep it alive), where it is too small;
    uninitialised for ``value`` None, else filled with it and read-only."""
    size = 1
    for extent in shape:
        size *= extent
    buffer = _local.buffers.get(key)
    if buffer is None or buffer.size < size:
        _local.views.clear()
        if buffer is None and len(_local.buffers) >= _MOST_BUFFERS:
            _local.buffers.clear()
        if value is None:
            buffer = np.empty(max(size, 1), dtype=dtype)
        else:
            buffer = np.full(max(size, 1), value, dtype=dtype)
            buffer.flags.writeable = False
        _local.buffers[key] = buffer
    elif len(_local.views) >= _MOST_VIEWS:
        _local.views.clear()
    view = _local.views[key, shape] = buffer[:size].reshape(shape)
    return view


def scratch(shape: tuple[int, ...], dtype: Any, slot: int = 0) -> Any:
    """A per-thread NumPy buffer of ``shape``, reused across calls (``slot`` tells apart the
    buffers one block needs at once).

    Reuse keeps the blocks' pages mapped: a fresh buffer per block could be returned to the
    OS by the allocator and fault in again on the next call, which made the same call several
    times slower in a process whose allocator gives memory back eagerly.
    """
    key = (dtype, slot)
    view = _local.views.get((key, shape))
    return view if view is not None else _view(key, shape, dtype, None)


def filled(shape: tuple[int, ...], dtype: Any, value: float) -> Any:
    """A per-thread, read-only NumPy array of ``shape`` holding ``value`` everywhere, reused
    across calls.

    For a ufunc against a constant: NumPy runs ``maximum(x, eps)`` with a number (or any
    stride-0 operand) in a loop that is not vectorised, and against an array of that number
    in one that is (10.1 against 2.9 us on 10,000 float32 elements, measured), bit for bit
    the same.
    """
    key = (dtype, value, math.copysign(1.0, value))  # -0.0 == 0.0, but not as a clamp
    view = _local.views.get((key, shape))
    return view if view is not None else _view(key, shape, dtype, value)


def ordered_sum(partials: Iterable[float]) -> float:
    """The sum of per-block partial sums, in block order, as IEEE arithmetic defines it.

    Finite partials are added exactly (``math.fsum``: the result does not depend on how the
    blocks were cut) and rounded once.  An infinite or NaN partial, or an exact sum past the
    float range (where ``fsum`` raises), gives what plain IEEE addition in block order gives:
    inf, -inf or NaN, as PyTorch's own sum does; ``fsum`` would raise ``OverflowError`` or
    ``ValueError`` instead.  Every NumPy loss that sums blocks adds them through this.
    """
    values = [float(value) for value in partials]
    if len(values) == 1:
        return values[0]
    if all(math.isfinite(value) for value in values):
        try:
            return math.fsum(values)
        except OverflowError:  # the exact sum (or a partial one) exceeds the float range
            pass
    total = values[0] if values else 0.0
    for value in values[1:]:
        total += value
    return total


def run_blocks(work: Callable[[Any], Result], blocks: Sequence[Any]) -> list[Result]:
    """``work`` on every block, in parallel threads; the results in block order.

    The calling thread and up to ``worker_count() - 1`` pool threads each take the next block
    not yet taken until none is left: as many tasks as threads, not one per block (a future
    per block cost a few kilobytes and a hand-off each: half a megabyte for 256 blocks), and
    a thread that finishes early takes more.  Results land in their block's slot, so the
    outcome does not depend on thread timing.  One block runs in the calling thread alone;
    where no thread can start (an ``atexit`` handler, after the interpreter has shut the pool
    down), the calling thread runs them all: same results, no threads.
    """
    global _pool
    if len(blocks) == 1:
        return [work(blocks[0])]
    results: list[Any] = [None] * len(blocks)
    taken = itertools.count()  # next() on it is atomic: each index goes to one thread
    failed = False

    def take_blocks() -> None:
        nonlocal failed
        for index in taken:
            if index >= len(blocks) or failed:
                return
            try:
                results[index] = work(blocks[index])
            except BaseException:
                failed = True  # the others stop at their next block
                raise

    with _pool_lock:
        if _pool is None:
            # The calling thread takes blocks too: worker_count() - 1 pool threads.  No more,
            # since an executor may start a new thread for a task submitted just before the
            # last one's thread counts itself idle, and a new thread's scratch buffers start
            # empty (allocated again).
            _pool = ThreadPoolExecutor(max_workers=max(1, worker_count() - 1),
                                       thread_name_prefix="arrayloss")
        pool = _pool
    helpers = []
    try:
        for _ in range(min(worker_count(), len(blocks)) - 1):
            helpers.append(pool.submit(take_blocks))
    except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
        pass
    try:
        take_blocks()
    finally:
        # Also when this thread's block raised: no helper works on the caller's arrays
        # after the call has returned.
        wait(helpers)
    for helper in helpers:
        helper.result()  # a helper's error
    return results
