"""Autograd through arrayloss: PyTorch's autograd and JAX's transformations use the explicit
backward functions, for every loss, written once.

A public loss function describes itself as a :class:`Differentiable` (its named arrays, how
they become a validated call, the forward and the backward) and hands it to :func:`loss`:

* torch tensors with autograd recording (grad mode on, an input requiring grad) go through a
  ``torch.autograd.Function`` whose backward is the loss's explicit backward, asked only for
  the inputs that need a gradient;
* JAX arrays under a transformation (``jax.grad``, ``jax.vjp``, ``jax.jit``: any tracer) go
  through ``jax.custom_vjp`` with the same backward;
* everything else runs the forward directly, at no extra cost.

The torch CPU lane (:mod:`arrayloss._torch_cpu`) runs a recording call on NumPy views of its
tensors inside :func:`handing_over`: the call's :class:`Differentiable` is handed over to it
(it records one light autograd node over the views), instead of a bridge.  A reduced loss
whose Differentiable has a fused ``loss_and_grad`` computes its gradients there too, in the
same pass over the input, for the backward that training runs next (Liger-Kernel's trade:
the gradient is held from the forward to the backward, and computed even where no backward
follows).

So the gradients are the documented ones (the ``eps`` clamp invisible to them, as in
PyTorch), not whatever autograd would make of the generic code's clamp and ``where`` calls.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from array_api_compat import is_jax_namespace, is_torch_namespace

from ._validation import _numpy_namespace

Array = Any
Call = Any

__all__ = ["Differentiable", "HandedOver", "handing_over", "loss", "not_recorded",
           "recording", "wanted_gradients"]


@dataclass(frozen=True)
class Differentiable:
    """What the autograd bridges need to know about one call of a loss."""

    #: The array arguments by name, in order (a scalar argument is simply absent).
    arrays: dict[str, Array]
    #: Validates arrays of these names (JAX's tracers, inside a transformation) into a call.
    make_call: Callable[[dict[str, Array]], Call]
    #: The loss of a validated call.
    forward: Callable[[Call], Array]
    #: ``backward(call, grad_output, wanted)``: the gradients of the names in ``wanted``.
    backward: Callable[[Call, Array, frozenset[str]], dict[str, Array | None]]
    #: ``loss_and_grad(call, wanted)``: the loss and the gradients of the names in ``wanted``
    #: for an upstream gradient of 1, bit for bit ``backward(call, 1.0, wanted)``'s, where
    #: the backend computes both in one pass (None where it cannot: the forward runs); only
    #: NumPy's reduced losses are asked (see :func:`handing_over`).  None: never fused.
    loss_and_grad: Callable[[Call, frozenset[str]],
                            tuple[Array, dict[str, Array | None]] | None] | None = None


def wanted_gradients(names: tuple[str, ...], grads: Any, wanted: frozenset[str]
                     ) -> dict[str, Array | None]:
    """A backend's gradients (``grads``, in the order of ``names``) as a ``loss_and_grad``
    returns them: one entry for every name in ``wanted``, None where the loss has none."""
    computed = dict(zip(names, grads, strict=True))
    return {name: computed.get(name) for name in wanted}


@dataclass(frozen=True)
class HandedOver:
    """What a recording NumPy call run inside :func:`handing_over` hands over: its
    Differentiable, its validated call, its loss, and the gradients computed with it for an
    upstream gradient of 1 (None where none were)."""

    spec: Differentiable
    call: Call
    loss: Array
    grads: dict[str, Array | None] | None


@dataclass(frozen=True)
class _HandingOver:
    wants_grad: frozenset[int]  # the ids of the arrays whose tensors require grad
    taken: list[HandedOver]


#: While the torch CPU lane runs a recording call on NumPy views: where that call's loss is
#: handed over.
_handed_over: ContextVar[_HandingOver | None] = ContextVar("arrayloss_handed_over",
                                                           default=None)


@contextlib.contextmanager
def handing_over(wants_grad: frozenset[int] = frozenset()) -> Iterator[list[HandedOver]]:
    """A NumPy call run inside records nothing: the first loss it computes appends a
    :class:`HandedOver` to the list yielded, for the caller to record.

    ``wants_grad``: the ids of the call's arrays that need a gradient.  A reduced loss with a
    fused ``loss_and_grad`` computes their gradients with the loss, for the backward to hand
    out (its upstream gradient is 1 in ``loss.backward()``, the common case).
    """
    handing = _HandingOver(wants_grad, [])
    token = _handed_over.set(handing)
    try:
        yield handing.taken
    finally:
        _handed_over.reset(token)


def recording(xp: ModuleType, arrays: tuple[Array, ...]) -> bool:
    """Whether a bridge is needed: torch autograd recording, or JAX tracing (or, for NumPy,
    a Differentiable to hand over: see :func:`handing_over`)."""
    if xp is _numpy_namespace():  # the common case, decided at once
        handing = _handed_over.get()
        return handing is not None and not handing.taken
    if is_torch_namespace(xp):
        import torch

        return torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in arrays)
    if is_jax_namespace(xp):
        tracer = sys.modules["jax"].core.Tracer
        return any(isinstance(a, tracer) for a in arrays)
    return False


def loss(spec: Differentiable, call: Call) -> Array:
    """The loss of ``call``, differentiable by ``call.xp``'s autograd (see the module doc)."""
    if call.xp is _numpy_namespace():  # handed over (TorchDynamo traces no ContextVar)
        handing = _handed_over.get()
        if handing is None:
            return spec.forward(call)
        fused = None
        if spec.loss_and_grad is not None and getattr(call, "reduction", "none") != "none":
            wanted = frozenset(name for name, array in spec.arrays.items()
                               if id(array) in handing.wants_grad)
            fused = spec.loss_and_grad(call, wanted) if wanted else None
        value, grads = fused if fused is not None else (spec.forward(call), None)
        handing.taken.append(HandedOver(spec, call, value, grads))
        return value
    if is_torch_namespace(call.xp):
        from ._torch_autograd import ArraylossLoss

        return ArraylossLoss.apply(spec, call, *spec.arrays.values())
    return _jax_loss(spec)


