"""NumPy only: run an elementwise loss over blocks of rows, in worker threads.

The generic code makes one full-size temporary per operation, so a large NumPy call streams
every temporary through main memory.  Splitting the loss along its first axis into blocks of
about 64K elements keeps the temporaries in cache, and NumPy releases the GIL inside ufuncs, so
the blocks run in parallel threads.  The math is the generic code itself, applied to each block;
results land in fixed slots and partial sums are combined in block order, so the outcome does
not depend on thread timing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from array_api_compat import is_numpy_namespace

Array = Any
Result = TypeVar("Result")

#: Elements per block: a few arrays of this many floats fit in a core's L2 cache (measured best).
BLOCK_ELEMENTS = 1 << 17
#: Below this many elements the thread hand-off costs more than it saves.
MIN_ELEMENTS = 1 << 20

_pool: ThreadPoolExecutor | None = None


def worker_count() -> int:
    """The threads :func:`run_blocks` runs blocks in."""
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


def row_blocks(xp: Any, shape: tuple[int, ...]) -> list[slice] | None:
    """Slices of the first axis of ``shape`` forming the blocks, or None to run unblocked."""
    if not is_numpy_namespace(xp) or not shape:
        return None
    count = 1
    for size in shape:
        count *= size
    if count < MIN_ELEMENTS:
        return None
    rows = shape[0]
    rows_per_block = max(1, BLOCK_ELEMENTS // (count // rows))
    if rows < 2 * rows_per_block:
        return None  # too few rows to split (e.g. shape (2, 10**6)): not worth it
    return [slice(start, min(start + rows_per_block, rows))
            for start in range(0, rows, rows_per_block)]


def rows_of(array: Array, rows: slice, ndim: int) -> Array:
    """The block of ``array`` for ``rows`` of an ``ndim``-dimensional broadcast result.

    An array broadcast along the first axis (fewer dimensions, or size 1 there) is the same
    for every block and is returned whole.
    """
    if array.ndim == ndim and array.shape[0] != 1:
        return array[rows]
    return array


def spans_rows(array: Array, ndim: int) -> bool:
    """Whether ``array`` is split by :func:`rows_of` (else every block sees all of it)."""
    return bool(array.ndim == ndim and array.shape[0] != 1)


def run_blocks(work: Callable[[slice], Result], blocks: Sequence[slice]) -> list[Result]:
    """``work`` on every block, in parallel threads; the results in block order.

    Where no thread can start (an ``atexit`` handler, after the interpreter has shut the pool
    down), the blocks run one after another in the calling thread: same results, no threads.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=worker_count(),
                                       thread_name_prefix="arrayloss")
        pool = _pool
    try:
        futures = [pool.submit(work, rows) for rows in blocks]
    except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
        return [work(rows) for rows in blocks]
    return [future.result() for future in futures]
