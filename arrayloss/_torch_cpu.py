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

from . import _registry
from ._torch_cuda import Bridge, Device
from ._validation import _numpy_namespace

__all__ = ["Router", "bridge", "on_cpu"]


def on_cpu(tensor: Any) -> bool:
    """Whether ``tensor`` is a CPU tensor outside ``torch.compile``'s tracing (which would
    trace NumPy's code as torch ops, not run it: the generic code is what it can trace)."""
    return tensor.device.type == "cpu" and not sys.modules["torch"].compiler.is_compiling()


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
