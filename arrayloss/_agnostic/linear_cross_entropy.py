"""Fused linear cross-entropy in array-API code: the head's logits a chunk of tokens at a time.

For tokens ``h`` ``(N, d)``, the head ``W`` ``(V, d)`` and ``b`` ``(V,)``, each chunk of
tokens computes::

    z        = h[chunk] @ W.T + b               (chunk, V): the only chunk-sized array
    z        = c * tanh(z / c)                  with softcap c
    loss, dz = cross-entropy of z and its gradient (arrayloss's own, per token weight 1)
    lse      = log(sum(exp(z)))                 with z-loss or return_lse
    loss    += z_loss * lse**2,  dz += 2 z_loss lse softmax(z)      (kept tokens)
    dz      *= 1 - tanh(z / c)**2               with softcap
    grad_input[chunk] = dz @ W,  grad_W += dz.T @ h[chunk],  grad_b += sum(dz, axis=0)

and the upstream gradient (``G / divisor`` for ``'mean'``) scales the ``(N, d)`` and ``(V, d)``
products, never the ``(chunk, V)`` one.  So nothing of size ``N x V`` exists: O(chunk x V)
beyond the inputs and the gradients.  16-bit inputs are computed and accumulated in float32
and rounded once.  The chunks run in order and their sums are added in order, so a fixed chunk
size gives the same bits every time.

Every library but NumPy runs :func:`run_chunks` (new arrays per step: JAX arrays are immutable);
NumPy runs the same steps in place in reused buffers (:mod:`._linear_cross_entropy_numpy`).
The cross-entropy of a chunk is the backend's own (``ce``): this module's for the generic
libraries, the CuPy kernels for CuPy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from array_api_compat import device, is_numpy_namespace

from .._class_calls import CrossEntropyCall, NLLCall
from .._linear_calls import LinearCrossEntropyCall
from . import cross_entropy as generic_cross_entropy
from ._helpers import as_0d, as_compute, compute_dtype, quiet_floating_point
from ._targets import class_targets

Array = Any
#: (grad_input, grad_linear_weight, grad_linear_bias)
Gradients = tuple[Array, Array, Array | None]


@dataclass(slots=True)
class Prepared:
    """What every chunk needs, computed once per call."""

    dtype: Any  # the compute dtype
    linear_weight: Array  # (V, d) in the compute dtype
    linear_bias: Array | None  # (V,) in the compute dtype
    weight: Array | None  # (V,) class weights in the compute dtype
    #: (N,) 1 for a kept token (not ignored, a valid class), else 0, compute dtype; None for
    #: probability targets (every token kept).
    kept: Array | None
    #: What 'mean' divides by: the kept tokens' class weights' sum (index targets), N
    #: (probabilities); a 0-d array or a float.
    divisor: Array | float


def chunks(n: int, size: int) -> Iterator[slice]:
    """The chunks of ``n`` tokens, ``size`` at a time, in order."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def prepare(call: LinearCrossEntropyCall) -> Prepared:
    """Check the targets (before any matmul) and compute the 'mean' divisor."""
    xp = call.xp
    dtype = compute_dtype(xp, call.dtype)
    dev = device(call.input)
    weight = None if call.weight is None else as_compute(xp, call.weight, dtype)
    kept = None
    divisor: Array | float = float(call.n_tokens)
    if not call.probabilities:
        # The class-target rules of NLL, on a stand-in of the logits' shape (never read).
        stand_in = xp.broadcast_to(xp.zeros((), dtype=dtype, device=dev),
                                   (call.n_tokens, call.n_classes))
        targets = class_targets(NLLCall(xp, stand_in, call.target, call.weight,
                                        call.ignore_index, "none", call.validate,
                                        call.n_classes, (call.n_tokens,), call.dtype))
        kept = xp.astype(xp.reshape(targets.active, (call.n_tokens,)), dtype)
        picked = kept if weight is None else kept * xp.take(
            weight, xp.reshape(targets.index, (-1,)), axis=0)
        divisor = as_0d(xp, xp.sum(picked))
    bias = None if call.linear_bias is None else as_compute(xp, call.linear_bias, dtype)
    return Prepared(dtype=dtype, linear_weight=as_compute(xp, call.linear_weight, dtype),
                    linear_bias=bias, weight=weight, kept=kept, divisor=divisor)


