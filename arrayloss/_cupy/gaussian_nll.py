"""Gaussian NLL on CuPy arrays: fused kernels, one pass over memory per call.

* ``'none'``: one elementwise pass.  ``'mean'``/``'sum'``: one pass writing per-block partials,
  then a one-block second pass (:mod:`.reduce`).
* C-contiguous ``input`` and ``target`` of the loss's shape, with a scalar, full or one-per-row
  variance, go to :mod:`.gaussian_nll_contiguous` (several elements per thread, vector loads,
  a row variance's gradient summed inside the kernel).  The kernels here take the rest.
* Backward: one pass writing only the requested gradients.  A gradient whose argument spans
  the whole loss is written in its final dtype; one whose argument was broadcast in another
  way (a ``(1, D)`` variance, a broadcast target, a strided ``(N, 1)`` variance) is written to
  a compute-dtype scratch array of the loss's shape and summed back over the broadcast axes,
  which reads the scratch once instead of the inputs again.
* A scalar variance is a kernel argument; a broadcast one is read in place, never copied.
* Validation is a flag written by the same kernel; a checked call reads it once.
"""

from __future__ import annotations

import math
from typing import Any

import cupy

from .._agnostic.gaussian_nll import HALF_LOG_2PI
from .._calls import GaussianNLLCall
from .._validation import negative_var_error
from . import gaussian_nll_contiguous as contiguous
from . import reduce
from ._common import compute_dtype, first_invalid, invalid_flag
from ._kernels import REDUCE_BLOCK, block_partial, header, kernel_factory, preamble

Array = Any
Gradients = tuple[Array | None, Array | None, Array | None]

_WANT_BITS = {"input": 1, "target": 2, "var": 4}


def _check(call: GaussianNLLCall) -> bool:
    # A scalar var was checked on the host already; a log-variance may be negative.
    return call.validate and not isinstance(call.var, float) and not call.log_var


def _options(call: GaussianNLLCall) -> tuple[float, int, float]:
    """The kernels' (eps, log_var, beta) arguments."""
    return call.eps, int(call.log_var), call.beta


def _raise_if_invalid(flag: cupy.ndarray, checked: bool) -> None:
    if checked and first_invalid(flag) is not None:
        raise negative_var_error()


def _constant(call: GaussianNLLCall) -> float:
    return HALF_LOG_2PI if call.full else 0.0


def _want(wrt: frozenset[str]) -> int:
    return sum(bit for name, bit in _WANT_BITS.items() if name in wrt)


def _contiguous_forward(call: GaussianNLLCall, plan: contiguous.Layout, checked: bool,
                        flag: cupy.ndarray) -> cupy.ndarray:
    """The forward through :mod:`.gaussian_nll_contiguous`'s kernels."""
    if call.reduction == "none":
        loss = cupy.empty(call.loss_shape, dtype=call.dtype)
        contiguous.launch("forward", call, plan, _options(call), _constant(call), None, 1.0, 0,
                          checked, [loss], flag)
        return loss
    threads, _ = contiguous.launch_threads(plan)
    partials = contiguous.empty_partials(threads, compute_dtype(call.dtype))
    contiguous.launch("partials", call, plan, _options(call), _constant(call), None, 1.0, 0,
                      checked, [partials], flag)
    return reduce.as_result(contiguous.finish(partials, threads, call, _mode(call)), call.dtype)


def _mode(call: GaussianNLLCall) -> int:
    return reduce.MODE_MEAN if call.reduction == "mean" else reduce.MODE_SUM


