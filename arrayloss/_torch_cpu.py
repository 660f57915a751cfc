"""PyTorch CPU tensors on NumPy's fast paths: zero-copy both ways, for every loss.

NumPy's backend of a loss has fast paths (one pass, no temporaries, ``out=`` written in place)
that it takes for exact NumPy arrays; torch's generic array-API path runs several eager
kernels instead.  A CPU tensor's memory *is* a NumPy array's (``Tensor.numpy()``: no copy, any
strides), so the bridge of :mod:`arrayloss._torch_cuda`, with NumPy as its device library:

* views every tensor of the validated call (and the upstream gradient, and ``out``) as a
  NumPy array, detached: it runs outside autograd recording (arrayloss's autograd function
  runs its explicit backward, or nothing records at all);
* runs the loss's NumPy backend on them, with the NumPy namespace as the call's ``xp``;
* hands the results back as tensors over the arrays NumPy returned (DLPack), 0-d results as
  0-d tensors, and ``out`` as the caller's own tensor; bfloat16 travels as its bits (ml_dtypes'
  bfloat16 on the NumPy side), as it does to CuPy.

A tensor NumPy cannot view (a tensor of a ``torch.func`` transform) sends the call to the
generic code on the tensors, and so does ``torch.compile``'s tracing.  Nothing here knows any
loss: a loss registered in :mod:`arrayloss._registry` needs nothing more.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _autograd, _registry
from ._settings import use_fused
from ._torch_cuda import _DTYPES, Bridge, Device
from ._validation import _numpy_namespace

__all__ = ["Router", "bridge", "numpy_first", "on_cpu"]


def on_cpu(tensor: Any) -> bool:
    """Whether ``tensor`` is a CPU tensor outside ``torch.compile``'s tracing (which would
    trace NumPy's code as torch ops, not run it: the generic code is what it can trace) and
    outside forward-mode AD (see :func:`_forward_ad_active`)."""
    torch = sys.modules["torch"]
    return (tensor.device.type == "cpu" and not torch.compiler.is_compiling()
            and not _forward_ad_active(torch))


def _no_stream(device_index: int, stream_pointer: int) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


def bridge(loss: str) -> Bridge:
    """The bridge of ``loss`` with NumPy as its device library: CPU tensors to the loss's
    generic backend on NumPy arrays (its fast paths), as views both ways."""
    device = Device(from_dlpack=lambda tensor: tensor.numpy(), namespace=_numpy_namespace,
                    backend=lambda name: _registry.backends(name).generic(),
                    stream=_no_stream, current_stream=lambda torch_device: 0)
    return Bridge(loss, device, on_device=on_cpu)


class Router:
    """The backend of one loss for torch tensors: CPU tensors to :func:`bridge`, the others to
    ``others()`` (the CUDA bridge, or the generic code)."""

    def __init__(self, loss: str, others: Callable[[], Any]) -> None:
        self.cpu = bridge(loss)
        self.others = others

    def __getattr__(self, method: str) -> Callable[..., Any]:
        return functools.partial(self._call, method)

    def _call(self, method: str, call: Any, *args: Any) -> Any:
        if on_cpu(call.input):
            try:
                return getattr(self.cpu, method)(call, *args)
            except (BufferError, TypeError, RuntimeError) as error:
                if not _unviewable(error):
                    raise
                # A tensor NumPy cannot view (inside a torch.func transform): generic code.
        return getattr(self.others(), method)(call, *args)


def _unviewable(error: Exception) -> bool:
    """Whether ``error`` is ``Tensor.numpy()`` refusing a tensor (not a failure of the loss)."""
    text = str(error)
    return "numpy()" in text or "Cannot access data pointer" in text or "data pointer" in text


# ------------------------------------------------------------------ before validation
#
# The bridge above runs after the call was validated on the tensors: torch's array-API
# namespace costs about 10-25 us a call where NumPy's plain-array checks cost 1, and the
# bridge's views of every field about 20 more, which a small call (NLL on 10,000 rows: 20 us
# in PyTorch) feels whole.  So a public function meets CPU tensors first: it views them as
# NumPy arrays, runs as a NumPy call (its checks, its fast paths), and hands the results back
# as tensors over the same memory.  Whatever this lane cannot take goes the bridge's way.

#: The tensor dtypes that view as NumPy arrays as they are: the bridge's, but bfloat16 (which
#: travels as its bits, by the bridge).
_VIEWABLE_DTYPES = tuple(sorted(_DTYPES - {"bfloat16"}))


def numpy_first(*, records: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A public loss function's decorator: the function, run as a NumPy call for CPU
    tensors.

    The call's tensors are viewed as NumPy arrays (``Tensor.numpy()``: no copy) when every
    array argument is a CPU tensor of a dtype NumPy has, outside ``torch.compile``'s tracing
    and ``torch.func`` transforms.  The results come back as tensors sharing NumPy's memory;
    ``out`` comes back as the caller's own tensor.  A function that ``records`` autograd (a
    forward) with a tensor that requires grad, grad mode on, hands its Differentiable over
    (:func:`arrayloss._autograd.handing_over`): its loss is recorded as one autograd node
    (:class:`arrayloss._torch_autograd.NumpyViewsLoss`) whose backward hands out the
    gradients computed with a reduced loss, or runs the loss's NumPy backward on the same
    views: not a bridge's round trip each way.

    Errors are always the tensor call's own: where the NumPy call raises (or warns, with
    warnings as errors), ``function`` runs again on the tensors, which raises it as its
    messages say for tensors.  Any other call runs ``function`` as it is.
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def numpy_first_call(*args: Any, **kwargs: Any) -> Any:
            torch = sys.modules.get("torch")
            if torch is None:  # NumPy's users pay one dictionary lookup
                return function(*args, **kwargs)
            lane = _numpy_views(torch, args, kwargs, records)
            if lane is None:
                return function(*args, **kwargs)
            arrays, keywords, tensors, wants_grad = lane
            try:
                if not wants_grad:
                    return _as_tensors(torch, function(*arrays, **keywords), tensors)
                with _autograd.handing_over(wants_grad) as taken:
                    result = function(*arrays, **keywords)
            except Exception:
                return function(*args, **kwargs)  # raised as the tensor call raises it
            node = _recorded(torch, result, taken, tensors)
            return node if node is not None else function(*args, **kwargs)

        return numpy_first_call

    return decorate


def _numpy_views(torch: Any, args: tuple[Any, ...], kwargs: dict[str, Any], records: bool
                 ) -> tuple[list[Any], dict[str, Any], dict[int, Any], frozenset[int]] | None:
    """(the positional arguments, the keyword arguments, the tensor of each view's id, the
    ids of the views whose tensors autograd records: empty where it records nothing) with
    every tensor viewed as a NumPy array; None where the call keeps its tensors."""
    tensor_type = torch.Tensor
    if not any(isinstance(value, tensor_type) for value in (*args, *kwargs.values())):
        return None
    # Dynamo traces no ContextVar: the compiling check comes first.
    if (torch.compiler.is_compiling() or _transforms_active(torch) or not use_fused.get()
            or _forward_ad_active(torch)):
        return None  # and fused_kernels(False): the generic code on the tensors
    check_grad = records and torch.is_grad_enabled()
    viewable = _viewable_dtypes(torch)
    tensors: dict[int, Any] = {}
    recorded: set[int] = set()

    def view(value: Any) -> Any:
        if not isinstance(value, tensor_type):
            if hasattr(value, "__array_namespace__") or hasattr(value, "__dlpack__"):
                raise _KeepTensors  # another library's array: the tensor call says so
            return value
        if not value.is_cpu or value.dtype not in viewable:
            raise _KeepTensors
        requires_grad = value.requires_grad
        try:
            # detach(): a microsecond or two, only where numpy() needs it
            array = (value.detach() if requires_grad else value).numpy()
        except (RuntimeError, TypeError) as error:  # a conjugate or negative view, ...
            raise _KeepTensors from error
        tensors[id(array)] = value
        if requires_grad and check_grad:
            recorded.add(id(array))
        return array

    try:
        arrays = [view(value) for value in args]
        keywords = {key: view(value) for key, value in kwargs.items()}
    except _KeepTensors:
        return None
    return arrays, keywords, tensors, frozenset(recorded)


def _recorded(torch: Any, result: Any, taken: list[_autograd.HandedOver],
              tensors: dict[int, Any]) -> Any:
    """A recording call's NumPy ``result`` with its loss made a tensor with its autograd
    node, from what the call handed over (what else it returns, as ``return_lse``'s
    log-sum-exp, comes back as tensors without one); None where it handed nothing over, or
    its arrays are not the caller's views (the tensor call runs instead)."""
    if not taken:
        return None
    spec, call, loss = taken[0].spec, taken[0].call, taken[0].loss
    inputs = [tensors.get(id(array)) for array in spec.arrays.values()]
    parts = result if isinstance(result, tuple) else (result,)
    if any(tensor is None for tensor in inputs) or not any(part is loss for part in parts) or (
            not isinstance(loss, (np.ndarray, np.generic))):
        return None
    from ._torch_autograd import NumpyViewsLoss

    node = NumpyViewsLoss.apply(spec, call, loss, taken[0].grads, *inputs)
    if not isinstance(result, tuple):
        return node
    return tuple(node if part is loss else _as_tensors(torch, part, tensors) for part in parts)


