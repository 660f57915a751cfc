"""Dask arrays: every loss lazily, chunk by chunk, by arrayloss itself.

One adapter for every loss.  Nothing is computed when a function is called: the result is a
Dask array whose graph calls arrayloss's public functions on each chunk's own array (NumPy
chunks take the blocked NumPy path, CuPy chunks the fused kernels), with the caller's options.
What follows from that:

* **Value checks** (a negative variance, a target out of range) run inside the chunk's task and
  raise the usual exception, with the usual message, when the result is computed.  Shapes,
  dtypes and options are checked at call time, as for every library.
* **Reductions** are Dask's tree reductions over per-chunk partial sums, accumulated in the
  compute dtype (float32 for 16-bit inputs).  A weighted ``'mean'`` (NLL, cross-entropy) sums
  the losses and the target weights, then divides; the target weights come from the targets
  alone, so a gradient's ``1 / total_weight`` never needs the logits.
* **Loss and gradient together** are one task per chunk, which returns both: each input chunk is
  read once.
* **Losses over classes** need whole rows: a class axis split into several chunks is merged for
  the computation (each task holds a block of complete rows, as the log-sum-exp of
  cross-entropy needs), and the gradient is returned with the input's own chunks.
* **Gradients** come back chunked like their arguments; a broadcast argument's gradient (a
  variance per row, say) is summed back with a tree reduction.
"""

from __future__ import annotations

import math
import operator
import string
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np

from ._agnostic._helpers import compute_dtype, quiet_floating_point, sum_to_shape
from ._agnostic._targets import class_targets
from ._calls import GAUSSIAN_GRADIENTS, GaussianNLLCall
from ._class_calls import CrossEntropyCall, NLLCall

Array = Any

__all__ = ["backend"]


def backend(loss: str) -> Any:
    """The adapter for ``loss``: an object with the backend functions of that loss."""
    return {"gaussian_nll": _GaussianNLL, "nll": _ClassLoss("nll"),
            "cross_entropy": _ClassLoss("cross_entropy")}[loss]


# ------------------------------------------------------------------ shared pieces


def _meta(chunk_type: Any, ndim: int, dtype: Any) -> Any:
    """An empty array of the chunks' library (NumPy or CuPy), for Dask's metadata."""
    return chunk_type.empty((0,) * ndim, dtype=dtype)


def _chunk_library(*arrays: Any) -> Any:
    """The module of the chunks (``numpy`` or ``cupy``), from the Dask arrays' ``_meta``."""
    for array in arrays:
        if isinstance(array, da.Array) and type(array._meta).__module__.startswith("cupy"):
            import cupy

            return cupy
    return np


def _compute(xp_chunks: Any, dtype: Any) -> Any:
    import array_api_compat

    return np.dtype(compute_dtype(array_api_compat.array_namespace(
        xp_chunks.empty(0, dtype=dtype)), dtype))


def _reduce(partials: da.Array, reduction: str, divisor: Any, dtype: Any) -> da.Array:
    """The sum of per-chunk partial sums (a tree reduction), divided for ``'mean'`` and
    rounded to the result dtype, quietly: 0/0 = NaN and overflow to inf are the documented
    answers, as on every other path."""
    total = partials.sum()
    divide = reduction == "mean"

    def finish(total: Any, divisor: Any) -> Any:
        with quiet_floating_point():
            value = total / divisor if divide else total
            return value.astype(dtype)

    return da.map_blocks(finish, total, divisor if divide else 1.0, dtype=dtype,
                         meta=total._meta.astype(dtype))


def _in_compute(chunk: Any, compute: Any) -> Any:
    """A floating chunk in the compute dtype (a 16-bit one widened to float32); any other
    chunk, or a number, as it is.  A task computes in it, so that a broadcast argument's
    gradient is summed over the chunks before it is rounded, once (:func:`_gradient`)."""
    dtype = getattr(chunk, "dtype", None)
    if dtype is None or dtype == compute:
        return chunk
    dtype = np.dtype(dtype)
    return chunk.astype(compute) if dtype.kind == "f" or dtype.name == "bfloat16" else chunk


