"""NumPy only: Gaussian NLL's forward and loss-and-gradient in cache-sized blocks.

The math of :mod:`.gaussian_nll`, operation for operation (so every element, inf and NaN
included, is bitwise what the generic code gives), written with NumPy's ``out=`` arguments:
each block computes in per-thread scratch buffers reused from call to call and writes its
gradients straight into their slots of the outputs.  A block costs a dozen passes over memory
that stays in cache and no allocation, where the generic code allocates a full-size temporary
per operation (each one page-faulting in once the allocator has returned it to the OS).  The
share of ``d**2 / v`` between the loss and ``d var`` saves two more passes.

It runs where the arrays need no casting and no gradient is summed over a broadcast of
``input`` or ``target``: NumPy arrays of one dtype (float32 or float64), ``input`` and
``target`` of the loss's shape, ``var`` a number or any array that broadcasts.  Everything else
takes the generic path; the parity suite runs both.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validation import NDARRAY
from ._blocked import (
    LARGEST_BLOCK,
    SMALLEST_BLOCK,
    Block,
    filled,
    ordered_sum,
    part_of,
    plan_blocks,
    run_blocks,
    scratch,
    spans,
)
from ._helpers import (
    as_compute,
    quiet_floating_point,
    restore_floating_point,
    silence_floating_point,
)

if TYPE_CHECKING:
    from .._calls import GaussianNLLCall

Array = Any

#: From this many elements the blocks run in worker threads.  Below it a second thread
#: costs more than it gains: each block's dozen NumPy calls hand the GIL over a dozen times
#: (see _cross_entropy_numpy.BLOCKS_PER_WORKER).  Measured on a 2-core EPYC, float32, forward
#: and loss+grad, rows and full variances, serial over threaded: 1e5 elements 0.65-0.80x the
#: time, 2e5 0.84-1.36x, 3e5 1.1-1.3x, 1e6 1.5-1.7x.
THREADED_ELEMENTS = 1 << 18

_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# The names every small call reaches for, looked up once (why: see _validation.NDARRAY).
_asarray = np.asarray
_add, _subtract, _multiply, _maximum, _log_ufunc = (np.add, np.subtract, np.multiply,
                                                      np.maximum, np.log)
#: ``full=True``'s constant, as in the generic module.
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def applies(call: GaussianNLLCall) -> bool:
    """Whether this path computes ``call`` (see the module docstring)."""
    input, dtype, shape = call.input, call.dtype, call.loss_shape
    # NumPy first: another library's dtype warns when compared with NumPy's.
    if not isinstance(input, NDARRAY) or dtype not in _FAST_DTYPES or not shape or 0 in shape:
        return False
    target, var = call.target, call.var
    # ``is`` first: equal dtypes are most often one object, which spares NumPy's == its
    # rich comparison (200 instructions a call of the 10,000 above bare NumPy, callgrind).
    return (input.shape == shape and target.shape == shape
            and (target.dtype is dtype or target.dtype == dtype)
            and (isinstance(var, float) or var.dtype is dtype or var.dtype == dtype))


#: Below this many elements (128 KiB of float32, glibc's threshold for mapping memory) a
#: block's temporaries come from the heap at no page-fault cost: looking up the scratch
#: buffers would cost more than allocating (measured at 10,000 elements).
SCRATCH_ELEMENTS = 1 << 15


def _buffer(shape: tuple[int, ...], dtype: Any, slot: int, reuse: bool) -> Array | None:
    """A scratch buffer for an ``out=`` argument, or None (NumPy allocates) on small calls."""
    return scratch(shape, dtype, slot) if reuse else None


def _variance(call: GaussianNLLCall, var: Any, scalar_term: float | None, reuse: bool
              ) -> tuple[Any, Any, Any]:
    """The generic ``_terms`` for one block's variance (small: a row's or a block's share):
    ``term`` (max(var, eps), or the log-variance itself), ``precision`` exp(-s) for
    log-variances (else None) and the beta-NLL weight (None for beta = 0)."""
    if scalar_term is not None:
        term: Any = scalar_term
    elif call.log_var:
        term = var
    else:
        # Against an array of eps: NumPy's loop against a number is not vectorised.
        eps = filled(var.shape, call.dtype, call.eps)
        term = _maximum(var, eps, out=scratch(var.shape, call.dtype, 3) if reuse else None)
    precision: Any = None
    if call.log_var:
        if isinstance(term, float):
            precision = float(np.exp(-term))
        else:
            precision = np.negative(term, out=_buffer(term.shape, call.dtype, 3, reuse))
            np.exp(precision, out=precision)
    weight: Any = None
    if call.beta != 0:
        if call.log_var:
            weight = (float(np.exp(call.beta * term)) if isinstance(term, float)
                      else np.exp(call.beta * term))
        else:
            weight = (float(np.power(term, call.beta)) if isinstance(term, float)
                      else term**call.beta)
    return term, precision, weight


def _log(term: Any, reuse: bool, in_place: bool) -> Any:
    """log(term); ``in_place`` into term's own buffer (a temporary no longer needed)."""
    if isinstance(term, float):  # math.log raises for 0, where log(0) is -inf
        return -math.inf if term == 0 else math.log(term)
    return _log_ufunc(term, out=term if in_place else _buffer(term.shape, term.dtype, 4, reuse))


