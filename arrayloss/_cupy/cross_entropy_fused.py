"""Cross-entropy's loss and gradient in one pass of row blocks (the common layout).

Where every row is one contiguous run of C logits (``spatial == 1``) and one block per row
fills the GPU (the row kernels' ``splits == 1``), :func:`loss_and_grad` and :func:`backward`
launch at most three kernels:

* ``ce_targets`` (index targets, only for a weighted ``'mean'`` or a checked call) reads the
  targets alone, O(N) bytes: per-block partial sums of the target weights, in the order of
  ``ce_rows_partials``, and the invalid-target flag.
* ``ce_fused``: a persistent grid of row blocks.  A block reads its row for the online (max,
  sum of exp) and, for label smoothing or probability targets, the linear sums; reduces them
  over the block; then reads its row a second time and writes the gradient (into ``out``,
  possibly the logits: each thread reads an entry before it writes it) and the row's loss.
  Rows of at most :data:`GROUP_MAX_CLASSES` classes go several to a warp instead: a lane
  group of up to 32 lanes per row, reduced with width-limited shuffles.  Rows of 1024
  threads load and store 16 bytes at a time where the rows are whole, aligned vectors.
  Every block first adds the weight partials in :mod:`.reduce`'s ``arrayloss_finish`` order,
  so its ``'mean'`` divides by the same bits as the unfused path.  If the flag records an
  invalid target, no block writes anything (the host raises; ``out=input`` keeps its logits).
* ``ce_finish`` (``'mean'``/``'sum'``) adds the rows' losses in a fixed order and writes the
  loss in its own dtype (no cast launch for bfloat16).

**The second read of a row** comes from L2, not DRAM, if the rows the resident blocks hold
stay in L2 between a block's two reads.  :func:`plan` bounds the grid, so that the grid's
rows (each the logits row, plus the probability row for probability targets, plus the
gradient row where it is a separate buffer, whose written lines also take L2) are at most
:data:`L2_SHARE` of the device's L2.  ``benchmarks/proxy.py`` counts the second read as L2
traffic under exactly that condition (:func:`rereads_from_l2`) and as DRAM traffic otherwise.

Every sum has a fixed order that depends on the block size only, never on the grid, so the
results are bitwise repeatable on any GPU; with the same threads per row, the gradient and
the per-row losses are the bits of the unfused kernels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import cupy

from .._agnostic import cross_entropy as generic
from .._class_calls import CrossEntropyCall
from . import nll, reduce
from ._common import compute_dtype, invalid_flag
from ._kernels import NO_INVALID, REDUCE_BLOCK, block_partial, header, kernel_factory, preamble
from .cross_entropy_kernels import CE_BATCH, CE_GRAD_SOURCE, CE_STATS_PUSH_SOURCE

Array = Any

#: The share of L2 the resident rows may take, so that the second read of a row hits L2 with
#: room to spare (L2 is not a perfect LRU, and its two halves serve different SMs first).
L2_SHARE = 0.5
#: What the plan assumes where the device cannot say (the host harness, the proxy): an H200,
#: 50 MiB of L2 (the value CUDA reports for H100 and H200 SXM) and 132 SMs.
H200_L2_BYTES = 50 * 2**20
H200_SMS = 132
#: Hopper's (and Ampere's) limits per SM, for the grid's upper bound.
_THREADS_PER_SM = 2048
_BLOCKS_PER_SM = 32
#: Most threads per row block (and the block of ``ce_finish``).
_MAX_THREADS = 1024
#: Registers a thread of ``ce_fused`` may use: a block of ``_MAX_THREADS`` must fit an SM.
_REGISTERS_AT_MOST = 65536 // _MAX_THREADS
#: The most classes the kernel's 32-bit column indices (plus a batch's reach) can address.
MAX_CLASSES = 2**31 - 2**13
#: Rows of at most this many classes go several to a warp (lane groups of up to 32 lanes),
#: in blocks of ``GROUP_THREADS``: a block per row would leave most of its lanes idle.
GROUP_MAX_CLASSES = 128
GROUP_THREADS = 256


@dataclass(frozen=True)
class Plan:
    """The launch of ``ce_fused`` and its L2 model."""

    threads: int
    #: Lanes per row (a power of two up to 32, several rows to a block), or 0: a block per row.
    group: int
    grid: int
    #: The bytes of L2 the grid's rows take at once (see the module docstring).
    resident_bytes: int
    l2_bytes: int

    @property
    def rows_in_flight(self) -> int:
        return self.grid * rows_per_block(self.threads, self.group)

    @property
    def rereads_from_l2(self) -> bool:
        return self.resident_bytes <= L2_SHARE * self.l2_bytes


def rows_per_block(threads: int, group: int) -> int:
    return threads // group if group else 1


def lane_group(n_classes: int) -> int:
    """Lanes per row: 0 (a block per row) above :data:`GROUP_MAX_CLASSES` classes, else the
    power of two that gives each lane about ``CE_BATCH`` columns."""
    if n_classes > GROUP_MAX_CLASSES:
        return 0
    return min(32, 1 << (-(-n_classes // CE_BATCH) - 1).bit_length())


def rereads_from_l2(rows_in_flight: int, row_footprint: int, l2_bytes: int) -> bool:
    """Whether the second read of each row is an L2 hit: the rows of the grid's blocks, of
    ``row_footprint`` bytes each, fit in :data:`L2_SHARE` of ``l2_bytes``."""
    return rows_in_flight * row_footprint <= L2_SHARE * l2_bytes


def row_footprint(n_classes: int, itemsize: int, in_place: bool, probabilities: bool) -> int:
    """The L2 bytes one row block holds between its two reads (see the module docstring)."""
    row = n_classes * itemsize
    return row * (1 + int(probabilities) + int(not in_place))


def plan(rows: int, n_classes: int, footprint: int, l2_bytes: int, sms: int) -> Plan:
    """Threads per row: a lane group for small rows (:func:`lane_group`, blocks of
    :data:`GROUP_THREADS`), else a block of one column per thread up to 1024 (as the unfused
    kernels up to 256).  The grid: no more blocks than the rows need, than the GPU holds, or
    than keep the rows in L2 (at least one: a single row too long for L2 is re-read from DRAM,
    and the proxy says so)."""
    group = lane_group(n_classes)
    if group:
        threads = GROUP_THREADS
    else:
        threads = min(_MAX_THREADS, max(32, 1 << (n_classes - 1).bit_length()))
    per_block = rows_per_block(threads, group)
    resident = sms * min(_BLOCKS_PER_SM, _THREADS_PER_SM // threads)
    in_l2 = int(L2_SHARE * l2_bytes) // (footprint * per_block)
    grid = max(1, min(-(-rows // per_block), resident, in_l2))
    return Plan(threads=threads, group=group, grid=grid,
                resident_bytes=grid * per_block * footprint, l2_bytes=l2_bytes)


@functools.cache
def _device_limits(device: Any) -> tuple[int, int]:
    """(L2 bytes, SMs) of ``device``; an H200's where it has no attributes (the harness)."""
    attributes = getattr(device, "attributes", None)
    if attributes is None:
        return H200_L2_BYTES, H200_SMS
    return int(attributes["L2CacheSize"]), int(attributes["MultiProcessorCount"])


