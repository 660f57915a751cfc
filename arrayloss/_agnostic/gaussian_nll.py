"""Gaussian negative log-likelihood in pure array-API code.

Runs on any namespace array-api-compat knows.  The math, once::

    v    = max(var, eps)                       # clamp; the gradients treat it as identity
    d    = input - target
    loss = 0.5 * (log(v) + d**2 / v)  [+ 0.5 * log(2 pi) when full]
    dloss/dinput  =  ((0.5 G) / v) (2 d)      # G: upstream gradient per loss element
    dloss/dtarget = -dloss/dinput
    dloss/dvar    =  (0.5 G) / v - (0.5 G) ((d**2 / v) / v)

(PyTorch's operation order, so that inf and NaN appear where PyTorch's autograd gives them.)

Gradients are summed back over broadcast dimensions to each argument's shape.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import device

from .._calls import GAUSSIAN_GRADIENTS, GaussianNLLCall
from .._validation import NDARRAY, negative_var_error
from . import _gaussian_numpy
from ._blocked import Block, ordered_sum, part_of, row_blocks, run_blocks, spans
from ._helpers import as_0d, as_compute, compute_dtype, quiet_floating_point, sum_to_shape

Array = Any
Gradients = tuple[Array | None, Array | None, Array | None]
#: ``wrt`` of a forward pass: no gradient.
_NO_GRADIENTS: frozenset[str] = frozenset()

#: The constant ``full=True`` adds to every element: ``0.5 * log(2 * pi)``.
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class _Terms:
    """The intermediates shared by forward and backward, in the compute dtype."""

    diff: Array  # input - target, broadcast
    var: Array | float  # max(var, eps); the log-variance s itself with call.log_var
    precision: Array | float | None  # exp(-s) with call.log_var, else None
    weight: Array | float | None  # the beta-NLL weight var**beta; None for beta = 0


#: Up to this many variances, the sign check finds the smallest with argmin (measured: 1.0
#: against 2.8 us at 100 elements, 84 against 82 us at 1e6).
_ARGMIN_ELEMENTS = 1 << 16


def _check_values(call: GaussianNLLCall) -> None:
    if not call.validate or call.log_var or call.var_shape is None:
        return
    var = call.var
    if isinstance(var, NDARRAY):
        # One pass, no temporary: the smallest entry, NaN skipped (it passes through, as in
        # PyTorch).  argmin costs a third of a reduction on small arrays but stops at the
        # first NaN; fmin.reduce (NaN only where every entry is) decides then, and on large
        # arrays, where it is the faster.
        if not var.size:
            return
        smallest = var.item(var.argmin()) if var.size <= _ARGMIN_ELEMENTS else math.nan
        if smallest != smallest:
            smallest = np.fmin.reduce(var, axis=None)
        if smallest < 0:
            raise negative_var_error()
    elif bool(call.xp.any(var < 0)):  # False for NaN
        raise negative_var_error()


def _exp(xp: ModuleType, value: Array | float) -> Array | float:
    # A Python float stays one: math.exp raises on overflow, NumPy gives inf, as arrays do.
    return float(np.exp(value)) if isinstance(value, float) else xp.exp(value)


def _in_precision(xp: ModuleType, value: float, dtype: Any) -> float:
    """``value`` rounded to ``dtype`` (float32 or float64), kept a Python float."""
    if dtype == xp.float32:
        with quiet_floating_point():  # beyond float32's range is inf, as on every backend
            return float(np.float32(value))
    return value


def _terms(call: GaussianNLLCall, dtype: Any) -> _Terms:
    xp = call.xp
    diff = as_compute(xp, call.input, dtype) - as_compute(xp, call.target, dtype)
    term: Array | float
    if call.var_shape is None:
        # A number takes the compute dtype's precision, as PyTorch's expanded tensor does
        # (1e300 is inf in float32); `value < eps` is False for NaN, as in PyTorch's clamp.
        value, eps = _in_precision(xp, float(call.var), dtype), _in_precision(xp, call.eps, dtype)
        term = value if call.log_var or not value < eps else eps
    elif call.log_var:
        term = as_compute(xp, call.var, dtype)
    else:
        var = as_compute(xp, call.var, dtype)
        # eps as a 0-d array: array-api-compat's maximum(tensor, number) asks torch for a
        # result dtype, which TorchDynamo cannot trace (torch.compile(fullgraph=True)).
        term = xp.maximum(var, xp.asarray(call.eps, dtype=dtype, device=device(var)))
    precision = _exp(xp, -term) if call.log_var else None
    weight = None
    if call.beta != 0:
        weight = (_exp(xp, call.beta * term) if call.log_var
                  else float(np.power(term, call.beta)) if isinstance(term, float)
                  else term**call.beta)
    return _Terms(diff=diff, var=term, precision=precision, weight=weight)


#: The plain operator of each in-place one :func:`_update` takes.
_PLAIN = {operator.imul: operator.mul, operator.iadd: operator.add,
          operator.itruediv: operator.truediv}


def _update(array: Array, in_place: Any, other: Any) -> Array:
    """``array op= other``: in place where ``array`` is a NumPy array made here (a fresh
    full-size temporary costs NumPy page faults), a new array elsewhere (under
    ``torch.func.vmap`` a batched ``other`` cannot be written into an unbatched array)."""
    return in_place(array, other) if type(array) is NDARRAY else _PLAIN[in_place](array, other)


def _elementwise_loss(call: GaussianNLLCall, terms: _Terms) -> Array:
    xp = call.xp
    # Built in place on one new array: on NumPy every fresh full-size temporary costs page
    # faults, which made a chain of out-of-place operations several times slower.
    loss = terms.diff * terms.diff
    if terms.precision is not None:  # log-variance: 0.5 (s + d^2 exp(-s))
        loss = _update(loss, operator.imul, terms.precision)
        loss = _update(loss, operator.iadd, terms.var)
    else:
        loss = _update(loss, operator.itruediv, terms.var)
        log_var = _log_scalar(terms.var) if isinstance(terms.var, float) else xp.log(terms.var)
        loss = _update(loss, operator.iadd, log_var)
    if terms.weight is not None and not call.full:
        # beta-NLL: (0.5 w) in one pass, where 0.5 w is exact; x (0.5 w) is (0.5 x) w but
        # for results below the smallest normal number.
        loss = _update(loss, operator.imul, 0.5 * terms.weight)
        return loss
    loss = _update(loss, operator.imul, 0.5)
    if call.full:
        loss = _update(loss, operator.iadd, HALF_LOG_2PI)
    if terms.weight is not None:
        loss = _update(loss, operator.imul, terms.weight)
    return loss


def _log_scalar(value: float) -> float:
    # math.log raises for 0, where the array functions give -inf (a zero variance with eps=0).
    return -math.inf if value == 0 else math.log(value)


def _reduce(call: GaussianNLLCall, loss: Array) -> Array:
    xp = call.xp
    if call.reduction == "none":
        return as_0d(xp, xp.astype(loss, call.dtype, copy=False))  # 0-d: NumPy gives a scalar
    if call.reduction == "mean" and call.numel == 0:
        # The mean of nothing is NaN (as in PyTorch); computed without a 0/0 on the device.
        return xp.full((), math.nan, dtype=call.dtype, device=device(call.input))
    total = xp.sum(loss)
    if call.reduction == "mean":
        total = total / call.numel
    return as_0d(xp, xp.astype(as_0d(xp, total), call.dtype))


def _upstream(call: GaussianNLLCall, grad_output: Array | float, dtype: Any) -> Array | float:
    """The gradient reaching each loss element, ``G`` in the module docstring."""
    if not isinstance(grad_output, float):
        grad_output = as_compute(call.xp, grad_output, dtype)
    if call.reduction == "mean":
        return grad_output / call.numel if call.numel else grad_output * math.nan
    return grad_output


def _raw_gradients(
    call: GaussianNLLCall, terms: _Terms, upstream: Array | float, wrt: frozenset[str]
) -> Gradients:
    """The gradients in the compute dtype, summed to each argument's shape (var: as fitted)."""
    xp = call.xp
    if terms.weight is not None:  # beta-NLL: the weight is a constant factor of G
        upstream = upstream * terms.weight
    elements = _log_var_elements if terms.precision is not None else _var_elements
    grad_diff, grad_var = elements(terms, upstream, bool(wrt & {"input", "target"}),
                                   "var" in wrt)
    grad_input = grad_target = None
    if grad_diff is not None:
        if "target" in wrt:
            grad_target = sum_to_shape(xp, -grad_diff, tuple(call.target.shape))
        if "input" in wrt:
            grad_input = sum_to_shape(xp, grad_diff, tuple(call.input.shape))
    if grad_var is not None:
        assert not isinstance(call.var, float)
        grad_var = sum_to_shape(xp, grad_var, tuple(call.var.shape))
    return grad_input, grad_target, grad_var