def _gradient(pieces: da.Array, position: int, original: Any, loss_shape: tuple[int, ...],
              library: Any, compute: Any) -> da.Array:
    """One argument's gradient from the tasks' ``pieces`` (their ``position``-th item, in the
    compute dtype): rounded to the argument's dtype chunk by chunk where the argument has the
    loss's shape; where it was broadcast, summed back in the compute dtype and rounded once,
    as every other backend does (a float16 sum of float16 pieces would round each)."""
    ndim = len(loss_shape)
    broadcast = tuple(original.shape) != tuple(loss_shape)
    dtype = np.dtype(compute if broadcast else original.dtype)

    def pick(piece: Any) -> Any:
        return piece[position].astype(dtype, copy=False)

    grad = da.map_blocks(pick, pieces, dtype=dtype, meta=_meta(library, ndim, dtype))
    if not broadcast:
        return grad
    return sum_to_shape(_dask_namespace(), grad, tuple(original.shape)).astype(original.dtype)


def _upstream_for_sum(grad_output: Any, reduction: str, divisor: Any) -> Any:
    """The upstream gradient each chunk's ``'sum'`` backward gets: ``g`` or ``g / divisor``."""
    if reduction != "mean":
        return grad_output
    if not isinstance(divisor, da.Array):
        return grad_output / divisor if divisor == divisor else math.nan  # NaN: no samples
    # A total weight of 0 (every target ignored) makes G infinite: no gradient entry uses it.
    def divide(upstream: Any, total: Any) -> Any:
        with quiet_floating_point():
            return upstream / total

    return da.map_blocks(divide, grad_output, divisor, dtype=divisor.dtype,
                         meta=divisor._meta)