def _plan_for(call: CrossEntropyCall, rows: int, in_place: bool) -> Plan:
    l2_bytes, sms = _device_limits(call.input.device)
    footprint = row_footprint(call.n_classes, call.input.itemsize, in_place, call.probabilities)
    return plan(rows, call.n_classes, footprint, l2_bytes, sms)


# ------------------------------------------------------------------ the launches


def run(call: CrossEntropyCall, layout: Any, grad_output: Array | float, out: Any,
        want_loss: bool) -> tuple[Array | None, Array]:
    """(the loss or None, the gradient) of ``call``, whose ``layout`` (``cross_entropy._Layout``)
    has ``splits == 1`` and ``spatial == 1``; raises on an invalid target before any gradient
    entry is written."""
    checked = call.validate and not call.probabilities
    flag = invalid_flag(checked)
    compute = compute_dtype(call.dtype)
    weighted_mean = call.reduction == "mean" and not call.probabilities
    has_weight = int(call.weight is not None)
    partials, n_partials = layout.input, 0  # a never-read stand-in
    if checked or weighted_mean:
        partials = reduce.empty_partials(layout.rows, compute)
        n_partials = reduce.partial_count(layout.rows) if weighted_mean else 0
        ce_targets()(layout.target, layout.weight, call.n_classes, call.ignore_index,
                     layout.ignore_matches, has_weight, int(checked), partials, flag,
                     size=layout.rows, block_size=REDUCE_BLOCK)
    if isinstance(grad_output, float):
        upstream_mode, upstream, upstream_scalar = 0, layout.input, grad_output
    elif call.reduction == "none":
        upstream_mode, upstream_scalar = 2, 0.0
        upstream = cupy.ascontiguousarray(grad_output).reshape(-1)
    else:
        upstream_mode, upstream, upstream_scalar = 1, grad_output.reshape(1), 0.0
    direct = out is not None and out.flags.c_contiguous
    grad = out if direct else cupy.empty(layout.input.shape, dtype=call.input.dtype)
    in_place = direct and out.data.ptr == layout.input.data.ptr
    launch = _plan_for(call, layout.rows, in_place)
    row_dtype = call.dtype if call.reduction == "none" else compute
    row_loss = cupy.empty(layout.rows if want_loss else 1, dtype=row_dtype)
    vec = _vector_width(launch, call.n_classes, layout.input, grad)
    ce_fused(layout.mode, call.weight is not None, launch.group, vec)(
        layout.input, layout.target if call.probabilities else layout.input, layout.weight,
        layout.input if call.probabilities else layout.target, partials, upstream,
        layout.rows, call.n_classes, n_partials, upstream_scalar, float(layout.rows),
        call.label_smoothing, call.ignore_index, layout.ignore_matches, upstream_mode,
        _REDUCTIONS[call.reduction], int(checked), int(want_loss),
        grad, row_loss, flag, size=launch.grid * launch.threads, block_size=launch.threads)
    loss = None
    if want_loss:
        loss = row_loss.reshape(call.loss_shape) if call.reduction == "none" else _finish(
            call, layout.rows, row_loss, partials, n_partials)
    nll.raise_if_invalid(call.nll, flag, checked)  # the target rules are NLL's
    if out is not None:
        if not direct:
            out[...] = grad.reshape(out.shape)
        return loss, out
    return loss, grad.reshape(call.input.shape)