def chunk_call(call: LinearCrossEntropyCall, prep: Prepared, logits: Array, rows: slice,
               reduction: str) -> CrossEntropyCall:
    """The cross-entropy call of one chunk's logits (its targets already checked)."""
    target = call.target[rows, ...]
    if call.probabilities:
        target = as_compute(call.xp, target, prep.dtype)
    b = rows.stop - rows.start
    return CrossEntropyCall(call.xp, logits, target, prep.weight, call.ignore_index, reduction,
                            False, call.label_smoothing, call.probabilities, call.n_classes,
                            (b,), prep.dtype)


def scalar_upstream(call: LinearCrossEntropyCall, prep: Prepared,
                    grad_output: Array | float) -> Array | float:
    """The factor of every token's gradient for 'sum' and 'mean': ``G`` or ``G / divisor``
    (0 where the divisor is: every target ignored, whose gradient is 0 in PyTorch too)."""
    if call.reduction != "mean":
        return grad_output
    divisor = prep.divisor
    if isinstance(divisor, float):
        return grad_output / divisor if divisor else 0.0
    xp = call.xp
    safe = xp.where(divisor == 0, xp.ones_like(divisor), divisor)
    return xp.where(divisor == 0, xp.zeros_like(divisor), grad_output / safe)


def finish_loss(call: LinearCrossEntropyCall, prep: Prepared, total: Array) -> Array:
    """A 'sum' total as the call's reduced loss, in the call's dtype."""
    xp = call.xp
    if call.reduction == "mean":
        total = as_0d(xp, total / prep.divisor)
    return as_0d(xp, xp.astype(total, call.dtype))


# --------------------------------------------------------------------------- generic


def _logits(call: LinearCrossEntropyCall, prep: Prepared, rows: slice
            ) -> tuple[Array, Array, Array | None]:
    """(the chunk's tokens, its (softcapped) logits, tanh(z / c) or None)."""
    xp = call.xp
    h = as_compute(xp, call.input[rows, ...], prep.dtype)
    z = xp.matmul(h, xp.matrix_transpose(prep.linear_weight))
    if prep.linear_bias is not None:
        z = z + prep.linear_bias
    tanh = None
    if call.softcap is not None:
        tanh = xp.tanh(z / call.softcap)
        z = call.softcap * tanh
    return h, z, tanh


def _lse_and_softmax(xp: ModuleType, z: Array) -> tuple[Array, Array]:
    top = xp.max(z, axis=1, keepdims=True)
    exp = xp.exp(z - top)
    total = xp.sum(exp, axis=1, keepdims=True)
    return (top + xp.log(total))[:, 0], exp / total


