"""Negative log-likelihood in pure array-API code.

With ``w[c]`` the class weight (1 without weights) and ``t_n`` the target of element ``n``::

    loss_n       = -w[t_n] * input[n, t_n]     (0 where t_n == ignore_index)
    'sum'        = sum_n loss_n
    'mean'       = sum_n loss_n / total_weight,  total_weight = sum over non-ignored n of w[t_n]
    grad[n, c]   = -w[t_n] * G_n  if c == t_n and t_n is not ignored, else 0

where ``G_n`` is the upstream gradient of element ``n`` (divided by ``total_weight`` for
``'mean'``).  No one-hot matrix is built: the gradient is one ``where`` over the class axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from array_api_compat import device, is_numpy_namespace

from .._class_calls import NLLCall
from . import _nll_numpy
from ._blocked import BLOCK_ELEMENTS, MIN_ELEMENTS, ordered_sum, run_blocks
from ._helpers import as_0d, as_compute, compute_dtype, from_zero, quiet_floating_point
from ._targets import class_targets

Array = Any


@dataclass(frozen=True)
class _Gathered:
    """Per-element quantities in a batched layout ``(N, d1, ..., dK)``, compute dtype."""

    index: Array  # int64 target, 0 where inactive, so it is always a safe index
    active: Array  # bool: not ignored and inside [0, C)
    weight: Array  # w[t_n] where active, else 0
    loss: Array  # -w[t_n] * input[n, t_n] where active, else 0


def _batched_input(call: NLLCall) -> Array:
    xp = call.xp
    return xp.reshape(call.input, (1, call.n_classes)) if call.input.ndim == 1 else call.input


def _flat_positions(call: NLLCall, index: Array) -> Array:
    """Where ``input[n, index[n, s], s]`` lies in the flattened (row-major) input.

    One ``take`` from the flat input is several times faster than ``take_along_axis``,
    which builds an index for every axis.
    """
    xp = call.xp
    count = math.prod(index.shape)
    spatial = count // index.shape[0] if count else 1
    flat_index = xp.reshape(index, (-1,))
    if spatial == 1:
        rows = xp.arange(0, count * call.n_classes, call.n_classes, dtype=index.dtype,
                         device=device(index))
        return rows + flat_index
    position = xp.arange(count, dtype=index.dtype, device=device(index))  # n * S + s
    return (position // spatial) * (call.n_classes * spatial) + position % spatial + (
        flat_index * spatial
    )


def _gather(call: NLLCall, dtype: Any) -> _Gathered:
    xp = call.xp
    targets = class_targets(call)
    index, active, all_active = targets.index, targets.active, targets.all_active
    zeros = xp.zeros(index.shape, dtype=dtype, device=device(index))
    if call.n_classes == 0:
        # Nothing can be gathered from an empty class axis; every target is ignored or invalid.
        return _Gathered(index=index, active=active, weight=zeros, loss=zeros)

    batched = _batched_input(call)
    if is_numpy_namespace(xp) and batched.ndim == 2:
        # (N, C): one fancy index, no flattening (works on any strides).
        picked = batched[np.arange(index.shape[0]), index]
    elif is_numpy_namespace(xp) and not batched.flags.c_contiguous:
        # A strided input is read where it lies: flattening it would copy all of it.
        picked = np.take_along_axis(batched, np.expand_dims(index, 1), axis=1)[:, 0]
    else:
        flat_input = xp.reshape(batched, (-1,))
        picked = xp.take(flat_input, _flat_positions(call, index), axis=0)
    picked = xp.reshape(as_compute(xp, picked, dtype), index.shape)
    if call.weight is None:
        weight = xp.astype(active, dtype)
    else:
        class_weight = xp.take(as_compute(xp, call.weight, dtype), xp.reshape(index, (-1,)),
                               axis=0)
        weight = xp.reshape(class_weight, index.shape)
        if not all_active:
            weight = xp.where(active, weight, zeros)
    # Without weights every active weight is 1: the product would be a pass for nothing.
    loss = -picked if call.weight is None and all_active else -(picked * weight)
    if not all_active:
        # `where`, not a product with the mask: NaN or inf in ignored rows must not leak.
        loss = xp.where(active, loss, zeros)
    return _Gathered(index=index, active=active, weight=weight, loss=loss)


def _reduce(call: NLLCall, gathered: _Gathered) -> tuple[Array, Array | None]:
    """The loss in the result dtype, and the total weight (``'mean'`` only)."""
    xp = call.xp
    if call.reduction == "none":
        return xp.astype(xp.reshape(gathered.loss, call.loss_shape), call.dtype), None
    total = as_0d(xp, from_zero(xp.sum(gathered.loss)))
    if call.reduction == "sum":
        return as_0d(xp, xp.astype(total, call.dtype)), None
    total_weight = as_0d(xp, xp.sum(gathered.weight))
    return as_0d(xp, xp.astype(as_0d(xp, total / total_weight), call.dtype)), total_weight


def _total_weight(call: NLLCall, gathered: _Gathered) -> Array | None:
    return as_0d(call.xp, call.xp.sum(gathered.weight)) if call.reduction == "mean" else None


def _grad_input(
    call: NLLCall,
    gathered: _Gathered,
    grad_output: Array | float,
    total_weight: Array | None,
    dtype: Any,
) -> Array:
    coef = _coefficients(call, gathered, grad_output, total_weight, dtype)
    grad = _place_on_targets(call, gathered.index, coef, dtype)
    return call.xp.astype(call.xp.reshape(grad, tuple(call.input.shape)), call.input.dtype,
                          copy=False)


def _coefficients(
    call: NLLCall,
    gathered: _Gathered,
    grad_output: Array | float,
    total_weight: Array | None,
    dtype: Any,
) -> Array:
    """The gradient at each target position (0 where the target is not active)."""
    xp = call.xp
    upstream = grad_output
    if not isinstance(upstream, float):
        upstream = as_compute(xp, upstream, dtype)
        if call.reduction == "none":
            upstream = xp.reshape(upstream, gathered.index.shape)
    # The same operation order as PyTorch, so float64 results agree bitwise.
    if call.reduction == "none":
        coef = -gathered.weight * upstream
    elif call.reduction == "sum":
        coef = gathered.weight * (-upstream)
    else:
        assert total_weight is not None
        coef = gathered.weight * (-(upstream / total_weight))
    return xp.where(gathered.active, coef, xp.zeros_like(gathered.weight))


def _place_on_targets(call: NLLCall, index: Array, coef: Array, dtype: Any) -> Array:
    """An input-shaped array holding ``coef[n, s]`` at ``[n, index[n, s], s]``, 0 elsewhere."""
    xp = call.xp
    batched_shape = tuple(_batched_input(call).shape)
    if math.prod(batched_shape) == 0:  # no classes (C = 0) or no rows: nothing to place
        return xp.zeros(batched_shape, dtype=dtype, device=device(index))
    if is_numpy_namespace(xp):
        # NumPy: calloc'd zeros plus one scattered write per element is ~6x faster than a
        # `where` over every class; the fused CUDA kernel writes each entry once instead.  The
        # zeros have the input's dtype: a float16 gradient never exists in float32 (the
        # coefficients are rounded once, on the scatter).
        grad = np.zeros(math.prod(batched_shape), dtype=call.input.dtype)
        grad[_flat_positions(call, index)] = xp.reshape(coef, (-1,))
        return np.reshape(grad, batched_shape)
    class_shape = (1, call.n_classes) + (1,) * (len(batched_shape) - 2)
    classes = xp.arange(call.n_classes, dtype=index.dtype, device=device(index))
    hit = xp.reshape(classes, class_shape) == xp.expand_dims(index, axis=1)
    zero = xp.zeros((), dtype=dtype, device=device(index))
    return xp.where(hit, xp.expand_dims(coef, axis=1), zero)


# ------------------------------------------------------------------ NumPy: blocks of samples


def _sample_blocks(call: NLLCall) -> list[slice] | None:
    """NumPy: blocks of samples, so that the per-target temporaries (indices, masks, weights,
    positions) stay cache-sized; None to run unblocked.  A gradient pass scatters each block
    into one zeroed gradient, so only the targets count here, not the classes."""
    if not is_numpy_namespace(call.xp) or call.input.ndim == 1 or not call.loss_shape[0]:
        return None
    samples = call.loss_shape[0]
    per_sample = math.prod(call.loss_shape[1:])
    if samples * per_sample < MIN_ELEMENTS or per_sample == 0:
        return None
    # A target costs about 40 bytes of temporaries (indices, masks, weights, positions): a
    # quarter of the elementwise block keeps a forward pass near 1 MiB per thread.
    step = max(1, (BLOCK_ELEMENTS // 4) // per_sample)
    if samples < 2 * step:
        return None
    return [slice(start, min(start + step, samples)) for start in range(0, samples, step)]


def _block_call(call: NLLCall, rows: slice) -> NLLCall:
    count = len(range(*rows.indices(call.loss_shape[0])))
    return replace(call, input=call.input[rows], target=call.target[rows],
                   loss_shape=(count, *call.loss_shape[1:]))


def _blocked_totals(call: NLLCall, blocks: list[slice], dtype: Any) -> tuple[Array, Array]:
    """(sum of the losses, sum of the target weights), added per block in block order."""
    def block_sums(rows: slice) -> tuple[float, float]:
        with quiet_floating_point():
            gathered = _gather(_block_call(call, rows), dtype)
            return float(np.sum(gathered.loss)), float(np.sum(gathered.weight))

    sums = run_blocks(block_sums, blocks)
    with quiet_floating_point():
        return (np.asarray(from_zero(ordered_sum(loss for loss, _ in sums)), dtype=dtype),
                np.asarray(ordered_sum(weight for _, weight in sums), dtype=dtype))


def _blocked_forward(call: NLLCall, blocks: list[slice], dtype: Any) -> Array:
    if call.reduction == "none":
        out = np.empty(call.loss_shape, dtype=call.dtype)

        def write(rows: slice) -> None:
            with quiet_floating_point():
                out[rows] = _gather(_block_call(call, rows), dtype).loss

        run_blocks(write, blocks)
        return out
    total, total_weight = _blocked_totals(call, blocks, dtype)
    with quiet_floating_point():
        loss = total / total_weight if call.reduction == "mean" else total
        return np.asarray(loss).astype(call.dtype)


def _blocked_gradient(call: NLLCall, blocks: list[slice], grad_output: Array | float,
                      total_weight: Array | None, dtype: Any) -> Array:
    """One calloc'd gradient, each block scattering its coefficients into it: the zeros come
    from the kernel's zeroed pages, and only the per-target temporaries are blocked."""
    grad = np.zeros(math.prod(call.input.shape), dtype=call.input.dtype)
    per_sample = math.prod(call.input.shape[1:])

    def write(rows: slice) -> None:
        block = _block_call(call, rows)
        upstream = grad_output
        if call.reduction == "none" and not isinstance(grad_output, float):
            upstream = grad_output[rows]
        with quiet_floating_point():
            gathered = _gather(block, dtype)
            coef = _coefficients(block, gathered, upstream, total_weight, dtype)
            positions = _flat_positions(block, gathered.index) + rows.start * per_sample
            grad[positions] = np.reshape(coef, (-1,))

    run_blocks(write, blocks)
    return np.reshape(grad, call.input.shape)


