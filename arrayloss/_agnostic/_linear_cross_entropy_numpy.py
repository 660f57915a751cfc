"""NumPy only: fused linear cross-entropy in place, in buffers reused from chunk to chunk.

The steps of :mod:`.linear_cross_entropy`, with every array written where it lives:

* the chunk's logits are written by BLAS (``np.matmul(..., out=)``) into one ``(chunk, V)``
  buffer, made once per call;
* cross-entropy's NumPy blocks (:mod:`._cross_entropy_numpy`, worker threads and all) turn
  them into their gradient in place (``out=`` the logits);
* ``grad_input[chunk]`` is written by BLAS straight into its rows; ``grad_W`` is written by
  the first chunk and then added to a block of ``_WEIGHT_ROWS`` classes at a time (NumPy's
  matmul cannot accumulate, and a ``(V, d)`` temporary per chunk would double the gradient's
  memory); ``grad_b`` is a matrix-vector product.

So a call allocates the gradients, one to three ``(chunk, V)`` buffers (softcap and z-loss
keep one each) and ``O(chunk x d)``; nothing of size ``N x V``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._linear_calls import LinearCrossEntropyCall
from . import cross_entropy
from .linear_cross_entropy import (
    Gradients,
    Prepared,
    chunk_call,
    chunks,
    finish_loss,
    prepare,
    scalar_upstream,
)

Array = Any

#: Classes of ``grad_W`` updated per accumulation step after the first chunk: a
#: ``(_WEIGHT_ROWS, d)`` temporary, small beside the gradient itself (4 MiB at d = 1024 in
#: float32; BLAS runs a (1024 x chunk) @ (chunk x d) product at full speed).
_WEIGHT_ROWS = 1024


def _logits_into(call: LinearCrossEntropyCall, prep: Prepared, h: np.ndarray, z: np.ndarray,
                 tanh: np.ndarray | None) -> None:
    np.matmul(h, prep.linear_weight.T, out=z)
    if prep.linear_bias is not None:
        z += prep.linear_bias
    if tanh is not None:
        assert call.softcap is not None
        np.divide(z, call.softcap, out=tanh)
        np.tanh(tanh, out=tanh)
        np.multiply(tanh, call.softcap, out=z)


def _lse(z: np.ndarray, softmax: np.ndarray | None, scratch: np.ndarray | None) -> np.ndarray:
    """The rows' log-sum-exp; their softmax into ``softmax`` when given (else ``scratch``
    holds the exponentials)."""
    top = z.max(axis=1)
    exp = softmax if softmax is not None else scratch
    if exp is None:
        exp = np.empty_like(z)
    np.subtract(z, top[:, None], out=exp)
    np.exp(exp, out=exp)
    total = exp.sum(axis=1)
    if softmax is not None:
        softmax /= total[:, None]
    return top + np.log(total)


def _accumulate_weight(grad_weight: np.ndarray, dz: np.ndarray, h: np.ndarray,
                       first: bool, scratch: np.ndarray) -> None:
    """``grad_weight += dz.T @ h`` (written, for the first chunk)."""
    if first:
        np.matmul(dz.T, h, out=grad_weight)
        return
    n_classes = grad_weight.shape[0]
    for start in range(0, n_classes, _WEIGHT_ROWS):
        stop = min(start + _WEIGHT_ROWS, n_classes)
        part = scratch[: stop - start]
        np.matmul(dz[:, start:stop].T, h, out=part)
        grad_weight[start:stop] += part


def run(call: LinearCrossEntropyCall, want_loss: bool, upstream: Array | float | None
        ) -> tuple[Array | None, Array | None, Gradients | None]:
    """(loss, lse, gradients) as :func:`.linear_cross_entropy.run_chunks` returns them."""
    prep = prepare(call)
    dtype, n, n_classes = prep.dtype, call.n_tokens, call.n_classes
    d = call.input.shape[1]
    want_grad = upstream is not None
    per_token = call.reduction == "none"
    need_lse = call.return_lse or call.z_loss != 0.0
    size = min(call.chunk_size, max(n, 1))

    logits = np.empty((size, n_classes), dtype=dtype)
    tanh_buffer = (np.empty((size, n_classes), dtype=dtype) if call.softcap is not None
                   else None)
    softmax_buffer = np.empty((size, n_classes), dtype=dtype) if need_lse else None
    losses = np.empty(n, dtype=dtype) if want_loss and per_token else None
    lse_all = np.empty(n, dtype=dtype) if call.return_lse else None
    sums: list[float] = []

    token_upstream = None
    factor: float = 1.0
    grad_input = grad_weight = grad_bias = weight_scratch = input_scratch = None
    if want_grad:
        if per_token:
            token_upstream = np.asarray(upstream, dtype=dtype).reshape(n)
            if prep.kept is not None:  # never reaches an ignored token (0 * inf is NaN)
                token_upstream = np.where(prep.kept != 0, token_upstream, 0.0).astype(
                    dtype, copy=False)
        else:
            factor = float(scalar_upstream(call, prep, float(upstream)))  # type: ignore[arg-type]
        grad_input = np.empty((n, d), dtype=call.dtype)
        grad_weight = np.zeros((n_classes, d), dtype=dtype)
        grad_bias = np.zeros(n_classes, dtype=dtype) if call.linear_bias is not None else None
        weight_scratch = np.empty((min(_WEIGHT_ROWS, n_classes), d), dtype=dtype)
        if grad_input.dtype != dtype:
            input_scratch = np.empty((size, d), dtype=dtype)

    for number, rows in enumerate(chunks(n, size)):
        b = rows.stop - rows.start
        h = call.input[rows]
        if h.dtype != dtype:
            h = h.astype(dtype)
        z = logits[:b]
        tanh = None if tanh_buffer is None else tanh_buffer[:b]
        _logits_into(call, prep, h, z, tanh)
        softmax = None if softmax_buffer is None else softmax_buffer[:b]
        lse = None
        if need_lse:
            lse = _lse(z, softmax if want_grad and call.z_loss else None, softmax)
            if lse_all is not None:
                lse_all[rows] = lse
        kept = None if prep.kept is None else prep.kept[rows]
        z_term = None
        if call.z_loss:
            assert lse is not None
            z_term = call.z_loss * lse * lse
            if kept is not None:
                z_term *= kept
        if not want_grad:
            loss = cross_entropy.forward(chunk_call(call, prep, z, rows,
                                                    "none" if per_token else "sum"))
            if per_token:
                assert losses is not None
                losses[rows] = loss if z_term is None else loss + z_term
            else:
                sums.append(float(loss) + (0.0 if z_term is None else math.fsum(z_term)))
            continue

        # In place: the logits become their gradient (token weight 1).
        loss, _ = cross_entropy.loss_and_grad(chunk_call(call, prep, z, rows, "sum"), out=z)
        if want_loss:
            sums.append(float(loss) + (0.0 if z_term is None else math.fsum(z_term)))
        if call.z_loss:
            assert lse is not None and softmax is not None
            scale = 2 * call.z_loss * lse
            if kept is not None:
                scale *= kept
            softmax *= scale[:, None]
            z += softmax
        if tanh is not None:
            np.multiply(tanh, tanh, out=tanh)
            np.subtract(1, tanh, out=tanh)
            z *= tanh
        assert grad_input is not None and grad_weight is not None
        assert weight_scratch is not None
        # The upstream scales the (chunk, d) side, never the (chunk, V) one.
        slot = grad_input[rows] if input_scratch is None else input_scratch[:b]
        np.matmul(z, prep.linear_weight, out=slot)
        if token_upstream is not None:
            g = token_upstream[rows]
            slot *= g[:, None]
            h = h * g[:, None]
            if grad_bias is not None:
                grad_bias += g @ z
        else:
            if factor != 1.0:
                slot *= factor
            if grad_bias is not None:
                grad_bias += np.add.reduce(z, axis=0)
        if input_scratch is not None:
            grad_input[rows] = slot
        _accumulate_weight(grad_weight, z, h, number == 0, weight_scratch)

    loss_out = None
    if want_loss:
        if per_token:
            assert losses is not None
            loss_out = losses.astype(call.dtype, copy=False).reshape(call.loss_shape)
        else:
            loss_out = finish_loss(call, prep, np.asarray(math.fsum(sums), dtype=dtype))
    lse_out = None
    if lse_all is not None:
        lse_out = lse_all.astype(call.dtype, copy=False).reshape(call.loss_shape)
    grads = None
    if want_grad:
        assert grad_input is not None and grad_weight is not None
        if factor != 1.0:
            grad_weight *= factor
            if grad_bias is not None:
                grad_bias *= factor
        if prep.kept is not None and not math.isfinite(factor):
            # An ignored token's gradient stays 0 under an inf or NaN upstream (0 * inf is
            # NaN), as PyTorch's.
            grad_input[prep.kept == 0] = 0
        grads = (grad_input.reshape(call.input_shape),
                 grad_weight.astype(call.dtype, copy=False),
                 None if grad_bias is None else grad_bias.astype(call.dtype, copy=False))
    return loss_out, lse_out, grads
