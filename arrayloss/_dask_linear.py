"""Dask arrays: fused linear cross-entropy lazily, a block of tokens per task.

The tokens' row blocks are the tasks (the feature axis is merged into one chunk); the head
(``linear_weight``, ``linear_bias``) and the class weights go to every task whole.  Each task
calls arrayloss's public functions on its own arrays (NumPy or CuPy: chunked again inside),
with the caller's options, so a task holds O(its chunk x V) at a time:

* a reduced loss is the tree sum of the tasks' ``'sum'`` losses; ``'mean'`` divides by the
  kept tokens' class-weight total, computed from the targets alone (no logits), so the
  gradient's ``G / total`` is known before any gradient task runs;
* ``grad_input`` comes back in the input's row blocks; ``grad_W`` and ``grad_b`` are the tree
  sums of the tasks' partial gradients.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np

from ._agnostic._helpers import quiet_floating_point
from ._dask import _chunk_library, _compute, _meta
from ._linear_calls import LinearCrossEntropyCall

Array = Any

__all__ = ["LinearCrossEntropy"]


def _options(call: LinearCrossEntropyCall) -> dict[str, Any]:
    return {"ignore_index": call.ignore_option, "label_smoothing": call.label_smoothing,
            "z_loss": call.z_loss, "softcap": call.softcap, "chunk_size": call.chunk_size,
            "validate": call.validate}


def _whole(array: da.Array | None) -> Any:
    """A small argument (the head, the class weights) as one delayed block, or None."""
    if array is None:
        return None
    return array.rechunk(-1).to_delayed().ravel()[0]


def _blocks(call: LinearCrossEntropyCall) -> tuple[list[Any], list[Any], list[int]]:
    """The tokens' and the targets' delayed row blocks, and the blocks' sizes."""
    h = call.input.rechunk({1: -1})
    rows = h.chunks[0]
    t = call.target.rechunk((rows, -1) if call.probabilities else (rows,))
    return list(h.to_delayed().ravel()), list(t.to_delayed().ravel()), list(rows)


def _kept_weight(target: Any, weight: Any, n_classes: int, ignore_index: int,
                 compute: Any) -> Any:
    """The kept targets' class-weight sum of one block (a target out of range counts as
    not kept here: the loss's own task raises for it when ``validate`` is set)."""
    t = target.astype(np.int64, copy=False)
    kept = (t != ignore_index) & (t >= 0) & (t < n_classes)
    if weight is None:
        return kept.sum(dtype=compute).reshape(1)
    library = type(t).__module__.split(".")[0]
    xp = np if library == "numpy" else __import__(library)
    return (weight.astype(compute)[xp.where(kept, t, 0)] * kept).sum().reshape(1)


