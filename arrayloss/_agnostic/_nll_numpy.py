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
(:func:`_block_sums`).  Elementwise results (``reduction='none'`` losses, gradients) are
bitwise the generic code's; sums are added per block in double precision.  Everything else
(strided inputs, other libraries) takes the generic path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._blocked import arange as _arange
from ._blocked import ordered_sum, run_blocks, scratch, worker_count
from ._helpers import (
    from_zero,
    quiet_floating_point,
    restore_floating_point,
    silence_floating_point,
)
from ._targets import every_target_a_class

if TYPE_CHECKING:
    from .._class_calls import NLLCall

Array = Any

#: Targets per block: the positions (int64, 1 MiB) and the gathered values stay within a
#: core's L2 cache; fewer, larger blocks measured faster than 2**15 (the gather is bound by
#: the latency of the rows it reads).
BLOCK_TARGETS = 1 << 17


#: (N, C) inputs with at most this many rows take one bounds-checked fancy index instead of
#: blocks: at a few microseconds per NumPy call, every call saved counts.
SMALL_ROWS = 1 << 12


_UINT64 = np.dtype(np.uint64)
_INT64_MAX = np.iinfo(np.int64).max


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


#: From this many bytes of gradient, its scatter runs in the worker threads.  A fresh
#: gradient's pages are mapped on their first write, one page fault each, and two cores
#: take them twice as fast as one (the fault, not the write, is the cost: 10,000 x 1000
#: loss and gradient 9.0 -> 6.7 ms, 100,000 x 100 11.4 -> 8.5 ms, measured on 2 cores).
THREADED_SCATTER_BYTES = 1 << 24


