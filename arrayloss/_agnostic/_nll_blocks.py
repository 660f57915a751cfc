"""NumPy only: NLL's blocks of targets, the machinery of :mod:`._nll_numpy`'s paths.

A block is about :data:`BLOCK_TARGETS` targets of consecutive samples.  For each, this
module finds the targets' flat positions in the input (against offsets cached per shape),
the masks of the inactive ones (ignored, or out of range with ``validate=False``: class 0
by one multiplication, a safe index), their class weights, and then the block's losses, its
sums (exact where a term at an inactive target is not finite, and for the sign of a zero)
and its gradient's scatter (in the worker threads for a large gradient).  Blocks run in
the calling thread, in order (:func:`run`), and their sums are added in that order, so
results do not depend on timing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._blocked import ordered_sum, run_blocks, scratch, worker_count
from ._helpers import from_zero, quiet_floating_point

if TYPE_CHECKING:
    from .._class_calls import NLLCall

__all__ = ["BLOCK_TARGETS", "THREADED_SCATTER_BYTES", "Block", "block_losses", "block_sums",
           "make_block", "negated_total", "one_block", "picked_blocks", "plan", "run",
           "scatter_into", "sums", "totals"]

Array = Any

#: Targets per block: the positions (int64, 1 MiB) and the gathered values stay within a
#: core's L2 cache; fewer, larger blocks measured faster than 2**15 (the gather is bound by
#: the latency of the rows it reads).
BLOCK_TARGETS = 1 << 17


#: From this many bytes of gradient, its scatter runs in the worker threads.  A fresh
#: gradient's pages are mapped on their first write, one page fault each, and two cores
#: take them twice as fast as one (the fault, not the write, is the cost: 10,000 x 1000
#: loss and gradient 9.0 -> 6.7 ms, 100,000 x 100 11.4 -> 8.5 ms, measured on 2 cores).
THREADED_SCATTER_BYTES = 1 << 24


def scatter_into(grad: Array, positions: Array, values: Any) -> None:
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


def plan(n: int, spatial: int) -> list[slice]:
    step = _plan_step(spatial)
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def run(call: NLLCall, work: Any) -> list[Any]:
    # In the calling thread: `take` releases the GIL, but a gather is bound by the latency
    # of the rows it reads, and handing half of it to a pool thread made a 100,000-row
    # forward pass slower and a 10,000-row one 3.5x slower (measured on 2 cores).
    return [work(rows) for rows in plan(call.loss_shape[0], math.prod(call.loss_shape[1:]))]


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
class Block:
    """One block's targets: class indices ``(b, S)``, their flat positions, the masks of the
    inactive and the active ones (None where every target is a class), and their weights
    ``w[t]`` (compute dtype; None without class weights).

    An inactive target's weight is ``w[0]`` times 0: 0 where ``w[0]`` is finite (as a sum
    over the block needs it), NaN where it is not.  Whatever is elementwise (a loss of
    ``'none'``, a gradient) is written over with 0 there, never multiplied, and a sum that is
    not finite is taken again with the weights written over (:func:`block_sums`).
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


def make_block(call: NLLCall, rows: slice, dtype: Any, masked: bool) -> Block | None:
    """The block ``rows``, its weights looked up (None: see :func:`_block_targets`)."""
    targets = _block_targets(call, rows, masked)
    if targets is None:
        return None
    target, inactive, active = targets
    block = Block(target, _positions(call, rows, target), inactive, active)
    if call.weight is not None:
        weight = np.take(call.weight, target, mode="clip",
                         out=scratch(target.shape, call.weight.dtype, slot=3))
        if weight.dtype != dtype:
            weight = weight.astype(dtype)
        if active is not None:
            _multiply(weight, active, out=weight)  # a quarter of a masked copy's time
        block.weight = weight
    return block


def block_losses(call: NLLCall, block: Block, dtype: Any, negate: bool = True) -> Array:
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


def _block_products(call: NLLCall, block: Block, dtype: Any) -> Array:
    """For a sum over a block with inactive targets, in one pass fewer than the losses
    (and none of them a masked copy): ``w[t] x[n, t, s]``, or without weights the picked
    values times the active mask, so a zero at an inactive target where the value at its
    safe index is finite (NaN where it is not: see :func:`block_sums`)."""
    positions = block.positions
    picked = _picked(call, positions)
    if block.weight is not None:
        return _multiply(picked, block.weight, out=scratch(positions.shape, dtype, slot=2),
                         dtype=dtype)
    assert block.active is not None  # (a block with inactive targets has its active mask)
    # In the input's dtype, as the written-over picked values: NumPy then sums them in the
    # same (buffered, cast) order, bit for bit, where the compute dtype is another.
    return _multiply(picked, block.active, out=picked)


def sums(call: NLLCall, dtype: Any, masked: bool, gather: bool = True
          ) -> tuple[Array, Array] | None:
    """(sum of the losses, sum of the target weights), per block in block order, in the
    compute dtype (the losses' 0 without ``gather``: a backward needs the weights alone);
    None where the general path must run (see :func:`_block_targets`)."""
    def work(rows: slice) -> tuple[float, float] | None:
        with quiet_floating_point():
            block = make_block(call, rows, dtype, masked)
            return None if block is None else block_sums(call, block, dtype, gather)

    sums = run(call, work)
    if any(share is None for share in sums):
        return None
    return totals(sums, dtype)  # (no None among them)


def block_sums(call: NLLCall, block: Block, dtype: Any, gather: bool) -> tuple[float, float]:
    """A block's (sum of its losses, or 0 without ``gather``; sum of its target weights).

    With inactive targets, each sum is first taken with their terms multiplied by 0
    (:func:`_block_products`, and the weights of :class:`Block`), and taken again with them
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
    losses = block_losses(call, block, dtype, negate=False)
    total = float(_add_reduce(losses, None, dtype))
    # Without weights, the picked values: -sum(x) is sum(-x), bit for bit.
    return (-total if call.weight is None else total), weight_total


def _write_over_inactive(block: Block) -> None:
    """The block's weights with 0 written at its inactive targets, NaN there included."""
    assert block.weight is not None and block.inactive is not None
    np.copyto(block.weight, 0, where=block.inactive)


def _settled(total: float) -> bool:
    """Whether a sum over values multiplied by 0 at inactive targets is the exact one."""
    return math.isfinite(total) and total != 0.0


def totals(sums: list[tuple[float, float]], dtype: Any) -> tuple[Array, Array]:
    """The blocks' sums added in block order, in the compute dtype."""
    with quiet_floating_point():
        return (np.asarray(from_zero(ordered_sum(share[0] for share in sums)), dtype=dtype),
                np.asarray(ordered_sum(share[1] for share in sums), dtype=dtype))


def one_block(call: NLLCall, gather: bool = True) -> tuple[Array, Array | None] | None:
    """:func:`picked_blocks`'s one block of an ``(N, C)`` input whose targets make one (at
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


def picked_blocks(call: NLLCall, gather: bool = True
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


def negated_total(shares: list[float], dtype: Any) -> Array:
    """``-sum(shares)`` in ``dtype`` (the blocks' sums of picked values, in block order):
    ``-sum(x)`` is ``sum(-x)``, bit for bit, but for a total of zero, +0 as PyTorch's
    (:func:`~._helpers.from_zero`)."""
    return np.asarray(from_zero(-(shares[0] if len(shares) == 1 else ordered_sum(shares))),
                      dtype=dtype)
