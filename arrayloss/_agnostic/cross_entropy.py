"""Cross-entropy in pure array-API code: a stable log-softmax and NLL, fused per block of rows.

The input is seen as ``z`` of shape ``(N, C, S)`` (``S`` the product of the spatial dims; an
unbatched ``(C,)`` input is ``(1, C, 1)``), and for each sample ``n`` (and position ``s``)::

    logp[n, c]  = (z[n, c] - max_n) - log(sum_c exp(z[n, c] - max_n))
    p[n, c]     = exp(logp[n, c])                         (the softmax)

Class-index targets ``t_n``, class weights ``w`` (1 without), label smoothing ``eps``::

    loss_n = (1 - eps) * (-w[t_n] * logp[n, t_n]) + eps / C * (-sum_c w[c] * logp[n, c])
    'mean' = sum_n loss_n / sum_n w[t_n]                  (over targets that are not ignored)
    grad   = G_n * (p[n, c] * ((1 - eps) w[t_n] + eps/C sum_k w[k])
                    - (1 - eps) w[t_n] [c == t_n] - eps/C w[c])

Class-probability targets ``q``, smoothed to ``q' = (1 - eps) q + eps / C``::

    loss_n = -sum_c w[c] q'[n, c] logp[n, c]
    'mean' = sum_n loss_n / (number of samples N * S)     (PyTorch's divisor: not weighted)
    grad   = G_n * (p[n, c] * sum_k w[k] q'[n, k] - w[c] q'[n, c])

``G_n`` is the upstream gradient of sample ``n`` (divided by the mean's divisor for ``'mean'``).
Both 'mean' rules are PyTorch's.  Every library but NumPy runs :func:`_block` on the whole
array; NumPy runs the same math in cache-sized blocks of rows, in worker threads
(:mod:`._cross_entropy_numpy`), so that a forward pass allocates O(N) plus a few blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from array_api_compat import device, is_numpy_namespace

from .._class_calls import CrossEntropyCall
from . import _cross_entropy_numpy
from ._blocked import broadcast_constant, run_blocks
from ._cross_entropy_prepared import Prepared as _Prepared
from ._helpers import as_0d, as_compute, compute_dtype, quiet_floating_point
from ._targets import class_targets, every_target_a_class

Array = Any


# --------------------------------------------------------------------------- layout


def _sizes(call: CrossEntropyCall) -> tuple[int, int]:
    shape = tuple(call.input.shape)
    if len(shape) == 1:
        return 1, 1
    return shape[0], math.prod(shape[2:])


def _as_3d(call: CrossEntropyCall, x: Array, n: int, s: int) -> Array | None:
    """``x`` (input-shaped) as ``(N, C, S)``; on NumPy only as a view (None where it needs a
    copy: the blocks then reshape their own rows)."""
    if is_numpy_namespace(call.xp):
        return _cross_entropy_numpy.view_3d(x, n, call.n_classes, s)
    return call.xp.reshape(x, (n, call.n_classes, s))


# --------------------------------------------------------------------------- preparation


def _prepare(call: CrossEntropyCall, grad_output: Array | float | None) -> _Prepared:
    """Check the targets (before any work on the logits) and scale the upstream gradient."""
    xp = call.xp
    dtype = compute_dtype(xp, call.dtype)
    n, s = _sizes(call)
    input3 = _as_3d(call, call.input, n, s)

    class_weight3 = None
    class_weight_sum: float | Array = float(call.n_classes)
    if call.weight is not None:
        weight = as_compute(xp, call.weight, dtype)
        class_weight3 = xp.reshape(weight, (1, call.n_classes, 1))
        class_weight_sum = as_0d(xp, xp.sum(weight))

    active = target_weight = None
    all_active = True
    if call.probabilities:
        target3 = xp.reshape(call.target, (n, call.n_classes, s))
        # PyTorch: the number of samples, but NaN (0/0) when the input has no elements.
        divisor: float | Array | None = float(n * s) if call.n_classes else 0.0
    elif (call.weight is None and is_numpy_namespace(xp) and n * s
          and every_target_a_class(call.target, call.n_classes, call.ignore_index)):
        # Every target a class of weight 1: broadcast ones, no (N, S) array (NumPy's blocks
        # read them per block), and the count as the divisor, rounded once.  Nothing more:
        # after a large call, every object this touches is a cache miss (the general branch
        # took 0.2-0.3 ms of a 1000 x 1000 call, measured).
        target3 = np.asarray(call.target, dtype=np.int64).reshape(n, s)
        active = broadcast_constant(True, (n, s), np.bool_)
        target_weight = broadcast_constant(1, (n, s), dtype)
        divisor = np.asarray(float(n * s), dtype=dtype)
    else:
        targets = class_targets(call.nll)
        index = xp.reshape(targets.index, (n, s))
        active = xp.reshape(targets.active, (n, s))
        all_active = targets.all_active
        target3 = index
        if call.weight is None:
            target_weight = xp.astype(active, dtype)
        else:
            picked = xp.take(as_compute(xp, call.weight, dtype), xp.reshape(index, (-1,)),
                             axis=0)
            target_weight = xp.reshape(picked, (n, s))
            if not all_active:
                target_weight = xp.where(active, target_weight,
                                         xp.zeros((), dtype=dtype, device=device(call.input)))
        divisor = as_0d(xp, xp.sum(target_weight))

    upstream: float | Array = 1.0
    if grad_output is not None:
        if isinstance(grad_output, float):
            upstream = grad_output
        else:
            upstream = as_compute(xp, grad_output, dtype)
            if call.reduction == "none":
                upstream = xp.reshape(upstream, (n, s))
        if call.reduction == "mean":
            assert divisor is not None
            # No samples (a float 0 divisor): no gradient entries for the NaN to reach.
            upstream = upstream / divisor if not isinstance(divisor, float) or divisor else (
                math.nan)
    return _Prepared(n=n, s=s, dtype=dtype, input3=input3, target3=target3, active=active,
                     target_weight=target_weight, all_active=all_active,
                     class_weight3=class_weight3, class_weight_sum=class_weight_sum,
                     upstream=upstream, divisor=divisor)


# --------------------------------------------------------------------------- one block


def _block(call: CrossEntropyCall, prep: _Prepared, rows: slice, cols: slice,
           want_loss: bool, want_grad: bool) -> tuple[Array | None, Array | None]:
    """(loss ``(b, s)``, gradient ``(b, C, s)``) of one block, in the compute dtype."""
    xp, eps, n_classes = call.xp, call.label_smoothing, call.n_classes
    z = as_compute(xp, prep.input3[rows, :, cols], prep.dtype)
    row_max = xp.max(z, axis=1, keepdims=True)
    shifted = z - row_max
    exp = xp.exp(shifted)
    sum_exp = xp.sum(exp, axis=1, keepdims=True)
    log_sum = xp.log(sum_exp)
    upstream = prep.upstream
    whole = rows == slice(0, prep.n) and cols == slice(0, prep.s)
    if not isinstance(upstream, float) and upstream.ndim == 2 and not whole:
        # (Not sliced where the block is everything: a view of a batch of upstream
        # gradients under torch's vmap, is_grads_batched=True, has no batching rule.)
        upstream = upstream[rows, cols]
    weight3 = prep.class_weight3

    if call.probabilities:
        q = as_compute(xp, prep.target3[rows, :, cols], prep.dtype)
        if eps:
            q = q * (1 - eps) + eps / n_classes
        wq = q if weight3 is None else q * weight3
        loss = None
        if want_loss:
            # PyTorch's order, logp q w: where q w alone would overflow, logp q may not.
            terms = (shifted - log_sum) * q
            loss = -xp.sum(terms if weight3 is None else terms * weight3, axis=1)
        grad = None
        if want_grad:
            total = xp.sum(wq, axis=1, keepdims=True)
            grad = _times_rows(xp, exp / sum_exp * total - wq, upstream)
        return loss, grad

    index = prep.target3[rows, cols]
    active = prep.active[rows, cols]
    target_weight = prep.target_weight[rows, cols]
    zero = xp.zeros((), dtype=prep.dtype, device=device(z))
    loss = None
    if want_loss:
        picked = xp.take_along_axis(shifted, xp.expand_dims(index, axis=1), axis=1)[:, 0, :]
        loss = -(target_weight * (picked - log_sum[:, 0, :]))
        if eps:
            logp = shifted - log_sum
            spread = logp if weight3 is None else logp * weight3
            loss = (1 - eps) * loss + (eps / n_classes) * -xp.sum(spread, axis=1)
        if not prep.all_active:
            # `where`, not a product: NaN or inf in an ignored row must not leak.
            loss = xp.where(active, loss, zero)
    grad = None
    if want_grad:
        # G_n where the target counts, exactly 0 elsewhere (G may be inf when 'mean' divides
        # by a zero total weight, and 0 * inf would be NaN).
        upstream_rows = upstream
        if not prep.all_active:
            if isinstance(upstream, float):
                upstream = xp.asarray(upstream, dtype=prep.dtype, device=device(z))
            upstream_rows = xp.where(active, upstream, zero)
        on_target = (1 - eps) * (target_weight * upstream_rows)
        scale = on_target
        if eps:
            scale = on_target + (eps / n_classes) * prep.class_weight_sum * upstream_rows
        grad = exp / sum_exp * _per_sample(xp, scale)
        grad = _subtract_at_targets(xp, grad, index, on_target)
        if eps:
            spread = _per_sample(xp, (eps / n_classes) * upstream_rows)
            grad = grad - (spread if weight3 is None else spread * weight3)
    return loss, grad


def _per_sample(xp: Any, value: float | Array) -> float | Array:
    """A per-sample ``(b, s)`` value (or a scalar) made to broadcast against ``(b, C, s)``."""
    if isinstance(value, float) or value.ndim < 2:
        return value
    return xp.expand_dims(value, axis=1)


def _times_rows(xp: Any, x: Array, upstream: float | Array) -> Array:
    """``x`` of shape ``(b, C, s)`` times a per-sample ``(b, s)`` (or scalar) factor."""
    return x * _per_sample(xp, upstream)


def _subtract_at_targets(xp: Any, grad: Array, index: Array, amount: Array) -> Array:
    """``grad[n, index[n, s], s] -= amount[n, s]``: in place on NumPy, a ``where`` elsewhere."""
    if is_numpy_namespace(xp):
        b, _, s = grad.shape
        grad[np.arange(b)[:, None], index, np.arange(s)[None, :]] -= amount
        return grad
    classes = xp.reshape(xp.arange(grad.shape[1], dtype=index.dtype, device=device(index)),
                         (1, -1, 1))
    hit = classes == xp.expand_dims(index, axis=1)
    return xp.where(hit, grad - xp.expand_dims(amount, axis=1), grad)


# --------------------------------------------------------------------------- driver


def _run(call: CrossEntropyCall, grad_output: Array | float | None, want_loss: bool,
         want_grad: bool, out: Array | None = None) -> tuple[Array | None, Array | None]:
    """The loss (reduced) and/or the gradient with respect to ``input``."""
    xp = call.xp
    prep = _prepare(call, grad_output)
    dev = device(call.input)
    input_shape = tuple(call.input.shape)
    losses = grad = None

    route = numpy_route(call)
    if call.n_classes == 0 or prep.n * prep.s == 0:
        # Nothing to normalise: every sample's loss is an empty sum (its targets are all
        # ignored, or there are none), and the gradient has no entries.
        losses = xp.zeros((prep.n, prep.s), dtype=prep.dtype, device=dev)
        if want_grad:
            grad = xp.zeros(input_shape, dtype=call.input.dtype, device=dev)
            grad = _into(xp, grad, out)
    elif route == "generic blocks":
        losses, grad = _generic_in_blocks(call, prep, want_loss, want_grad, out)
    elif route == "fast":
        # For 'mean' and 'sum', `losses` is their 0-d total, added per block.
        losses, grad = _cross_entropy_numpy.run(call, prep, want_loss, want_grad, out)
    else:
        if prep.input3 is None:  # NumPy, a layout that is no (N, C, S) view: one copy
            prep.input3 = xp.reshape(call.input, (prep.n, call.n_classes, prep.s))
        block_loss, block_grad = _block(call, prep, slice(0, prep.n), slice(0, prep.s),
                                        want_loss, want_grad)
        losses = block_loss
        if want_grad:
            assert block_grad is not None
            grad = xp.astype(xp.reshape(block_grad, input_shape), call.input.dtype, copy=False)
            grad = _into(xp, grad, out)
    return (_reduce(call, prep, losses) if want_loss else None), grad


#: The largest block of :func:`_generic_in_blocks`, in elements: its handful of float32
#: temporaries per thread stay within a few MiB (the fast path's blocks are 4x larger).
GENERIC_BLOCK = 1 << 17


def _generic_in_blocks(call: CrossEntropyCall, prep: _Prepared, want_loss: bool,
                       want_grad: bool, out: Array | None) -> tuple[Array | None, Array | None]:
    """NumPy, 16-bit input: :func:`_block` itself over the NumPy path's blocks (in worker
    threads for large calls), the per-sample losses kept for :func:`_reduce`.

    So every value is the generic path's bit for bit after the one rounding to 16 bits:
    the fast path's fused factors and class-by-class sums round differently in float32, and
    a float16 result shows such a last bit now and then.
    """
    if prep.input3 is None:  # a layout that is no (N, C, S) view: one copy
        prep.input3 = np.reshape(call.input, (prep.n, call.n_classes, prep.s))
    losses = np.empty((prep.n, prep.s), dtype=prep.dtype) if want_loss else None
    grad = grad3 = None
    if want_grad:
        grad = out if out is not None else np.empty(call.input.shape, dtype=call.input.dtype)
        grad3 = _cross_entropy_numpy.view_3d(grad, prep.n, call.n_classes, prep.s)
        if grad3 is None:  # an `out` whose layout cannot view as (N, C, S)
            grad = np.empty(call.input.shape, dtype=call.input.dtype)
            grad3 = _cross_entropy_numpy.view_3d(grad, prep.n, call.n_classes, prep.s)

    def work(block: tuple[slice, slice]) -> None:
        rows, cols = block
        with quiet_floating_point():
            loss, block_grad = _block(call, prep, rows, cols, want_loss, want_grad)
            if losses is not None:
                losses[rows, cols] = loss
            if grad3 is not None:
                grad3[rows, :, cols] = block_grad  # rounded once, as astype would

    blocks = _cross_entropy_numpy.plan(prep.n, call.n_classes, prep.s,
                                       largest=GENERIC_BLOCK)
    if len(blocks) > 1 and prep.n * prep.s * call.n_classes >= (
            _cross_entropy_numpy.THREADED_ELEMENTS):
        run_blocks(work, blocks)
    else:
        for block in blocks:
            work(block)
    if out is not None and grad is not out:
        out[...] = grad
        grad = out
    return losses, grad


def numpy_route(call: CrossEntropyCall) -> str | None:
    """How a NumPy call runs: ``"fast"`` (:mod:`._cross_entropy_numpy`), ``"generic blocks"``
    (:func:`_generic_in_blocks`, 16-bit inputs), or None for :func:`_block` on the whole array
    (every other library; NumPy where an infinite or NaN class weight meets a sum over
    classes: label smoothing, probability targets).  The fast blocks sum ``w[c] (z[c] -
    max)`` and subtract it from ``log_sum_exp * sum(w)``, which is 0 * inf = NaN at the
    largest logit, where the generic code sums ``w[c] logp[c]``: inf, as in PyTorch."""
    if not is_numpy_namespace(call.xp):
        return None
    if call.weight is not None and (call.label_smoothing or call.probabilities):
        with quiet_floating_point():
            if not bool(np.isfinite(call.weight).all()):
                return None
    return "generic blocks" if call.input.dtype.itemsize < 4 else "fast"


def _into(xp: Any, grad: Array, out: Array | None) -> Array:
    if out is None:
        return grad
    out[...] = grad
    return out


def _reduce(call: CrossEntropyCall, prep: _Prepared, losses: Array) -> Array:
    xp = call.xp
    if call.reduction == "none":
        return xp.astype(xp.reshape(losses, call.loss_shape), call.dtype)
    total = as_0d(xp, xp.sum(losses))
    if call.reduction == "mean":
        total = as_0d(xp, total / prep.divisor)
        if smoothed_weighted_mean(call):
            total = xp.where(prep.divisor == 0, xp.asarray(math.nan, dtype=total.dtype,
                                                           device=device(total)), total)
    return as_0d(xp, xp.astype(total, call.dtype))


def smoothed_weighted_mean(call: CrossEntropyCall) -> bool:
    """Whether ``call`` is a class-weighted ``'mean'`` of index targets with label smoothing,
    whose total weight of 0 makes the loss NaN.

    PyTorch divides its two parts separately, ``(1 - eps) * (sum_n w[t_n] nll_n / W) +
    eps / C * (sum_n smooth_n / W)``: with ``W = 0`` the first is ``0 / 0`` (every counted
    target has weight 0), NaN, where one division of the combined sum would give +inf.
    """
    return bool(call.label_smoothing and call.weight is not None and not call.probabilities)


# --------------------------------------------------------------------------- entry points


def _quiet(function: Callable[..., Any]) -> Callable[..., Any]:
    def quiet(*args: Any, **kwargs: Any) -> Any:
        with quiet_floating_point():
            return function(*args, **kwargs)
    quiet.__doc__ = function.__doc__
    return quiet


@_quiet
def forward(call: CrossEntropyCall) -> Array:
    """The loss, reduced as ``call.reduction`` says."""
    loss, _ = _run(call, None, want_loss=True, want_grad=False)
    return loss


@_quiet
def backward(call: CrossEntropyCall, grad_output: Array | float) -> Array:
    """The gradient with respect to ``input``."""
    _, grad = _run(call, grad_output, want_loss=False, want_grad=True)
    return grad


@_quiet
def loss_and_grad(call: CrossEntropyCall, out: Array | None = None) -> tuple[Array, Array]:
    """The reduced loss and its gradient with respect to ``input``, in one pass over it."""
    loss, grad = _run(call, 1.0, want_loss=True, want_grad=True, out=out)
    return loss, grad


@_quiet
def target_backward(call: CrossEntropyCall, grad_output: Array | float) -> Array:
    """The gradient with respect to a class-probability ``target`` (for the autograd bridges):
    ``-G_n (1 - eps) w[c] logp[n, c]``."""
    xp = call.xp
    prep = _prepare(call, grad_output)
    z = as_compute(xp, xp.reshape(call.input, (prep.n, call.n_classes, prep.s)), prep.dtype)
    if call.n_classes == 0 or prep.n * prep.s == 0:
        grad = xp.zeros(z.shape, dtype=prep.dtype, device=device(z))
    else:
        shifted = z - xp.max(z, axis=1, keepdims=True)
        logp = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
        if prep.class_weight3 is not None:
            logp = logp * prep.class_weight3
        grad = _times_rows(xp, logp, prep.upstream) * -(1 - call.label_smoothing)
    return xp.astype(xp.reshape(grad, tuple(call.target.shape)), call.target.dtype, copy=False)
