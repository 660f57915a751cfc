"""Cross-entropy's loss and gradient in one pass of row blocks (the common layout).

Where every row is one contiguous run of C logits (``spatial == 1``) and one block per row
fills the GPU (the row kernels' ``splits == 1``), :func:`loss_and_grad` and :func:`backward`
launch at most three kernels:

* ``ce_targets`` (index targets, only for a weighted ``'mean'`` or a checked call) reads the
  targets alone, O(N) bytes: per-block partial sums of the target weights, in the order of
  ``ce_rows_partials``, and the invalid-target flag.
* ``ce_fused``: a persistent grid of row blocks.  A block reads its row for the online (max,
  sum of exp) and, for label smoothing or probability targets, the linear sums; reduces them
  over the block; then reads its row a second time and writes the gradient (into ``out``,
  possibly the logits: each thread reads an entry before it writes it) and the row's loss.
  Rows of at most :data:`GROUP_MAX_CLASSES` classes go several to a warp instead: a lane
  group of up to 32 lanes per row, reduced with width-limited shuffles.  Rows of 1024
  threads load and store 16 bytes at a time where the rows are whole, aligned vectors.
  Every block first adds the weight partials in :mod:`.reduce`'s ``arrayloss_finish`` order,
  so its ``'mean'`` divides by the same bits as the unfused path.  If the flag records an
  invalid target, no block writes anything (the host raises; ``out=input`` keeps its logits).
* ``ce_finish`` (``'mean'``/``'sum'``) adds the rows' losses in a fixed order and writes the
  loss in its own dtype (no cast launch for bfloat16).

**The second read of a row** comes from L2, not DRAM, if the rows the resident blocks hold
stay in L2 between a block's two reads.  :func:`plan` bounds the grid, so that the grid's
rows (each the logits row, plus the probability row for probability targets, plus the
gradient row where it is a separate buffer, whose written lines also take L2) are at most
:data:`L2_SHARE` of the device's L2.  ``benchmarks/proxy.py`` counts the second read as L2
traffic under exactly that condition (:func:`rereads_from_l2`) and as DRAM traffic otherwise.

Every sum has a fixed order that depends on the block size only, never on the grid, so the
results are bitwise repeatable on any GPU; with the same threads per row, the gradient and
the per-row losses are the bits of the unfused kernels.  The kernels themselves:
:mod:`.cross_entropy_fused_kernels`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import cupy

from .._agnostic import cross_entropy as generic
from .._class_calls import CrossEntropyCall
from . import nll, reduce
from ._common import compute_dtype, invalid_flag, upstream_arguments
from ._kernels import REDUCE_BLOCK
from .cross_entropy_fused_kernels import MAX_ROW_THREADS, ce_finish, ce_fused, ce_targets
from .cross_entropy_kernels import CE_BATCH

Array = Any

#: The share of L2 the resident rows may take, so that the second read of a row hits L2 with
#: room to spare (L2 is not a perfect LRU, and its two halves serve different SMs first).
L2_SHARE = 0.5
#: What the plan assumes where the device cannot say (the host harness, the proxy): an H200,
#: 50 MiB of L2 (the value CUDA reports for H100 and H200 SXM) and 132 SMs.
H200_L2_BYTES = 50 * 2**20
H200_SMS = 132
#: Hopper's (and Ampere's) limits per SM, for the grid's upper bound.
_THREADS_PER_SM = 2048
_BLOCKS_PER_SM = 32
#: Most threads per row block (and the block of ``ce_finish``).
_MAX_THREADS = MAX_ROW_THREADS
#: The most classes the kernel's 32-bit column indices (plus a batch's reach) can address.
MAX_CLASSES = 2**31 - 2**13
#: Rows of at most this many classes go several to a warp (lane groups of up to 32 lanes),
#: in blocks of ``GROUP_THREADS``: a block per row would leave most of its lanes idle.
GROUP_MAX_CLASSES = 128
GROUP_THREADS = 256


@dataclass(frozen=True)
class Plan:
    """The launch of ``ce_fused`` and its L2 model."""

    threads: int
    #: Lanes per row (a power of two up to 32, several rows to a block), or 0: a block per row.
    group: int
    grid: int
    #: The bytes of L2 the grid's rows take at once (see the module docstring).
    resident_bytes: int
    l2_bytes: int

    @property
    def rows_in_flight(self) -> int:
        return self.grid * rows_per_block(self.threads, self.group)

    @property
    def rereads_from_l2(self) -> bool:
        return self.resident_bytes <= L2_SHARE * self.l2_bytes


def rows_per_block(threads: int, group: int) -> int:
    return threads // group if group else 1


def lane_group(n_classes: int) -> int:
    """Lanes per row: 0 (a block per row) above :data:`GROUP_MAX_CLASSES` classes, else the
    power of two that gives each lane about ``CE_BATCH`` columns."""
    if n_classes > GROUP_MAX_CLASSES:
        return 0
    return min(32, 1 << (-(-n_classes // CE_BATCH) - 1).bit_length())


def rereads_from_l2(rows_in_flight: int, row_footprint: int, l2_bytes: int) -> bool:
    """Whether the second read of each row is an L2 hit: the rows of the grid's blocks, of
    ``row_footprint`` bytes each, fit in :data:`L2_SHARE` of ``l2_bytes``."""
    return rows_in_flight * row_footprint <= L2_SHARE * l2_bytes


def row_footprint(n_classes: int, itemsize: int, in_place: bool, probabilities: bool) -> int:
    """The L2 bytes one row block holds between its two reads (see the module docstring)."""
    row = n_classes * itemsize
    return row * (1 + int(probabilities) + int(not in_place))


def plan(rows: int, n_classes: int, footprint: int, l2_bytes: int, sms: int) -> Plan:
    """Threads per row: a lane group for small rows (:func:`lane_group`, blocks of
    :data:`GROUP_THREADS`), else a block of one column per thread up to 1024 (as the unfused
    kernels up to 256).  The grid: no more blocks than the rows need, than the GPU holds, or
    than keep the rows in L2 (at least one: a single row too long for L2 is re-read from DRAM,
    and the proxy says so)."""
    group = lane_group(n_classes)
    if group:
        threads = GROUP_THREADS
    else:
        threads = min(_MAX_THREADS, max(32, 1 << (n_classes - 1).bit_length()))
    per_block = rows_per_block(threads, group)
    resident = sms * min(_BLOCKS_PER_SM, _THREADS_PER_SM // threads)
    in_l2 = int(L2_SHARE * l2_bytes) // (footprint * per_block)
    grid = max(1, min(-(-rows // per_block), resident, in_l2))
    return Plan(threads=threads, group=group, grid=grid,
                resident_bytes=grid * per_block * footprint, l2_bytes=l2_bytes)


@functools.cache
def _device_limits(device: Any) -> tuple[int, int]:
    """(L2 bytes, SMs) of ``device``; an H200's where it has no attributes (the harness)."""
    attributes = getattr(device, "attributes", None)
    if attributes is None:
        return H200_L2_BYTES, H200_SMS
    # CuPy's names (cudaDevAttr... without the prefix); an H200's where one is missing.
    return (int(attributes.get("L2CacheSize", H200_L2_BYTES)),
            int(attributes.get("MultiProcessorCount", H200_SMS)))