_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _vector_width(launch: Plan, n_classes: int, logits: cupy.ndarray,
                  grad: cupy.ndarray) -> int:
    """Elements per 16-byte load and store: only for a block per row of 1024 threads (below,
    the rows keep the unfused kernels' order), rows of whole vectors, and 16-byte aligned
    logits and gradient; else 1."""
    vec = 16 // logits.itemsize
    aligned = logits.data.ptr % 16 == 0 and grad.data.ptr % 16 == 0
    if launch.threads == _MAX_THREADS and n_classes % vec == 0 and aligned:
        return vec
    return 1  # kernels.cuh: REDUCE_NONE, _MEAN, _SUM


def _finish(call: CrossEntropyCall, rows: int, row_loss: cupy.ndarray, partials: cupy.ndarray,
            n_partials: int) -> cupy.ndarray:
    if call.reduction == "sum":
        mode = reduce.MODE_SUM
    elif call.probabilities:
        mode = reduce.MODE_MEAN
    elif generic.smoothed_weighted_mean(call):
        # A total weight of 0 makes this loss NaN, as in PyTorch (see the generic function).
        mode = reduce.MODE_WEIGHTED_MEAN_NAN_AT_ZERO
    else:
        mode = reduce.MODE_WEIGHTED_MEAN
    loss = cupy.empty(1, dtype=call.dtype)
    # Without weights to add, the rows' losses stand in for the partials (never read).
    weights = partials if n_partials else row_loss
    ce_finish()(row_loss, weights, rows, n_partials, float(rows), mode, loss,
                size=_MAX_THREADS, block_size=_MAX_THREADS)
    return loss.reshape(())


# ------------------------------------------------------------------ the kernels

_FINISH_ORDER_SUM = f"""
#define AL_NO_INVALID {NO_INVALID}ull
""" + """
// The sum of values[0, count) in the bits of arrayloss_finish (reduce.py), whatever the block
// size (a power of two from 32 to 1024): finish thread v adds values v, v + 1024, ...; here
// warp w of this block plays finish warps w, w + warps, ... and adds their lanes with the same
// shuffle tree; the 32 warp totals are added in order.  Every thread gets the sum, and every
// thread of the block must call it.
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
    class weights or none, the lanes per row (:func:`lane_group`) and the elements per
    16-byte access (``vec``, 1: one at a time), all compile-time constants: index targets
    keep no double accumulators, and no class weight a register.

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
        options=() if group else (f"--maxrregcount={_REGISTERS_AT_MOST}",),
        preamble=(preamble("al::compute_of<X>::type") + CE_STATS_PUSH_SOURCE + CE_GRAD_SOURCE
                  + _FINISH_ORDER_SUM),
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
        preamble=header() + _FINISH_ORDER_SUM,
    )