# ------------------------------------------------------------------ the backend interface


def forward(call: NLLCall) -> Array:
    """The loss, reduced as ``call.reduction`` says."""
    dtype = compute_dtype(call.xp, call.dtype)
    how = _nll_numpy.route(call)
    if how is not None:
        loss = _nll_numpy.forward(call, np.dtype(dtype), how)
        if loss is not None:
            return loss
    blocks = _sample_blocks(call)
    with quiet_floating_point():
        if blocks is not None:
            return _blocked_forward(call, blocks, dtype)
        loss, _ = _reduce(call, _gather(call, dtype))
        return loss


def backward(call: NLLCall, grad_output: Array | float) -> Array:
    """The gradient with respect to ``input``."""
    dtype = compute_dtype(call.xp, call.dtype)
    how = _nll_numpy.route(call) if isinstance(grad_output, float) else None
    if how is not None and call.reduction != "none":
        result = _nll_numpy.loss_and_grad(call, np.dtype(dtype), how, grad_output,
                                          want_loss=False)
        if result is not None:
            return result[1]
    blocks = _sample_blocks(call)
    with quiet_floating_point():
        if blocks is not None:
            total_weight = (_blocked_totals(call, blocks, dtype)[1]
                            if call.reduction == "mean" else None)
            return _blocked_gradient(call, blocks, grad_output, total_weight, dtype)
        gathered = _gather(call, dtype)
        return _grad_input(call, gathered, grad_output, _total_weight(call, gathered), dtype)


def loss_and_grad(call: NLLCall) -> tuple[Array, Array]:
    """The reduced loss and its gradient with respect to ``input``, sharing the gather."""
    dtype = compute_dtype(call.xp, call.dtype)
    how = _nll_numpy.route(call)
    if how is not None:
        result = _nll_numpy.loss_and_grad(call, np.dtype(dtype), how)
        if result is not None:
            return result
    blocks = _sample_blocks(call)
    with quiet_floating_point():
        if blocks is not None:
            total, total_weight = _blocked_totals(call, blocks, dtype)
            loss = total / total_weight if call.reduction == "mean" else total
            grad = _blocked_gradient(call, blocks, 1.0, total_weight, dtype)
            return np.asarray(loss).astype(call.dtype), grad
        gathered = _gather(call, dtype)
        loss, total_weight = _reduce(call, gathered)
        return loss, _grad_input(call, gathered, 1.0, total_weight, dtype)
