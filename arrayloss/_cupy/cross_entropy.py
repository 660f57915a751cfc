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
``validate=False``.  Where rows are contiguous and one block per row fills the GPU, the
loss-and-gradient and the backward take :mod:`.cross_entropy_fused` instead: one row kernel
whose second read of a row comes from L2 (the kernels themselves: :mod:`.cross_entropy_kernels`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from .._agnostic import cross_entropy as generic
from .._class_calls import CrossEntropyCall
from . import cross_entropy_fused as fused
from . import nll, reduce
from ._common import compute_dtype, invalid_flag, upstream_arguments
from ._kernels import REDUCE_BLOCK
from .cross_entropy_kernels import ce_grad, ce_row_stats, ce_rows, ce_rows_partials

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
    # Every array flat (the kernels index them by their row-major position): the generated
    # source is then the same whatever the call's number of dimensions.
    if call.probabilities:
        mode = CE_MODE_PROBABILITIES
        target = cupy.ascontiguousarray(call.target).reshape(-1)
        ignore_matches = 0
    else:
        mode = CE_MODE_SMOOTHED_INDEX if call.label_smoothing else CE_MODE_INDEX
        target = cupy.ascontiguousarray(call.target).reshape(rows)
        limits = np.iinfo(target.dtype)
        ignore_matches = int(limits.min <= call.ignore_index <= limits.max)
    input = cupy.ascontiguousarray(call.input).reshape(-1)
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
    ce_row_stats(layout.mode)(
        layout.input, probabilities_or_input, layout.weight, call.n_classes, layout.spatial,
        layout.chunk, layout.splits, call.label_smoothing, int(call.weight is not None), stats,
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
    upstream_mode, upstream, upstream_scalar = upstream_arguments(grad_output, call.reduction,
                                                                  row_info)
    direct = out is not None and out.flags.c_contiguous
    grad = out.reshape(-1) if direct else cupy.empty(layout.input.shape, dtype=call.input.dtype)
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


def _fusable(call: CrossEntropyCall, layout: _Layout) -> bool:
    """Whether :mod:`.cross_entropy_fused` takes the call: contiguous rows, one block each."""
    return (layout.splits == 1 and layout.spatial == 1
            and call.n_classes <= fused.MAX_CLASSES)


def _checked(call: CrossEntropyCall) -> bool:
    """Whether targets are checked: index targets with ``validate`` (probabilities have no
    value to check, so they never read the flag back)."""
    return call.validate and not call.probabilities


def _raise_if_invalid(call: CrossEntropyCall, flag: cupy.ndarray, checked: bool) -> None:
    nll.raise_if_invalid(call.nll, flag, checked)  # the target rules are NLL's


def _checked_rows(call: CrossEntropyCall, layout: _Layout | None = None
                  ) -> tuple[_Layout, cupy.ndarray, cupy.ndarray]:
    """The row passes every entry point starts with, and the target check: a bad target
    raises here, before any gradient is written (``out=input`` keeps its logits)."""
    checked = _checked(call)
    flag = invalid_flag(checked)
    layout = _layout(call) if layout is None else layout
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
        layout = _layout(call)
        if _fusable(call, layout):
            return fused.run(call, layout, grad_output, None, want_loss=False)[1]
        layout, totals, row_info = _checked_rows(call, layout)
        return _grad(call, layout, row_info, grad_output,
                     totals if call.reduction == "mean" else None, None)


def loss_and_grad(call: CrossEntropyCall, out: Array | None = None) -> tuple[Array, Array]:
    """The reduced loss and its gradient: the logits read twice (the second time from L2 on
    the fused path), the gradient written once."""
    if _degenerate(call):
        return _degenerate_results(call, out)
    if call.dtype != call.input.dtype:
        return generic.loss_and_grad(call, out)
    with call.input.device:
        layout = _layout(call)
        if _fusable(call, layout):
            return fused.run(call, layout, 1.0, out, want_loss=True)
        layout, totals, row_info = _checked_rows(call, layout)
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
