"""Any elementwise loss in array-API code, and on NumPy in cache-sized blocks of threads.

The declaration's math (:mod:`.trace`'s :class:`~.trace.ArrayOps`) runs on whole arrays for
every namespace.  On NumPy, from :data:`BLOCKED_ELEMENTS` elements on, it runs instead on
blocks of the broadcast loss (rows, or parts of very wide rows; :func:`~arrayloss._agnostic.
_blocked.plan_blocks`) in the worker threads of :func:`~arrayloss._agnostic._blocked.
run_blocks`: each block's temporaries stay in cache, its gradients are written straight into
their slots of the outputs, and no full-size temporary is made beyond the outputs.  Partial
sums are added in block order, so results do not depend on thread timing.

16-bit floats are computed in float32 and rounded once, at the end.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import device

from .._agnostic._blocked import Block, ordered_sum, part_of, plan_blocks, run_blocks, spans
from .._agnostic._helpers import (
    as_0d,
    as_compute,
    compute_dtype,
    quiet_floating_point,
    sum_to_shape,
)
from .._validation import NDARRAY
from .call import ElementwiseCall
from .numpy_ops import ScratchOps, Value
from .spec import ElementwiseLoss
from .trace import ArrayOps

__all__ = ["ElementwiseBackend", "range_error"]

Array = Any

#: From this many loss elements, NumPy runs the math in blocks (in threads): below, the
#: temporaries of the whole call fit in cache and a thread hand-off costs more than it saves.
BLOCKED_ELEMENTS = 1 << 16
#: The largest block: the few buffers alive at once (256 KiB each in float32) stay in a
#: core's L2 cache (best of 2^15, 2^16, 2^17 for MSE's loss+grad at 1e6 on the 2-core EPYC:
#: 2.4, 2.0 and 2.6 ms).
BLOCK_ELEMENTS = 1 << 16


def range_error(spec: ElementwiseLoss, name: str) -> ValueError:
    """The error for entries of ``name`` outside their declared range."""
    check = next(check for check in spec.checks if check.argument == name)
    return ValueError(f"{name} has entries outside [{check.low:g}, {check.high:g}] (or NaN): "
                      f"{check.message}")


def _evaluated(gradient: Any) -> Any:
    """A declared gradient: a value, or a function computing it, called only when the
    gradient is asked for (``wrt``)."""
    return gradient() if callable(gradient) else gradient


def _full(value: Any, shape: tuple[int, ...]) -> Any:
    """A block's result as a NumPy array of the block's ``shape`` (a view where the math gave
    a number or a smaller array; ``np.broadcast_to`` costs microseconds, so only then)."""
    array = value.array if isinstance(value, Value) else np.asarray(value)
    return array if array.shape == shape else np.broadcast_to(array, shape)


def divisor(spec: ElementwiseLoss, call: ElementwiseCall) -> int:
    """What ``'mean'`` (or an extra reduction) divides the sum by."""
    if call.reduction == "mean":
        return call.numel
    return spec.extra_reductions[call.reduction](tuple(call.input.shape))


class ElementwiseBackend:
    """The generic backend of one elementwise loss: ``forward``, ``backward``,
    ``loss_and_grad`` of a validated call."""

    def __init__(self, spec: ElementwiseLoss) -> None:
        self.spec = spec

    # -------------------------------------------------------------- the math on one part

    def _compute(self, call: ElementwiseCall, arrays: dict[str, Array]) -> ArrayOps:
        dtype = compute_dtype(call.xp, call.dtype)
        for name, array in arrays.items():
            arrays[name] = as_compute(call.xp, array, dtype)
        return ArrayOps(call.xp, dtype, device(call.input))

    def _loss(self, call: ElementwiseCall, arrays: dict[str, Array], shape: tuple[int, ...]
              ) -> Array:
        ops = self._compute(call, arrays)
        loss = self.spec.forward(ops, **arrays, **call.options)
        if tuple(loss.shape) != shape:  # a weight or a constant did not span every element
            loss = call.xp.broadcast_to(loss, shape)
        return loss

    def _gradients(self, call: ElementwiseCall, arrays: dict[str, Array], upstream: Any,
                   wanted: frozenset[str], shape: tuple[int, ...]) -> dict[str, Array]:
        """Per-element gradients of ``wanted``, summed to each argument's shape (compute
        dtype)."""
        shapes = {name: tuple(arrays[name].shape) for name in wanted}
        ops = self._compute(call, arrays)
        grads = self.spec.gradients(ops, upstream, **arrays, **call.options)
        summed = {}
        for name in wanted:
            grad = _evaluated(grads[name])
            if tuple(grad.shape) != shape:
                grad = call.xp.broadcast_to(grad, shape)
            summed[name] = sum_to_shape(call.xp, grad, shapes[name])
        return summed

    def _check_values(self, call: ElementwiseCall) -> None:
        if not call.validate:
            return
        xp = call.xp
        for check in self.spec.checks:
            array = call.arrays.get(check.argument)
            if array is None or math.prod(array.shape) == 0:
                continue
            # min/max: no temporary of the array's size; NaN propagates and fails both.
            if isinstance(array, NDARRAY):
                low, high = float(np.min(array)), float(np.max(array))
            else:
                low, high = float(xp.min(array)), float(xp.max(array))
            if not (low >= check.low and high <= check.high):
                raise range_error(self.spec, check.argument)

    def _upstream(self, call: ElementwiseCall, grad_output: Array | float) -> Array | float:
        """The gradient reaching each loss element."""
        dtype = compute_dtype(call.xp, call.dtype)
        if not isinstance(grad_output, float):
            grad_output = as_compute(call.xp, grad_output, dtype)
        if call.reduction == "sum" or call.reduction == "none":
            return grad_output
        count = divisor(self.spec, call)
        return grad_output / count if count else grad_output * math.nan

    def _reduce(self, call: ElementwiseCall, total: Array | float) -> Array:
        xp = call.xp
        if call.reduction != "sum":
            count = divisor(self.spec, call)
            total = total / count if count else total * math.nan
        if isinstance(total, float):
            with quiet_floating_point():  # a float16 overflow is inf, as in PyTorch
                return xp.asarray(total, dtype=call.dtype, device=device(call.input))
        return as_0d(xp, xp.astype(as_0d(xp, total), call.dtype))

    def _finish(self, call: ElementwiseCall, grads: dict[str, Array]) -> tuple[Array | None, ...]:
        xp = call.xp
        result = []
        with quiet_floating_point():  # a float16 gradient beyond 65504 is inf, as in PyTorch
            for name in self.spec.gradient_names:
                grad = grads.get(name)
                if grad is not None:
                    grad = as_0d(xp, xp.astype(grad, call.arrays[name].dtype, copy=False))
                result.append(grad)
        return tuple(result)

    # -------------------------------------------------------------- whole arrays

    def _whole(self, call: ElementwiseCall, want_loss: bool, upstream: Any,
               wanted: frozenset[str]) -> tuple[Array | None, dict[str, Array]]:
        loss = None
        if want_loss:
            loss = self._loss(call, dict(call.arrays), call.loss_shape)
            if call.reduction == "none":
                loss = as_0d(call.xp, call.xp.astype(loss, call.dtype, copy=False))
            else:
                loss = self._reduce(call, call.xp.sum(loss))
        grads = (self._gradients(call, dict(call.arrays), upstream, wanted, call.loss_shape)
                 if wanted else {})
        return loss, grads

    # -------------------------------------------------------------- NumPy blocks

    def _blocked(self, call: ElementwiseCall, blocks: list[Block], want_loss: bool,
                 upstream: Any, wanted: frozenset[str]) -> tuple[Array | None, dict[str, Array]]:
        ndim = len(call.loss_shape)
        losses = (np.empty(call.loss_shape, dtype=call.dtype)
                  if want_loss and call.reduction == "none" else None)
        # A gradient whose argument the blocks split is written into its slot; one whose
        # argument every block sees whole (broadcast along the blocks' axis) is summed.
        split = {name: spans(call.arrays[name], blocks[0], ndim) for name in wanted}
        outputs = {name: np.empty(call.arrays[name].shape, dtype=call.arrays[name].dtype)
                   for name, is_split in split.items() if is_split}

        dtype = compute_dtype(call.xp, call.dtype)

        def work(part: Block) -> tuple[float, dict[str, Array]]:
            shape = list(call.loss_shape)
            shape[part.axis] = part.extent(shape[part.axis])
            block_shape = tuple(shape)
            # Every result in this thread's reused buffers (see numpy_ops): a Value's array
            # is valid while the Value is referenced, so each is copied out before it goes.
            ops = ScratchOps(dtype)
            arrays = {name: ops.wrap(as_compute(call.xp, part_of(array, part, ndim), dtype))
                      for name, array in call.arrays.items()}
            total = 0.0
            shared = {}
            with quiet_floating_point():
                if want_loss:
                    loss = self.spec.forward(ops, **arrays, **call.options)
                    values = _full(loss, block_shape)
                    if losses is not None:
                        losses[part.index()] = values
                    else:
                        total = float(np.add.reduce(values, axis=None))
                    del loss, values
                if wanted:
                    block_upstream: Any = upstream
                    if isinstance(upstream, NDARRAY) and upstream.ndim == ndim:
                        block_upstream = ops.wrap(part_of(upstream, part, ndim))
                    grads = self.spec.gradients(ops, block_upstream, **arrays, **call.options)
                    for name in wanted:
                        grad = _full(_evaluated(grads[name]), block_shape)
                        summed = sum_to_shape(call.xp, grad, tuple(arrays[name].array.shape))
                        if name in outputs:
                            index = part.index() if part.axis == 0 else (..., part.span)
                            outputs[name][index] = summed
                        else:  # a copy: the buffer is the next block's
                            shared[name] = np.array(summed, copy=True)
                    del grads
            return total, shared

        results = run_blocks(work, blocks)
        grads: dict[str, Array] = dict(outputs)
        for name in wanted:
            if name not in grads:
                total_grad = results[0][1][name]
                for _, shared in results[1:]:
                    total_grad = total_grad + shared[name]
                grads[name] = total_grad
        loss = None
        if want_loss:
            loss = losses if losses is not None else self._reduce(
                call, ordered_sum(total for total, _ in results))
        return loss, grads

    def _run(self, call: ElementwiseCall, want_loss: bool, upstream: Any,
             wanted: frozenset[str]) -> tuple[Array | None, dict[str, Array]]:
        self._check_values(call)
        if (isinstance(call.input, NDARRAY) and call.numel >= BLOCKED_ELEMENTS
                and len(blocks := plan_blocks(call.loss_shape, largest=BLOCK_ELEMENTS)) > 1):
            return self._blocked(call, blocks, want_loss, upstream, wanted)
        with quiet_floating_point():
            return self._whole(call, want_loss, upstream, wanted)

    # -------------------------------------------------------------- the backend interface

    def forward(self, call: ElementwiseCall) -> Array:
        """The loss, reduced as ``call.reduction`` says."""
        return self._run(call, True, None, frozenset())[0]

    def backward(self, call: ElementwiseCall, grad_output: Array | float,
                 wanted: frozenset[str]) -> tuple[Array | None, ...]:
        """The gradients named in ``wanted``, in declaration order (others ``None``)."""
        _, grads = self._run(call, False, self._upstream(call, grad_output), wanted)
        return self._finish(call, grads)

    def loss_and_grad(self, call: ElementwiseCall, wanted: frozenset[str]
                      ) -> tuple[Array, tuple[Array | None, ...]]:
        """The reduced loss and the gradients named in ``wanted``."""
        loss, grads = self._run(call, True, self._upstream(call, 1.0), wanted)
        return loss, self._finish(call, grads)