@contextlib.contextmanager
def not_recorded(xp: ModuleType) -> Iterator[None]:
    """Run the explicit backward functions without recording: their outputs have no grad_fn."""
    if is_torch_namespace(xp):
        import torch

        with torch.no_grad():
            yield
    else:
        yield


# PyTorch's ``autograd.Function`` is in :mod:`._torch_autograd` (imported by :func:`loss`).


# ------------------------------------------------------------------ JAX


def _jax_loss(spec: Differentiable) -> Array:
    import jax
    import jax.numpy as jnp
    import numpy as np

    names = list(spec.arrays)

    def primal(*arrays: Array) -> Array:
        return spec.forward(spec.make_call(dict(zip(names, arrays, strict=True))))

    def forward(*arrays: Array) -> tuple[Array, tuple[Array, ...]]:
        return primal(*arrays), arrays

    def backward(arrays: tuple[Array, ...], grad_output: Array) -> tuple[Array, ...]:
        call = spec.make_call(dict(zip(names, arrays, strict=True)))
        floating = frozenset(name for name, array in zip(names, arrays, strict=True)
                             if jnp.issubdtype(array.dtype, jnp.inexact))
        grads = spec.backward(call, grad_output, floating)
        cotangents = []
        for name, array in zip(names, arrays, strict=True):
            grad = grads.get(name)
            if grad is None:  # integer arrays take float0 zeros, JAX's "no gradient"
                grad = (jnp.zeros_like(array) if name in floating
                        else np.zeros(array.shape, dtype=jax.dtypes.float0))
            else:
                grad = _first_derivative_only()(grad)
            cotangents.append(grad)
        return tuple(cotangents)

    function = jax.custom_vjp(primal)
    function.defvjp(forward, backward)
    return function(*spec.arrays.values())


@functools.cache
def _first_derivative_only() -> Callable[[Array], Array]:
    """The identity on a gradient, whose own derivative is an error: JAX differentiates a
    ``custom_vjp`` backward for a second derivative (``jax.hessian``, ``grad`` of ``grad``),
    and the explicit backward functions are first derivatives only (their clamps and
    stop-gradient factors would give silently wrong curvature, as PyTorch's bridge
    refuses ``create_graph=True``)."""
    import jax

    @jax.custom_jvp
    def first_derivative_only(gradient: Array) -> Array:
        return gradient

    @first_derivative_only.defjvp
    def refuse(primals: Any, tangents: Any) -> Any:
        raise RuntimeError(
            "arrayloss's losses are differentiable once: their backward is the explicit "
            "first derivative, so second derivatives (jax.hessian, grad of grad, jacfwd of "
            "jacrev) are not supported")

    return first_derivative_only
