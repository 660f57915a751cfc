"""PyTorch's weighted mean, for every backend of a loss that declares one.

PyTorch 2.13's ``mse_loss(input, target, weight=w)`` and ``l1_loss`` reduce ``'mean'`` to
``sum(w * loss) / sum(w)``: the weights' sum, not the element count, divides (``huber_loss``'s
weighted ``'mean'`` still divides by the count, and needs nothing here).  A declaration says so
with :attr:`~.spec.ElementwiseLoss.mean_over`; :class:`WeightedMean` then wraps each of its
backends (generic and NumPy, CuPy, Dask, and so the torch bridges that reach them), once.

A weighted ``'mean'`` is the backend's ``'sum'`` and one more reduction, of the weights: the
loss is the sum divided by their sum, and a gradient is the ``'sum'`` gradient of an upstream
divided by it.  The division is an array operation, so no backend reads the weights' sum to
the host (a CuPy call stays free of host syncs) and Dask keeps it lazy.  The sum is taken in
the compute dtype and the loss rounded once, after the division.  ``loss_and_grad`` is a
forward and a backward pass: a backend's fused loss-and-gradient pass takes its upstream as
a host number (a CuPy kernel's scalar argument), and the weights' sum is an array on the
arrays' device, which only a host read (a sync) would make a number.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from array_api_compat import is_dask_namespace

from .._agnostic._helpers import as_0d, as_compute, compute_dtype, quiet_floating_point
from .call import ElementwiseCall
from .spec import ElementwiseLoss

__all__ = ["WeightedMean", "with_weighted_mean"]

Array = Any


class WeightedMean:
    """``backend`` (any of a loss's backends), with the loss's weighted ``'mean'``."""

    def __init__(self, spec: ElementwiseLoss, backend: Any) -> None:
        self.spec, self.backend = spec, backend

    def _weighted(self, call: ElementwiseCall) -> bool:
        return call.reduction == "mean" and self.spec.mean_over in call.arrays

    def _as_sum(self, call: ElementwiseCall) -> tuple[ElementwiseCall, Array]:
        """The call as a ``'sum'`` in the compute dtype (rounded here, once), and the
        weights' sum as a 0-d array of that dtype."""
        xp = call.xp
        dtype = compute_dtype(xp, call.dtype)
        weights = as_compute(xp, call.arrays[self.spec.mean_over], dtype)
        return replace(call, reduction="sum", dtype=dtype), as_0d(xp, xp.sum(weights))

    def _loss(self, call: ElementwiseCall, summed: ElementwiseCall, total: Array) -> Array:
        xp = call.xp
        loss = _divided(xp, self.backend.forward(summed), total)
        with quiet_floating_point():  # a float16 overflow is inf, as in PyTorch
            return as_0d(xp, xp.astype(loss, call.dtype, copy=False))

    def _upstream(self, call: ElementwiseCall, grad_output: Array | float,
                  total: Array) -> Array:
        """The upstream of the ``'sum'`` backward: ``grad_output`` over the weights' sum."""
        if not isinstance(grad_output, float):
            grad_output = as_compute(call.xp, grad_output, compute_dtype(call.xp, call.dtype))
        return _divided(call.xp, grad_output, total)

    def forward(self, call: ElementwiseCall) -> Array:
        """The loss, reduced as ``call.reduction`` says."""
        if not self._weighted(call):
            return self.backend.forward(call)
        summed, total = self._as_sum(call)
        return self._loss(call, summed, total)

    def backward(self, call: ElementwiseCall, grad_output: Array | float,
                 wanted: frozenset[str]) -> tuple[Array | None, ...]:
        """The gradients named in ``wanted``, in declaration order (others ``None``)."""
        if not self._weighted(call):
            return self.backend.backward(call, grad_output, wanted)
        summed, total = self._as_sum(call)
        return self.backend.backward(summed, self._upstream(call, grad_output, total), wanted)

    def loss_and_grad(self, call: ElementwiseCall, wanted: frozenset[str]
                      ) -> tuple[Array, tuple[Array | None, ...]]:
        """The reduced loss and the gradients named in ``wanted``."""
        if not self._weighted(call):
            return self.backend.loss_and_grad(call, wanted)
        summed, total = self._as_sum(call)
        grads = self.backend.backward(summed, self._upstream(call, 1.0, total), wanted)
        return self._loss(call, summed, total), grads


def _divided(xp: Any, numerator: Array | float, denominator: Array) -> Array:
    """``numerator / denominator`` (a 0-d array or a float over a 0-d array of the same
    compute dtype, which is the result's) without NumPy's warnings: weights summing to 0 give
    inf or NaN, as in PyTorch; on Dask, silenced in the task that divides."""
    if is_dask_namespace(xp):
        import dask.array as da

        return da.map_blocks(_quiet_divide, numerator, denominator, dtype=denominator.dtype,
                             meta=denominator._meta)
    return as_0d(xp, _quiet_divide(numerator, denominator))


def _quiet_divide(numerator: Array, denominator: Array) -> Array:
    with quiet_floating_point():
        return numerator / denominator


def with_weighted_mean(spec: ElementwiseLoss, backend: Any) -> Any:
    """``backend`` itself, or wrapped in :class:`WeightedMean` where ``spec`` declares one."""
    return WeightedMean(spec, backend) if spec.mean_over else backend
