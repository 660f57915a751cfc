"""PyTorch's half of :mod:`arrayloss._autograd`: the ``torch.autograd.Function``.

A module of its own, imported on first use, so that torch is imported lazily and the class is
made by an import, which TorchDynamo runs rather than traces (it cannot trace a class
statement: a first call inside ``torch.compile(fullgraph=True)`` would break the graph).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import _validation
from ._agnostic._helpers import quiet_floating_point, torch_compiling

if TYPE_CHECKING:
    from ._autograd import Differentiable

Call = Any

__all__ = ["ArraylossLoss", "NumpyViewsLoss"]

_FUNCTORCH = torch._C._functorch

#: Why a second derivative is refused, by both functions below.
DIFFERENTIABLE_ONCE = (
    "arrayloss's losses are differentiable once: their backward is the explicit first "
    "derivative, so create_graph=True (double backward, gradient penalties through the "
    "loss, nested torch.func.grad) is not supported")


class ArraylossLoss(torch.autograd.Function):
    """A loss whose backward is arrayloss's explicit backward.

    Written for ``torch.func`` too (``grad``, ``jacrev``, ``vmap``, ``functional_call``):
    the forward takes no ``ctx`` (``setup_context`` saves what the backward needs), and
    vmap's rule is generated from the forward and backward, which are torch operations.
    A transform hands the forward its own (unwrapped or batched) tensors, so the call is
    rebuilt from them where they are not the caller's.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(spec: Differentiable, call: Call, *tensors: Any) -> Any:
        return spec.forward(_call_of(spec, call, tensors))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        spec, call, *tensors = inputs
        ctx.spec, ctx.call = spec, call
        ctx.save_for_backward(*tensors)  # in-place changes before backward are caught

    @staticmethod
    def backward(ctx: Any, grad_output: Any) -> tuple[Any, ...]:
        tensors = ctx.saved_tensors  # raises if an input was modified in place
        if _differentiated_again(grad_output, tensors):
            raise RuntimeError(DIFFERENTIABLE_ONCE)
        names = list(ctx.spec.arrays)
        wanted = frozenset(name for name, needed in zip(names, ctx.needs_input_grad[2:],
                                                        strict=True) if needed)
        call = _call_of(ctx.spec, ctx.call, tensors)
        grads = ctx.spec.backward(call, grad_output, wanted) if wanted else {}
        return (None, None, *(grads.get(name) if name in wanted else None
                              for name in names))


class NumpyViewsLoss(torch.autograd.Function):
    """The autograd node of a loss that the torch CPU lane (:mod:`arrayloss._torch_cpu`)
    computed on NumPy views of CPU tensors: the forward hands back the loss already computed
    (and keeps the gradients computed with it, if any), the backward hands those out or runs
    the loss's NumPy backward on the same views.

    ``forward(ctx, spec, call, loss, grads, *tensors)``: ``call`` is the validated NumPy
    call, ``loss`` its NumPy result, ``grads`` the gradients computed with it for an upstream
    gradient of 1 (or None), ``tensors`` the caller's tensors of ``spec.arrays``.  The lane
    runs outside ``torch.func`` transforms and ``torch.compile``, so this is the plain
    ``ctx`` form: ``setup_context``'s form costs PyTorch an ``inspect.signature`` a call.
    """

    @staticmethod
    def forward(ctx: Any, spec: Differentiable, call: Call, loss: Any,
                grads: dict[str, Any] | None, *tensors: Any) -> Any:
        ctx.spec, ctx.call, ctx.grads = spec, call, grads
        ctx.save_for_backward(*tensors)  # in-place changes before backward are caught
        return _tensor_over(loss)

    @staticmethod
    def backward(ctx: Any, grad_output: Any) -> tuple[Any, ...]:
        ctx.saved_tensors  # noqa: B018  (raises if an input was modified in place)
        if torch.is_grad_enabled():  # create_graph=True
            raise RuntimeError(DIFFERENTIABLE_ONCE)
        names = list(ctx.spec.arrays)
        wanted = frozenset(name for name, needed in zip(names, ctx.needs_input_grad[4:],
                                                        strict=True) if needed)
        if _validation.batch_of_upstreams(grad_output):
            # A batch of upstream gradients (is_grads_batched=True, jacobian(vectorize=True)),
            # which vmap hands over wrapped: NumPy cannot view it, torch's operations batch.
            return (None, None, None, None, *_generic_gradients(ctx, grad_output, wanted))
        # A reduced loss's upstream gradient as a number, which the NumPy fast paths take
        # (a 0-d array sends them to the general code: NLL 65536 x 10 backward 560 -> 230
        # us); it is exact, and of the loss's dtype, as autograd hands it over.  ('none'
        # of an unbatched input is 0-d too, and takes an array.)
        reduced = getattr(ctx.call, "reduction", "none") != "none"
        upstream = float(grad_output) if reduced else _numpy_view(grad_output)
        # The forward's gradients, for an upstream gradient of 1: handed out once (they
        # become the leaves' .grad, which an optimizer then changes in place), so a second
        # backward through a retained graph computes its own; popped in one call, so two
        # backward passes in two threads never both take them.
        computed = vars(ctx).pop("grads", None)
        grads = None
        if computed is not None and wanted <= computed.keys():
            grads = computed if upstream == 1.0 else _scaled(computed, upstream)
        if grads is None:
            grads = ctx.spec.backward(ctx.call, upstream, wanted) if wanted else {}
        return (None, None, None, None, *(_tensor_over(grads.get(name)) if name in wanted
                                          else None for name in names))


