"""PyTorch CUDA tensors on the fused CuPy kernels: zero-copy through DLPack, on PyTorch's stream.

With CuPy installed and :func:`arrayloss.fused_kernels` on, a call whose tensors live on a CUDA
device is run by the CuPy backend of its loss:

* every tensor of the validated call (and the upstream gradient, and ``out``) is viewed as a
  CuPy array through DLPack: no copy, any strides;
* the kernels run on the tensors' device and on PyTorch's *current* stream, wrapped with
  :class:`cupy.cuda.ExternalStream`, so they are ordered with the PyTorch work around them
  (no synchronisation is added);
* the results come back as tensors through DLPack, again without a copy; an ``out`` tensor
  comes back as itself.

Anything else (CPU tensors, a dtype DLPack cannot carry, CuPy missing) runs the generic code on
the tensors.  One bridge for every loss: it converts the fields of whatever call object the
loss validated, so a new loss needs nothing here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, cast

from . import _registry

__all__ = ["Bridge", "cupy_available"]


@functools.cache
def cupy_available() -> bool:
    """Whether CuPy can be imported (looked up once; importing it is left for the first call)."""
    return importlib.util.find_spec("cupy") is not None


@dataclasses.dataclass(frozen=True)
class Device:
    """How the bridge reaches the device library; CuPy's in use, a stand-in in the tests."""

    #: ``from_dlpack`` of the device library (a tensor in, a zero-copy array out).
    from_dlpack: Callable[[Any], Any]
    #: The array-API namespace of the device library's arrays.
    namespace: Callable[[], ModuleType]
    #: ``backend(loss)``: the module with the loss's forward, backward and loss_and_grad.
    backend: Callable[[str], ModuleType]
    #: ``stream(device_index, stream_pointer)``: a context in which the kernels run there.
    stream: Callable[[int, int], contextlib.AbstractContextManager[Any]]
    #: ``current_stream(torch_device)``: PyTorch's current stream there, as a raw pointer.
    current_stream: Callable[[Any], int]


@contextlib.contextmanager
def _cupy_stream(device_index: int, stream_pointer: int) -> Iterator[None]:
    import cupy

    with cupy.cuda.Device(device_index), cupy.cuda.ExternalStream(stream_pointer,
                                                                   device_index):
        yield


def _cupy_device() -> Device:
    def from_dlpack(tensor: Any) -> Any:
        import cupy

        return cupy.from_dlpack(tensor)

    def namespace() -> ModuleType:
        import array_api_compat.cupy

        return array_api_compat.cupy

    def backend(loss: str) -> ModuleType:
        return cast(ModuleType, _registry.backends(loss).cupy())

    def current_stream(torch_device: Any) -> int:
        import torch

        return int(torch.cuda.current_stream(torch_device).cuda_stream)

    return Device(from_dlpack, namespace, backend, _cupy_stream, current_stream)


class Bridge:
    """The backend of one loss for torch tensors: CUDA tensors to the fused kernels, the
    others to the generic code."""

    def __init__(self, loss: str, device: Device | None = None,
                 on_device: Callable[[Any], bool] | None = None) -> None:
        self.loss = loss
        self.device = device or _cupy_device()
        self.on_device = on_device or (lambda tensor: bool(tensor.is_cuda))

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method not in ("forward", "backward", "loss_and_grad"):
            raise AttributeError(method)
        return functools.partial(self._call, method)

    def _call(self, method: str, call: Any, *args: Any) -> Any:
        generic = _registry.backends(self.loss).generic()
        if not self.on_device(call.input):
            return getattr(generic, method)(call, *args)
        import torch

        tensors: dict[int, Any] = {}  # id of a device array -> the tensor it views

        namespace = self.device.namespace()

        def to_device(value: Any) -> Any:
            if isinstance(value, torch.dtype):  # a call's result dtype
                name = str(value).removeprefix("torch.")
                if not hasattr(namespace, name):
                    raise TypeError(f"{name} has no counterpart in {namespace.__name__}")
                return getattr(namespace, name)
            if isinstance(value, dict):  # a call's arrays by name (the elementwise losses)
                return {key: to_device(item) for key, item in value.items()}
            if not isinstance(value, torch.Tensor):
                return value
            array = self.device.from_dlpack(value.detach())
            tensors[id(array)] = value
            return array

        def to_torch(value: Any) -> Any:
            if isinstance(value, tuple):
                return tuple(to_torch(item) for item in value)
            if value is None or isinstance(value, (float, int)):
                return value
            if id(value) in tensors:  # `out`, handed back as the caller's own tensor
                return tensors[id(value)]
            return torch.from_dlpack(value)

        try:
            changes = {field.name: to_device(getattr(call, field.name))
                       for field in dataclasses.fields(call)}
            device_args = [to_device(argument) for argument in args]
        except (BufferError, TypeError, RuntimeError):
            # A dtype or layout DLPack cannot carry to CuPy (bfloat16 on older CuPy, say).
            return getattr(generic, method)(call, *args)
        changes["xp"] = namespace
        device_call = dataclasses.replace(call, **changes)
        where = call.input.device
        with self.device.stream(where.index or 0, self.device.current_stream(where)):
            result = getattr(self.device.backend(self.loss), method)(device_call,
                                                                     *device_args)
        return to_torch(result)
