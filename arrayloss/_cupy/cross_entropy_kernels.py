"""The unfused cross-entropy kernels (the row passes and the gradient pass of
:mod:`.cross_entropy`), and the per-column macros the fused kernel
(:mod:`.cross_entropy_fused`) shares with them."""

from __future__ import annotations

import cupy

from ._kernels import (
    LOSS_AND_WEIGHT_PARTIALS,
    LOSS_AND_WEIGHT_PREP,
    header,
    kernel_factory,
    preamble,
)

# Rows are the (n, s) samples of an (N, C, S) input: row r reads x[base + c * S] with
# base = (r / S) * C * S + r % S.  The two row-mapped kernels launch exactly `splits` blocks
# per row (size = rows * splits * threads, block_size = threads, so each thread runs its body
# once and the block's threads may synchronise); block b covers the columns
# [part * chunk, part * chunk + chunk) of row b / splits, part = b % splits.

#: Columns a thread loads before it computes (the row passes): four loads in flight.
CE_BATCH = 4

# One column of the statistics pass: the online (max, sum of exp), and the linear sums of
# label smoothing (mode 1) or probability targets (mode 2).
CE_STATS_PUSH_SOURCE = f"\n#define CE_BATCH {CE_BATCH}\n" + """
#define CE_STATS_PUSH(VALUE, COLUMN) do { \\
    const A value_ = (VALUE); \\
    const long long column_ = (COLUMN); \\
    al::lse_push(top, sum, value_); \\
    if (mode != 0) { \\
        double share = has_weight ? static_cast<double>(A(w[column_])) : 1.0; \\
        if (mode == 2) share *= static_cast<double>(al::ce_smoothed( \\
            A(q[base + column_ * spatial]), smoothing, n_classes)); \\
        linear += share * static_cast<double>(value_); \\
        mass += share; \\
    } \\
} while (0)
"""

_CE_ROW_MAP = """
const long long block = blockIdx.x;
const long long row = block / splits;
const long long part = block % splits;
const long long base = (row / spatial) * n_classes * spatial + row % spatial;
const long long begin = part * chunk;
const long long end = begin + chunk < n_classes ? begin + chunk : n_classes;
"""


@kernel_factory
def ce_row_stats(mode: int) -> cupy.ElementwiseKernel:
    """One pass over each row part: its (max, sum of exp) and the linear sums of ``mode``
    (``CE_MODE_*``, a compile-time constant: index targets keep no double accumulators),
    written as four doubles per block to ``stats``."""
    return cupy.ElementwiseKernel(
        "raw X x, raw Q q, raw W w, int64 n_classes, int64 spatial, int64 chunk, "
        "int64 splits, float64 smoothing, int32 has_weight",
        "raw float64 stats",
        f"const int mode = {mode};\n" + _CE_ROW_MAP + """
A top = al::minus_infinity(A(0));
A sum = 0;
double linear = 0;
double mass = 0;
const long long stride = blockDim.x;
long long c = begin + threadIdx.x;
// Batches of CE_BATCH columns: every load of a batch issued before any value is used (the
// values go through lse_push in the order of the one-at-a-time loop: the same bits).
for (; c + (CE_BATCH - 1) * stride < end; c += CE_BATCH * stride) {
    A values[CE_BATCH];
#pragma unroll
    for (int k = 0; k < CE_BATCH; ++k) values[k] = A(x[base + (c + k * stride) * spatial]);
#pragma unroll
    for (int k = 0; k < CE_BATCH; ++k) {
        CE_STATS_PUSH(values[k], c + k * stride);
    }
}
for (; c < end; c += stride) {
    CE_STATS_PUSH(A(x[base + c * spatial]), c);
}
const A block_top = al::block_max(top);
sum = al::block_sum(top == block_top ? sum : sum * exp(top - block_top));
if (mode != 0) {
    linear = al::block_sum(linear);
    mass = al::block_sum(mass);
}
if (threadIdx.x == 0) {
    stats[block * 4] = block_top;
    stats[block * 4 + 1] = sum;
    stats[block * 4 + 2] = linear;
    stats[block * 4 + 3] = mass;
}
""",
        name="arrayloss_cross_entropy_row_stats",
        preamble=preamble("al::compute_of<X>::type") + CE_STATS_PUSH_SOURCE,
    )


# Each thread of the row kernels finishes one row r = i: merges its parts in order, checks
# and reads its target, and leaves (max, log sum, scale, on_target) in row_info for the
# gradient kernel.
_CE_ROW = """
const long long row = i;
A top = al::minus_infinity(A(0));
A sum = 0;
double linear = 0;
double mass = 0;
for (long long part = 0; part < splits; ++part) {
    const long long at = (row * splits + part) * 4;
    al::lse_merge(top, sum, A(stats[at]), A(stats[at + 1]));
    linear += stats[at + 2];
    mass += stats[at + 3];
}
const A log_sum = log(sum);
A value = 0;
A weight = 0;
A scale = 0;
A on_target = 0;
if (probabilities) {
    value = al::ce_probability_loss(top, log_sum, mass, linear);
    weight = 1;
    scale = A(mass);
} else {
    const long long cls = al::nll_class(static_cast<long long>(t[row]), n_classes,
                                        ignore_index, ignore_matches);
    if (check && cls == al::NLL_OUT_OF_RANGE) al::record_invalid(&invalid[0], row);
    if (cls >= 0) {
        const A target_logit =
            A(x[((row / spatial) * n_classes + cls) * spatial + row % spatial]);
        weight = has_weight ? A(w[cls]) : A(1);
        value = al::ce_index_loss(target_logit, top, log_sum, weight, smoothing, n_classes,
                                  mass, linear);
        on_target = A(1 - smoothing) * weight;
        scale = on_target + A(smoothing / static_cast<double>(n_classes) * mass);
    }
}
row_info[row * 4] = top;
row_info[row * 4 + 1] = log_sum;
row_info[row * 4 + 2] = scale;
row_info[row * 4 + 3] = on_target;
"""

