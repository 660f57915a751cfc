"""Cross-entropy on CuPy arrays: fused row kernels, no ``N x C`` temporary.

* ``ce_row_stats`` reads each row once: an online (max, sum of exp) and, for label smoothing
  or probability targets, the row's linear sums.  A long row is split over several blocks
  (``splits``), so that a few rows of a 128k-256k vocabulary still fill the GPU.
* ``ce_rows`` (or ``ce_rows_partials`` for ``'mean'``/``'sum'``) merges a row's parts in a
  fixed order, checks and reads its target, and writes the row's loss (or per-block partial
  sums, finished by :mod:`.reduce` on the device) and its gradient factors: O(N) written.
* ``ce_grad`` reads the row a second time and writes the gradient once, into ``out`` (which
  may be the logits themselves) when given.

So the forward reads the logits once and the loss-and-gradient twice; every sum is in a fixed
order, so results are bitwise repeatable; nothing is read back to the host with
``validate=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from .._agnostic import cross_entropy as generic
from .._class_calls import CrossEntropyCall
from . import nll, reduce
from ._common import compute_dtype, invalid_flag
from ._kernels import (
    LOSS_AND_WEIGHT_PARTIALS,
    LOSS_AND_WEIGHT_PREP,
    REDUCE_BLOCK,
    header,
    kernel_factory,
    preamble,
)

Array = Any

_REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}  # kernels.cuh: REDUCE_NONE, _MEAN, _SUM

#: Blocks the row kernels aim for (about 8 per SM of an H100/H200) before splitting rows.
_TARGET_BLOCKS = 1024
#: Columns per thread below which a row is not split further.
_MIN_COLUMNS_PER_THREAD = 4
#: The kernels' ``mode``: 0 index targets; 1 index targets with label smoothing; 2
#: probability targets.
CE_MODE_INDEX, CE_MODE_SMOOTHED_INDEX, CE_MODE_PROBABILITIES = 0, 1, 2


@dataclass(frozen=True)
class _Layout:
    """The call's arrays as the kernels read them: (N, C, S), C-contiguous."""

    input: cupy.ndarray
    target: cupy.ndarray  # (R,) indices, or (N, C, S) probabilities
    weight: cupy.ndarray  # (C,), or the input as a never-read stand-in
    rows: int  # R = N * S
    spatial: int  # S
    threads: int
    splits: int
    chunk: int
    mode: int
    ignore_matches: int


def _degenerate(call: CrossEntropyCall) -> bool:
    """No rows or no classes: nothing for the row kernels to do."""
    n, s = _sizes(call)
    return n * s == 0 or call.n_classes == 0


def _degenerate_results(call: CrossEntropyCall, out: cupy.ndarray | None = None
                        ) -> tuple[cupy.ndarray, cupy.ndarray]:
    """(loss, gradient) without rows or classes: every loss is an empty sum, so 'mean' is
    0/0 = NaN (PyTorch's answer), and the gradient has no entries or is 0."""
    if call.validate and not call.probabilities and call.target.size:
        # With C == 0 an index target can only be ignored: NLL's kernels check that.
        from . import nll

        nll.forward(call.nll)
    if call.reduction == "none":
        loss = cupy.zeros(call.loss_shape, dtype=call.dtype)
    else:
        loss = cupy.full((), math.nan if call.reduction == "mean" else 0.0, dtype=call.dtype)
    grad = cupy.zeros(call.input.shape, dtype=call.input.dtype)
    if out is not None:
        out[...] = grad
        grad = out
    return loss, grad


def _sizes(call: CrossEntropyCall) -> tuple[int, int]:
    shape = tuple(call.input.shape)
    return (1, 1) if len(shape) == 1 else (shape[0], math.prod(shape[2:]))


