"""Deterministic multi-block reductions shared by every loss.

A reduction kernel writes one partial sum per thread block (``_kernels.REDUCE_BLOCK``
threads, so the whole GPU takes part); :func:`finish` then adds the partials in a fixed order
(many partials first folded by up to 256 blocks, each over a contiguous segment) in a single
small block and applies the mean.  The same inputs therefore give the same bits
on every run, and nothing leaves the device.
"""

from __future__ import annotations

import cupy
import numpy as np

from . import _kernels

MODE_SUM, MODE_MEAN, MODE_WEIGHTED_MEAN = 0, 1, 2


def partial_count(size: int) -> int:
    """How many blocks (hence partials) CuPy launches for ``size`` elements.

    CuPy's linear launch uses ``min(2**31 - 1, ceil(size / block))`` blocks.
    """
    return min(2**31 - 1, -(-size // _kernels.REDUCE_BLOCK))


def empty_partials(size: int, dtype: np.dtype) -> cupy.ndarray:
    """Room for the per-block partials of a reduction over ``size`` elements."""
    return cupy.empty(max(partial_count(size), 1), dtype=dtype)


def finish(
    loss_partials: cupy.ndarray,
    size: int,
    mode: int,
    divisor: float = 1.0,
    weight_partials: cupy.ndarray | None = None,
) -> cupy.ndarray:
    """``[loss, total_weight]`` in the partials' dtype, from the partials of ``size`` elements.

    ``mode`` is :data:`MODE_SUM`, :data:`MODE_MEAN` (divide by ``divisor``) or
    :data:`MODE_WEIGHTED_MEAN` (divide by the summed weights).
    """
    dtype = loss_partials.dtype
    count = partial_count(size)
    weights = loss_partials if weight_partials is None else weight_partials
    has_weight = np.int32(weight_partials is not None)
    if count > _kernels.FOLD_ABOVE:
        loss_partials, weights, count = _fold(loss_partials, weights, count, has_weight)
    out = cupy.empty(2, dtype=dtype)
    kernel = _kernels.finish_function(dtype.name)
    kernel(
        (1,),
        (_kernels.FINISH_THREADS,),
        (loss_partials, weights, np.int64(count), np.float64(divisor), np.int32(mode),
         has_weight, out),
    )
    return out


def _fold(loss_partials: cupy.ndarray, weights: cupy.ndarray, count: int,
          has_weight: np.int32) -> tuple[cupy.ndarray, cupy.ndarray, int]:
    """``count`` partials folded into at most ``FOLD_BLOCKS``, each the sum of a contiguous
    segment in a fixed order (so the result stays bitwise repeatable)."""
    blocks = min(_kernels.FOLD_BLOCKS, -(-count // _kernels.FOLD_THREADS))
    segment = -(-count // blocks)
    blocks = -(-count // segment)
    folded_loss = cupy.empty(blocks, dtype=loss_partials.dtype)
    folded_weight = cupy.empty(blocks, dtype=loss_partials.dtype)
    _kernels.fold_function(loss_partials.dtype.name)(
        (blocks,), (_kernels.FOLD_THREADS,),
        (loss_partials, weights, np.int64(count), np.int64(segment), has_weight, folded_loss,
         folded_weight))
    return folded_loss, folded_weight, blocks


def as_result(totals: cupy.ndarray, dtype: np.dtype) -> cupy.ndarray:
    """The loss from :func:`finish` as a 0-d array of the result dtype (no copy if it has it)."""
    loss = totals[0]
    return loss if loss.dtype == dtype else loss.astype(dtype)