def _plan_for(call: CrossEntropyCall, rows: int, in_place: bool) -> Plan:
    l2_bytes, sms = _device_limits(call.input.device)
    footprint = row_footprint(call.n_classes, call.input.itemsize, in_place, call.probabilities)
    return plan(rows, call.n_classes, footprint, l2_bytes, sms)


# ------------------------------------------------------------------ the launches


def run(call: CrossEntropyCall, layout: Any, grad_output: Array | float, out: Any,
        want_loss: bool) -> tuple[Array | None, Array]:
    """(the loss or None, the gradient) of ``call``, whose ``layout`` (``cross_entropy._Layout``)
    has ``splits == 1`` and ``spatial == 1``; raises on an invalid target before any gradient
    entry is written."""
    checked = call.validate and not call.probabilities
    flag = invalid_flag(checked)
    compute = compute_dtype(call.dtype)
    weighted_mean = call.reduction == "mean" and not call.probabilities
    has_weight = int(call.weight is not None)
    partials, n_partials = layout.input, 0  # a never-read stand-in
    if checked or weighted_mean:
        partials = reduce.empty_partials(layout.rows, compute)
        n_partials = reduce.partial_count(layout.rows) if weighted_mean else 0
        ce_targets()(layout.target, layout.weight, call.n_classes, call.ignore_index,
                     layout.ignore_matches, has_weight, int(checked), partials, flag,
                     size=layout.rows, block_size=REDUCE_BLOCK)
    upstream_mode, upstream, upstream_scalar = upstream_arguments(grad_output, call.reduction,
                                                                  layout.input)
    direct = out is not None and out.flags.c_contiguous
    grad = out.reshape(-1) if direct else cupy.empty(layout.input.shape, dtype=call.input.dtype)
    in_place = direct and out.data.ptr == layout.input.data.ptr
    launch = _plan_for(call, layout.rows, in_place)
    row_dtype = call.dtype if call.reduction == "none" else compute
    row_loss = cupy.empty(layout.rows if want_loss else 1, dtype=row_dtype)
    vec = _vector_width(launch, call.n_classes, layout.input, grad)
    ce_fused(layout.mode, call.weight is not None, launch.group, vec)(
        layout.input, layout.target if call.probabilities else layout.input, layout.weight,
        layout.input if call.probabilities else layout.target, partials, upstream,
        layout.rows, call.n_classes, n_partials, upstream_scalar, float(layout.rows),
        call.label_smoothing, call.ignore_index, layout.ignore_matches, upstream_mode,
        _REDUCTIONS[call.reduction], int(checked), int(want_loss),
        grad, row_loss, flag, size=launch.grid * launch.threads, block_size=launch.threads)
    loss = None
    if want_loss:
        loss = row_loss.reshape(call.loss_shape) if call.reduction == "none" else _finish(
            call, layout.rows, row_loss, partials, n_partials)
    nll.raise_if_invalid(call.nll, flag, checked)  # the target rules are NLL's
    if out is not None:
        if not direct:
            out[...] = grad.reshape(out.shape)
        return loss, out
    return loss, grad.reshape(call.input.shape)