def _per_row(weight: Array | float | None, loss: Array) -> bool:
    """Whether ``weight`` is one value per row of a 2-D ``loss``."""
    return (isinstance(weight, NDARRAY) and loss.ndim == 2
            and weight.shape == (loss.shape[0], 1))


def _halve_and_weigh(loss: Array, full: bool, weight: Array | float | None) -> None:
    """``loss = (0.5 loss [+ 0.5 log 2 pi]) w`` in place, the generic module's rule."""
    if weight is not None and not full:
        loss *= 0.5 * weight  # one pass (0.5 w is exact)
        return
    loss *= 0.5
    if full:
        loss += HALF_LOG_2PI
    if weight is not None:
        loss *= weight


def _block(call: GaussianNLLCall, part: Block | None, scalar_term: float | None,
           upstream: Array | float, wrt: frozenset[str], want_loss: bool, losses: Array | None,
           grads: tuple[Array | None, Array | None, Array | None], reuse: bool
           ) -> tuple[float, Array | None]:
    """One block (``part``; None for all of the loss at once): its loss sum (or its losses
    into ``losses``; neither without ``want_loss``) and its gradients into ``grads`` (input,
    target, var); returns the loss sum and, for a var broadcast along the blocks' axis, this
    block's share of ``d var``."""
    ndim = len(call.loss_shape)
    var: Any = call.var
    index: Any
    if part is None:
        x, t, index = call.input, call.target, ...
    else:
        x, t, index = part_of(call.input, part, ndim), part_of(call.target, part, ndim), \
            part.index()
        if not isinstance(var, float):
            var = part_of(var, part, ndim)
    shape, dtype = x.shape, call.dtype
    term, precision, weight = _variance(call, var, scalar_term, reuse)

    # (Scratch inline rather than by _buffer: a small call feels every Python call.)
    diff = _subtract(x, t, out=scratch(shape, dtype, 0) if reuse else None)
    squares = None  # a row's sum of d**2, where its variance is the row's (see below)
    if (losses is None and ndim == 2 and shape[1] > 1 and not isinstance(term, float)
            and term.shape == (shape[0], 1) and not isinstance(upstream, NDARRAY)
            and (part is None or part.axis == 0)):
        # One variance per row (a log-variance, a beta weight: one per row too) and a
        # reduced loss: the loss and d var need d**2 only summed over each row,
        # sum_d d**2 / v = (sum_d d**2) / v, so one pass over the row (einsum reads d once
        # and writes nothing) replaces the N x D quotient q and its passes.
        squares = np.einsum("ij,ij->i", diff, diff)
        if not np.isfinite(squares).all():
            # A row's sum of d**2 past the dtype's range where each d**2 / v may not be (or
            # an inf or NaN in the row): the elementwise quotients below, as the generic code.
            squares = None
    q: Any = None
    if squares is None:
        # q = d**2 / v (d**2 exp(-s) for log-variances): the loss's first term, and d var's.
        q = _multiply(diff, diff, out=scratch(shape, dtype, 1) if reuse else None)
        if precision is not None:
            q *= precision
        else:
            q /= term
    total = 0.0
    if squares is not None:
        if want_loss:
            total = _row_variance_total(call, squares, term, precision, weight, shape)
    elif want_loss:
        # A forward pass needs neither d nor max(var, eps) past here: the log and the losses
        # reuse their buffers (three temporaries fewer on a small call).
        forward_only = not wrt
        log_term = term if precision is not None else _log(term, reuse, in_place=forward_only)
        out = losses[index] if losses is not None else (
            diff if forward_only else _buffer(shape, dtype, 2, reuse))
        loss = _add(q, log_term, out=out)
        if losses is None and weight is not None and not call.full and _per_row(weight, loss):
            # A reduced beta-NLL with one weight per row: the weights times the block (a
            # matrix-vector product, one BLAS pass), then its column sums.  A broadcast
            # weight costs NumPy a short inner loop per row (3.5x a plain multiply), and
            # so do row sums (axis=1): 6x the product, measured on 2048 x 64 float32.
            assert isinstance(weight, NDARRAY)
            total = float(_add.reduce(np.dot(weight[:, 0], loss))) * 0.5
        else:
            if weight is None and not call.full:
                loss *= 0.5  # _halve_and_weigh's first case, without a call
            else:
                _halve_and_weigh(loss, call.full, weight)
            if losses is None:
                total = float(_add.reduce(loss, axis=None))
    if not wrt:
        return total, None

    grad_input, grad_target, grad_var = grads
    if isinstance(upstream, NDARRAY) and part is not None:  # 'none': G per element
        upstream = part_of(upstream, part, ndim)
    g: Any = upstream if weight is None else upstream * weight
    half_g: Any = (_multiply(g, 0.5, out=_buffer(g.shape, dtype, 5, reuse))
                   if isinstance(g, NDARRAY) else 0.5 * g)
    half_over_var: Any = None  # the log-variance gradients below do without it
    if precision is None:
        if isinstance(half_g, float) and isinstance(term, float):
            half_over_var = float(np.divide(half_g, term))
        else:
            half_over_var = np.divide(half_g, term, out=_buffer(
                np.broadcast_shapes(np.shape(half_g), np.shape(term)), dtype, 4, reuse))
    if grad_input is not None or grad_target is not None:
        slot = grad_input[index] if grad_input is not None else _buffer(shape, dtype, 2, reuse)
        if precision is not None:  # d input = G d exp(-s)
            slot = _multiply(diff, precision, out=slot)
            slot *= g
        else:  # d input = ((0.5 G) / v) (2 d)
            slot = _multiply(diff, 2.0, out=slot)
            slot *= half_over_var
        if grad_target is not None:
            np.negative(slot, out=grad_target[index])
    if grad_var is None:
        return total, None
    if squares is not None:
        grad_var[index] = _row_variance_gradient(squares, term, precision, half_g,
                                                 half_over_var, shape[1])
        return total, None
    assert q is not None
    # d var = (0.5 G) / v - (0.5 G) ((d^2 / v) / v);  d s = 0.5 G (1 - d^2 exp(-s)).
    if precision is not None:
        q *= -1.0
        q += 1.0
        q *= half_g
    else:
        q /= term
        if isinstance(half_g, float):
            q *= -half_g
        elif half_g.size < q.size:  # one per row (beta weights): negate the small factor
            q *= np.negative(half_g)
        else:  # q * (-h) is -(q * h), bit for bit, without a negated copy of h
            q *= half_g
            np.negative(q, out=q)
        q += half_over_var
    covered = part is not None and spans(call.var, part, ndim)
    if var.shape == shape and (part is None or covered):
        grad_var[index] = q
        return total, None
    axes = tuple(axis for axis in range(ndim) if var.shape[axis] == 1 and shape[axis] != 1)
    summed = np.sum(q, axis=axes, keepdims=True)
    if covered:
        grad_var[index] = summed
        return total, None
    return total, summed