def _var_elements(terms: _Terms, upstream: Array | float, diff_wanted: bool,
                  var_wanted: bool) -> tuple[Array | None, Array | None]:
    """Per element: d loss / d input and d loss / d var, in PyTorch's operation order so
    that overflow, inf and NaN come out where PyTorch's do::

        d input = ((0.5 G) / v) (2 d),   d var = (0.5 G) / v + (-(0.5 G)) ((d^2 / v) / v)

    Built in place on arrays made here (see _elementwise_loss).
    """
    half_upstream = 0.5 * upstream
    if isinstance(half_upstream, float) and isinstance(terms.var, float):
        # Two Python floats: IEEE division (inf, NaN), where Python's would raise.
        half_over_var: Array | float = float(np.divide(half_upstream, terms.var))
    else:
        half_over_var = half_upstream / terms.var
    grad_diff = grad_var = None
    if diff_wanted:
        grad_diff = terms.diff * 2.0
        grad_diff = _update(grad_diff, operator.imul, half_over_var)
    if var_wanted:
        grad_var = terms.diff * terms.diff
        grad_var = _update(grad_var, operator.itruediv, terms.var)
        grad_var = _update(grad_var, operator.itruediv, terms.var)
        grad_var = _update(grad_var, operator.imul, -half_upstream)
        grad_var = _update(grad_var, operator.iadd, half_over_var)
    return grad_diff, grad_var