def _scatter(grad: Array, positions: Array, values: Any) -> None:
    """``grad[positions] = values`` (a number, or an array of ``positions``' shape), by
    parts of ``positions`` in the worker threads for a large ``grad``.  The positions are
    distinct, so the parts never write the same element: the result is the same."""
    count = positions.shape[0]
    if grad.nbytes < THREADED_SCATTER_BYTES or count < 2:
        grad[positions] = values
        return
    step = -(-count // worker_count())
    each = np.ndim(values) == 0

    def part(rows: slice) -> None:
        with quiet_floating_point():  # a worker thread has NumPy's default state
            grad[positions[rows]] = values if each else values[rows]

    run_blocks(part, [slice(start, start + step) for start in range(0, count, step)])


def _plan_step(spatial: int) -> int:
    """Rows per block: about BLOCK_TARGETS targets."""
    return max(1, BLOCK_TARGETS // max(spatial, 1))


def _plan(n: int, spatial: int) -> list[slice]:
    step = _plan_step(spatial)
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def _run(call: NLLCall, work: Any) -> list[Any]:
    # In the calling thread: `take` releases the GIL, but a gather is bound by the latency
    # of the rows it reads, and handing half of it to a pool thread made a 100,000-row
    # forward pass slower and a 10,000-row one 3.5x slower (measured on 2 cores).
    return [work(rows) for rows in _plan(call.loss_shape[0], math.prod(call.loss_shape[1:]))]


def _block_targets(call: NLLCall, rows: slice, masked: bool
                   ) -> tuple[Array, Array | None, Array | None] | None:
    """The block's targets as ``(b, S)`` class indices, the mask of its inactive ones and
    that of its active ones (both None where every one is a class): ignored, and with
    ``validate=False`` out of range.

    ``masked`` (the route ``"masked"``): the targets are multiplied by the active mask into
    an int64 scratch buffer, so the inactive ones become class 0, a safe index (in the
    sample's own row, which no other sample writes) whose loss and gradient are then zeroed:
    one arithmetic pass, where a masked copy costs four times as much.  None where a target
    is neither a class nor ignored and ``validate`` is set: the general path names it in its
    error.
    """
    spatial = math.prod(call.loss_shape[1:])
    target = call.target[rows].reshape(-1, spatial)
    if not masked:
        return target, None, None
    inactive = scratch(target.shape, np.bool_, slot=5)
    limits = np.iinfo(target.dtype)
    if limits.min <= call.ignore_index <= limits.max:  # uint8 targets are never -100
        np.equal(target, call.ignore_index, out=inactive)
    else:
        inactive.fill(False)
    active = np.logical_not(inactive, out=scratch(target.shape, np.bool_, slot=6))
    safe = scratch(target.shape, np.int64, slot=4)
    # In int64: a uint64 past int64's range turns negative, and so is found invalid below.
    _multiply(target, active, out=safe, dtype=_INT64, casting="unsafe")
    if safe.size and (np.minimum.reduce(safe, None) < 0
                      or np.maximum.reduce(safe, None) >= call.n_classes):
        if call.validate:
            return None
        # Out of range and not validated: inactive, as ignored targets (the generic rule).
        inactive |= (safe < 0) | (safe >= call.n_classes)
        np.logical_not(inactive, out=active)
        np.copyto(safe, 0, where=inactive)
    return safe, inactive, active


def _positions(call: NLLCall, rows: slice, target: Array) -> Array:
    """The flat positions ``(n C + t) S + s`` of the block's targets ``(b, S)`` in the
    input, in a scratch buffer (int64, whatever the target's integer dtype: ``uint8 * S``
    must not wrap around)."""
    offsets, row_stride = _first_block_offsets(call, target.shape[1])
    return _shifted_positions(target, offsets, (rows.start or 0) * row_stride)


def _first_block_offsets(call: NLLCall, spatial: int) -> tuple[Array, int]:
    """The first block's offsets (see :func:`_offsets`) and the input's row stride: every
    block's offsets are a prefix of the first's, shifted by its first row's."""
    row_stride = call.n_classes * spatial
    first_block = min(_plan_step(spatial), call.loss_shape[0])
    return _offsets(first_block, spatial, row_stride), row_stride


def _shifted_positions(target: Array, offsets: Array, shift: int) -> Array:
    """:func:`_positions` from the first block's offsets and this block's shift."""
    positions = scratch(target.shape, _INT64, slot=0)
    spatial = target.shape[1]
    if target.shape[0] != offsets.shape[0]:
        offsets = offsets[:target.shape[0]]
    if spatial == 1:
        _add(offsets, target, out=positions, dtype=_INT64, casting="unsafe")
    else:
        _multiply(target, spatial, out=positions, dtype=_INT64, casting="unsafe")
        positions += offsets
    if shift:
        positions += shift
    return positions


_INT64 = np.dtype(np.int64)
# The ufuncs of the lean loops, looked up once (why: see _validation.NDARRAY).
_add, _multiply, _add_reduce = np.add, np.multiply, np.add.reduce


@functools.lru_cache(maxsize=4)
def _offsets(count: int, spatial: int, row_stride: int) -> Array:
    """``n row_stride + s`` for the ``(count, spatial)`` targets of a block's rows, made once
    for each of the last few shapes (read-only): a block's positions then cost one pass
    over its targets, or two with spatial dimensions, instead of three."""
    offsets = np.arange(0, count * row_stride, row_stride, dtype=np.int64)[:, None]
    if spatial > 1:
        offsets = offsets + np.arange(spatial, dtype=np.int64)
    offsets.flags.writeable = False
    return offsets


@dataclass(slots=True)
class _Block:
    """One block's targets: class indices ``(b, S)``, their flat positions, the masks of the
    inactive and the active ones (None where every target is a class), and their weights
    ``w[t]`` (compute dtype; None without class weights).

    An inactive target's weight is ``w[0]`` times 0: 0 where ``w[0]`` is finite (as a sum
    over the block needs it), NaN where it is not.  Whatever is elementwise (a loss of
    ``'none'``, a gradient) is written over with 0 there, never multiplied, and a sum that is
    not finite is taken again with the weights written over (:func:`_block_sums`).
    """

    target: Array
    positions: Array
    inactive: Array | None
    active: Array | None
    weight: Array | None = None

    def active_weight(self) -> float:
        """The block's share of ``'mean'``'s divisor."""
        if self.weight is not None:
            return float(np.add.reduce(self.weight, axis=None))
        count = self.target.size
        return float(count if self.inactive is None else count - np.count_nonzero(self.inactive))


def _block(call: NLLCall, rows: slice, dtype: Any, masked: bool) -> _Block | None:
    """The block ``rows``, its weights looked up (None: see :func:`_block_targets`)."""
    targets = _block_targets(call, rows, masked)
    if targets is None:
        return None
    target, inactive, active = targets
    block = _Block(target, _positions(call, rows, target), inactive, active)
    if call.weight is not None:
        weight = np.take(call.weight, target, mode="clip",
                         out=scratch(target.shape, call.weight.dtype, slot=3))
        if weight.dtype != dtype:
            weight = weight.astype(dtype)
        if active is not None:
            _multiply(weight, active, out=weight)  # a quarter of a masked copy's time
        block.weight = weight
    return block


def _block_losses(call: NLLCall, block: _Block, dtype: Any, negate: bool = True) -> Array:
    """The block's losses ``-w[t] x[n, t, s]``, 0 where inactive (compute dtype; without
    weights and ``negate=False``, the picked values themselves: the caller negates their
    sum)."""
    positions = block.positions
    picked = _picked(call, positions)
    weight = block.weight
    if weight is None:
        if not negate:
            losses = picked
        else:
            losses = np.negative(picked, out=scratch(positions.shape, dtype, slot=2),
                                 dtype=dtype)
    else:
        losses = _multiply(picked, weight, out=scratch(positions.shape, dtype, slot=2),
                           dtype=dtype)
        np.negative(losses, out=losses)
    if block.inactive is not None:
        # Written over, not multiplied by a mask: NaN or inf at an ignored target's safe
        # index must not leak into the loss.
        np.copyto(losses, 0, where=block.inactive)
    return losses


def _picked(call: NLLCall, positions: Array) -> Array:
    """``input`` at the flat ``positions``, in a scratch buffer of its dtype."""
    return np.take(call.input.reshape(-1), positions, mode="clip",
                   out=scratch(positions.shape, call.input.dtype, slot=1))


def _block_products(call: NLLCall, block: _Block, dtype: Any) -> Array:
    """For a sum over a block with inactive targets, in one pass fewer than the losses
    (and none of them a masked copy): ``w[t] x[n, t, s]``, or without weights the picked
    values times the active mask, so a zero at an inactive target where the value at its
    safe index is finite (NaN where it is not: see :func:`_block_sums`)."""
    positions = block.positions
    picked = _picked(call, positions)
    if block.weight is not None:
        return _multiply(picked, block.weight, out=scratch(positions.shape, dtype, slot=2),
                         dtype=dtype)
    assert block.active is not None  # (a block with inactive targets has its active mask)
    # In the input's dtype, as the written-over picked values: NumPy then sums them in the
    # same (buffered, cast) order, bit for bit, where the compute dtype is another.
    return _multiply(picked, block.active, out=picked)


def _sums(call: NLLCall, dtype: Any, masked: bool, gather: bool = True
          ) -> tuple[Array, Array] | None:
    """(sum of the losses, sum of the target weights), per block in block order, in the
    compute dtype (the losses' 0 without ``gather``: a backward needs the weights alone);
    None where the general path must run (see :func:`_block_targets`)."""
    def work(rows: slice) -> tuple[float, float] | None:
        with quiet_floating_point():
            block = _block(call, rows, dtype, masked)
            return None if block is None else _block_sums(call, block, dtype, gather)

    sums = _run(call, work)
    if any(share is None for share in sums):
        return None
    return _totals(sums, dtype)  # (no None among them)


def _block_sums(call: NLLCall, block: _Block, dtype: Any, gather: bool) -> tuple[float, float]:
    """A block's (sum of its losses, or 0 without ``gather``; sum of its target weights).

    With inactive targets, each sum is first taken with their terms multiplied by 0
    (:func:`_block_products`, and the weights of :class:`_Block`), and taken again with them
    written over where it is not finite or is 0: NaN from a non-finite value at a safe
    index, and the sign of a zero, are then the exact ones.  Any other sum is the exact one,
    bit for bit: a finite term times 0 is a zero, which changes no sum that is not one.
    """
    masked_weights = block.inactive is not None and block.weight is not None
    weight_total = block.active_weight()
    if masked_weights and not _settled(weight_total):
        _write_over_inactive(block)
        weight_total = block.active_weight()
    if not gather:
        return 0.0, weight_total
    if block.inactive is not None:
        # -sum(w x) is sum(-(w x)), and -sum(x) is sum(-x), bit for bit.
        total = -float(_add_reduce(_block_products(call, block, dtype), None, dtype))
        if _settled(total):
            return total, weight_total
        if masked_weights:
            _write_over_inactive(block)
    losses = _block_losses(call, block, dtype, negate=False)
    total = float(_add_reduce(losses, None, dtype))
    # Without weights, the picked values: -sum(x) is sum(-x), bit for bit.
    return (-total if call.weight is None else total), weight_total


def _write_over_inactive(block: _Block) -> None:
    """The block's weights with 0 written at its inactive targets, NaN there included."""
    assert block.weight is not None and block.inactive is not None
    np.copyto(block.weight, 0, where=block.inactive)


def _settled(total: float) -> bool:
    """Whether a sum over values multiplied by 0 at inactive targets is the exact one."""
    return math.isfinite(total) and total != 0.0


def _totals(sums: list[tuple[float, float]], dtype: Any) -> tuple[Array, Array]:
    """The blocks' sums added in block order, in the compute dtype."""
    with quiet_floating_point():
        return (np.asarray(from_zero(ordered_sum(share[0] for share in sums)), dtype=dtype),
                np.asarray(ordered_sum(share[1] for share in sums), dtype=dtype))


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
                block = _block(call, rows, dtype, masked)
                if block is None:
                    return False
                flat_out[rows] = _block_losses(call, block, dtype)
                return True

        return out if all(_run(call, write)) else None
    sums = _sums(call, dtype, masked)
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
    plan = _plan(call.loss_shape[0], math.prod(call.loss_shape[1:]))
    kept = None  # one block: built once, for the sums and the scatter alike
    if len(plan) == 1:
        with quiet_floating_point():
            kept = _block(call, plan[0], dtype, masked)
            if kept is None:
                return None
            sums: tuple[Array, Array] | None = _totals(
                [_block_sums(call, kept, dtype, want_loss)], dtype)
    else:
        sums = _sums(call, dtype, masked, gather=want_loss)
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
            block = kept if kept is not None else _block(call, rows, dtype, masked)
            assert block is not None  # the sums saw every target
            coef: Any = scale
            if block.weight is not None:
                coef = np.multiply(block.weight, scale,
                                   out=scratch(block.target.shape, dtype, slot=2))
            _scatter(grad, block.positions, coef)  # see _unweighted_loss_and_grad
            if block.inactive is not None:
                # The inactive targets' safe positions (each in its own sample's row, which
                # no other target writes) written over with +0, as the generic `where`:
                # what the scatter put there (the scale, a signed zero, NaN) is gone.  A
                # few of them after the scatter cost a third of a masked copy before it.
                grad[block.positions[block.inactive]] = 0

    if kept is not None:
        scatter(plan[0])
    else:
        _run(call, scatter)
    return (loss.astype(call.dtype) if want_loss else None), grad.reshape(call.input.shape)


def _one_block(call: NLLCall, gather: bool = True) -> tuple[Array, Array | None] | None:
    """:func:`_picked_blocks`'s one block of an ``(N, C)`` input whose targets make one (at
    most ``BLOCK_TARGETS``), without its generator and its list: in a call that gathers
    from a large input, the Python around the gather runs on cold caches, where every
    object it touches costs, and this took 13 us off a 10,000 x 1000 forward pass of about
    90 (measured); None for any other input."""
    target = call.target
    count = target.shape[0]
    if call.input.ndim != 2 or count > BLOCK_TARGETS:
        return None
    positions = scratch((count,), _INT64, slot=0)
    offsets = _offsets(count, 1, call.n_classes)[:, 0]
    _add(offsets, target, out=positions, dtype=_INT64, casting="unsafe")
    if not gather:
        return positions, None
    flat = call.input.reshape(-1)
    return positions, flat.take(positions, mode="clip",
                                out=scratch((count,), flat.dtype, slot=1))


def _picked_blocks(call: NLLCall, gather: bool = True
                   ) -> Iterator[tuple[Array, Array | None]]:
    """Each block's flat positions and the input's values there (None without ``gather``),
    where every target is a class: the lean loop of the unweighted paths (a small call's
    Python is a measurable share of its time, and a cold one after a large gather
    elsewhere more so)."""
    count = call.loss_shape[0]
    spatial = call.target.size // count
    flat = call.input.reshape(-1)
    target = call.target.reshape(count, spatial)
    offsets, row_stride = _first_block_offsets(call, spatial)
    step = offsets.shape[0]
    for start in range(0, count, step):
        positions = _shifted_positions(target[start:start + step], offsets, start * row_stride)
        yield positions, (flat.take(positions, mode="clip",
                                    out=scratch(positions.shape, flat.dtype, slot=1))
                          if gather else None)


def _negated_total(shares: list[float], dtype: Any) -> Array:
    """``-sum(shares)`` in ``dtype`` (the blocks' sums of picked values, in block order):
    ``-sum(x)`` is ``sum(-x)``, bit for bit, but for a total of zero, +0 as PyTorch's
    (:func:`~._helpers.from_zero`)."""
    return np.asarray(from_zero(-(shares[0] if len(shares) == 1 else ordered_sum(shares))),
                      dtype=dtype)


def _unweighted_forward(call: NLLCall, dtype: Any) -> Array:
    """:func:`forward`, reduced, where every target is a class and none is weighted: the
    total weight is the number of targets."""
    quiet = silence_floating_point()
    try:
        # (Gathered: the picked values are arrays.  -sum(x) is _negated_total's, bit for bit.)
        one = _one_block(call)
        if one is not None:
            total = from_zero(-_add_reduce(one[1], None, dtype))  # type: ignore[arg-type]
        else:
            shares = [float(_add_reduce(picked, None, dtype))  # type: ignore[arg-type]
                      for _, picked in _picked_blocks(call)]
            total = _negated_total(shares, dtype)
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
        one = _one_block(call, gather=want_loss)
        if one is not None:
            positions, picked = one
            _scatter(grad, positions, scale)
            if picked is None:
                return None, grad.reshape(call.input.shape)
            total = from_zero(-_add_reduce(picked, None, dtype))  # as _negated_total
        else:
            shares = []
            for positions, picked in _picked_blocks(call, gather=want_loss):
                if picked is not None:
                    shares.append(float(_add_reduce(picked, None, dtype)))
                _scatter(grad, positions, scale)
            if not want_loss:
                return None, grad.reshape(call.input.shape)
            total = _negated_total(shares, dtype)
        loss = np.asarray(total / total_weight if call.reduction == "mean" else total)
        return loss.astype(call.dtype), grad.reshape(call.input.shape)
    finally:
        restore_floating_point(quiet)