def _row_variance_total(call: GaussianNLLCall, squares: Array, term: Array,
                        precision: Array | None, weight: Array | None,
                        shape: tuple[int, ...]) -> float:
    """A block's loss sum with one variance per row, from the rows' sums ``S`` of d**2:
    ``sum_n w_n 0.5 (S_n / v_n + D log v_n)`` (``S_n exp(-s_n) + D s_n`` for log-variances;
    ``w`` the beta weights, else 1), plus ``0.5 log 2 pi`` an element, weighed, for
    ``full``; the rows' terms added in double precision."""
    columns = shape[1]
    if precision is None:
        # log(0) = -inf, as in the generic code (floating-point warnings are off here).
        per_row = squares / term[:, 0] + columns * np.log(term[:, 0]).astype(np.float64)
    else:
        per_row = squares * precision[:, 0] + columns * term[:, 0].astype(np.float64)
    if weight is not None:
        per_row = per_row * weight[:, 0]
    total = 0.5 * float(_add.reduce(per_row, dtype=np.float64))
    if call.full:
        rows = shape[0] if weight is None else float(_add.reduce(weight, None, np.float64))
        total += rows * columns * HALF_LOG_2PI
    return total


def _row_variance_gradient(squares: Array, term: Array, precision: Array | None,
                           half_g: Array | float, half_over_var: Array | None,
                           columns: int) -> Array:
    """d var (``(b, 1)``) with one variance per row, from the rows' sums ``S`` of d**2, in
    double precision: ``sum_d h / v - h (d**2 / v) / v = D h / v - h (S / v) / v`` (``h``
    is 0.5 G, one per row with beta weights), and for log-variances
    ``sum_d h (1 - d**2 exp(-s)) = h (D - S exp(-s))``."""
    sums = squares.astype(np.float64)
    h: Any = half_g[:, 0].astype(np.float64) if isinstance(half_g, NDARRAY) else half_g
    if precision is not None:
        share = h * (columns - sums * precision[:, 0])
    else:
        assert half_over_var is not None
        variance = term[:, 0].astype(np.float64)
        share = columns * half_over_var[:, 0].astype(np.float64) - h * (
            sums / variance) / variance
    return share[:, None]