def _chunk_float(value: Any) -> Any:
    """A 0-d upstream chunk as a number when it is a NumPy value (keeps arrayloss's host path)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return float(value)
    return value


# ------------------------------------------------------------------ Gaussian NLL


def _gaussian_options(call: GaussianNLLCall) -> dict[str, Any]:
    return {"full": call.full, "eps": call.eps, "validate": call.validate,
            "log_var": call.log_var, "beta": call.beta}


def _gaussian_arrays(call: GaussianNLLCall) -> tuple[da.Array, da.Array, Any]:
    """input, target and var, each broadcast to the loss's shape with the input's chunks (var
    may stay a number)."""
    shape = call.loss_shape
    x = da.broadcast_to(call.input, shape)
    t = da.broadcast_to(call.target, shape).rechunk(x.chunks)
    v = call.var if isinstance(call.var, float) else (
        da.broadcast_to(call.var, shape).rechunk(x.chunks))
    return x, t, v


class _GaussianNLL:
    """Gaussian NLL: elementwise, so every chunk of the broadcast loss is one task."""

    @staticmethod
    def forward(call: GaussianNLLCall) -> da.Array:
        import arrayloss as al

        x, t, v = _gaussian_arrays(call)
        arrays = [x, t] if isinstance(v, float) else [x, t, v]
        library = _chunk_library(*arrays)
        options = _gaussian_options(call)
        scalar = v if isinstance(v, float) else None
        if call.reduction == "none":
            def none(*chunks: Any) -> Any:
                var = scalar if scalar is not None else chunks[2]
                return al.gaussian_nll_loss(chunks[0], chunks[1], var, reduction="none",
                                            **options)

            return da.map_blocks(none, *arrays, dtype=call.dtype,
                                 meta=_meta(library, len(call.loss_shape), call.dtype))
        compute = _compute(library, call.dtype)

        def partial(*chunks: Any) -> Any:
            var = scalar if scalar is not None else chunks[2].astype(compute)
            loss = al.gaussian_nll_loss(chunks[0].astype(compute), chunks[1].astype(compute),
                                        var, reduction="sum", **options)
            return loss.reshape((1,) * chunks[0].ndim)

        partials = da.map_blocks(partial, *arrays, dtype=compute,
                                 chunks=tuple((1,) * len(c) for c in x.chunks),
                                 meta=_meta(library, x.ndim, compute))
        return _reduce(partials, call.reduction, call.numel or math.nan, call.dtype)

    @staticmethod
    def _task(call: GaussianNLLCall, wanted: frozenset[str], upstream: Any,
              with_loss: bool) -> tuple[da.Array | None, list[da.Array | None]]:
        """One task per chunk: (the loss partials or None, the three gradients or None)."""
        import arrayloss as al

        x, t, v = _gaussian_arrays(call)
        scalar = v if isinstance(v, float) else None
        arrays = [x, t] if scalar is not None else [x, t, v]
        library = _chunk_library(*arrays)
        options = _gaussian_options(call)
        reduction = "none" if call.reduction == "none" else "sum"
        compute = _compute(library, call.dtype)
        upstream_array = isinstance(upstream, da.Array)
        if upstream_array:
            arrays.append(upstream if upstream.ndim == 0 else da.broadcast_to(
                upstream, call.loss_shape).rechunk(x.chunks))

        def task(*chunks: Any) -> tuple[Any, ...]:
            # Widened once, for the gradients and the loss alike.
            x, t = _in_compute(chunks[0], compute), _in_compute(chunks[1], compute)
            var = scalar if scalar is not None else _in_compute(chunks[2], compute)
            g = chunks[-1] if reduction == "none" else (
                _chunk_float(chunks[-1]) if upstream_array else upstream)
            grads = al.gaussian_nll_loss_backward(g, x, t, var, reduction=reduction,
                                                  wrt=tuple(wanted), **options)
            loss = None
            if with_loss:
                loss = al.gaussian_nll_loss(x, t, var, reduction="sum", **options).reshape(
                    (1,) * x.ndim)
            return (loss, *grads)

        pieces = da.map_blocks(task, *arrays, dtype=object,
                               meta=np.empty((0,) * x.ndim, dtype=object))
        loss = None
        if with_loss:
            loss = da.map_blocks(operator.itemgetter(0), pieces, dtype=compute,
                                     chunks=tuple((1,) * len(c) for c in x.chunks),
                                     meta=_meta(library, x.ndim, compute))
        grads: list[da.Array | None] = []
        for position, (name, original) in enumerate(zip(
                GAUSSIAN_GRADIENTS, (call.input, call.target, call.var), strict=True)):
            if name not in wanted:
                grads.append(None)
                continue
            grad = _gradient(pieces, position + 1, original, call.loss_shape, library, compute)
            if name == "var" and call.var_shape is not None:
                grad = grad.reshape(call.var_shape)
            grads.append(grad.rechunk(_chunks_of(call, name)))
        return loss, grads

    @staticmethod
    def backward(call: GaussianNLLCall, grad_output: Any,
                 wanted: frozenset[str]) -> tuple[Any, Any, Any]:
        upstream = _upstream_for_sum(grad_output, call.reduction, call.numel or math.nan)
        _, grads = _GaussianNLL._task(call, wanted, upstream, with_loss=False)
        return tuple(grads)  # type: ignore[return-value]

    @staticmethod
    def loss_and_grad(call: GaussianNLLCall,
                      wanted: frozenset[str]) -> tuple[Any, tuple[Any, Any, Any]]:
        upstream = _upstream_for_sum(1.0, call.reduction, call.numel or math.nan)
        partials, grads = _GaussianNLL._task(call, wanted, upstream, with_loss=True)
        assert partials is not None
        loss = _reduce(partials, call.reduction, call.numel or math.nan, call.dtype)
        return loss, tuple(grads)  # type: ignore[return-value]


def _chunks_of(call: GaussianNLLCall, name: str) -> Any:
    """The chunks a gradient is returned with: its argument's own."""
    source = {"input": call.input, "target": call.target}.get(name)
    if source is None:
        return "auto" if call.var_shape is None else _var_chunks(call)
    return source.chunks


def _var_chunks(call: GaussianNLLCall) -> Any:
    var = call.var
    assert isinstance(var, da.Array)
    if call.var_shape is not None and tuple(var.shape) != call.var_shape:
        return var.chunks[:-1]  # the "one fewer dimension" form: var was given without it
    return var.chunks


def _dask_namespace() -> Any:
    import array_api_compat.dask.array as namespace

    return namespace


# ------------------------------------------------------------------ NLL and cross-entropy