class _GradientOutputs:
    """The kernel's gradient outputs and how each becomes the caller's gradient."""

    def __init__(self, call: GaussianNLLCall, wrt: frozenset[str]) -> None:
        compute = compute_dtype(call.dtype)
        self.arrays: list[cupy.ndarray] = []
        # Per gradient: None if not wanted, else (its argument, the shape it is returned in).
        self._targets: list[tuple[Array, tuple[int, ...]] | None] = []
        self.want = 0
        names = ("input", "target") if isinstance(call.var, float) else ("input", "target", "var")
        for name in names:
            if name not in wrt:
                self.arrays.append(cupy.empty(1, dtype=compute))  # never written
                self._targets.append(None)
                continue
            self.want |= _WANT_BITS[name]
            argument = getattr(call, name)
            shape = call.var_shape if name == "var" else tuple(argument.shape)
            assert shape is not None
            spans_loss = tuple(argument.shape) == call.loss_shape
            # Written in its final dtype, or to a compute-dtype scratch summed back below.
            self.arrays.append(cupy.empty(call.loss_shape,
                                          dtype=argument.dtype if spans_loss else compute))
            self._targets.append((argument, shape))

    def results(self) -> Gradients:
        grads: list[Array | None] = []
        for array, target in zip(self.arrays, self._targets, strict=True):
            if target is None:
                grads.append(None)
                continue
            argument, shape = target
            if array.dtype != argument.dtype or array.shape != tuple(argument.shape):
                array = _sum_to(array, tuple(argument.shape)).astype(argument.dtype)
            grads.append(array.reshape(shape))
        grads += [None] * (3 - len(grads))
        return grads[0], grads[1], grads[2]


#: Rows per first-stage group when a broadcast gradient is summed over a long leading axis.
_GROUP_ROWS = 4096