class LinearCrossEntropy:
    """The backend functions of linear cross-entropy on Dask arrays."""

    @staticmethod
    def _divisor(call: LinearCrossEntropyCall, compute: Any, library: Any) -> Any:
        if call.probabilities:
            return float(call.n_tokens) if call.n_tokens else np.nan
        _, targets, _ = _blocks(call)
        weight = _whole(call.weight)
        totals = [da.from_delayed(dask.delayed(_kept_weight)(
            t, weight, call.n_classes, call.ignore_index, compute), (1,), dtype=compute,
            meta=_meta(library, 1, compute)) for t in targets]
        return da.concatenate(totals).sum()

    @staticmethod
    def forward(call: LinearCrossEntropyCall) -> tuple[da.Array, da.Array | None]:
        import arrayloss as al

        library = _chunk_library(call.input)
        compute = _compute(library, call.dtype)
        h_blocks, t_blocks, rows = _blocks(call)
        head = (_whole(call.linear_weight), _whole(call.linear_bias), _whole(call.weight))
        per_token = call.reduction == "none"
        options = _options(call)

        def task(h: Any, t: Any, w: Any, b: Any, weight: Any) -> Any:
            if not per_token:
                # The block's sum in the compute dtype: the total is rounded once.
                h, w = h.astype(compute), w.astype(compute)
                b = None if b is None else b.astype(compute)
                weight = None if weight is None else weight.astype(compute)
                t = t.astype(compute) if call.probabilities else t
            return al.linear_cross_entropy(h, w, t, linear_bias=b, weight=weight,
                                           reduction="none" if per_token else "sum",
                                           return_lse=True, **options)

        pieces = [dask.delayed(task, nout=2)(h, t, *head) for h, t in zip(
            h_blocks, t_blocks, strict=True)]
        lse = None
        if call.return_lse:
            lse_dtype = call.dtype if per_token else compute
            lse = da.concatenate([da.from_delayed(piece[1], (size,), dtype=lse_dtype,
                                                  meta=_meta(library, 1, lse_dtype))
                                  for piece, size in zip(pieces, rows, strict=True)])
            lse = lse.astype(call.dtype).reshape(call.loss_shape)
        if per_token:
            losses = da.concatenate([da.from_delayed(piece[0], (size,), dtype=call.dtype,
                                                     meta=_meta(library, 1, call.dtype))
                                     for piece, size in zip(pieces, rows, strict=True)])
            return losses.reshape(call.loss_shape), lse
        partials = da.stack([da.from_delayed(piece[0], (), dtype=compute,
                                             meta=_meta(library, 0, compute))
                             for piece in pieces])
        total = partials.sum()
        divisor = (LinearCrossEntropy._divisor(call, compute, library)
                   if call.reduction == "mean" else 1.0)
        return _finish(total, divisor, call.reduction, call.dtype), lse

    @staticmethod
    def backward(call: LinearCrossEntropyCall, grad_output: Any
                 ) -> tuple[da.Array, da.Array, da.Array | None]:
        _, _, grads = LinearCrossEntropy._gradients(call, grad_output, with_loss=False)
        return grads

    @staticmethod
    def loss_and_grad(call: LinearCrossEntropyCall
                      ) -> tuple[da.Array, da.Array | None,
                                 tuple[da.Array, da.Array, da.Array | None]]:
        loss, lse, grads = LinearCrossEntropy._gradients(call, 1.0, with_loss=True)
        return loss, lse, grads

    @staticmethod
    def _gradients(call: LinearCrossEntropyCall, grad_output: Any, with_loss: bool
                   ) -> tuple[Any, Any, tuple[da.Array, da.Array, da.Array | None]]:
        import arrayloss as al

        library = _chunk_library(call.input)
        compute = _compute(library, call.dtype)
        h_blocks, t_blocks, rows = _blocks(call)
        head = (_whole(call.linear_weight), _whole(call.linear_bias), _whole(call.weight))
        options = _options(call)
        per_token = call.reduction == "none"
        d, n_classes, dtype = call.input.shape[1], call.n_classes, call.dtype
        divisor = (LinearCrossEntropy._divisor(call, compute, library)
                   if call.reduction == "mean" else 1.0)
        if per_token:
            upstream = grad_output.reshape((call.n_tokens,)).rechunk((tuple(rows),))
            g_blocks: list[Any] = list(upstream.to_delayed().ravel())
        else:
            scaled = _scaled_upstream(grad_output, divisor)
            g_blocks = [_whole(scaled) if isinstance(scaled, da.Array) else scaled] * len(rows)

        def task(h: Any, t: Any, g: Any, w: Any, b: Any, weight: Any) -> Any:
            g = g if per_token else _as_number(g)
            # In the compute dtype: the loss total, and the weight's and bias's partial
            # gradients summed over the blocks, are rounded once (as on every other backend).
            h, w = h.astype(compute), w.astype(compute)
            t = t.astype(compute) if call.probabilities else t
            b = None if b is None else b.astype(compute)
            weight = None if weight is None else weight.astype(compute)
            loss = lse = None
            if with_loss:
                # One pass for the block's loss, lse and gradients, scaled by G after.
                (loss, lse), grads = al.linear_cross_entropy_and_grad(
                    h, w, t, linear_bias=b, weight=weight, reduction="sum", return_lse=True,
                    **options)
                grads = tuple(None if grad is None else grad * g for grad in grads)
            else:
                grads = al.linear_cross_entropy_backward(
                    g, h, w, t, linear_bias=b, weight=weight,
                    reduction="none" if per_token else "sum", **options)
            grad_input, grad_weight, grad_bias = grads
            return grad_input.astype(dtype), grad_weight, grad_bias, loss, lse

        pieces = [dask.delayed(task, nout=5)(h, t, g, *head) for h, t, g in zip(
            h_blocks, t_blocks, g_blocks, strict=True)]
        grad_input = da.concatenate([
            da.from_delayed(piece[0], (size, d), dtype=dtype, meta=_meta(library, 2, dtype))
            for piece, size in zip(pieces, rows, strict=True)]).reshape(call.input_shape)
        grad_weight = da.stack([
            da.from_delayed(piece[1], (n_classes, d), dtype=compute,
                            meta=_meta(library, 2, compute)) for piece in pieces]).sum(
            axis=0, dtype=compute).astype(dtype)
        grad_bias = None
        if call.linear_bias is not None:
            grad_bias = da.stack([
                da.from_delayed(piece[2], (n_classes,), dtype=compute,
                                meta=_meta(library, 1, compute)) for piece in pieces]).sum(
                axis=0, dtype=compute).astype(dtype)
        loss = lse = None
        if with_loss:
            total = da.stack([da.from_delayed(piece[3], (), dtype=compute,
                                              meta=_meta(library, 0, compute))
                              for piece in pieces]).sum()
            loss = _finish(total, divisor, call.reduction, dtype)
        if call.return_lse:
            lse = da.concatenate([da.from_delayed(piece[4], (size,), dtype=compute,
                                                  meta=_meta(library, 1, compute))
                                  for piece, size in zip(pieces, rows, strict=True)])
            lse = lse.astype(dtype).reshape(call.loss_shape)
        return loss, lse, (grad_input, grad_weight, grad_bias)


def _as_number(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return float(value)
    return value


def _scaled_upstream(grad_output: Any, divisor: Any) -> Any:
    """``G`` for 'sum', ``G / divisor`` for 'mean' (0 where the divisor is 0: every target
    ignored, whose gradient is 0)."""
    if isinstance(divisor, float) and divisor == 1.0:
        return grad_output

    def divide(upstream: Any, total: Any) -> Any:
        with quiet_floating_point():
            return upstream / total if total != 0 else upstream * 0

    if not isinstance(divisor, da.Array):
        return divide(grad_output, divisor)
    return da.map_blocks(divide, grad_output, divisor, dtype=divisor.dtype,
                         meta=divisor._meta)


def _finish(total: da.Array, divisor: Any, reduction: str, dtype: Any) -> da.Array:
    divide = reduction == "mean"

    def finish(total: Any, divisor: Any) -> Any:
        with quiet_floating_point():
            return (total / divisor if divide else total).astype(dtype)

    return da.map_blocks(finish, total, divisor if divide else 1.0, dtype=dtype,
                         meta=total._meta.astype(dtype))