def _log_var_elements(terms: _Terms, upstream: Array | float, diff_wanted: bool,
                      var_wanted: bool) -> tuple[Array | None, Array | None]:
    """Per element, the log-variance form: d input = G d exp(-s), d s = 0.5 G (1 - d^2 exp(-s))."""
    grad_diff = grad_var = None
    if diff_wanted:
        grad_diff = terms.diff * terms.precision
        grad_diff = _update(grad_diff, operator.imul, upstream)
    if var_wanted:
        grad_var = terms.diff * terms.diff
        grad_var = _update(grad_var, operator.imul, terms.precision)
        grad_var = _update(grad_var, operator.imul, -1.0)
        grad_var = _update(grad_var, operator.iadd, 1.0)
        grad_var = _update(grad_var, operator.imul, 0.5 * upstream)
    return grad_diff, grad_var


def _finish(call: GaussianNLLCall, grads: Gradients) -> Gradients:
    """Cast each gradient to its argument's dtype and give grad_var the caller's var shape."""
    xp = call.xp
    grad_input, grad_target, grad_var = grads
    # as_0d: NumPy arithmetic on 0-d arrays gives scalars; the caller gets arrays.
    if grad_input is not None:
        grad_input = as_0d(xp, xp.astype(grad_input, call.input.dtype, copy=False))
    if grad_target is not None:
        grad_target = as_0d(xp, xp.astype(grad_target, call.target.dtype, copy=False))
    if grad_var is not None:
        assert call.var_shape is not None and not isinstance(call.var, float)
        grad_var = xp.reshape(xp.astype(as_0d(xp, grad_var), call.var.dtype, copy=False),
                              call.var_shape)
    return grad_input, grad_target, grad_var


# ------------------------------------------------------------------ NumPy: blocks of rows


def _block_call(call: GaussianNLLCall, block: Block) -> GaussianNLLCall:
    ndim = len(call.loss_shape)
    var = call.var if isinstance(call.var, float) else part_of(call.var, block, ndim)
    loss_shape = list(call.loss_shape)
    loss_shape[block.axis] = block.extent(loss_shape[block.axis])
    return replace(
        call,
        input=part_of(call.input, block, ndim),
        target=part_of(call.target, block, ndim),
        var=var,
        var_shape=None if isinstance(var, float) else tuple(var.shape),
        loss_shape=tuple(loss_shape),
    )


def _total(call: GaussianNLLCall, partials: list[Array]) -> Array:
    """The reduced loss from per-block sums, added in block order in double precision
    (see :func:`._blocked.ordered_sum`)."""
    total = ordered_sum(float(part) for part in partials)
    if call.reduction == "mean":
        total = total / call.numel if call.numel else math.nan
    with quiet_floating_point():  # a float16 sum may overflow to inf, as in PyTorch
        return call.xp.asarray(total, dtype=call.dtype)


def _forward_blocked(call: GaussianNLLCall, blocks: list[Block], dtype: Any) -> Array:
    xp = call.xp
    if call.reduction == "none":
        out = xp.empty(call.loss_shape, dtype=call.dtype)

        def write_block(part: Block) -> None:
            block = _block_call(call, part)
            with quiet_floating_point():
                out[part.index()] = _elementwise_loss(block, _terms(block, dtype))

        run_blocks(write_block, blocks)
        return out

    def sum_block(part: Block) -> Array:
        block = _block_call(call, part)
        with quiet_floating_point():
            return xp.sum(_elementwise_loss(block, _terms(block, dtype)))

    return _total(call, run_blocks(sum_block, blocks))