class _ClassLoss:
    """NLL or cross-entropy: tasks over blocks of complete rows ``(n, C, s...)``."""

    def __init__(self, loss: str) -> None:
        self.loss = loss

    def _functions(self) -> tuple[Any, Any]:
        import arrayloss as al

        if self.loss == "nll":
            return al.nll_loss, al.nll_loss_backward
        return al.cross_entropy, al.cross_entropy_backward

    @staticmethod
    def _options(call: Any) -> dict[str, Any]:
        options = {"ignore_index": call.ignore_index, "validate": call.validate}
        if isinstance(call, CrossEntropyCall):
            options["label_smoothing"] = call.label_smoothing
        return options

    @staticmethod
    def _layout(call: Any) -> tuple[da.Array, da.Array, Any, str, str, str]:
        """input with whole rows, target and weight aligned with it, and their indices."""
        x = call.input
        if x.ndim == 1:  # unbatched: one sample, one task
            x = x.rechunk(-1)
        elif x.numblocks[1] > 1:
            x = x.rechunk({1: -1})
        letters = string.ascii_lowercase
        x_index = letters[: x.ndim]
        sample_index = x_index[:1] + x_index[2:] if x.ndim > 1 else ""
        probabilities = isinstance(call, CrossEntropyCall) and call.probabilities
        t = call.target
        if probabilities:
            t_index = x_index
            t = t.rechunk(x.chunks)
        else:
            t_index = sample_index if x.ndim > 1 else "".join(letters[20: 20 + t.ndim])
            if x.ndim > 1:
                t = t.rechunk((x.chunks[0], *x.chunks[2:]))
            else:
                t = t.rechunk(-1)
        return x, t, call.weight, x_index, t_index, sample_index

    def _blockwise(self, function: Callable[..., Any], out_index: str, call: Any,
                   extra: list[tuple[Any, str | None]], dtype: Any, adjust: dict[str, int],
                   meta: Any) -> da.Array:
        x, t, w, x_index, t_index, _ = self._layout(call)
        arguments: list[Any] = [x, x_index, t, t_index]
        class_index = x_index[0] if x.ndim == 1 else x_index[1]
        arguments += [w.rechunk(-1), class_index] if w is not None else [None, None]
        for array, index in extra:
            arguments += [array, index]
        return da.blockwise(function, out_index, *arguments, dtype=dtype,
                            adjust_chunks=adjust or None, meta=meta, concatenate=True,
                            align_arrays=False)

    def _target_weight_total(self, call: Any) -> da.Array:
        """The sum over kept targets of their class weights (1 without weights): 'mean''s
        divisor, from the targets alone."""
        x, t, w, _, t_index, _ = self._layout(call)
        library = _chunk_library(x)
        compute = _compute(library, call.dtype)
        n_classes = call.n_classes
        ignore_index = call.ignore_index
        unbatched = x.ndim == 1

        def total(target: Any, weight: Any) -> Any:
            shape = (n_classes,) if unbatched else (target.shape[0], n_classes,
                                                    *target.shape[1:])
            stand_in = library.broadcast_to(library.zeros((), dtype=compute), shape)
            import array_api_compat

            namespace = array_api_compat.array_namespace(stand_in)
            chunk_call = NLLCall(xp=namespace, input=stand_in, target=target, weight=weight,
                                 ignore_index=ignore_index, reduction="mean", validate=False,
                                 n_classes=n_classes,
                                 loss_shape=() if unbatched else tuple(target.shape),
                                 dtype=compute)
            kept = class_targets(chunk_call)
            if weight is None:
                value = namespace.sum(namespace.astype(kept.active, compute))
            else:
                picked = namespace.take(namespace.astype(weight, compute),
                                        namespace.reshape(kept.index, (-1,)), axis=0)
                value = namespace.sum(namespace.where(
                    namespace.reshape(kept.active, (-1,)), picked,
                    namespace.zeros((), dtype=compute)))
            return library.asarray(value, dtype=compute).reshape((1,) * max(target.ndim, 1))

        out_index = t_index or "z"
        arguments: list[Any] = [t, t_index] if t_index else [t.reshape(1), "z"]
        arguments += [w.rechunk(-1), "y"] if w is not None else [None, None]
        partials = da.blockwise(total, out_index, *arguments, dtype=compute,
                                adjust_chunks={letter: 1 for letter in out_index},
                                meta=_meta(library, len(out_index), compute),
                                concatenate=True, align_arrays=False)
        return partials.sum()

    def _divisor(self, call: Any) -> Any:
        if isinstance(call, CrossEntropyCall) and call.probabilities:
            samples = math.prod(call.loss_shape)
            # PyTorch: the number of samples, NaN (0/0) when the input has no elements.
            return float(samples) if samples and call.n_classes else math.nan
        return self._target_weight_total(call)

    def forward(self, call: Any) -> da.Array:
        loss_function, _ = self._functions()
        options = self._options(call)
        x, _, _, _, _, sample_index = self._layout(call)
        library = _chunk_library(x)
        if call.reduction == "none":
            def none(x: Any, t: Any, w: Any) -> Any:
                return loss_function(x, t, w, reduction="none", **options)

            return self._blockwise(none, sample_index, call, [], call.dtype, {},
                                   _meta(library, len(sample_index), call.dtype))
        compute = _compute(library, call.dtype)
        out_index = sample_index or "a"

        def partial(x: Any, t: Any, w: Any) -> Any:
            x = x.astype(compute)
            w = None if w is None else w.astype(compute)
            loss = loss_function(x, t, w, reduction="sum", **options)
            return loss.reshape((1,) * len(out_index))

        partials = self._blockwise(partial, out_index, call, [], compute,
                                   {letter: 1 for letter in out_index},
                                   _meta(library, len(out_index), compute))
        divisor = self._divisor(call) if call.reduction == "mean" else 1.0
        return _smoothed_mean_rule(call, _reduce(partials, call.reduction, divisor, call.dtype),
                                   divisor)

    def _task(self, call: Any, upstream: Any, with_loss: bool) -> tuple[Any, da.Array]:
        loss_function, backward_function = self._functions()
        options = self._options(call)
        x, _, _, x_index, _, sample_index = self._layout(call)
        library = _chunk_library(x)
        compute = _compute(library, call.dtype)
        reduction = "none" if call.reduction == "none" else "sum"
        extra: list[tuple[Any, str | None]] = []
        upstream_array = isinstance(upstream, da.Array)
        if upstream_array:
            if upstream.ndim:
                upstream = upstream.rechunk(x.chunks[:1] + x.chunks[2:])
            extra.append((upstream, sample_index if upstream.ndim else ""))

        def task(x: Any, t: Any, w: Any, *rest: Any) -> tuple[Any, Any]:
            g = rest[0] if reduction == "none" else (
                _chunk_float(rest[0]) if upstream_array else upstream)
            grad = backward_function(g, x, t, w, reduction=reduction, **options)
            loss = None
            if with_loss:
                weight = None if w is None else w.astype(compute)
                loss = loss_function(x.astype(compute), t, weight, reduction="sum", **options)
                loss = loss.reshape((1,) * x.ndim)
            return loss, grad

        pieces = self._blockwise(task, x_index, call, extra, object, {},
                                 np.empty((0,) * x.ndim, dtype=object))
        grad = da.map_blocks(operator.itemgetter(1), pieces, dtype=call.input.dtype,
                                 meta=_meta(library, x.ndim, call.input.dtype))
        grad = grad.rechunk(call.input.chunks)
        partials = None
        if with_loss:
            partials = da.map_blocks(operator.itemgetter(0), pieces, dtype=compute,
                                         chunks=tuple((1,) * len(c) for c in x.chunks),
                                         meta=_meta(library, x.ndim, compute))
        return partials, grad

    def backward(self, call: Any, grad_output: Any) -> da.Array:
        divisor = self._divisor(call) if call.reduction == "mean" else 1.0
        _, grad = self._task(call, _upstream_for_sum(grad_output, call.reduction, divisor),
                             with_loss=False)
        return grad

    def loss_and_grad(self, call: Any, out: Any = None) -> tuple[da.Array, da.Array]:
        assert out is None  # rejected when the call was checked: Dask arrays take no out
        divisor = self._divisor(call) if call.reduction == "mean" else 1.0
        partials, grad = self._task(call, _upstream_for_sum(1.0, call.reduction, divisor),
                                    with_loss=True)
        assert partials is not None
        loss = _reduce(partials, call.reduction, divisor, call.dtype)
        return _smoothed_mean_rule(call, loss, divisor), grad


def _smoothed_mean_rule(call: Any, loss: da.Array, divisor: Any) -> da.Array:
    """``loss``, NaN where a label-smoothed, class-weighted ``'mean'`` has a total weight of
    0 (PyTorch's rule, see ``_agnostic.cross_entropy.smoothed_weighted_mean``)."""
    from ._agnostic.cross_entropy import smoothed_weighted_mean

    if (call.reduction != "mean" or not isinstance(call, CrossEntropyCall)
            or not smoothed_weighted_mean(call)):
        return loss

    def rule(loss: Any, divisor: Any) -> Any:
        return loss if divisor != 0 else loss.dtype.type(math.nan)

    return da.map_blocks(rule, loss, divisor, dtype=loss.dtype, meta=loss._meta)
