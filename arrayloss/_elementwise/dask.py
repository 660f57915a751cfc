"""Any elementwise loss on Dask arrays: lazily, chunk by chunk, by arrayloss itself.

Every argument is broadcast to the loss's shape with the input's chunks, and each chunk is one
task that calls the loss's own public functions on the chunk's arrays (NumPy chunks take the
blocked NumPy path, CuPy chunks the fused kernels).  Reductions are Dask's tree reductions of
per-chunk sums in the compute dtype; the loss and its gradients are one task per chunk; a
broadcast argument's gradient is summed back by a tree reduction.  Value checks run inside
the tasks, when the result is computed.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import dask.array as da
import numpy as np

from .._dask import (
    _chunk_float,
    _chunk_library,
    _compute,
    _gradient,
    _in_compute,
    _meta,
    _reduce,
    _upstream_for_sum,
)
from .call import ElementwiseCall
from .generic import divisor
from .public import Defined
from .spec import ElementwiseLoss

__all__ = ["DaskBackend"]

Array = Any


class DaskBackend:
    """The Dask adapter of one elementwise loss."""

    def __init__(self, spec: ElementwiseLoss, functions: Defined) -> None:
        self.spec, self.functions = spec, functions

    def _arrays(self, call: ElementwiseCall) -> dict[str, da.Array]:
        x = da.broadcast_to(call.input, call.loss_shape)
        return {name: (x if name == "input" else
                       da.broadcast_to(array, call.loss_shape).rechunk(x.chunks))
                for name, array in call.arrays.items()}

    def _keywords(self, call: ElementwiseCall) -> dict[str, Any]:
        return {**call.options, "validate": call.validate}

    def _divisor(self, call: ElementwiseCall) -> float:
        if call.reduction == "sum" or call.reduction == "none":
            return 1.0
        count = divisor(self.spec, call)
        return float(count) if count else math.nan

    def forward(self, call: ElementwiseCall) -> da.Array:
        arrays = self._arrays(call)
        names = list(arrays)
        library = _chunk_library(*arrays.values())
        keywords = self._keywords(call)
        forward = self.functions.forward
        ndim = len(call.loss_shape)
        if call.reduction == "none":
            def none(*chunks: Any) -> Any:
                return forward(**dict(zip(names, chunks, strict=True)), reduction="none",
                               **keywords)

            return da.map_blocks(none, *arrays.values(), dtype=call.dtype,
                                 meta=_meta(library, ndim, call.dtype))
        compute = _compute(library, call.dtype)

        def partial(*chunks: Any) -> Any:
            named = {name: chunk.astype(compute) for name, chunk in zip(names, chunks,
                                                                          strict=True)}
            return forward(**named, reduction="sum", **keywords).reshape((1,) * ndim)

        partials = da.map_blocks(partial, *arrays.values(), dtype=compute,
                                 chunks=tuple((1,) * len(c) for c in arrays["input"].chunks),
                                 meta=_meta(library, ndim, compute))
        mode = "sum" if call.reduction == "sum" else "mean"
        return _reduce(partials, mode, self._divisor(call), call.dtype)

    def _task(self, call: ElementwiseCall, wanted: frozenset[str], upstream: Any,
              with_loss: bool) -> tuple[da.Array | None, list[da.Array | None]]:
        arrays = self._arrays(call)
        names = list(arrays)
        library = _chunk_library(*arrays.values())
        keywords = self._keywords(call)
        ndim = len(call.loss_shape)
        compute = _compute(library, call.dtype)
        reduction = "none" if call.reduction == "none" else "sum"
        upstream_array = isinstance(upstream, da.Array)
        inputs = list(arrays.values())
        if upstream_array:
            inputs.append(upstream if upstream.ndim == 0 else da.broadcast_to(
                upstream, call.loss_shape).rechunk(arrays["input"].chunks))
        forward, backward = self.functions.forward, self.functions.backward
        wrt = tuple(wanted)

        def task(*chunks: Any) -> tuple[Any, ...]:
            # Widened once, for the gradients and the loss alike.
            named = {name: _in_compute(chunk, compute)
                     for name, chunk in zip(names, chunks[:len(names)], strict=True)}
            g = chunks[-1] if reduction == "none" else (
                _chunk_float(chunks[-1]) if upstream_array else upstream)
            grads = backward(g, **named, reduction=reduction, wrt=wrt, **keywords)
            loss = None
            if with_loss:
                loss = forward(**named, reduction="sum", **keywords).reshape((1,) * ndim)
            return (loss, *grads)

        pieces = da.map_blocks(task, *inputs, dtype=object,
                               meta=np.empty((0,) * ndim, dtype=object))
        loss = None
        if with_loss:
            loss = da.map_blocks(operator.itemgetter(0), pieces, dtype=compute,
                                 chunks=tuple((1,) * len(c) for c in arrays["input"].chunks),
                                 meta=_meta(library, ndim, compute))
        grads: list[da.Array | None] = []
        for position, name in enumerate(self.spec.gradient_names):
            if name not in wanted:
                grads.append(None)
                continue
            original = call.arrays[name]
            grad = _gradient(pieces, position + 1, original, call.loss_shape, library, compute)
            grads.append(grad.rechunk(original.chunks))
        return loss, grads

    def backward(self, call: ElementwiseCall, grad_output: Any,
                 wanted: frozenset[str]) -> tuple[Any, ...]:
        upstream = _upstream_for_sum(grad_output, call.reduction if call.reduction == "none"
                                     or call.reduction == "sum" else "mean",
                                     self._divisor(call))
        return tuple(self._task(call, wanted, upstream, with_loss=False)[1])

    def loss_and_grad(self, call: ElementwiseCall, wanted: frozenset[str]
                      ) -> tuple[Any, tuple[Any, ...]]:
        mode = "sum" if call.reduction == "sum" else "mean"
        upstream = _upstream_for_sum(1.0, mode, self._divisor(call))
        partials, grads = self._task(call, wanted, upstream, with_loss=True)
        assert partials is not None
        return _reduce(partials, mode, self._divisor(call), call.dtype), tuple(grads)