def _layout(call: CrossEntropyCall) -> _Layout:
    n, s = _sizes(call)
    rows, n_classes = n * s, call.n_classes
    threads = min(256, max(32, 1 << (n_classes - 1).bit_length()))
    splits = max(1, min(-(-n_classes // (threads * _MIN_COLUMNS_PER_THREAD)),
                        -(-_TARGET_BLOCKS // rows)))
    chunk = -(-n_classes // splits)
    splits = -(-n_classes // chunk)
    if call.probabilities:
        mode = CE_MODE_PROBABILITIES
        target = cupy.ascontiguousarray(call.target)
        ignore_matches = 0
    else:
        mode = CE_MODE_SMOOTHED_INDEX if call.label_smoothing else CE_MODE_INDEX
        target = cupy.ascontiguousarray(call.target).reshape(rows)
        limits = np.iinfo(target.dtype)
        ignore_matches = int(limits.min <= call.ignore_index <= limits.max)
    input = cupy.ascontiguousarray(call.input)
    return _Layout(
        input=input, target=target,
        weight=input if call.weight is None else cupy.ascontiguousarray(call.weight),
        rows=rows, spatial=s, threads=threads, splits=splits, chunk=chunk, mode=mode,
        ignore_matches=ignore_matches)


def _rows(call: CrossEntropyCall, layout: _Layout, check: bool,
          flag: cupy.ndarray) -> tuple[cupy.ndarray, cupy.ndarray]:
    """(the per-row losses for ``'none'``, or ``[loss, total_weight]``; the rows' factors)."""
    compute = compute_dtype(call.dtype)
    stats = cupy.empty(layout.rows * layout.splits * 4, dtype=cupy.float64)
    probabilities_or_input = layout.target if call.probabilities else layout.input
    ce_row_stats()(
        layout.input, probabilities_or_input, layout.weight, call.n_classes, layout.spatial,
        layout.chunk, layout.splits, call.label_smoothing, layout.mode,
        int(call.weight is not None), stats,
        size=layout.rows * layout.splits * layout.threads, block_size=layout.threads)
    row_info = cupy.empty(layout.rows * 4, dtype=compute)
    # Probability targets have no index to read: a one-element stand-in.
    indices = (cupy.zeros(1, dtype=cupy.int64) if call.probabilities else layout.target)
    scalars = (call.n_classes, layout.spatial, layout.splits, call.label_smoothing,
               call.ignore_index, layout.ignore_matches, int(call.weight is not None),
               int(call.probabilities), int(check))
    if call.reduction == "none":
        loss = cupy.empty(layout.rows, dtype=call.dtype)
        ce_rows()(stats, layout.input, indices, layout.weight, *scalars, loss, row_info, flag)
        return loss, row_info
    loss_partials = reduce.empty_partials(layout.rows, compute)
    weight_partials = reduce.empty_partials(layout.rows, compute)
    ce_rows_partials()(stats, layout.input, indices, layout.weight, *scalars,
                       loss_partials, weight_partials, row_info, flag,
                       size=layout.rows, block_size=REDUCE_BLOCK)
    if call.reduction == "sum":
        mode, divisor = reduce.MODE_SUM, 1.0
    elif call.probabilities:
        mode, divisor = reduce.MODE_MEAN, float(layout.rows)
    elif generic.smoothed_weighted_mean(call):
        # A total weight of 0 makes this loss NaN, as in PyTorch (see the generic function).
        mode, divisor = reduce.MODE_WEIGHTED_MEAN_NAN_AT_ZERO, 1.0
    else:
        mode, divisor = reduce.MODE_WEIGHTED_MEAN, 1.0
    totals = reduce.finish(loss_partials, layout.rows, mode, divisor,
                           weight_partials=weight_partials)
    return totals, row_info


def _grad(call: CrossEntropyCall, layout: _Layout, row_info: cupy.ndarray,
          grad_output: Array | float, totals: cupy.ndarray | None,
          out: Any) -> cupy.ndarray:
    if isinstance(grad_output, float):
        upstream_mode, upstream, upstream_scalar = 0, row_info, grad_output
    elif call.reduction == "none":
        upstream_mode, upstream_scalar = 2, 0.0
        upstream = cupy.ascontiguousarray(grad_output).reshape(-1)
    else:
        upstream_mode, upstream, upstream_scalar = 1, grad_output.reshape(1), 0.0
    direct = out is not None and out.flags.c_contiguous
    grad = out if direct else cupy.empty(layout.input.shape, dtype=call.input.dtype)
    probabilities_or_input = layout.target if call.probabilities else layout.input
    indices = layout.input if call.probabilities else layout.target
    ce_grad()(
        layout.input, probabilities_or_input, layout.weight, indices, row_info, upstream,
        row_info if totals is None else totals, upstream_scalar, float(layout.rows),
        call.n_classes, layout.spatial, layout.chunk, layout.splits, call.label_smoothing,
        call.ignore_index, layout.ignore_matches, int(call.weight is not None),
        int(call.probabilities), upstream_mode, _REDUCTION_CODES[call.reduction], grad,
        size=layout.rows * layout.splits * layout.threads, block_size=layout.threads)
    if out is not None:
        if not direct:
            out[...] = grad.reshape(out.shape)
        return out
    return grad.reshape(call.input.shape)


def _checked(call: CrossEntropyCall) -> bool:
    """Whether targets are checked: index targets with ``validate`` (probabilities have no
    value to check, so they never read the flag back)."""
    return call.validate and not call.probabilities


def _raise_if_invalid(call: CrossEntropyCall, flag: cupy.ndarray, checked: bool) -> None:
    nll.raise_if_invalid(call.nll, flag, checked)  # the target rules are NLL's


def _checked_rows(call: CrossEntropyCall) -> tuple[_Layout, cupy.ndarray, cupy.ndarray]:
    """The row passes every entry point starts with, and the target check: a bad target
    raises here, before any gradient is written (``out=input`` keeps its logits)."""
    checked = _checked(call)
    flag = invalid_flag(checked)
    layout = _layout(call)
    result, row_info = _rows(call, layout, checked, flag)
    _raise_if_invalid(call, flag, checked)
    return layout, result, row_info


def forward(call: CrossEntropyCall) -> Array:
    """The loss, reduced as ``call.reduction`` says."""
    if _degenerate(call):
        return _degenerate_results(call)[0]
    if call.dtype != call.input.dtype:  # a probability target of a wider dtype: not fused
        return generic.forward(call)
    with call.input.device:  # everything, the flag too, on the inputs' device
        _, result, _ = _checked_rows(call)
    if call.reduction == "none":
        return result.reshape(call.loss_shape)
    return reduce.as_result(result, call.dtype)


def backward(call: CrossEntropyCall, grad_output: Array | float) -> Array:
    """The gradient with respect to ``input``."""
    if _degenerate(call):
        return _degenerate_results(call)[1]
    if call.dtype != call.input.dtype:
        return generic.backward(call, grad_output)
    with call.input.device:
        layout, totals, row_info = _checked_rows(call)
        return _grad(call, layout, row_info, grad_output,
                     totals if call.reduction == "mean" else None, None)


def loss_and_grad(call: CrossEntropyCall, out: Array | None = None) -> tuple[Array, Array]:
    """The reduced loss and its gradient: two reads of the logits, one write of the gradient."""
    if _degenerate(call):
        return _degenerate_results(call, out)
    if call.dtype != call.input.dtype:
        return generic.loss_and_grad(call, out)
    with call.input.device:
        layout, totals, row_info = _checked_rows(call)
        grad = _grad(call, layout, row_info, 1.0, totals, out)
    return reduce.as_result(totals, call.dtype), grad


@dataclass(frozen=True)
class Saved:
    """What a forward leaves for its backward (autograd): the layout, the loss totals and the
    rows' (max, log-sum-exp, scale, on-target) factors, so the backward reads the logits once
    (the gradient pass) instead of three times (both row passes again, then the gradient)."""

    layout: _Layout
    totals: cupy.ndarray
    row_info: cupy.ndarray


def forward_saving(call: CrossEntropyCall) -> tuple[Array, Saved | None]:
    """:func:`forward`, and what :func:`backward_saved` needs (None where it falls back)."""
    if _degenerate(call) or call.dtype != call.input.dtype:
        return forward(call), None
    with call.input.device:
        layout, result, row_info = _checked_rows(call)
    if call.reduction == "none":
        return result.reshape(call.loss_shape), Saved(layout, result, row_info)
    return reduce.as_result(result, call.dtype), Saved(layout, result, row_info)


def backward_saved(call: CrossEntropyCall, grad_output: Array | float,
                   saved: Saved | None) -> Array:
    """:func:`backward` from a forward's :class:`Saved` rows: the gradient pass alone."""
    if saved is None:
        return backward(call, grad_output)
    with call.input.device:
        return _grad(call, saved.layout, saved.row_info, grad_output,
                     saved.totals if call.reduction == "mean" else None, None)


# ------------------------------------------------------------------ the kernels
#
# Rows are the (n, s) samples of an (N, C, S) input: row r reads x[base + c * S] with
# base = (r / S) * C * S + r % S.  The two row-mapped kernels launch exactly `splits` blocks
# per row (size = rows * splits * threads, block_size = threads, so each thread runs its body
# once and the block's threads may synchronise); block b covers the columns
# [part * chunk, part * chunk + chunk) of row b / splits, part = b % splits.

#: Columns a thread loads before it computes (the row passes): four loads in flight.
CE_BATCH = 4

# One column of the statistics pass: the online (max, sum of exp), and the linear sums of
# label smoothing (mode 1) or probability targets (mode 2).
_CE_STATS_PUSH = f"\n#define CE_BATCH {CE_BATCH}\n" + """
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
def ce_row_stats() -> cupy.ElementwiseKernel:
    """One pass over each row part: its (max, sum of exp) and the linear sums of ``mode``,
    written as four doubles per block to ``stats``."""
    return cupy.ElementwiseKernel(
        "raw X x, raw Q q, raw W w, int64 n_classes, int64 spatial, int64 chunk, "
        "int64 splits, float64 smoothing, int32 mode, int32 has_weight",
        "raw float64 stats",
        _CE_ROW_MAP + """
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
        preamble=preamble("al::compute_of<X>::type") + _CE_STATS_PUSH,
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
_CE_GRAD = f"\n#define CE_BATCH {CE_BATCH}\n" + """
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
        preamble=header() + _CE_GRAD,
    )