_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # kernels.cuh: REDUCE_NONE, _MEAN, _SUM


def _vector_width(launch: Plan, n_classes: int, logits: cupy.ndarray,
                  grad: cupy.ndarray) -> int:
    """Elements per 16-byte load and store: only for a block per row of 1024 threads (below,
    the rows keep the unfused kernels' order), rows of whole vectors, and 16-byte aligned
    logits and gradient; else 1."""
    vec = 16 // logits.itemsize
    aligned = logits.data.ptr % 16 == 0 and grad.data.ptr % 16 == 0
    if launch.threads == _MAX_THREADS and n_classes % vec == 0 and aligned:
        return vec
    return 1


def _finish(call: CrossEntropyCall, rows: int, row_loss: cupy.ndarray, partials: cupy.ndarray,
            n_partials: int) -> cupy.ndarray:
    if call.reduction == "sum":
        mode = reduce.MODE_SUM
    elif call.probabilities:
        mode = reduce.MODE_MEAN
    elif generic.smoothed_weighted_mean(call):
        # A total weight of 0 makes this loss NaN, as in PyTorch (see the generic function).
        mode = reduce.MODE_WEIGHTED_MEAN_NAN_AT_ZERO
    else:
        mode = reduce.MODE_WEIGHTED_MEAN
    loss = cupy.empty(1, dtype=call.dtype)
    # Without weights to add, the rows' losses stand in for the partials (never read).
    weights = partials if n_partials else row_loss
    ce_finish()(row_loss, weights, rows, n_partials, float(rows), mode, loss,
                size=_MAX_THREADS, block_size=_MAX_THREADS)
    return loss.reshape(())
