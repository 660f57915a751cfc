"""Gaussian negative log-likelihood in pure array-API code.

Runs on any namespace array-api-compat knows.  The math, once::

    v    = max(var, eps)                       # clamp; the gradients treat it as identity
    d    = input - target
    loss = 0.5 * (log(v) + d**2 / v)  [+ 0.5 * log(2 pi) when full]
    dloss/dinput  =  G * d / v                 # G: upstream gradient per loss element
    dloss/dtarget = -G * d / v
    dloss/dvar    =  0.5 * G * (1/v - d**2 / v**2)

Gradients are summed back over broadcast dimensions to each argument's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from array_api_compat import device

from .._validation import GaussianNLLCall, negative_var_error
from ._helpers import as_0d, as_compute, compute_dtype, quiet_floating_point, sum_to_shape

Array = Any
Gradients = tuple[Array | None, Array | None, Array | None]

#: The constant ``full=True`` adds to every element: ``0.5 * log(2 * pi)``.
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class _Terms:
    """The intermediates shared by forward and backward, in the compute dtype."""

    diff: Array  # input - target, broadcast
    var: Array | float  # max(var, eps)


def _check_values(call: GaussianNLLCall) -> None:
    xp = call.xp
    if call.validate and call.var_shape is not None and bool(xp.any(call.var < 0)):
        raise negative_var_error()


def _terms(call: GaussianNLLCall, dtype: Any) -> _Terms:
    xp = call.xp
    diff = as_compute(xp, call.input, dtype) - as_compute(xp, call.target, dtype)
    if call.var_shape is None:
        value = float(call.var)
        # `value < eps` is False for NaN, so a NaN variance stays NaN, as PyTorch's clamp does.
        clamped: Array | float = call.eps if value < call.eps else value
    else:
        clamped = xp.maximum(as_compute(xp, call.var, dtype), call.eps)
    return _Terms(diff=diff, var=clamped)


def _elementwise_loss(call: GaussianNLLCall, terms: _Terms) -> Array:
    xp = call.xp
    log_var = _log_scalar(terms.var) if isinstance(terms.var, float) else xp.log(terms.var)
    loss = 0.5 * (log_var + terms.diff * terms.diff / terms.var)
    if call.full:
        loss = loss + HALF_LOG_2PI
    if tuple(loss.shape) != call.loss_shape:
        # Only when input and target do not already span the loss (a size-1 var never widens it).
        loss = xp.broadcast_to(loss, call.loss_shape)
    return loss


def _log_scalar(value: float) -> float:
    # math.log raises for 0, where the array functions give -inf (a zero variance with eps=0).
    return -math.inf if value == 0 else math.log(value)


def _reduce(call: GaussianNLLCall, loss: Array) -> Array:
    xp = call.xp
    if call.reduction == "none":
        return xp.astype(loss, call.dtype)
    if call.reduction == "mean" and call.numel == 0:
        # The mean of nothing is NaN (as in PyTorch); computed without a 0/0 on the device.
        return xp.full((), math.nan, dtype=call.dtype, device=device(call.input))
    total = xp.sum(loss)
    if call.reduction == "mean":
        total = total / call.numel
    return as_0d(xp, xp.astype(as_0d(xp, total), call.dtype))


def _upstream(call: GaussianNLLCall, grad_output: Array | float, dtype: Any) -> Array | float:
    """The gradient reaching each loss element, ``G`` in the module docstring."""
    if not isinstance(grad_output, float):
        grad_output = as_compute(call.xp, grad_output, dtype)
    if call.reduction == "mean":
        return grad_output / call.numel if call.numel else grad_output * math.nan
    return grad_output


def _gradients(
    call: GaussianNLLCall, terms: _Terms, upstream: Array | float, wrt: frozenset[str]
) -> Gradients:
    xp = call.xp
    grad_input = grad_target = grad_var = None
    if wrt & {"input", "target"}:
        grad_diff = upstream * terms.diff / terms.var
        if "input" in wrt:
            grad_input = _shaped(call, grad_diff, tuple(call.input.shape), call.input.dtype)
        if "target" in wrt:
            grad_target = _shaped(call, -grad_diff, tuple(call.target.shape), call.target.dtype)
    if "var" in wrt:
        assert call.var_shape is not None and not isinstance(call.var, float)
        scaled = terms.diff * terms.diff / terms.var
        grad = 0.5 * upstream * (1.0 - scaled) / terms.var
        grad = _shaped(call, grad, tuple(call.var.shape), call.var.dtype)
        grad_var = xp.reshape(grad, call.var_shape)
    return grad_input, grad_target, grad_var


def _shaped(call: GaussianNLLCall, grad: Array, shape: tuple[int, ...], dtype: Any) -> Array:
    xp = call.xp
    if tuple(grad.shape) != call.loss_shape:
        grad = xp.broadcast_to(grad, call.loss_shape)
    return xp.astype(sum_to_shape(xp, grad, shape), dtype)


def forward(call: GaussianNLLCall) -> Array:
    """The loss, reduced as ``call.reduction`` says."""
    _check_values(call)
    dtype = compute_dtype(call.xp, call.dtype)
    with quiet_floating_point():
        return _reduce(call, _elementwise_loss(call, _terms(call, dtype)))


def backward(call: GaussianNLLCall, grad_output: Array | float, wrt: frozenset[str]) -> Gradients:
    """The gradients named in ``wrt`` (the others are ``None``)."""
    _check_values(call)
    dtype = compute_dtype(call.xp, call.dtype)
    with quiet_floating_point():
        terms = _terms(call, dtype)
        return _gradients(call, terms, _upstream(call, grad_output, dtype), wrt)


def loss_and_grad(call: GaussianNLLCall, wrt: frozenset[str]) -> tuple[Array, Gradients]:
    """The reduced loss and its gradients, sharing the intermediates."""
    _check_values(call)
    dtype = compute_dtype(call.xp, call.dtype)
    with quiet_floating_point():
        terms = _terms(call, dtype)
        loss = _reduce(call, _elementwise_loss(call, terms))
        return loss, _gradients(call, terms, _upstream(call, 1.0, dtype), wrt)
