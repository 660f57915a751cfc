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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._blocked import Block, part_of, run_blocks, scratch, spans, worker_count
from ._helpers import quiet_floating_point

if TYPE_CHECKING:
    from .._calls import GaussianNLLCall

Array = Any

#: Block sizes, in elements: one block per worker where that fits, within these bounds.
#: Four float32 buffers of the largest block fill a 2 MiB L2 cache (measured on a 2-core
#: Xeon: 2**17 is the best block for the elementwise chain).
SMALLEST_BLOCK, LARGEST_BLOCK = 1 << 14, 1 << 17
#: From this many elements the blocks run in worker threads.
THREADED_ELEMENTS = 1 << 16

_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: ``full=True``'s constant, as in the generic module.
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def applies(call: GaussianNLLCall) -> bool:
    """Whether this path computes ``call`` (see the module docstring)."""
    dtype = call.dtype
    if not isinstance(call.input, np.ndarray) or dtype not in _FAST_DTYPES:
        return False
    shape = call.loss_shape
    if not shape or call.numel == 0:
        return False
    if call.input.shape != shape or call.target.dtype != dtype or call.target.shape != shape:
        return False
    return isinstance(call.var, float) or call.var.dtype == dtype


def plan(shape: tuple[int, ...]) -> list[Block]:
    """Blocks of about an equal share of the work per worker, within the bounds above: whole
    rows where a row fits, else parts of every row along the last axis."""
    count = math.prod(shape)
    block = min(LARGEST_BLOCK, max(SMALLEST_BLOCK, -(-count // worker_count())))
    rows = shape[0]
    if count <= block:
        return [Block(0, slice(0, rows))]
    per_row = count // rows
    if per_row <= block:
        step = max(1, block // per_row)
        return [Block(0, slice(start, min(start + step, rows))) for start in range(0, rows, step)]
    last, columns = len(shape) - 1, shape[-1]
    step = max(1, block // (count // columns))
    if last == 0 or columns < 2:
        return [Block(0, slice(0, rows))]
    return [Block(last, slice(start, min(start + step, columns)))
            for start in range(0, columns, step)]


@dataclass(frozen=True)
class _Variance:
    """What a block derives from its variance: ``term`` (max(var, eps), or the log-variance
    itself), ``precision`` exp(-s) for log-variances, ``weight`` the beta-NLL weight."""

    term: Array | float
    precision: Array | float | None
    weight: Array | float | None


def _variance(call: GaussianNLLCall, var: Array | float, scalar_term: float | None) -> _Variance:
    """The generic ``_terms`` for one block's variance (small: a row's or a block's share)."""
    term: Any
    if scalar_term is not None:
        term = scalar_term
    elif call.log_var:
        term = var
    else:
        assert not isinstance(var, float)
        term = np.maximum(var, call.eps, out=scratch(var.shape, call.dtype, slot=3))
    precision: Any = None
    if call.log_var:
        if isinstance(term, float):
            precision = float(np.exp(-term))
        else:
            precision = np.negative(term, out=scratch(term.shape, call.dtype, slot=3))
            np.exp(precision, out=precision)
    weight: Array | float | None = None
    if call.beta != 0:
        if call.log_var:
            weight = (float(np.exp(call.beta * term)) if isinstance(term, float)
                      else np.exp(call.beta * term))
        else:
            weight = (float(np.power(term, call.beta)) if isinstance(term, float)
                      else term**call.beta)
    return _Variance(term=term, precision=precision, weight=weight)


def _log(term: Array | float) -> Array | float:
    if isinstance(term, float):  # math.log raises for 0, where log(0) is -inf
        return -math.inf if term == 0 else math.log(term)
    return np.log(term, out=scratch(term.shape, term.dtype, slot=4))


def _block(call: GaussianNLLCall, part: Block, scalar_term: float | None, upstream: float,
           wrt: frozenset[str], want_loss: bool, losses: Array | None,
           grads: tuple[Array | None, Array | None, Array | None]) -> tuple[float, Array | None]:
    """One block: its loss sum (or its losses into ``losses``; neither without
    ``want_loss``) and its gradients into ``grads`` (input, target, var); returns the loss
    sum and, for a var broadcast along the blocks' axis, this block's share of ``d var``."""
    ndim = len(call.loss_shape)
    x, t = part_of(call.input, part, ndim), part_of(call.target, part, ndim)
    var = call.var if isinstance(call.var, float) else part_of(call.var, part, ndim)
    shape, dtype = x.shape, call.dtype
    v = _variance(call, var, scalar_term)

    diff = np.subtract(x, t, out=scratch(shape, dtype, slot=0))
    # q = d**2 / v (d**2 exp(-s) for log-variances): the loss's first term, and d var's.
    q = np.multiply(diff, diff, out=scratch(shape, dtype, slot=1))
    if v.precision is not None:
        q *= v.precision
    else:
        q /= v.term
    total = 0.0
    if want_loss:
        loss = scratch(shape, dtype, slot=2) if losses is None else losses[part.index()]
        np.add(q, v.term if v.precision is not None else _log(v.term), out=loss)
        loss *= 0.5
        if call.full:
            loss += HALF_LOG_2PI
        if v.weight is not None:
            loss *= v.weight
        if losses is None:
            total = float(np.add.reduce(loss, axis=None))
    if not wrt:
        return total, None

    grad_input, grad_target, grad_var = grads
    g: Array | float = upstream if v.weight is None else upstream * v.weight
    if v.precision is not None:
        half_over_var: Array | float = 0.0  # unused: the log-variance gradients below
    elif isinstance(v.term, float):
        half_over_var = float(np.divide(0.5 * g, v.term))
    else:
        half_over_var = np.divide(0.5 * g, v.term, out=scratch(v.term.shape, dtype, slot=4))
    if wrt & {"input", "target"}:
        slot = (grad_input[part.index()] if grad_input is not None
                else scratch(shape, dtype, slot=2))
        if v.precision is not None:  # d input = G d exp(-s)
            np.multiply(diff, v.precision, out=slot)
            slot *= g
        else:  # d input = ((0.5 G) / v) (2 d)
            np.multiply(diff, 2.0, out=slot)
            slot *= half_over_var
        if grad_target is not None:
            np.negative(slot, out=grad_target[part.index()])
    if grad_var is None:
        return total, None
    # d var = (0.5 G) / v - (0.5 G) ((d^2 / v) / v);  d s = 0.5 G (1 - d^2 exp(-s)).
    if v.precision is not None:
        q *= -1.0
        q += 1.0
        q *= 0.5 * g
    else:
        q /= v.term
        q *= -(0.5 * g)
        q += half_over_var
    assert not isinstance(var, float)
    covered = spans(call.var, part, ndim)
    if covered and var.shape == shape:
        grad_var[part.index()] = q
        return total, None
    axes = tuple(axis for axis in range(ndim) if var.shape[axis] == 1 and shape[axis] != 1)
    summed = np.sum(q, axis=axes, keepdims=True)
    if covered:
        grad_var[part.index()] = summed
        return total, None
    return total, summed


def _scalar_term(call: GaussianNLLCall) -> float | None:
    """A number's variance term in the compute dtype's precision (the generic rule)."""
    if not isinstance(call.var, float):
        return None
    value, eps = float(call.var), call.eps
    if call.dtype == np.float32:
        value, eps = float(np.float32(value)), float(np.float32(eps))
    return value if call.log_var or not value < eps else eps


def run(call: GaussianNLLCall, wrt: frozenset[str], want_loss: bool = True,
        grad_output: float = 1.0
        ) -> tuple[Array | None, tuple[Array | None, Array | None, Array | None]]:
    """The loss (reduced as ``call.reduction`` says; None unless ``want_loss``) and, for a
    reduced loss, the gradients named in ``wrt`` for the upstream gradient ``grad_output``,
    in the callers' shapes."""
    dtype, shape = call.dtype, call.loss_shape
    losses = np.empty(shape, dtype=dtype) if call.reduction == "none" else None
    upstream = grad_output / call.numel if call.reduction == "mean" else grad_output
    grad_input = np.empty(shape, dtype=dtype) if "input" in wrt else None
    grad_target = np.empty(shape, dtype=dtype) if "target" in wrt else None
    grad_var = None
    if "var" in wrt:
        assert not isinstance(call.var, float)
        grad_var = np.empty(call.var.shape, dtype=dtype)
    grads = (grad_input, grad_target, grad_var)
    with quiet_floating_point():
        scalar_term = _scalar_term(call)

    def work(part: Block) -> tuple[float, Array | None]:
        with quiet_floating_point():
            return _block(call, part, scalar_term, upstream, wrt, want_loss, losses, grads)

    blocks = plan(shape)
    if len(blocks) > 1 and call.numel >= THREADED_ELEMENTS:
        results = run_blocks(work, blocks)
    else:
        results = [work(part) for part in blocks]
    if grad_var is not None and results[0][1] is not None:
        # var is broadcast along the blocks' axis: its gradient is summed in block order.
        total_grad = results[0][1]
        for _, share in results[1:]:
            total_grad = total_grad + share
        grad_var[...] = total_grad
    loss = None
    if want_loss:
        loss = losses if losses is not None else _reduced(call, [total for total, _ in results])
    if grad_var is not None:
        assert call.var_shape is not None
        grad_var = np.reshape(grad_var, call.var_shape)
    return loss, (grad_input, grad_target, grad_var)


def _reduced(call: GaussianNLLCall, partials: list[float]) -> Array:
    """The block sums added in block order in double precision, then divided for 'mean'."""
    total = math.fsum(partials) if len(partials) > 1 else partials[0]
    if call.reduction == "mean":
        total = total / call.numel
    with quiet_floating_point():
        return np.asarray(total, dtype=call.dtype)