@functools.cache
def _viewable_dtypes(torch: Any) -> frozenset[Any]:
    return frozenset(getattr(torch, name) for name in _VIEWABLE_DTYPES if hasattr(torch, name))


class _KeepTensors(Exception):
    """The call cannot take the NumPy lane."""


def _forward_ad_active(torch: Any) -> bool:
    """Whether a forward-mode AD level is open (``torch.autograd.forward_ad.dual_level``): a
    NumPy view of a dual tensor is its primal alone, and the tangent would be lost without a
    word, where torch's operations carry it."""
    forward_ad = getattr(torch.autograd, "forward_ad", None)
    return forward_ad is not None and getattr(forward_ad, "_current_level", -1) >= 0


def _transforms_active(torch: Any) -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, ...) is running: its tensors wrap
    others, and a NumPy view would step outside it."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def _as_tensors(torch: Any, value: Any, tensors: dict[int, Any]) -> Any:
    """``value`` (a NumPy call's result) with every array made a tensor over its memory."""
    if isinstance(value, tuple):
        return tuple(_as_tensors(torch, item, tensors) for item in value)
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        return value
    if id(value) in tensors:  # `out`, or an argument handed back: the caller's own tensor
        return tensors[id(value)]
    # torch.from_numpy shares the memory; it warns on a read-only array (a broadcast view,
    # say), which a result then owns as a copy.
    return torch.from_numpy(value if value.flags.writeable else value.copy())
