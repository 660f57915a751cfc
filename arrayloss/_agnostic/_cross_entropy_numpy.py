"""NumPy only: cross-entropy through cache-sized blocks of rows, in worker threads.

The same math as the generic block of :mod:`.cross_entropy`, written with NumPy's ``out=``
arguments: each block is shifted, exponentiated and scaled in one buffer (the gradient's own
slot where there is one, else a per-thread scratch buffer reused from call to call; a
class-major one for a few classes per sample), so a block costs a handful of passes over
memory that stays in cache and no allocation beyond per-sample arrays.  The parity suite
runs this path on NumPy and the generic one on the other libraries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from ._blocked import arange, ordered_sum, run_blocks, scratch, worker_count
from ._helpers import quiet_floating_point

if TYPE_CHECKING:
    from .._class_calls import CrossEntropyCall
    from ._cross_entropy_prepared import Prepared as _Prepared

Block = tuple[slice, slice]  # (samples, spatial positions)

#: Block sizes, in elements.  A block is a dozen NumPy calls, each of which hands the GIL over
#: once: blocks much smaller than a core's L2 cache spend their time there, larger ones miss
#: it.  Measured on a 2-core Xeon (2 MiB L2 per core): one block per worker up to 2**19.
SMALLEST_BLOCK, LARGEST_BLOCK = 1 << 16, 1 << 19
#: From this many elements the blocks run in worker threads.
THREADED_ELEMENTS = 1 << 18
#: Blocks per worker, at least (within the sizes above).  Each block's dozen NumPy calls
#: take the GIL back a dozen times, and every time the other thread holds it (running a
#: block's Python, or a small call that keeps it) the waiting one sleeps and wakes late: a
#: second thread gained 1.85x with six calls a block and 1.3x with the same work in five
#: times as many blocks (measured).  So the fewest blocks that still share the work: one
#: each.  Loss and gradient against PyTorch's speed, one interleaved run on a 2-core EPYC
#: (1 MiB L2 per core), four blocks per worker -> one: 1000 x 1000 0.73x -> 0.89x,
#: 65536 x 10 1.01x -> 1.22x, 2000 x 1000 1.31x -> 1.14x (eight blocks -> four).
BLOCKS_PER_WORKER = 1

def view_3d(x: np.ndarray, n: int, n_classes: int, s: int) -> np.ndarray | None:
    """``x`` as ``(N, C, S)`` without a copy, or None where its layout does not allow it."""
    view = x.view()
    try:
        view.shape = (n, n_classes, s)  # raises instead of copying
    except AttributeError:
        return None
    return view


@dataclass(frozen=True)
class Plan(Sequence[Block]):
    """The blocks of a call, computed on demand (a list of 256 blocks' slices was 45 KiB of
    Python objects): whole samples, ``rows`` at a time, where a sample fits in a block, else
    ``columns`` spatial positions of one sample at a time."""

    n: int
    s: int
    rows: int
    columns: int

    def __len__(self) -> int:
        return -(-self.n // self.rows) * -(-self.s // self.columns)

    @overload
    def __getitem__(self, index: int) -> Block: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Block]: ...

    def __getitem__(self, index: int | slice) -> Block | Sequence[Block]:
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self)))]
        if not 0 <= index < len(self):
            raise IndexError(index)
        row_block, column_block = divmod(index, -(-self.s // self.columns))
        start, column = row_block * self.rows, column_block * self.columns
        return (slice(start, min(start + self.rows, self.n)),
                slice(column, min(column + self.columns, self.s)))


def plan(n: int, n_classes: int, s: int, largest: int = LARGEST_BLOCK) -> Plan:
    """Blocks of about an equal share of the work, ``BLOCKS_PER_WORKER`` per worker, within
    ``SMALLEST_BLOCK`` and ``largest``: whole samples where they fit, else parts of one."""
    per_sample = max(1, n_classes * s)
    share = -(-n * per_sample // (BLOCKS_PER_WORKER * worker_count()))
    block = min(largest, max(SMALLEST_BLOCK, share))
    if per_sample <= block:
        return Plan(n, s, rows=max(1, block // per_sample), columns=max(1, s))
    return Plan(n, s, rows=1, columns=max(1, block // max(1, n_classes)))


def _input_block(call: CrossEntropyCall, prep: _Prepared, rows: slice,
                 cols: slice) -> np.ndarray:
    if prep.input3 is not None:
        return prep.input3[rows, :, cols]
    # (N, C, S) is no view of this layout: only these rows are copied.
    x = call.input
    return np.reshape(x[rows], (rows.stop - rows.start, x.shape[1], -1))[:, :, cols]


def _per_row(value: Any, rows: slice, cols: slice) -> Any:
    """The rows' share of a per-sample ``(N, S)`` value (a number stays a number)."""
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return value[rows, cols]
    return value