def _gradients_blocked(
    call: GaussianNLLCall,
    blocks: list[Block],
    upstream: Array | float,
    wrt: frozenset[str],
    dtype: Any,
    with_loss: bool,
) -> tuple[Array | None, Gradients]:
    """Gradients (and the reduced loss if ``with_loss``), one pass over the blocks.

    Gradients of arguments split into blocks are written into their part of the output;
    those of arguments every block shares (broadcast along the blocks' axis) are summed over
    the blocks in block order.
    """
    xp = call.xp
    ndim = len(call.loss_shape)
    arguments = (call.input, call.target, call.var)
    split = [name in wrt and not isinstance(arg, float) and spans(arg, blocks[0], ndim)
             for name, arg in zip(GAUSSIAN_GRADIENTS, arguments, strict=True)]
    outputs = [xp.empty(arg.shape, dtype=arg.dtype) if is_split else None
               for arg, is_split in zip(arguments, split, strict=True)]

    def block_work(part: Block) -> tuple[Array | None, Gradients]:
        block = _block_call(call, part)
        block_upstream = upstream
        if not isinstance(upstream, float) and upstream.ndim == ndim:
            block_upstream = part_of(upstream, part, ndim)
        with quiet_floating_point():
            terms = _terms(block, dtype)
            loss = xp.sum(_elementwise_loss(block, terms)) if with_loss else None
            grads = _raw_gradients(block, terms, block_upstream, wrt)
        shared = []
        for grad, output in zip(grads, outputs, strict=True):
            if output is not None:
                output[part.index() if part.axis == 0 else (..., part.span)] = grad
                grad = None
            shared.append(grad)
        return loss, (shared[0], shared[1], shared[2])

    results = run_blocks(block_work, blocks)
    combined: list[Array | None] = list(outputs)
    for position in range(3):
        if combined[position] is None and results[0][1][position] is not None:
            total: Any = results[0][1][position]
            for _, grads in results[1:]:
                total = total + grads[position]
            combined[position] = total
    loss = _total(call, [loss for loss, _ in results]) if with_loss else None
    return loss, _finish(call, (combined[0], combined[1], combined[2]))


# ------------------------------------------------------------------ the backend interface


def forward(call: GaussianNLLCall) -> Array:
    """The loss, reduced as ``call.reduction`` says."""
    _check_values(call)
    if _gaussian_numpy.applies(call):
        return _gaussian_numpy.run(call, _NO_GRADIENTS)[0]
    dtype = compute_dtype(call.xp, call.dtype)
    blocks = row_blocks(call.xp, call.loss_shape)
    with quiet_floating_point():
        if blocks is not None:
            return _forward_blocked(call, blocks, dtype)
        return _reduce(call, _elementwise_loss(call, _terms(call, dtype)))


def backward(call: GaussianNLLCall, grad_output: Array | float, wrt: frozenset[str]) -> Gradients:
    """The gradients named in ``wrt`` (the others are ``None``)."""
    _check_values(call)
    if _gaussian_numpy.applies(call) and _gaussian_numpy.takes_upstream(call, grad_output):
        return _gaussian_numpy.run(call, wrt, want_loss=False, grad_output=grad_output)[1]
    dtype = compute_dtype(call.xp, call.dtype)
    blocks = row_blocks(call.xp, call.loss_shape)
    with quiet_floating_point():
        upstream = _upstream(call, grad_output, dtype)
        if blocks is not None:
            return _gradients_blocked(call, blocks, upstream, wrt, dtype, with_loss=False)[1]
        terms = _terms(call, dtype)
        return _finish(call, _raw_gradients(call, terms, upstream, wrt))


def loss_and_grad(call: GaussianNLLCall, wrt: frozenset[str]) -> tuple[Array, Gradients]:
    """The reduced loss and its gradients, sharing the intermediates."""
    _check_values(call)
    if _gaussian_numpy.applies(call):
        loss, grads = _gaussian_numpy.run(call, wrt)
        return loss, grads
    dtype = compute_dtype(call.xp, call.dtype)
    blocks = row_blocks(call.xp, call.loss_shape)
    with quiet_floating_point():
        upstream = _upstream(call, 1.0, dtype)
        if blocks is not None:
            loss, grads = _gradients_blocked(call, blocks, upstream, wrt, dtype, with_loss=True)
            return loss, grads
        terms = _terms(call, dtype)
        loss = _reduce(call, _elementwise_loss(call, terms))
        return loss, _finish(call, _raw_gradients(call, terms, upstream, wrt))