def _scalar_term(call: GaussianNLLCall) -> float:
    """A number ``var``'s variance term in the compute dtype's precision (the generic rule)."""
    value, eps = float(call.var), call.eps
    if call.dtype == np.float32:
        value, eps = float(np.float32(value)), float(np.float32(eps))
    return value if call.log_var or not value < eps else eps


_NO_GRADIENTS: tuple[None, None, None] = (None, None, None)


def takes_upstream(call: GaussianNLLCall, grad_output: Array | float) -> bool:
    """Whether :func:`run` takes this upstream gradient: a number for a reduced loss, or for
    ``'none'`` a NumPy array of the loss's shape and dtype."""
    if call.reduction != "none":
        return isinstance(grad_output, float)
    return (type(grad_output) is NDARRAY and grad_output.dtype == call.dtype
            and grad_output.shape == call.loss_shape)


def run(call: GaussianNLLCall, wrt: frozenset[str], want_loss: bool = True,
        grad_output: Array | float = 1.0
        ) -> tuple[Array | None, tuple[Array | None, Array | None, Array | None]]:
    """The loss (reduced as ``call.reduction`` says; None unless ``want_loss``) and the
    gradients named in ``wrt`` for the upstream gradient ``grad_output`` (see
    :func:`takes_upstream`), in the callers' shapes."""
    # input has the loss's shape here (see applies): its size is the count, no math.prod.
    dtype, shape, numel = call.dtype, call.loss_shape, call.input.size
    losses = np.empty(shape, dtype=dtype) if want_loss and call.reduction == "none" else None
    upstream = grad_output / numel if call.reduction == "mean" else grad_output
    grad_var = None
    if wrt:
        grad_input = np.empty(shape, dtype=dtype) if "input" in wrt else None
        grad_target = np.empty(shape, dtype=dtype) if "target" in wrt else None
        if "var" in wrt:
            assert not isinstance(call.var, float)
            grad_var = np.empty(call.var.shape, dtype=dtype)
        grads = (grad_input, grad_target, grad_var)
    else:
        grads = _NO_GRADIENTS
    reuse = numel >= SCRATCH_ELEMENTS
    quiet = silence_floating_point()  # this thread's blocks; workers silence their own
    try:
        scalar_term = _scalar_term(call) if isinstance(call.var, float) else None
        # One block, here: a small call, or one that runs in this thread and fits a block
        # (a second block would only cost its Python: 8 us of 76 at 1000 x 100, measured).
        if numel <= SMALLEST_BLOCK or (numel < THREADED_ELEMENTS and numel <= LARGEST_BLOCK):
            results = [_block(call, None, scalar_term, upstream, wrt, want_loss, losses, grads,
                              reuse)]
        else:
            def work(part: Block) -> tuple[float, Array | None]:
                with quiet_floating_point():
                    return _block(call, part, scalar_term, upstream, wrt, want_loss, losses,
                                  grads, reuse)

            blocks = plan_blocks(shape)
            if len(blocks) > 1 and numel >= THREADED_ELEMENTS:
                results = run_blocks(work, blocks)
            else:
                results = [work(part) for part in blocks]
        loss = None
        if want_loss:
            loss = losses if losses is not None else _reduced(call, results, numel)
    finally:
        restore_floating_point(quiet)
    if grad_var is not None and results[0][1] is not None:
        # var is broadcast along the blocks' axis: its gradient is summed in block order.
        total_grad = results[0][1]
        for _, share in results[1:]:
            total_grad = total_grad + share
        grad_var[...] = total_grad
    if grad_var is not None:
        assert call.var_shape is not None
        grad_var = np.reshape(grad_var, call.var_shape)
    # Each gradient in its argument's dtype (the blocks compute, and use the gradients as
    # buffers, in the result's): a float32 input beside a float64 target or var.
    return loss, (_in_dtype(grads[0], call.input), _in_dtype(grads[1], call.target),
                  _in_dtype(grad_var, call.var))


def _in_dtype(grad: Array | None, argument: Any) -> Array | None:
    if grad is None:
        return None
    with quiet_floating_point():  # a float16 gradient beyond 65504 is inf, as in PyTorch
        return as_compute(np, grad, argument.dtype)


def _reduced(call: GaussianNLLCall, results: list[tuple[float, Any]], numel: int) -> Array:
    """The blocks' loss sums (the first of each result) added in block order in double
    precision, then divided for 'mean'."""
    total = ordered_sum(total for total, _ in results)
    if call.reduction == "mean":
        total = total / numel
    return _asarray(total, call.dtype)  # a float16 overflow is inf, as in PyTorch