def _block(call: CrossEntropyCall, prep: _Prepared, rows: slice, cols: slice,
           want_loss: bool, losses: np.ndarray | None, grad3: np.ndarray | None) -> float:
    """One block: its losses into ``losses[rows, cols]`` (or, with ``want_loss`` and no
    ``losses``, their sum returned), its gradient into ``grad3``."""
    eps, n_classes, dtype = call.label_smoothing, call.n_classes, prep.dtype
    z = _input_block(call, prep, rows, cols)
    slot = None if grad3 is None else grad3[rows, :, cols]
    if _class_major(call, z):
        # A few classes per sample: the math runs in a class-major buffer (one transposing
        # pass in, one out), where every pass over the classes is a contiguous, vectorised
        # one instead of a short inner loop per sample or a strided column.
        work: Any = scratch((n_classes, z.shape[0]), dtype).T[:, :, None]
        np.copyto(work, z)
        row_max = _over_classes(np.maximum, work, scratch((z.shape[0], 1, 1), dtype, 2))
        np.subtract(work, row_max, out=work)
    else:
        # The math runs in a C-contiguous buffer, so the sums' order (and the bits) never
        # depend on the layout of `out`; the gradient's own slot is that buffer when it can be.
        direct = slot is not None and slot.dtype == dtype and slot.flags.c_contiguous
        work = slot if direct else scratch(z.shape, dtype)
        row_max = _over_classes(np.maximum, z,
                                scratch((z.shape[0], 1, z.shape[2]), z.dtype, 2))
        row_max = row_max.astype(dtype, copy=False)
        np.subtract(z, row_max, out=work)  # z may be `work` itself (out=input): read first
    weight = prep.class_weight3
    mass: Any = None
    weighted_q: Any = None
    linear: Any = None
    picked: Any = None
    unsafe: np.ndarray | None = None
    unsafe_shifted: np.ndarray | None = None
    if call.probabilities:
        q = prep.target3[rows, :, cols]
        weighted_q = scratch(z.shape, dtype, slot=1)
        # In the compute dtype: a 16-bit q against a number would run NumPy's 16-bit loop
        # (rounding q (1 - eps) to float16) before the float32 buffer is written.
        np.multiply(q, 1 - eps, out=weighted_q, dtype=dtype)
        if eps:
            weighted_q += eps / n_classes
        if weight is not None:
            weighted_q *= weight
        mass = weighted_q.sum(axis=1)
        linear = np.einsum("bcs,bcs->bs", weighted_q, work) if want_loss else None
        if linear is not None:
            unsafe = _unsafe_rows(mass, linear, n_classes)
            # Their shifted logits, before the exponential overwrites them (and, with
            # out=input, the logits themselves): nothing is copied for finite rows.
            unsafe_shifted = None if unsafe is None else np.moveaxis(work, 1, 2)[unsafe]
    else:
        index = prep.target3[rows, cols]
        positions = _target_positions(work, index)
        if want_loss:
            picked = _picked(work, index, positions)
            if eps:
                linear = (work.sum(axis=1) if weight is None
                          else np.einsum("bcs,c->bs", work, weight[0, :, 0]))
    np.exp(work, out=work)
    b, _, s = work.shape
    sum_exp = _over_classes(np.add, work, scratch((b, 1, s), dtype, 3))
    log_sum = np.log(sum_exp[:, 0, :], out=scratch((b, s), dtype, 4))

    active = None if call.probabilities or prep.all_active else prep.active[rows, cols]
    total = 0.0
    if want_loss:
        if call.probabilities:
            assert mass is not None and linear is not None
            loss = mass * log_sum - linear
            if unsafe is not None and unsafe_shifted is not None:
                q_rows = np.moveaxis(prep.target3[rows, :, cols], 1, 2)[unsafe]
                loss[unsafe] = _term_by_term(unsafe_shifted, log_sum[unsafe], q_rows,
                                             eps, None if weight is None else weight[0, :, 0])
        else:
            target_weight = prep.target_weight[rows, cols]
            loss = np.subtract(picked, log_sum, out=picked)
            if not _all_ones(target_weight):  # w * x is x where w is 1: skipped
                np.multiply(target_weight, loss, out=loss)
            np.negative(loss, out=loss)
            if eps:
                assert linear is not None
                loss = (1 - eps) * loss + (eps / n_classes) * (
                    prep.class_weight_sum * log_sum - linear)
            if active is not None:
                loss = np.where(active, loss, 0)
        if losses is not None:
            losses[rows, cols] = loss
        else:
            total = float(np.add.reduce(loss, axis=None))
    if slot is None:
        return total

    upstream = _per_row(prep.upstream, rows, cols)
    if call.probabilities:
        assert mass is not None and weighted_q is not None
        work *= (mass * upstream)[:, None, :] / sum_exp
        weighted_q *= upstream if np.ndim(upstream) == 0 else upstream[:, None, :]
        work -= weighted_q
    else:
        if active is not None:  # G = 0 where the target is ignored (G may be inf there)
            upstream = np.where(active, upstream, 0)
        target_weight = prep.target_weight[rows, cols]
        if active is None and np.ndim(upstream) == 0 and _all_ones(target_weight):
            # One factor for every sample: computed once, (1, 1), and broadcast below.
            target_weight = target_weight[:1, :1]
        on_target = (1 - eps) * (target_weight * upstream)
        scale = on_target
        if eps:
            scale = on_target + (eps / n_classes) * prep.class_weight_sum * upstream
        work *= scale[:, None, :] / sum_exp
        if positions is not None:  # as _picked: at flat positions, no fancy index
            flat = _in_memory_order(work)
            at_target = np.take(flat, positions, mode="clip", out=scratch(
                positions.shape, work.dtype, 6))
            at_target -= on_target[:, 0]
            flat[positions] = at_target  # twice as fast as np.put (measured)
        else:
            b, _, s = work.shape
            work[np.arange(b)[:, None], index, np.arange(s)[None, :]] -= on_target
        if eps:
            spread = np.broadcast_to((eps / n_classes) * upstream, (b, s))[:, None, :]
            work -= spread if weight is None else spread * weight
    if work is not slot:
        slot[...] = work
    return total