def _sum_to(full: cupy.ndarray, shape: tuple[int, ...]) -> cupy.ndarray:
    """Sum over the axes along which an array of ``shape`` was broadcast to ``full.shape``.

    A sum over a long leading axis to few outputs (a variance of shape ``(1, D)``, or one
    variance for everything) gives CuPy's reduction too few blocks: about 1 ms at N = 1e6.
    It runs in two stages instead: groups of ``_GROUP_ROWS`` rows first (many outputs, the
    whole GPU), then the group sums, in a fixed order.
    """
    lead = full.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + axis for axis, size in enumerate(shape) if size == 1 and full.shape[lead + axis] != 1
    )
    if not axes:
        return full
    rows = full.shape[0] if full.ndim else 0
    if 0 in axes and rows >= 2 * _GROUP_ROWS and full.flags.c_contiguous:
        whole = rows - rows % _GROUP_ROWS
        groups = full[:whole].reshape(whole // _GROUP_ROWS, _GROUP_ROWS, *full.shape[1:])
        partial = groups.sum(axis=1)  # (groups, ...): one output per group and column
        if whole < rows:
            partial = cupy.concatenate([partial, full[whole:].sum(axis=0, keepdims=True)])
        full = partial
    return full.sum(axis=axes, keepdims=True).reshape(shape)


def forward(call: GaussianNLLCall) -> Array:
    """The loss, reduced as ``call.reduction`` says."""
    checked = _check(call)
    scalar_var = isinstance(call.var, float)
    plan = contiguous.layout(call)
    with call.input.device:  # everything, the flag too, on the inputs' device
        flag = invalid_flag(checked)
        if plan is not None:
            loss = _contiguous_forward(call, plan, checked, flag)
        elif call.reduction == "none":
            loss = cupy.empty(call.loss_shape, dtype=call.dtype)
            gaussian_forward(scalar_var)(
                call.input, call.target, call.var, *_options(call), _constant(call),
                int(checked), loss, flag)
        else:
            partials = reduce.empty_partials(call.numel, compute_dtype(call.dtype))
            gaussian_forward_partials(scalar_var)(
                call.input, call.target, call.var, *_options(call), _constant(call),
                int(checked), partials, flag, block_size=REDUCE_BLOCK)
            totals = reduce.finish(partials, call.numel, _mode(call), divisor=call.numel)
            loss = reduce.as_result(totals, call.dtype)
        _raise_if_invalid(flag, checked)
    return loss


def backward(call: GaussianNLLCall, grad_output: Array | float, wrt: frozenset[str]) -> Gradients:
    """The gradients named in ``wrt``, in one pass."""
    checked = _check(call)
    scalar_var = isinstance(call.var, float)
    divisor = float(call.numel) if call.reduction == "mean" else 1.0
    plan = contiguous.layout(call, grad_output)
    with call.input.device:  # everything, the flag too, on the inputs' device
        flag = invalid_flag(checked)
        if plan is not None:
            arrays = contiguous.gradient_outputs(call, plan, wrt)
            contiguous.launch("backward", call, plan, _options(call), 0.0, grad_output, divisor,
                              _want(wrt), checked, arrays, flag)
            _raise_if_invalid(flag, checked)
            return contiguous.gradient_results(call, wrt, arrays)
        outputs = _GradientOutputs(call, wrt)
        kernel = gaussian_backward(scalar_var, not isinstance(grad_output, float))
        kernel(call.input, call.target, call.var, grad_output, *_options(call), divisor,
               outputs.want, int(checked), *outputs.arrays, flag)
        _raise_if_invalid(flag, checked)
        return outputs.results()


def loss_and_grad(call: GaussianNLLCall, wrt: frozenset[str]) -> tuple[Array, Gradients]:
    """The reduced loss and the gradients named in ``wrt``, in one pass."""
    checked = _check(call)
    scalar_var = isinstance(call.var, float)
    if call.reduction == "mean":
        upstream = 1.0 / call.numel if call.numel else math.nan
    else:
        upstream = 1.0
    plan = contiguous.layout(call)
    with call.input.device:  # everything, the flag too, on the inputs' device
        flag = invalid_flag(checked)
        if plan is not None:
            arrays = contiguous.gradient_outputs(call, plan, wrt)
            threads, _ = contiguous.launch_threads(plan)
            partials = contiguous.empty_partials(threads, compute_dtype(call.dtype))
            contiguous.launch("loss_and_grad", call, plan, _options(call), _constant(call),
                              upstream, 1.0, _want(wrt), checked, [partials, *arrays], flag)
            totals = contiguous.finish(partials, threads, call, _mode(call))
            _raise_if_invalid(flag, checked)
            return (reduce.as_result(totals, call.dtype),
                    contiguous.gradient_results(call, wrt, arrays))
        outputs = _GradientOutputs(call, wrt)
        partials = reduce.empty_partials(call.numel, compute_dtype(call.dtype))
        gaussian_loss_and_grad(scalar_var)(
            call.input, call.target, call.var, *_options(call), _constant(call), upstream,
            outputs.want, int(checked), partials, *outputs.arrays, flag,
            block_size=REDUCE_BLOCK)
        totals = reduce.finish(partials, call.numel, _mode(call), divisor=call.numel)
        _raise_if_invalid(flag, checked)
        return reduce.as_result(totals, call.dtype), outputs.results()


# ------------------------------------------------------------------ the kernels


def _gaussian_inputs(scalar_var: bool) -> str:
    return "X x, T t, " + ("float64 v" if scalar_var else "V v")


def _gaussian_compute(scalar_var: bool) -> str:
    # A Python-number variance is weak: it never widens the compute type.
    return "al::compute_of<X, T>::type" if scalar_var else "al::compute_of<X, T, V>::type"


# `term` is max(var, eps), or the log-variance itself with log_var; `weight` the beta-NLL
# weight, exactly 1 for beta = 0 (a uniform branch: no cost, the same bits as without it).
# The three loads come first, before the check's branch: the invalid flag's atomic store
# might alias x and t for all the compiler knows, so loads after it would wait for it (two
# dependent memory round trips per element instead of one).
_GAUSSIAN_PROLOGUE = """
const A var_value = A(v);
const A input_value = A(x);
const A target_value = A(t);
if (check && al::gaussian_var_is_invalid(var_value)) al::record_invalid(&invalid[0], i);
const A term = al::gaussian_term(var_value, A(eps), log_var);
const A weight = beta == 0 ? A(1) : al::beta_weight(term, A(beta), log_var);
"""

_GAUSSIAN_OPTIONS = ", float64 eps, int32 log_var, float64 beta"
_GAUSSIAN_LOSS = ("weight * al::gaussian_element(input_value, target_value, term, A(constant), "
                  "log_var)")

_GAUSSIAN_GRADIENTS = """
if (want & 3) {
    const A grad_diff = al::gaussian_element_grad_input(input_value, target_value, term,
                                                        upstream, log_var);
    if (want & 1) grad_input[i] = J(grad_diff);
    if (want & 2) grad_target[i] = K(-grad_diff);
}
"""

_GAUSSIAN_GRAD_VAR = """
if (want & 4) {
    grad_var[i] = L(al::gaussian_element_grad_var(input_value, target_value, term, upstream,
                                                  log_var));
}
"""


def _gaussian_grad_outputs(scalar_var: bool) -> str:
    outputs = "raw J grad_input, raw K grad_target"
    return outputs if scalar_var else outputs + ", raw L grad_var"


def _gaussian_grad_code(scalar_var: bool) -> str:
    return _GAUSSIAN_GRADIENTS + ("" if scalar_var else _GAUSSIAN_GRAD_VAR)


@kernel_factory
def gaussian_forward(scalar_var: bool) -> cupy.ElementwiseKernel:
    """Per-element loss (``reduction='none'``): one pass, one write."""
    return cupy.ElementwiseKernel(
        _gaussian_inputs(scalar_var) + _GAUSSIAN_OPTIONS + ", float64 constant, int32 check",
        "R loss, raw uint64 invalid",
        _GAUSSIAN_PROLOGUE + f"loss = R({_GAUSSIAN_LOSS});",
        name="arrayloss_gaussian_nll_forward" + ("_scalar_var" if scalar_var else ""),
        preamble=preamble(_gaussian_compute(scalar_var)),
    )


@kernel_factory
def gaussian_forward_partials(scalar_var: bool) -> cupy.ElementwiseKernel:
    """Per-block sums of the loss (``'mean'`` / ``'sum'``); :mod:`.reduce` finishes them."""
    return cupy.ElementwiseKernel(
        _gaussian_inputs(scalar_var) + _GAUSSIAN_OPTIONS + ", float64 constant, int32 check",
        "raw A partials, raw uint64 invalid",
        _GAUSSIAN_PROLOGUE + f"thread_total += {_GAUSSIAN_LOSS};",
        name="arrayloss_gaussian_nll_forward_partials" + ("_scalar_var" if scalar_var else ""),
        preamble=header(),
        loop_prep="A thread_total = 0;",
        after_loop=block_partial("thread_total", "partials"),
    )


@kernel_factory
def gaussian_backward(scalar_var: bool, upstream_array: bool) -> cupy.ElementwiseKernel:
    """The requested gradients (bits of ``want``: 1 input, 2 target, 4 var) in one pass.

    ``g`` is a Python number or a 0-d array (``'mean'``/``'sum'``) or an array of the loss's
    shape (``'none'``); ``divisor`` is the number of loss elements for ``'mean'``, else 1.
    Outputs are C-contiguous arrays of the loss's shape, indexed by the flat position ``i``.
    """
    upstream = "G g" if upstream_array else "float64 g"
    return cupy.ElementwiseKernel(
        _gaussian_inputs(scalar_var)
        + f", {upstream}{_GAUSSIAN_OPTIONS}, float64 divisor, int32 want, int32 check",
        _gaussian_grad_outputs(scalar_var) + ", raw uint64 invalid",
        _GAUSSIAN_PROLOGUE + "const A upstream = A(g) / A(divisor) * weight;\n"
        + _gaussian_grad_code(scalar_var),
        name="arrayloss_gaussian_nll_backward" + ("_scalar_var" if scalar_var else ""),
        preamble=preamble(_gaussian_compute(scalar_var)),
    )


@kernel_factory
def gaussian_loss_and_grad(scalar_var: bool) -> cupy.ElementwiseKernel:
    """Loss partials and the requested gradients in one pass over memory."""
    return cupy.ElementwiseKernel(
        _gaussian_inputs(scalar_var)
        + f"{_GAUSSIAN_OPTIONS}, float64 constant, float64 g, int32 want, int32 check",
        "raw A partials, " + _gaussian_grad_outputs(scalar_var) + ", raw uint64 invalid",
        _GAUSSIAN_PROLOGUE + "const A upstream = A(g) * weight;\n"
        + f"thread_total += {_GAUSSIAN_LOSS};\n"
        + _gaussian_grad_code(scalar_var),
        name="arrayloss_gaussian_nll_loss_and_grad" + ("_scalar_var" if scalar_var else ""),
        preamble=header(),
        loop_prep="A thread_total = 0;",
        after_loop=block_partial("thread_total", "partials"),
    )
