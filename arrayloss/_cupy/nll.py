"""NLL on CuPy arrays: fused kernels over the input's natural ``(N, C, d1..dK)`` layout.

* Forward ``'none'``: one thread per target gathers ``input[n, t, s]``.  ``'mean'``/``'sum'``:
  the same pass also sums the loss and the weights per block (the weighted mean's two sums in
  one trip), then a one-block second pass divides on the device: no host synchronisation.
* Backward: one pass over the dense gradient, each entry written once (the coefficient at the
  target column, 0 elsewhere): no zero-fill followed by a scatter.
* The input and the targets, of any integer dtype, are read in place, whatever their
  strides.  Validation is a flag written by the kernel;
  a checked call reads it once.  An out-of-range target is never used as an index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from .._class_calls import NLLCall
from .._validation import target_out_of_range_error
from . import reduce
from ._common import compute_dtype, first_invalid, invalid_flag, upstream_arguments
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


@dataclass(frozen=True)
class _Layout:
    """The call's arrays as the kernels read them: batched, in place (any strides)."""

    #: (N, C, *spatial), as given: a raw CuPy array indexed by its logical (row-major) position
    #: reads through its strides, so the N*S gathered entries never need a copy of the N*C*S.
    input: cupy.ndarray
    target: cupy.ndarray  # (N, *spatial)
    weight: cupy.ndarray  # (C,), or the input as a never-read stand-in
    spatial: int  # S = prod(spatial)
    ignore_matches: int  # 0 when ignore_index cannot be held by the target dtype

    def scalars(self, call: NLLCall, check: bool) -> tuple[int, ...]:
        """The kernels' shared scalar arguments, in their parameter order."""
        return (call.n_classes, self.spatial, call.ignore_index, self.ignore_matches,
                int(call.weight is not None), int(check))


def _layout(call: NLLCall) -> _Layout:
    input, target = call.input, call.target
    if input.ndim == 1:
        input, target = input.reshape(1, call.n_classes), target.reshape(1)
    limits = np.iinfo(target.dtype)
    spatial = math.prod(input.shape[2:])
    if input.flags.c_contiguous:
        # Flat (the kernels index it by its row-major position): the generated source is then
        # the same whatever the call's number of dimensions.  A strided input stays as it is.
        input = input.reshape(-1)
    return _Layout(
        input=input,
        target=target,
        weight=input if call.weight is None else cupy.ascontiguousarray(call.weight),
        spatial=spatial,
        ignore_matches=int(limits.min <= call.ignore_index <= limits.max),
    )


def raise_if_invalid(call: NLLCall, flag: cupy.ndarray, checked: bool) -> None:
    if not checked:
        return
    index = first_invalid(flag)
    if index is not None:
        value = int(call.target.reshape(-1)[index].get())
        raise target_out_of_range_error(value, call.n_classes, call.ignore_index)


def _totals(call: NLLCall, layout: _Layout, check: bool, flag: cupy.ndarray) -> cupy.ndarray:
    """``[loss, total_weight]`` for ``'mean'``/``'sum'``, from one pass over the targets."""
    compute = compute_dtype(call.dtype)
    size = layout.target.size
    loss_partials = reduce.empty_partials(size, compute)
    weight_partials = reduce.empty_partials(size, compute)
    nll_forward_partials()(
        layout.target, layout.input, layout.weight, *layout.scalars(call, check),
        loss_partials, weight_partials, flag, block_size=REDUCE_BLOCK)
    mode = reduce.MODE_WEIGHTED_MEAN if call.reduction == "mean" else reduce.MODE_SUM
    return reduce.finish(loss_partials, size, mode, weight_partials=weight_partials)


def _grad_input(call: NLLCall, layout: _Layout, grad_output: Array | float,
                total_weight: cupy.ndarray | None, check: bool,
                flag: cupy.ndarray) -> cupy.ndarray:
    upstream_mode, upstream, upstream_scalar = upstream_arguments(grad_output, call.reduction,
                                                                  layout.input)
    if total_weight is None:
        total_weight = layout.weight  # read for 'mean' only; any initialised array will do
    grad = cupy.empty(call.input.shape, dtype=call.dtype).reshape(-1)
    if check and grad.size == 0 and layout.target.size:
        # No gradient entries (C == 0) means no thread to check the targets: let the
        # forward pass do it.
        _totals(call, layout, check, flag)
    nll_backward()(
        cupy.ascontiguousarray(layout.target).reshape(-1), layout.weight, upstream,
        total_weight, upstream_scalar, call.n_classes, layout.spatial, call.ignore_index,
        layout.ignore_matches, int(call.weight is not None), int(check), upstream_mode,
        _REDUCTION_CODES[call.reduction], int(grad.size < 2**32), grad, flag)
    return grad.reshape(call.input.shape)


def forward(call: NLLCall) -> Array:
    """The loss, reduced as ``call.reduction`` says."""
    with call.input.device:  # everything, the flag too, on the inputs' device
        flag = invalid_flag(call.validate)
        layout = _layout(call)
        if call.reduction == "none":
            loss = cupy.empty(layout.target.shape, dtype=call.dtype)
            nll_forward()(layout.target, layout.input, layout.weight,
                          *layout.scalars(call, call.validate), loss, flag)
            loss = loss.reshape(call.loss_shape)
        else:
            loss = reduce.as_result(_totals(call, layout, call.validate, flag), call.dtype)
        raise_if_invalid(call, flag, call.validate)
    return loss