def _unsafe_rows(mass: np.ndarray, linear: np.ndarray, n_classes: int) -> np.ndarray | None:
    """The rows (a ``(b, s)`` mask, None where there are none) whose one-pass loss,
    ``mass * log_sum - linear``, may be NaN or overflow where PyTorch's term-by-term sum of
    ``logp q w`` is not: an infinite probability (``inf * 0`` at the largest logit, or where
    ``log_sum`` is 0) or sums near the dtype's largest value.  ``log_sum`` of shifted logits
    lies in ``[0, log C]``, so where ``|mass| log C + |linear|`` stays under a quarter of the
    largest float the loss is finite and the one-pass sum is kept.  NaN rows are summed
    again too: an infinite probability makes NaN here where PyTorch's terms give inf (NaN
    logits give NaN either way)."""
    if not mass.size:
        return None
    bound = np.finfo(mass.dtype).max / 4
    scale = max(float(np.log(max(n_classes, 2))), 1.0)
    with quiet_floating_point():
        # Four reductions first: most blocks stop here (a NaN fails the test and goes on).
        largest = (max(float(mass.max()), -float(mass.min())) * scale
                   + max(float(linear.max()), -float(linear.min())))
        if largest < bound:
            return None
        unsafe = ~(np.abs(mass) * scale + np.abs(linear) < bound)
    return unsafe if unsafe.any() else None


def _term_by_term(shifted: np.ndarray, log_sum: np.ndarray, q: np.ndarray, eps: float,
                  weight: np.ndarray | None) -> np.ndarray:
    """``-sum_c logp_c q'_c w_c`` of ``(k, C)`` rows, with ``logp = z - max - log_sum`` and
    ``q'`` the smoothed probabilities: PyTorch's order, for the rows :func:`_unsafe_rows`
    found."""
    with quiet_floating_point():
        smoothed = q.astype(shifted.dtype) * (1 - eps) + eps / q.shape[1] if eps else q
        terms = (shifted - log_sum[:, None]) * smoothed
        return -np.sum(terms if weight is None else terms * weight, axis=1)


#: Up to this many classes (and no spatial dims), a reduction over the classes runs class by
#: class: NumPy's reduction along a short axis costs a loop per row (3x slower at C = 10,
#: measured), where a ufunc over one column of every row is a single strided pass.
FEW_CLASSES = 16


