"""Fused linear cross-entropy on CuPy arrays: cuBLAS matmuls around the cross-entropy kernels.

The chunked steps of :mod:`arrayloss._agnostic.linear_cross_entropy` with CuPy's namespace:
each chunk's logits come from one cuBLAS GEMM (``matmul``), the fused cross-entropy kernels
(:mod:`.cross_entropy`) turn them into their gradient in place (``out=`` the logits: each
thread reads an entry before it writes it), and two more GEMMs give the chunk's share of
``grad_input`` and ``grad_W``.  The logits of one chunk are the only ``(chunk, V)`` array.
"""

from __future__ import annotations

from typing import Any

from .._agnostic import linear_cross_entropy as generic
from .._linear_calls import LinearCrossEntropyCall
from . import cross_entropy

Array = Any


def forward(call: LinearCrossEntropyCall) -> tuple[Array, Array | None]:
    """(the loss, reduced as ``call.reduction`` says; the per-token lse or None)."""
    with call.input.device:
        loss, lse, _ = generic.run_chunks(call, True, None, cross_entropy, in_place=True)
    return loss, lse


def backward(call: LinearCrossEntropyCall, grad_output: Array | float) -> generic.Gradients:
    """(grad_input, grad_linear_weight, grad_linear_bias or None)."""
    with call.input.device:
        _, _, grads = generic.run_chunks(call, False, grad_output, cross_entropy,
                                         in_place=True)
    assert grads is not None
    return grads


def loss_and_grad(call: LinearCrossEntropyCall
                  ) -> tuple[Array, Array | None, generic.Gradients]:
    """(the reduced loss, the lse or None, the gradients), in one pass over the chunks."""
    with call.input.device:
        loss, lse, grads = generic.run_chunks(call, True, 1.0, cross_entropy, in_place=True)
    assert grads is not None
    return loss, lse, grads