def backward(call: NLLCall, grad_output: Array | float) -> Array:
    """The gradient with respect to ``input``."""
    with call.input.device:  # everything, the flag too, on the inputs' device
        flag = invalid_flag(call.validate)
        layout = _layout(call)
        total_weight = None
        check_in_gradient = call.validate
        if call.reduction == "mean":
            total_weight = _totals(call, layout, call.validate, flag)[1:]
            check_in_gradient = False  # the pass above checked every target
        grad = _grad_input(call, layout, grad_output, total_weight, check_in_gradient, flag)
        raise_if_invalid(call, flag, call.validate)
    return grad


def loss_and_grad(call: NLLCall) -> tuple[Array, Array]:
    """The reduced loss and its gradient: one pass over the targets, one over the gradient."""
    with call.input.device:  # everything, the flag too, on the inputs' device
        flag = invalid_flag(call.validate)
        layout = _layout(call)
        totals = _totals(call, layout, call.validate, flag)
        grad = _grad_input(call, layout, 1.0, totals[1:], False, flag)
        raise_if_invalid(call, flag, call.validate)
    return reduce.as_result(totals, call.dtype), grad


# ------------------------------------------------------------------ the kernels

# Each thread of the forward kernels handles one target (n, s) of the (N, C, S) input.
_NLL_TARGET = """
const long long cls = al::nll_class(static_cast<long long>(t), n_classes, ignore_index,
                                    ignore_matches);
if (check && cls == al::NLL_OUT_OF_RANGE) al::record_invalid(&invalid[0], i);
A picked = 0;
A class_weight = 1;
if (cls >= 0) {
    const long long row = static_cast<long long>(i) / spatial;
    const long long offset = static_cast<long long>(i) % spatial;
    picked = A(x[(row * n_classes + cls) * spatial + offset]);
    if (has_weight) class_weight = A(w[cls]);
}
"""

_NLL_FORWARD_INPUTS = ("I t, raw X x, raw W w, int64 n_classes, int64 spatial, "
                       "int64 ignore_index, int32 ignore_matches, int32 has_weight, int32 check")


@kernel_factory
def nll_forward() -> cupy.ElementwiseKernel:
    """Per-element loss (``reduction='none'``)."""
    return cupy.ElementwiseKernel(
        _NLL_FORWARD_INPUTS,
        "R loss, raw uint64 invalid",
        _NLL_TARGET + "loss = R(al::nll_loss(cls, picked, class_weight));",
        name="arrayloss_nll_forward",
        preamble=preamble("al::compute_of<X>::type"),
    )


@kernel_factory
def nll_forward_partials() -> cupy.ElementwiseKernel:
    """Per-block sums of the loss and of the weights (the 'mean' denominator), one pass."""
    return cupy.ElementwiseKernel(
        _NLL_FORWARD_INPUTS,
        "raw A loss_partials, raw A weight_partials, raw uint64 invalid",
        _NLL_TARGET
        + "thread_loss += al::nll_loss(cls, picked, class_weight);\n"
        + "thread_weight += al::nll_weight(cls, class_weight);",
        name="arrayloss_nll_forward_partials",
        preamble=header(),
        loop_prep=LOSS_AND_WEIGHT_PREP,
        after_loop=LOSS_AND_WEIGHT_PARTIALS,
    )


@kernel_factory
def nll_backward() -> cupy.ElementwiseKernel:
    """The dense gradient, each entry written once: the coefficient at the target, else 0.

    ``upstream_mode`` 0 reads the Python number ``g_scalar``, 1 the 0-d array ``g[0]``, 2 the
    per-element array ``g[n * S + s]``.  ``narrow`` says the gradient has fewer than 2^32
    entries, so that the (N, C) case finds its row and column with 32-bit arithmetic.
    ``total_weight[0]`` is read for ``'mean'`` only, so other reductions may pass any
    initialised array there.
    """
    return cupy.ElementwiseKernel(
        "raw I t, raw W w, raw G g, raw T total_weight, float64 g_scalar, int64 n_classes, "
        "int64 spatial, int64 ignore_index, int32 ignore_matches, int32 has_weight, "
        "int32 check, int32 upstream_mode, int32 reduction, int32 narrow",
        "R grad, raw uint64 invalid",
        """
long long column;
long long element;
if (spatial == 1 && narrow) {
    // (N, C) below 2^32 entries: one 32-bit division instead of four 64-bit ones.
    const unsigned int position = static_cast<unsigned int>(i);
    const unsigned int classes = static_cast<unsigned int>(n_classes);
    element = position / classes;
    column = position - static_cast<unsigned int>(element) * classes;
} else if (spatial == 1) {
    const long long position = static_cast<long long>(i);
    element = position / n_classes;
    column = position - element * n_classes;
} else {
    const long long position = static_cast<long long>(i);
    const long long offset = position % spatial;
    column = (position / spatial) % n_classes;
    element = (position / spatial / n_classes) * spatial + offset;
}
const long long cls = al::nll_class(static_cast<long long>(t[element]), n_classes,
                                    ignore_index, ignore_matches);
if (check && column == 0 && cls == al::NLL_OUT_OF_RANGE) {
    al::record_invalid(&invalid[0], element);
}
A value = 0;
if (cls == column) {
    const A class_weight = has_weight ? A(w[cls]) : A(1);
    const A upstream = upstream_mode == 0 ? A(g_scalar)
                       : upstream_mode == 1 ? A(g[0]) : A(g[element]);
    const A total = reduction == al::REDUCE_MEAN ? A(total_weight[0]) : A(1);
    value = al::nll_grad_coefficient(reduction, class_weight, upstream, total);
}
grad = R(value);
""",
        name="arrayloss_nll_backward",
        preamble=preamble("al::compute_of<R>::type"),
    )