def run_chunks(call: LinearCrossEntropyCall, want_loss: bool, upstream: Array | float | None,
               ce: ModuleType, in_place: bool = False
               ) -> tuple[Array | None, Array | None, Gradients | None]:
    """(loss, lse, gradients): the loss if ``want_loss``, the gradients if ``upstream`` is
    given (per token for 'none', else a number or a 0-d array).

    ``ce`` is the cross-entropy backend of the chunks' logits; with ``in_place`` it writes
    their gradient over them (``out=``: the CuPy kernels), else into a new array."""
    xp = call.xp
    prep = prepare(call)
    want_grad = upstream is not None
    need_lse = call.return_lse or call.z_loss != 0.0
    per_token = call.reduction == "none"
    dev = device(call.input)
    dtype = prep.dtype
    losses: list[Array] = []
    lses: list[Array] = []
    total: Array = xp.zeros((), dtype=dtype, device=dev)
    grad_parts: list[Array] = []
    grad_weight = grad_bias = None
    token_upstream = None
    if want_grad and per_token:
        token_upstream = as_compute(xp, xp.reshape(upstream, (call.n_tokens,)), dtype)
        if prep.kept is not None:  # never reaches an ignored token (0 * inf is NaN)
            token_upstream = xp.where(prep.kept != 0, token_upstream,
                                      xp.zeros_like(token_upstream))
    for rows in chunks(call.n_tokens, call.chunk_size):
        h, z, tanh = _logits(call, prep, rows)
        lse = softmax = None
        if need_lse:
            lse, softmax = _lse_and_softmax(xp, z)
            lses.append(lse)
        kept = None if prep.kept is None else prep.kept[rows]
        z_term = None
        if call.z_loss:
            assert lse is not None
            z_term = call.z_loss * lse * lse
            if kept is not None:
                z_term = z_term * kept
        if want_grad:
            chunk = chunk_call(call, prep, z, rows, "sum")
            loss, dz = ce.loss_and_grad(chunk, z) if in_place else ce.loss_and_grad(chunk)
            if call.z_loss:
                assert lse is not None and softmax is not None
                factor = 2 * call.z_loss * lse if kept is None else 2 * call.z_loss * lse * kept
                dz = dz + xp.expand_dims(factor, axis=1) * softmax
            if tanh is not None:
                dz = dz * (1 - tanh * tanh)
            if token_upstream is not None:
                dz = dz * xp.expand_dims(token_upstream[rows], axis=1)
            grad_parts.append(xp.matmul(dz, prep.linear_weight))
            # .mT, not xp.matrix_transpose: array-api-compat's is torch.swapaxes, which
            # autograd's batched gradients (jacobian(vectorize=True)) cannot batch.
            part_w = xp.matmul(dz.mT, h)
            grad_weight = part_w if grad_weight is None else grad_weight + part_w
            if prep.linear_bias is not None:
                part_b = xp.sum(dz, axis=0)
                grad_bias = part_b if grad_bias is None else grad_bias + part_b
            if want_loss:
                total = total + (loss if z_term is None else loss + xp.sum(z_term))
        elif want_loss:
            loss = ce.forward(chunk_call(call, prep, z, rows, "none" if per_token else "sum"))
            if per_token:
                losses.append(loss if z_term is None else loss + z_term)
            else:
                total = total + (loss if z_term is None else loss + xp.sum(z_term))

    result = None
    if want_loss:
        if per_token:
            joined = (xp.concat(losses) if losses else
                      xp.zeros((0,), dtype=dtype, device=dev))
            result = xp.reshape(xp.astype(joined, call.dtype), call.loss_shape)
        else:
            result = finish_loss(call, prep, total)
    lse_out = None
    if call.return_lse:
        joined = xp.concat(lses) if lses else xp.zeros((0,), dtype=dtype, device=dev)
        lse_out = xp.reshape(xp.astype(joined, call.dtype), call.loss_shape)
    grads = None
    if want_grad:
        grads = _finish_grads(call, prep, grad_parts, grad_weight, grad_bias,
                              None if per_token else scalar_upstream(call, prep, upstream))
    return result, lse_out, grads


def tokens_scaled(call: LinearCrossEntropyCall, kept: Array | None, grad_input: Array,
                  factor: Array | float) -> Array:
    """The tokens' gradient (``(N, d)``, or the input's shape) times a reduced loss's factor
    (``G``, ``G / divisor``), an ignored token's row 0 whatever the factor, as PyTorch's
    (``0 * inf`` is NaN): the factor is masked per token where it may not be finite (a
    device array is not looked at: no host sync), in ``grad_input``'s dtype."""
    if kept is None or (isinstance(factor, float) and math.isfinite(factor)):
        return grad_input * factor
    xp = call.xp
    rows = xp.where(kept != 0, xp.ones_like(kept) * factor, xp.zeros_like(kept))
    rows = xp.astype(xp.reshape(rows, (*grad_input.shape[:-1], 1)), grad_input.dtype)
    return grad_input * rows