def _over_classes(ufunc: np.ufunc, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``ufunc.reduce(x, axis=1, keepdims=True)`` of a ``(b, C, s)`` block into ``out``, in
    a fixed order (for few classes: ``((x0 op x1) op x2) ...``, else NumPy's own)."""
    n_classes = x.shape[1]
    if x.shape[2] != 1 or not 2 <= n_classes <= FEW_CLASSES:
        return ufunc.reduce(x, axis=1, keepdims=True, out=out)
    by_class = x[:, :, 0].T
    if by_class.flags.c_contiguous and by_class.shape[1] > 1:
        # Class-major: one reduction over the outer axis, which NumPy runs class by class
        # over contiguous rows (the same order as below, in one call; a single sample's
        # would be one contiguous reduction, summed pairwise).
        ufunc.reduce(by_class, axis=0, out=out[:, 0, 0])
        return out
    # On 1-D views: a (b, 1) operand costs NumPy's iterator a third more per call.
    columns, result = x[:, :, 0], out[:, 0, 0]
    ufunc(columns[:, 0], columns[:, 1], out=result)
    for c in range(2, n_classes):
        ufunc(result, columns[:, c], out=result)
    return out


def _class_major(call: CrossEntropyCall, z: np.ndarray) -> bool:
    """Whether a block computes in a class-major buffer (see :func:`_block`): class
    indices, no spatial dimensions and at most ``FEW_CLASSES`` classes."""
    return not call.probabilities and z.shape[2] == 1 and 2 <= z.shape[1] <= FEW_CLASSES


def _target_positions(work: np.ndarray, index: np.ndarray) -> np.ndarray | None:
    """The positions of the targets ``work[n, index[n], 0]`` of a ``(b, C, 1)`` block in
    :func:`_in_memory_order` (``n C + index[n]`` C-contiguous, ``index[n] b + n``
    class-major), in a scratch buffer; None for other blocks (spatial or strided)."""
    b, _, s = work.shape
    plain = work[:, :, 0]
    if s != 1 or not (plain.flags.c_contiguous or plain.T.flags.c_contiguous):
        return None
    sample_step, class_step = (stride // work.itemsize for stride in plain.strides)
    positions = scratch((b,), np.int64, 5)
    if class_step == 1:  # C-contiguous (or one sample)
        np.multiply(arange(b), sample_step, out=positions)
        np.add(positions, index[:, 0], out=positions, dtype=np.int64, casting="unsafe")
    else:  # class-major: sample_step is 1
        np.multiply(index[:, 0], class_step, out=positions, dtype=np.int64, casting="unsafe")
        positions += arange(b)
    return positions


def _in_memory_order(work: np.ndarray) -> np.ndarray:
    """A C-contiguous or class-major block's elements as a flat view, in memory order."""
    return work.ravel(order="K")


def _picked(work: np.ndarray, index: np.ndarray, positions: np.ndarray | None
            ) -> np.ndarray:
    """``work[n, index[n, s], s]`` of a block, ``(b, s)``: one ``take`` at the targets'
    flat ``positions`` where there are some (a fancy index costs several times more), else
    by ``take_along_axis``."""
    if positions is None:
        return np.take_along_axis(work, index[:, None, :], axis=1)[:, 0, :]
    picked = np.take(_in_memory_order(work), positions, mode="clip",
                     out=scratch(positions.shape, work.dtype, 6))
    return picked.reshape(-1, 1)


def _all_ones(target_weight: np.ndarray) -> bool:
    """Whether ``target_weight`` is the broadcast 1 of an unweighted call (see _prepare)."""
    return target_weight.strides == (0, 0) and target_weight.size > 0 and bool(
        target_weight.flat[0] == 1)


def run(call: CrossEntropyCall, prep: _Prepared, want_loss: bool, want_grad: bool,
        out: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Every block into its slot of the per-sample losses and of the gradient; for a
    reduced loss, the losses' 0-d total instead (each block's sum, added in block order)."""
    per_sample = want_loss and call.reduction == "none"
    losses = np.empty((prep.n, prep.s), dtype=prep.dtype) if per_sample else None
    grad = grad3 = None
    if want_grad:
        grad = out if out is not None else np.empty(call.input.shape, dtype=call.input.dtype)
        grad3 = view_3d(grad, prep.n, call.n_classes, prep.s)
        if grad3 is None:  # an `out` whose layout cannot view as (N, C, S)
            grad = np.empty(call.input.shape, dtype=call.input.dtype)
            grad3 = view_3d(grad, prep.n, call.n_classes, prep.s)

    def work(block: Block) -> float:
        with quiet_floating_point():
            return _block(call, prep, block[0], block[1], want_loss, losses, grad3)

    blocks = plan(prep.n, call.n_classes, prep.s)
    if len(blocks) > 1 and prep.n * prep.s * call.n_classes >= THREADED_ELEMENTS:
        sums = run_blocks(work, blocks)
    else:
        sums = [work(block) for block in blocks]
    if out is not None and grad is not out:
        out[...] = grad
        grad = out
    if want_loss and losses is None:
        with quiet_floating_point():
            losses = np.asarray(ordered_sum(sums),
                                dtype=prep.dtype)
    return losses, grad