_CE_ROW_INPUTS = ("raw float64 stats, raw X x, raw I t, raw W w, int64 n_classes, "
                  "int64 spatial, int64 splits, float64 smoothing, int64 ignore_index, "
                  "int32 ignore_matches, int32 has_weight, int32 probabilities, int32 check")


@kernel_factory
def ce_rows() -> cupy.ElementwiseKernel:
    """Per-row loss (``reduction='none'``) and the rows' gradient factors."""
    return cupy.ElementwiseKernel(
        _CE_ROW_INPUTS,
        "R loss, raw A row_info, raw uint64 invalid",
        _CE_ROW + "loss = R(value);",
        name="arrayloss_cross_entropy_rows",
        preamble=header(),
    )


@kernel_factory
def ce_rows_partials() -> cupy.ElementwiseKernel:
    """Per-block sums of the rows' losses and target weights, and the rows' gradient factors."""
    return cupy.ElementwiseKernel(
        _CE_ROW_INPUTS,
        "raw A loss_partials, raw A weight_partials, raw A row_info, raw uint64 invalid",
        _CE_ROW + "thread_loss += value;\nthread_weight += weight;",
        name="arrayloss_cross_entropy_rows_partials",
        preamble=header(),
        loop_prep=LOSS_AND_WEIGHT_PREP,
        after_loop=LOSS_AND_WEIGHT_PARTIALS,
    )


# One gradient entry from its loaded logit, class weight and (probability) target.
CE_GRAD_SOURCE = f"\n#define CE_BATCH {CE_BATCH}\n" + """
#define CE_GRAD(VALUE, WEIGHT, TARGET, COLUMN) (upstream * al::ce_grad_element( \\
    (VALUE), top, log_sum, scale, \\
    probabilities ? (WEIGHT) * al::ce_smoothed((TARGET), smoothing, n_classes) \\
                  : ((COLUMN) == cls ? on_target : A(0)), \\
    probabilities ? A(0) : spread_share * (WEIGHT)))
"""


@kernel_factory
def ce_grad() -> cupy.ElementwiseKernel:
    """The gradient, each entry written once (over ``x`` itself when ``grad`` is ``x``: each
    thread reads an entry before it writes it).

    ``upstream_mode`` as in :func:`.nll.nll_backward`; a ``'mean'`` divides by ``total[1]`` (the
    total target weight) for index targets and by ``divisor`` for probability targets.
    """
    return cupy.ElementwiseKernel(
        "raw X x, raw Q q, raw W w, raw I t, raw A row_info, raw G g, raw T total, "
        "float64 g_scalar, float64 divisor, int64 n_classes, int64 spatial, int64 chunk, "
        "int64 splits, float64 smoothing, int64 ignore_index, int32 ignore_matches, "
        "int32 has_weight, int32 probabilities, int32 upstream_mode, int32 reduction",
        "raw R grad",
        _CE_ROW_MAP + """
const A top = row_info[row * 4];
const A log_sum = row_info[row * 4 + 1];
const A scale = row_info[row * 4 + 2];
const A on_target = row_info[row * 4 + 3];
A upstream = upstream_mode == 0 ? A(g_scalar) : upstream_mode == 1 ? A(g[0]) : A(g[row]);
long long cls = -1;
if (!probabilities) {
    cls = al::nll_class(static_cast<long long>(t[row]), n_classes, ignore_index,
                        ignore_matches);
    if (reduction == al::REDUCE_MEAN) upstream = upstream / A(total[1]);
    if (cls < 0) upstream = 0;  // ignored (or invalid): no gradient, even where G is inf
} else if (reduction == al::REDUCE_MEAN) {
    upstream = upstream / A(divisor);
}
const A spread_share = A(smoothing / static_cast<double>(n_classes));
const long long stride = blockDim.x;
long long c = begin + threadIdx.x;
// Batches of CE_BATCH columns: all their loads first, then the arithmetic, then the stores,
// so no load waits on a store (``grad`` may be ``x``: each thread writes only the entries it
// has read).
for (; c + (CE_BATCH - 1) * stride < end; c += CE_BATCH * stride) {
    A values[CE_BATCH];
    A weights[CE_BATCH];
    A targets[CE_BATCH];
#pragma unroll
    for (int k = 0; k < CE_BATCH; ++k) {
        const long long at = base + (c + k * stride) * spatial;
        values[k] = A(x[at]);
        weights[k] = has_weight ? A(w[c + k * stride]) : A(1);
        targets[k] = probabilities ? A(q[at]) : A(0);
    }
#pragma unroll
    for (int k = 0; k < CE_BATCH; ++k) {
        values[k] = CE_GRAD(values[k], weights[k], targets[k], c + k * stride);
    }
#pragma unroll
    for (int k = 0; k < CE_BATCH; ++k) grad[base + (c + k * stride) * spatial] = R(values[k]);
}
for (; c < end; c += stride) {
    const long long at = base + c * spatial;
    grad[at] = R(CE_GRAD(A(x[at]), has_weight ? A(w[c]) : A(1),
                         probabilities ? A(q[at]) : A(0), c));
}
""",
        name="arrayloss_cross_entropy_grad",
        preamble=header() + CE_GRAD_SOURCE,
    )
