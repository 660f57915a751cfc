"""The kernels of :mod:`.cross_entropy_fused`: the targets pass, the fused row kernel (a
block per row, or a lane group per row) and the finish.  What they compute, and the L2 model
of the row kernel's second read, are in that module's docstring."""

from __future__ import annotations

import cupy

from ._kernels import NO_INVALID, block_partial, header, kernel_factory, preamble
from .cross_entropy_kernels import CE_GRAD_SOURCE, CE_STATS_PUSH_SOURCE

#: Most threads per row block.
MAX_ROW_THREADS = 1024
#: Registers a thread of ``ce_fused`` may use: a block of ``MAX_ROW_THREADS`` must fit an SM
#: (65,536 registers).
REGISTERS_AT_MOST = 65536 // MAX_ROW_THREADS

_DEVICE_HELPERS = f"""
#define AL_NO_INVALID {NO_INVALID}ull
""" + """
// The sum and the maximum (NaN-free) over a lane group of `width` lanes (a power of two up
// to 32), to every lane of the group: an xor butterfly, whose two partners at each step add
// the same two values (commuted), so every lane ends with the same bits in a fixed order.
// Every lane of the warp must call them.
template <typename A>
__device__ __forceinline__ A ce_group_sum(A value, int width) {
    for (int offset = width >> 1; offset > 0; offset >>= 1) {
        value += __shfl_xor_sync(0xffffffffu, value, offset, width);
    }
    return value;
}

template <typename A>
__device__ __forceinline__ A ce_group_max(A value, int width) {
    for (int offset = width >> 1; offset > 0; offset >>= 1) {
        const A other = __shfl_xor_sync(0xffffffffu, value, offset, width);
        if (other > value) value = other;
    }
    return value;
}

// `N` consecutive elements as one 16-byte load or store (N * sizeof(T) == 16 where used).
template <typename T, int N>
struct alignas(sizeof(T) * N) ce_vector {
    T value[N];
};

#define CE_VECTOR_BATCH 2

// The sum of values[0, count) in the bits of arrayloss_finish (reduce.py), whatever the block
// size (a power of two from 32 to 1024): finish thread v adds values v, v + 1024, ...; here
// warp w of this block plays finish warps w, w + warps, ... and adds their lanes with the same
// shuffle tree; the 32 warp totals are added in order.  Every thread gets the sum, and every
// thread of the block must call it.
template <typename A, typename V>
__device__ __forceinline__ A ce_finish_order_sum(const V& values, long long count) {
    __shared__ A finish_warps[32];
    const unsigned int warps = blockDim.x >> 5;
    const unsigned int lane = threadIdx.x & 31u;
    __syncthreads();  // a previous call's readers of finish_warps are done
    for (unsigned int warp = threadIdx.x >> 5; warp < 32u; warp += warps) {
        A value = 0;
        for (long long k = warp * 32 + lane; k < count; k += 1024) value += A(values[k]);
        value = al::warp_sum(value);
        if (lane == 0) finish_warps[warp] = value;
    }
    __syncthreads();
    A total = finish_warps[0];
    for (unsigned int warp = 1; warp < 32u; ++warp) total += finish_warps[warp];
    return total;
}
"""


@kernel_factory
def ce_targets() -> cupy.ElementwiseKernel:
    """The targets alone: per-block sums of the target weights (``ce_rows_partials``'s) and
    the invalid flag."""
    return cupy.ElementwiseKernel(
        "raw I t, raw W w, int64 n_classes, int64 ignore_index, int32 ignore_matches, "
        "int32 has_weight, int32 check",
        "raw A weight_partials, raw uint64 invalid",
        """
const long long cls = al::nll_class(static_cast<long long>(t[i]), n_classes, ignore_index,
                                    ignore_matches);
if (check && cls == al::NLL_OUT_OF_RANGE) al::record_invalid(&invalid[0], i);
if (cls >= 0) thread_weight += has_weight ? A(w[cls]) : A(1);
""",
        name="arrayloss_cross_entropy_targets",
        preamble=header(),
        loop_prep="A thread_weight = 0;",
        after_loop=block_partial("thread_weight", "weight_partials"),
    )