def _generic_gradients(ctx: Any, grad_output: Any, wanted: frozenset[str]) -> list[Any]:
    """The gradients of the names in ``wanted`` (None for the others), by the loss's generic
    code on the caller's tensors (the saved ones), as ``fused_kernels(False)`` runs it."""
    from ._settings import use_fused

    names = list(ctx.spec.arrays)
    token = use_fused.set(False)
    try:
        call = ctx.spec.make_call(dict(zip(names, ctx.saved_tensors, strict=True)))
        grads = ctx.spec.backward(call, grad_output, wanted) if wanted else {}
    finally:
        use_fused.reset(token)
    return [grads.get(name) if name in wanted else None for name in names]


def _scaled(grads: dict[str, Any], upstream: float) -> dict[str, Any] | None:
    """The forward's gradients (for an upstream gradient of 1) times ``upstream``, in place:
    one pass over them where the backward would compute them again (gradient accumulation's
    ``(loss / k).backward()``, a GradScaler's scaled loss), equal to the backward's within
    one rounding (exactly, for a power of two such as a GradScaler's, barring subnormals).

    None (the backward then runs) where that would not hold: a 16-bit gradient (its rounding
    from the compute dtype is done, and a second one would be visible), an upstream gradient
    that is not finite (the backward's masks keep an ignored target's gradient 0, where
    ``0 * inf`` is NaN), and scaled gradients that are not finite: the backward's order of
    operations (``G / total_weight`` first) overflows elsewhere, or not at all, and its inf
    and NaN are PyTorch's.  That check is one read of the scaled gradients (a sum: not
    finite where a term is not)."""
    arrays = [grad for grad in grads.values() if grad is not None]
    if not math.isfinite(upstream) or len({id(grad) for grad in arrays}) < len(arrays) or any(
            grad.dtype.itemsize < 4 or not grad.flags.writeable for grad in arrays):
        return None  # (one array twice, or one that is not the loss's own to scale)
    with quiet_floating_point():  # the caller's np.seterr: inf here is a reason, not an error
        for grad in arrays:
            np.multiply(grad, upstream, out=grad)
        if not all(math.isfinite(float(np.add.reduce(grad, axis=None))) for grad in arrays):
            return None
    return grads


def _numpy_view(tensor: Any) -> Any:
    """A CPU tensor as a NumPy array, without a copy where NumPy can view it."""
    try:
        return tensor.numpy()
    except (RuntimeError, TypeError):  # a conjugate or negative view, say
        return tensor.resolve_conj().resolve_neg().contiguous().numpy()


def _tensor_over(array: Any) -> Any:
    """A NumPy result (a loss, a gradient; a NumPy number too) as a tensor over its memory,
    or over a copy of a read-only one (None stays None)."""
    if array is None:
        return None
    array = np.asarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _differentiated_again(grad_output: Any, saved: tuple[Any, ...]) -> bool:
    """Whether autograd records this backward to differentiate it again.

    Eagerly: grad mode on in a backward (``create_graph=True``).  Under ``torch.func``, whose
    gradient transforms always run backwards with grad mode on: whether a tensor of the
    backward tracks gradients at a live level other than the one running it (the level the
    saved inputs were wrapped at when the loss was applied, a dead one after ``vjp`` or in
    ``jacrev``), i.e. an outer ``grad`` (``grad`` of ``grad``, ``jacrev`` of ``jacrev``, a
    ``grad`` around ``vjp``) differentiates it.
    """
    if torch_compiling():  # TorchDynamo traces no functorch wrappers
        return torch.is_grad_enabled()
    running: int | None = None
    levels: set[int] = set()
    for position, tensor in enumerate((*saved, grad_output)):
        chain = _gradient_levels(tensor)
        if chain and running is None and position < len(saved):
            running = chain[0]
        levels.update(chain)
    if not levels:
        return torch.is_grad_enabled()
    return any(level >= 0 and level != running for level in levels)


def _gradient_levels(tensor: Any) -> list[int]:
    """The functorch levels at which ``tensor`` tracks gradients, outermost wrapper first
    (through vmap's batching wrappers too); empty for a plain tensor."""
    levels: list[int] = []
    for _ in range(64):  # as deep as transforms nest
        if not isinstance(tensor, torch.Tensor):
            break
        if _FUNCTORCH.is_gradtrackingtensor(tensor):
            levels.append(_FUNCTORCH.maybe_get_level(tensor))
        elif not _FUNCTORCH.is_batchedtensor(tensor):
            break
        tensor = _FUNCTORCH.get_unwrapped(tensor)
    return levels


def _call_of(spec: Differentiable, call: Call, tensors: tuple[Any, ...]) -> Call:
    """``call``, or where a ``torch.func`` transform passed other tensors than the caller's
    (unwrapped for ``grad``, batched for ``vmap``), the same call made from those."""
    if all(given is original for given, original in zip(tensors, spec.arrays.values(),
                                                         strict=True)):
        return call
    return spec.make_call(dict(zip(spec.arrays, tensors, strict=True)))
