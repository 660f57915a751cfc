"""NumPy only: NLL where every target is a class, in blocks of samples with scratch buffers.

The common case of a classifier's or a segmentation model's batch: no target is ignored and
none is out of range (checked with one ``argmax`` over the targets read as unsigned
integers, where a negative one is the largest).  Each block computes the flat positions
``(n C + t) S + s`` of its targets into a per-thread int64 buffer (one pass against the
offsets ``n C S + s``, cached per shape), gathers them with one ``take`` into another (several
times faster than a fancy index, which builds an index per axis), and sums or scatters from
there.  The buffers are reused from call to call, so a call allocates nothing but its
outputs: the gradient, calloc'd (its untouched pages cost nothing until read) and written once
per target.

Ignored targets (and, with ``validate=False``, out-of-range ones) take the masked blocks:
their targets become class 0 by one multiplication with the active mask, and a sum's terms
are multiplied by 0 there, with a second look only where a sum comes out non-finite or 0
(:func:`._nll_blocks.block_sums`).  Elementwise results (``reduction='none'`` losses,
gradients) are bitwise the generic code's; sums are added per block in double precision.
Everything else (strided inputs, other libraries) takes the generic path.

This module routes a call (:func:`route`) and runs it: small ``(N, C)`` batches by one fancy
index, the rest through the blocks of :mod:`._nll_blocks`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _nll_blocks as blocks
from ._blocked import arange as _arange
from ._blocked import scratch
from ._helpers import (
    from_zero,
    quiet_floating_point,
    restore_floating_point,
    silence_floating_point,
)
from ._targets import every_target_a_class

if TYPE_CHECKING:
    from .._class_calls import NLLCall

__all__ = ["SMALL_ROWS", "forward", "loss_and_grad", "route"]

Array = Any

#: (N, C) inputs with at most this many rows take one bounds-checked fancy index instead of
#: blocks: at a few microseconds per NumPy call, every call saved counts.
SMALL_ROWS = 1 << 12


_UINT64 = np.dtype(np.uint64)
_INT64_MAX = np.iinfo(np.int64).max
# Looked up once (why: see _validation.NDARRAY).
_add_reduce = np.add.reduce


def route(call: NLLCall) -> str | None:
    """How this module computes ``call``: ``"rows"`` (a small ``(N, C)`` batch where every
    target is a class, one fancy index), ``"blocks"`` (a C-contiguous input, any layout, every
    target a class), ``"masked"`` (the same with ignored targets, each block's found by a
    mask), or None where the input is neither: the generic path then runs."""
    x, target = call.input, call.target
    if type(x) is not np.ndarray or x.ndim < 2 or target.size == 0:
        return None
    ignore = call.ignore_index
    if target.size > SMALL_ROWS:
        if not x.flags.c_contiguous:
            return None
        # ignore_index's default -100 among the targets, or a bad target: see _block_targets.
        return ("blocks" if every_target_a_class(target, call.n_classes, ignore)
                else "masked")
    # A few targets' bounds by argmin/argmax and item (no reduction machinery), the lowest
    # first: a fancy index takes any target that is not negative.
    lowest = target.item(target.argmin())
    # A uint64 target past int64's range turns negative in the fancy index, which would then
    # read (and the backward write) a class counted from the end: the general path names it.
    wraps = target.dtype == _UINT64 and target.item(target.argmax()) > _INT64_MAX
    if lowest >= 0 and x.ndim == 2 and not wraps:
        # The fancy index checks the upper bound itself (IndexError: see _picked_rows); an
        # ignore_index inside [0, C) needs a look.
        if not (lowest <= ignore < call.n_classes and bool((target == ignore).any())):
            return "rows"
    if not x.flags.c_contiguous:
        return None
    if lowest >= 0:
        highest = target.item(target.argmax())
        if highest < call.n_classes and not lowest <= ignore <= highest:
            return "blocks"
    return "masked"


def _picked_rows(call: NLLCall, dtype: Any) -> tuple[Array, Array | None] | None:
    """``input[n, t_n]`` and ``w[t_n]`` (compute dtype) of a small ``(N, C)`` batch, or None
    for a target past the last class (the general path reports it)."""
    try:
        picked = call.input[_arange(call.target.shape[0]), call.target]
    except IndexError:
        return None
    if picked.dtype != dtype:
        picked = picked.astype(dtype)
    weight = None
    if call.weight is not None:
        weight = call.weight[call.target]
        if weight.dtype != dtype:
            weight = weight.astype(dtype)
    return picked, weight


def _rows_forward(call: NLLCall, dtype: Any) -> Array | None:
    picked_rows = _picked_rows(call, dtype)
    if picked_rows is None:
        return None
    picked, weight = picked_rows
    losses = None if weight is None and call.reduction != "none" else (
        -picked if weight is None else -(picked * weight))
    if call.reduction == "none":
        assert losses is not None
        return losses.astype(call.dtype, copy=False)
    total = from_zero(-np.add.reduce(picked, None) if losses is None
                      else np.add.reduce(losses, None))
    if call.reduction == "mean":
        # A Python int divides in the sum's own dtype (NumPy's weak scalars), exactly as
        # the count in that dtype: at most SMALL_ROWS rows.
        total = total / (picked.shape[0] if weight is None else np.add.reduce(weight, None))
    return np.asarray(total, dtype=call.dtype)


def _rows_loss_and_grad(call: NLLCall, dtype: Any, grad_output: float,
                        want_loss: bool = True) -> tuple[Array | None, Array] | None:
    if not want_loss and call.weight is None:
        # A backward of unweighted rows: the count is the total weight, and the scatter's
        # own fancy index checks the upper bound as the gather's would.
        rows = call.target.shape[0]
        scale = -grad_output if call.reduction == "sum" else -(grad_output / dtype.type(rows))
        grad = np.zeros(call.input.shape, dtype=call.input.dtype)
        try:
            grad[_arange(rows), call.target] = scale
        except IndexError:
            return None
        return None, grad
    picked_rows = _picked_rows(call, dtype)
    if picked_rows is None:
        return None
    picked, weight = picked_rows
    if weight is None:
        total, total_weight = from_zero(-picked.sum()), dtype.type(picked.shape[0])
    else:
        total, total_weight = from_zero((-(picked * weight)).sum()), weight.sum()
    # PyTorch's operation order: w[t] * (-(G / total_weight)), or w[t] * (-G) for 'sum'.
    scale = -grad_output if call.reduction == "sum" else -(grad_output / total_weight)
    loss = total / total_weight if call.reduction == "mean" else total
    grad = np.zeros(call.input.shape, dtype=call.input.dtype)
    grad[_arange(picked.shape[0]), call.target] = scale if weight is None else weight * scale
    return np.asarray(loss, dtype=call.dtype), grad


def forward(call: NLLCall, dtype: Any, how: str) -> Array | None:
    """The loss, reduced as ``call.reduction`` says, along the :func:`route` ``how``; None
    where the general path must run after all."""
    if how == "rows":
        quiet = silence_floating_point()  # not a `with`: a small call feels its method calls
        try:
            return _rows_forward(call, dtype)
        finally:
            restore_floating_point(quiet)
    masked = how == "masked"
    if not masked and call.weight is None and call.reduction != "none":
        return _unweighted_forward(call, dtype)
    if call.reduction == "none":
        out = np.empty(call.loss_shape, dtype=call.dtype)
        flat_out = out.reshape(call.loss_shape[0], -1)

        def write(rows: slice) -> bool:
            with quiet_floating_point():
                block = blocks.make_block(call, rows, dtype, masked)
                if block is None:
                    return False
                flat_out[rows] = blocks.block_losses(call, block, dtype)
                return True

        return out if all(blocks.run(call, write)) else None
    sums = blocks.sums(call, dtype, masked)
    if sums is None:
        return None
    total, total_weight = sums
    with quiet_floating_point():
        loss = total / total_weight if call.reduction == "mean" else total
        return np.asarray(loss).astype(call.dtype)


def loss_and_grad(call: NLLCall, dtype: Any, how: str, grad_output: float = 1.0,
                  want_loss: bool = True) -> tuple[Array | None, Array] | None:
    """The reduced loss and its gradient with respect to ``input`` for the upstream gradient
    ``grad_output``, along the :func:`route` ``how``; None where the general path must run
    after all.  Without ``want_loss`` the loss may come back None: unweighted targets that
    are all classes then skip the gather of the input (a backward needs only the count)."""
    if how == "rows":
        quiet = silence_floating_point()  # as in forward
        try:
            return _rows_loss_and_grad(call, dtype, grad_output, want_loss)
        finally:
            restore_floating_point(quiet)
    masked = how == "masked"
    if not masked and call.weight is None:
        return _unweighted_loss_and_grad(call, dtype, grad_output, want_loss)
    plan = blocks.plan(call.loss_shape[0], math.prod(call.loss_shape[1:]))
    kept = None  # one block: built once, for the sums and the scatter alike
    if len(plan) == 1:
        with quiet_floating_point():
            kept = blocks.make_block(call, plan[0], dtype, masked)
            if kept is None:
                return None
            sums: tuple[Array, Array] | None = blocks.totals(
                [blocks.block_sums(call, kept, dtype, want_loss)], dtype)
    else:
        sums = blocks.sums(call, dtype, masked, gather=want_loss)
    if sums is None:
        return None
    total, total_weight = sums
    with quiet_floating_point():
        loss = np.asarray(total / total_weight if call.reduction == "mean" else total)
        # PyTorch's operation order: w[t] * (-(G / total_weight)), or w[t] * (-G) for 'sum'.
        scale = -grad_output if call.reduction == "sum" else -(grad_output / total_weight)
    grad = np.zeros(call.input.size, dtype=call.input.dtype)

    def scatter(rows: slice) -> None:
        with quiet_floating_point():
            block = kept if kept is not None else blocks.make_block(call, rows, dtype, masked)
            assert block is not None  # the sums saw every target
            coef: Any = scale
            if block.weight is not None:
                coef = np.multiply(block.weight, scale,
                                   out=scratch(block.target.shape, dtype, slot=2))
            blocks.scatter_into(grad, block.positions, coef)  # see _unweighted_loss_and_grad
            if block.inactive is not None:
                # The inactive targets' safe positions (each in its own sample's row, which
                # no other target writes) written over with +0, as the generic `where`:
                # what the scatter put there (the scale, a signed zero, NaN) is gone.  A
                # few of them after the scatter cost a third of a masked copy before it.
                grad[block.positions[block.inactive]] = 0

    if kept is not None:
        scatter(plan[0])
    else:
        blocks.run(call, scatter)
    return (loss.astype(call.dtype) if want_loss else None), grad.reshape(call.input.shape)


def _unweighted_forward(call: NLLCall, dtype: Any) -> Array:
    """:func:`forward`, reduced, where every target is a class and none is weighted: the
    total weight is the number of targets."""
    quiet = silence_floating_point()
    try:
        # (Gathered: the picked values are arrays.  -sum(x) is negated_total's, bit for bit.)
        one = blocks.one_block(call)
        if one is not None:
            total = from_zero(-_add_reduce(one[1], None, dtype))  # type: ignore[arg-type]
        else:
            shares = [float(_add_reduce(picked, None, dtype))  # type: ignore[arg-type]
                      for _, picked in blocks.picked_blocks(call)]
            total = blocks.negated_total(shares, dtype)
        if call.reduction == "mean":
            total = total / dtype.type(call.target.size)
        return np.asarray(total, dtype=call.dtype)
    finally:
        restore_floating_point(quiet)


def _unweighted_loss_and_grad(call: NLLCall, dtype: Any, grad_output: float,
                              want_loss: bool = True) -> tuple[Array | None, Array]:
    """:func:`loss_and_grad` where every target is a class and none is weighted: the total
    weight is the number of targets, known up front, so each block gathers its values and
    scatters its gradient in one pass over its positions (only scatters, without
    ``want_loss``: the loss comes back None)."""
    grad = np.zeros(call.input.size, dtype=call.input.dtype)
    quiet = silence_floating_point()
    try:
        total_weight = np.asarray(float(call.target.size), dtype=dtype)
        scale = -grad_output if call.reduction == "sum" else -(grad_output / total_weight)
        # A flat index assignment, not np.put: put's loop costs 20 ns a target (an integer
        # modulo and a memmove each), the assignment 3 (100,000 targets into 40 MB,
        # measured).  Every position is in range here.
        one = blocks.one_block(call, gather=want_loss)
        if one is not None:
            positions, picked = one
            blocks.scatter_into(grad, positions, scale)
            if picked is None:
                return None, grad.reshape(call.input.shape)
            total = from_zero(-_add_reduce(picked, None, dtype))  # as blocks.negated_total
        else:
            shares = []
            for positions, picked in blocks.picked_blocks(call, gather=want_loss):
                if picked is not None:
                    shares.append(float(_add_reduce(picked, None, dtype)))
                blocks.scatter_into(grad, positions, scale)
            if not want_loss:
                return None, grad.reshape(call.input.shape)
            total = blocks.negated_total(shares, dtype)
        loss = np.asarray(total / total_weight if call.reduction == "mean" else total)
        return loss.astype(call.dtype), grad.reshape(call.input.shape)
    finally:
        restore_floating_point(quiet)