@kernel_factory
def ce_fused(mode: int, has_weight: bool, group: int, vec: int) -> cupy.ElementwiseKernel:
    """The loss and gradient of each row, for target ``mode`` (``cross_entropy.CE_MODE_*``),
    class weights or none, the lanes per row (``group``, 0: a block per row; see
    :func:`.cross_entropy_fused.lane_group`) and the elements per 16-byte access (``vec``, 1:
    one at a time), all compile-time constants: index targets keep no double accumulators,
    and no class weight a register.

    Launched as ``grid * threads`` threads in blocks of ``threads``: each thread runs the body
    once, and block ``b`` takes rows ``b, b + grid, ...`` (with lane groups, its ``k`` rows
    ``b k, ..., b k + k - 1``, then those ``grid k`` further on)."""
    return cupy.ElementwiseKernel(
        "raw X x, raw Q q, raw W w, raw I t, raw P weight_partials, raw G g, int64 rows, "
        "int64 n_classes, int64 n_partials, float64 g_scalar, float64 divisor, "
        "float64 smoothing, int64 ignore_index, int32 ignore_matches, "
        "int32 upstream_mode, int32 reduction, int32 check, int32 want_loss",
        "raw R grad, raw L row_loss, raw uint64 invalid",
        f"const int mode = {mode};\nconst int has_weight = {int(has_weight)};\n"
        f"const int group = {group};\nconstexpr int vec = {vec};\n"
        "typedef ce_vector<X, vec> CeVector;\n" + _FUSED_BODY,
        name="arrayloss_cross_entropy_fused",
        # A block of 1024 threads launches only with at most 64 registers a thread (65,536 an
        # SM): the cap makes every mode launch on any compiler, spilling rather than failing.
        # (Lane groups run in blocks of 256, which any register count fits.)
        options=() if group else (f"--maxrregcount={REGISTERS_AT_MOST}",),
        preamble=(preamble("al::compute_of<X>::type") + CE_STATS_PUSH_SOURCE + CE_GRAD_SOURCE
                  + _DEVICE_HELPERS),
    )


