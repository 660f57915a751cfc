"""Deterministic multi-block reductions shared by every loss, and their second-pass kernels.

A reduction kernel writes one partial sum per thread block (``REDUCE_BLOCK`` threads, so the
whole GPU takes part); :func:`finish` then adds the partials in a fixed order (many partials
first folded by up to 256 blocks, each over a contiguous segment) in a single small block and
applies the mean.  The same inputs therefore give the same bits on every run, and nothing
leaves the device.
"""

from __future__ import annotations

import cupy
import numpy as np

from ._kernels import REDUCE_BLOCK, header, kernel_factory

MODE_SUM, MODE_MEAN, MODE_WEIGHTED_MEAN = 0, 1, 2
#: A weighted mean that is NaN for a total weight of 0 (cross-entropy's label-smoothed,
#: class-weighted mean, whose two parts PyTorch divides separately: 0/0 for the first).
MODE_WEIGHTED_MEAN_NAN_AT_ZERO = 3

#: Threads of the second pass (one block).
FINISH_THREADS = 1024
#: More partials than this are folded first (``arrayloss_fold``), by up to ``FOLD_BLOCKS``
#: blocks of ``FOLD_THREADS``: one block adding 262,144 partials (2^26 elements) one after
#: another is latency-bound.
FOLD_ABOVE = FINISH_THREADS
FOLD_BLOCKS = 256
FOLD_THREADS = 256


def partial_count(size: int) -> int:
    """How many blocks (hence partials) CuPy launches for ``size`` elements.

    CuPy's linear launch uses ``min(2**31 - 1, ceil(size / block))`` blocks.
    """
    return min(2**31 - 1, -(-size // REDUCE_BLOCK))


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

    ``mode`` is :data:`MODE_SUM`, :data:`MODE_MEAN` (divide by ``divisor``),
    :data:`MODE_WEIGHTED_MEAN` (divide by the summed weights) or
    :data:`MODE_WEIGHTED_MEAN_NAN_AT_ZERO` (the same, NaN for a summed weight of 0).
    """
    dtype = loss_partials.dtype
    count = partial_count(size)
    weights = loss_partials if weight_partials is None else weight_partials
    has_weight = np.int32(weight_partials is not None)
    if count > FOLD_ABOVE:
        loss_partials, weights, count = _fold(loss_partials, weights, count, has_weight)
    out = cupy.empty(2, dtype=dtype)
    kernel = finish_function(dtype.name)
    kernel(
        (1,),
        (FINISH_THREADS,),
        (loss_partials, weights, np.int64(count), np.float64(divisor), np.int32(mode),
         has_weight, out),
    )
    return out


def _fold(loss_partials: cupy.ndarray, weights: cupy.ndarray, count: int,
          has_weight: np.int32) -> tuple[cupy.ndarray, cupy.ndarray, int]:
    """``count`` partials folded into at most ``FOLD_BLOCKS``, each the sum of a contiguous
    segment in a fixed order (so the result stays bitwise repeatable)."""
    blocks = min(FOLD_BLOCKS, -(-count // FOLD_THREADS))
    segment = -(-count // blocks)
    blocks = -(-count // segment)
    folded_loss = cupy.empty(blocks, dtype=loss_partials.dtype)
    folded_weight = cupy.empty(blocks, dtype=loss_partials.dtype)
    fold_function(loss_partials.dtype.name)(
        (blocks,), (FOLD_THREADS,),
        (loss_partials, weights, np.int64(count), np.int64(segment), has_weight, folded_loss,
         folded_weight))
    return folded_loss, folded_weight, blocks


def as_result(totals: cupy.ndarray, dtype: np.dtype) -> cupy.ndarray:
    """The loss from :func:`finish` as a 0-d array of the result dtype (no copy if it has it)."""
    loss = totals[0]
    return loss if loss.dtype == dtype else loss.astype(dtype)


# ------------------------------------------------------------------ the kernels

_FINISH_SOURCE = r"""
// Folds `count` partials into one sum per block, each over a contiguous segment of `segment`
// partials in a fixed order: many blocks share the work that one block would do in sequence.
template <typename A>
__global__ void arrayloss_fold(const A* loss_partials, const A* weight_partials,
                               long long count, long long segment, int has_weight,
                               A* loss_out, A* weight_out) {
    const long long begin = static_cast<long long>(blockIdx.x) * segment;
    const long long end = begin + segment < count ? begin + segment : count;
    A loss = 0;
    A weight = 0;
    for (long long k = begin + threadIdx.x; k < end; k += blockDim.x) {
        loss += loss_partials[k];
        if (has_weight) weight += weight_partials[k];
    }
    loss = al::block_sum(loss);
    weight = al::block_sum(weight);
    if (threadIdx.x == 0) {
        loss_out[blockIdx.x] = loss;
        weight_out[blockIdx.x] = weight;
    }
}

// Adds the per-block partials in a fixed order (one block) and finishes the reduction:
// mode 0 sum, 1 mean over `divisor` elements, 2 weighted mean (NLL), 3 a weighted mean that
// is NaN (0/0) for a total weight of 0.  out[0] is the loss, out[1] the total weight.  With
// no partials the sum is 0 and a mean is 0/0 = NaN.
template <typename A>
__global__ void arrayloss_finish(const A* loss_partials, const A* weight_partials,
                                 long long count, double divisor, int mode, int has_weight,
                                 A* out) {
    A loss = 0;
    A weight = 0;
    for (long long k = threadIdx.x; k < count; k += blockDim.x) {
        loss += loss_partials[k];
        if (has_weight) weight += weight_partials[k];
    }
    loss = al::block_sum(loss);
    weight = al::block_sum(weight);
    if (threadIdx.x == 0) {
        out[1] = weight;
        out[0] = mode == 0 ? loss : mode == 1 ? loss / A(divisor)
               : mode == 3 && weight == A(0) ? weight / weight : loss / weight;
    }
}
"""

FINISH_NAMES = {"float32": "arrayloss_finish<float>", "float64": "arrayloss_finish<double>"}
FOLD_NAMES = {"float32": "arrayloss_fold<float>", "float64": "arrayloss_fold<double>"}


def finish_source() -> str:
    """The complete source of the second-pass module (for the NVRTC compile check too)."""
    return header() + _FINISH_SOURCE


@kernel_factory
def finish_module() -> cupy.RawModule:
    """The second pass, compiled on first use for float and double."""
    return cupy.RawModule(code=finish_source(),
                          name_expressions=(*FINISH_NAMES.values(), *FOLD_NAMES.values()))


@kernel_factory
def finish_function(dtype_name: str) -> cupy.RawKernel:
    """The second pass for ``'float32'`` or ``'float64'`` partials, looked up once."""
    return finish_module().get_function(FINISH_NAMES[dtype_name])


@kernel_factory
def fold_function(dtype_name: str) -> cupy.RawKernel:
    """The fold of many partials into a few (before the second pass), looked up once."""
    return finish_module().get_function(FOLD_NAMES[dtype_name])