def _finish_grads(call: LinearCrossEntropyCall, prep: Prepared, grad_parts: list[Array],
                  grad_weight: Array | None, grad_bias: Array | None,
                  factor: Array | float | None) -> Gradients:
    xp = call.xp
    dev = device(call.input)
    d = call.input.shape[1]
    # One chunk's gradient as it is: no concat (a copy, and one that autograd's batched
    # gradients have no rule for).
    grad_input = (grad_parts[0] if len(grad_parts) == 1 else xp.concat(grad_parts)
                  if grad_parts else xp.zeros((0, d), dtype=prep.dtype, device=dev))
    if grad_weight is None:  # no tokens
        grad_weight = xp.zeros((call.n_classes, d), dtype=prep.dtype, device=dev)
        if call.linear_bias is not None:
            grad_bias = xp.zeros((call.n_classes,), dtype=prep.dtype, device=dev)
    if factor is not None:
        grad_input = tokens_scaled(call, prep.kept, grad_input, factor)
        grad_weight = grad_weight * factor
        if grad_bias is not None:
            grad_bias = grad_bias * factor
    grad_input = xp.reshape(xp.astype(grad_input, call.dtype), call.input_shape)
    grad_weight = xp.astype(grad_weight, call.dtype)
    if grad_bias is not None:
        grad_bias = xp.astype(grad_bias, call.dtype)
    return grad_input, grad_weight, grad_bias


# --------------------------------------------------------------------------- entry points


def _run(call: LinearCrossEntropyCall, want_loss: bool, upstream: Array | float | None
         ) -> tuple[Array | None, Array | None, Gradients | None]:
    with quiet_floating_point():
        if is_numpy_namespace(call.xp):
            from . import _linear_cross_entropy_numpy

            return _linear_cross_entropy_numpy.run(call, want_loss, upstream)
        return run_chunks(call, want_loss, upstream, generic_cross_entropy)


def forward(call: LinearCrossEntropyCall) -> tuple[Array, Array | None]:
    """(the loss, reduced as ``call.reduction`` says; the per-token lse or None)."""
    loss, lse, _ = _run(call, True, None)
    return loss, lse


def backward(call: LinearCrossEntropyCall, grad_output: Array | float) -> Gradients:
    """(grad_input, grad_linear_weight, grad_linear_bias or None)."""
    _, _, grads = _run(call, False, grad_output)
    assert grads is not None
    return grads


def loss_and_grad(call: LinearCrossEntropyCall) -> tuple[Array, Array | None, Gradients]:
    """(the reduced loss, the lse or None, the gradients), in one pass over the chunks."""
    loss, lse, grads = _run(call, True, 1.0)
    assert grads is not None
    return loss, lse, grads


def target_backward(call: LinearCrossEntropyCall, grad_output: Array | float) -> Array:
    """The gradient with respect to class-probability targets, of the target's shape (for the
    autograd bridges: PyTorch's autograd gives one): the cross-entropy's of the logits, made
    whole here, as the gradient itself is ``N x V``."""
    xp = call.xp
    with quiet_floating_point():
        prep = prepare(call)
        every = slice(0, call.n_tokens)
        _, z, _ = _logits(call, prep, every)
        upstream = grad_output
        if call.reduction == "none" and not isinstance(upstream, float):
            upstream = xp.reshape(upstream, (call.n_tokens,))
        grad = generic_cross_entropy.target_backward(
            chunk_call(call, prep, z, every, call.reduction), upstream)
        return xp.reshape(xp.astype(grad, call.target.dtype, copy=False), call.target_shape)