_FUSED_BODY = """
const bool probabilities = mode == 2;
const long long spatial = 1;  // the fused layout: each row is contiguous
if (check && invalid[0] != AL_NO_INVALID) return;  // nothing written: the host raises
const A total_weight = n_partials > 0
    ? ce_finish_order_sum<A>(weight_partials, n_partials) : A(1);
const A upstream_all = upstream_mode == 0 ? A(g_scalar) : upstream_mode == 1 ? A(g[0]) : A(0);
const A spread_share = A(smoothing / static_cast<double>(n_classes));
// A row is either the whole block's (group == 0) or a lane group's: `group` consecutive lanes
// of a warp, several rows to a block.
const int stride = group ? group : blockDim.x;
const int lane = group ? threadIdx.x & (group - 1) : threadIdx.x;
const int rows_per_block = group ? blockDim.x / group : 1;
const int slot = group ? threadIdx.x / group : 0;
const int row_columns = static_cast<int>(n_classes);  // at most MAX_CLASSES
// Every thread runs the same iterations (an idle slot of the last one loads and stores
// nothing, but joins its warp's shuffles and the block's barriers).
for (long long first = static_cast<long long>(blockIdx.x) * rows_per_block; first < rows;
     first += static_cast<long long>(gridDim.x) * rows_per_block) {
    const long long row = first + slot < rows ? first + slot : first;
    const int columns = first + slot < rows ? row_columns : 0;
    const long long base = row * n_classes;
    // The target, read before the row's barriers: no thread may store a gradient entry (grad
    // may be x) before every thread has read the target logit.
    long long cls = -1;
    A target_logit = 0;
    A weight = 0;
    if (!probabilities && columns) {
        cls = al::nll_class(static_cast<long long>(t[row]), n_classes, ignore_index,
                            ignore_matches);
        if (cls >= 0) {
            target_logit = A(x[base + cls]);
            weight = has_weight ? A(w[cls]) : A(1);
        }
    }
    // The first read: the statistics pass of ce_row_stats over the whole row.
    A top = al::minus_infinity(A(0));
    A sum = 0;
    double linear = 0;
    double mass = 0;
    // 32-bit columns from the row's own pointers: fewer registers than 64-bit offsets.
    const X* const row_x = &x[base];
    const CeVector* const row_vectors = reinterpret_cast<const CeVector*>(row_x);
    int c = lane;
    if (vec > 1) {  // 16-byte loads, CE_VECTOR_BATCH in flight: vector v holds columns v*vec...
        for (; c + (CE_VECTOR_BATCH - 1) * stride < columns / vec;
             c += CE_VECTOR_BATCH * stride) {
            CeVector loaded[CE_VECTOR_BATCH];
#pragma unroll
            for (int k = 0; k < CE_VECTOR_BATCH; ++k) loaded[k] = row_vectors[c + k * stride];
#pragma unroll
            for (int k = 0; k < CE_VECTOR_BATCH; ++k) {
#pragma unroll
                for (int e = 0; e < vec; ++e) {
                    CE_STATS_PUSH(A(loaded[k].value[e]), (c + k * stride) * vec + e);
                }
            }
        }
        for (; c < columns / vec; c += stride) {
            const CeVector loaded = row_vectors[c];
#pragma unroll
            for (int e = 0; e < vec; ++e) CE_STATS_PUSH(A(loaded.value[e]), c * vec + e);
        }
    } else {
        for (; c + (CE_BATCH - 1) * stride < columns; c += CE_BATCH * stride) {
            A values[CE_BATCH];
#pragma unroll
            for (int k = 0; k < CE_BATCH; ++k) values[k] = A(row_x[c + k * stride]);
#pragma unroll
            for (int k = 0; k < CE_BATCH; ++k) {
                CE_STATS_PUSH(values[k], c + k * stride);
            }
        }
        for (; c < columns; c += stride) {
            CE_STATS_PUSH(A(row_x[c]), c);
        }
    }
    const A row_top = group ? ce_group_max(top, group) : al::block_max(top);
    sum = top == row_top ? sum : sum * exp(top - row_top);
    sum = group ? ce_group_sum(sum, group) : al::block_sum(sum);
    top = row_top;
    if (mode != 0) {
        linear = group ? ce_group_sum(linear, group) : al::block_sum(linear);
        mass = group ? ce_group_sum(mass, group) : al::block_sum(mass);
    }
    // The shuffles order nothing in memory: no lane of the group stores a gradient entry
    // before every lane has read the target logit (block_sum's barrier does it for a block).
    if (group) __syncwarp();
    const A log_sum = log(sum);
    // The row's loss and gradient factors, as ce_rows.
    A value = 0;
    A scale = 0;
    A on_target = 0;
    if (probabilities) {
        value = al::ce_probability_loss(top, log_sum, mass, linear);
        scale = A(mass);
    } else if (cls >= 0) {
        value = al::ce_index_loss(target_logit, top, log_sum, weight, smoothing, n_classes,
                                  mass, linear);
        on_target = A(1 - smoothing) * weight;
        scale = on_target + A(smoothing / static_cast<double>(n_classes) * mass);
    }
    if (want_loss && lane == 0 && columns) row_loss[row] = L(value);
    // The upstream factor, as ce_grad.
    A upstream = upstream_mode == 2 ? A(g[row]) : upstream_all;
    if (!probabilities) {
        if (reduction == al::REDUCE_MEAN) upstream = upstream / total_weight;
        if (cls < 0) upstream = 0;  // ignored: no gradient, even where G is inf
    } else if (reduction == al::REDUCE_MEAN) {
        upstream = upstream / A(divisor);
    }
    // The second read (an L2 hit, see cross_entropy_fused.py) and the gradient, in batches:
    // all loads first, then the arithmetic, then the stores.
    R* const row_grad = &grad[base];
    c = lane;
    if (vec > 1) {  // each thread stores the vectors it loaded (grad may be x)
        CeVector* const grad_vectors = reinterpret_cast<CeVector*>(row_grad);
        for (; c < columns / vec; c += CE_VECTOR_BATCH * stride) {
            CeVector loaded[CE_VECTOR_BATCH];
#pragma unroll
            for (int k = 0; k < CE_VECTOR_BATCH; ++k) {
                if (c + k * stride < columns / vec) loaded[k] = row_vectors[c + k * stride];
            }
#pragma unroll
            for (int k = 0; k < CE_VECTOR_BATCH; ++k) {
#pragma unroll
                for (int e = 0; e < vec; ++e) {
                    const int column = (c + k * stride) * vec + e;
                    const A value = CE_GRAD(A(loaded[k].value[e]),
                                            has_weight ? A(w[column]) : A(1),
                                            probabilities ? A(q[base + column]) : A(0), column);
                    loaded[k].value[e] = R(value);
                }
            }
#pragma unroll
            for (int k = 0; k < CE_VECTOR_BATCH; ++k) {
                if (c + k * stride < columns / vec) grad_vectors[c + k * stride] = loaded[k];
            }
        }
        c = columns;  // the scalar loops below have nothing left
    }
    for (; c + (CE_BATCH - 1) * stride < columns; c += CE_BATCH * stride) {
        A values[CE_BATCH];
        A weights[CE_BATCH];
        A targets[CE_BATCH];
#pragma unroll
        for (int k = 0; k < CE_BATCH; ++k) {
            const int column = c + k * stride;
            values[k] = A(row_x[column]);
            weights[k] = has_weight ? A(w[column]) : A(1);
            targets[k] = probabilities ? A(q[base + column]) : A(0);
        }
#pragma unroll
        for (int k = 0; k < CE_BATCH; ++k) {
            values[k] = CE_GRAD(values[k], weights[k], targets[k], c + k * stride);
        }
#pragma unroll
        for (int k = 0; k < CE_BATCH; ++k) row_grad[c + k * stride] = R(values[k]);
    }
    for (; c < columns; c += stride) {
        row_grad[c] = R(CE_GRAD(A(row_x[c]), has_weight ? A(w[c]) : A(1),
                                probabilities ? A(q[base + c]) : A(0), c));
    }
}
"""


@kernel_factory
def ce_finish() -> cupy.ElementwiseKernel:
    """The loss from the rows' losses (one block of 1024 threads), written in its dtype:
    ``mode`` as :func:`.reduce.finish`'s, the weights from ``ce_targets``' partials."""
    return cupy.ElementwiseKernel(
        "raw A row_loss, raw A weight_partials, int64 rows, int64 n_partials, "
        "float64 divisor, int32 mode",
        "raw R loss",
        """
const A total = ce_finish_order_sum<A>(row_loss, rows);
const A weight = n_partials > 0 ? ce_finish_order_sum<A>(weight_partials, n_partials) : A(0);
if (threadIdx.x == 0) {
    loss[0] = R(mode == 0 ? total : mode == 1 ? total / A(divisor)
                : mode == 3 && weight == A(0) ? weight / weight : total / weight);
}
""",
        name="arrayloss_cross_entropy_finish",
        preamble=header() + _DEVICE_HELPERS,
    )
