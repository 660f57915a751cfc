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

bfloat16 tensors travel as their bits (an int16 view both ways, viewed as ml_dtypes' bfloat16,
CuPy's bfloat16), so they run the fused kernels whether or not DLPack carries bfloat16.  CPU
tensors and a CuPy-less install run the generic code on the tensors; a CUDA call the kernels
cannot take (bfloat16 without ml_dtypes, a dtype without kernels) does too, with a
RuntimeWarning that says why.  The conversions run inside the device and stream context.

One bridge for every loss: it converts the fields of whatever call object the loss validated,
so a new loss needs nothing here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, cast

import numpy as np

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
        if method not in _METHODS:
            raise AttributeError(method)
        return functools.partial(self._call, method)

    def _call(self, method: str, call: Any, *args: Any) -> Any:
        generic = _registry.backends(self.loss).generic()
        if not self.on_device(call.input):
            return _method(generic, method)(call, *args)
        reason = _unsupported(call)
        if reason is not None:
            warnings.warn(f"arrayloss.{self.loss}: {reason}; the generic code runs instead of "
                          "the fused kernels", RuntimeWarning, stacklevel=4)
            return _method(generic, method)(call, *args)
        where = call.input.device
        # The views both ways are made on the tensors' device and PyTorch's stream: a
        # conversion that copies or synchronises does so in order with the kernels.
        with self.device.stream(where.index or 0, self.device.current_stream(where)):
            views = _Views(self.device)
            changes = {field.name: views.to_device(getattr(call, field.name))
                       for field in dataclasses.fields(call)}
            device_args = [views.to_device(argument) for argument in args]
            changes["xp"] = self.device.namespace()
            device_call = dataclasses.replace(call, **changes)
            result = _method(self.device.backend(self.loss), method)(device_call,
                                                                     *device_args)
            return views.to_torch(result)


#: What a bridge runs; the last two (a forward that saves what its backward needs, as the
#: fused cross-entropy does) fall back to the first two where a module has none.
_METHODS = ("forward", "backward", "loss_and_grad", "forward_saving", "backward_saved")


def _method(module: Any, method: str) -> Callable[..., Any]:
    if hasattr(module, method) or method not in ("forward_saving", "backward_saved"):
        return getattr(module, method)
    if method == "forward_saving":
        return lambda call, *args: (module.forward(call, *args), None)
    return lambda call, grad_output, saved, *args: module.backward(call, grad_output, *args)


def _unsupported(call: Any) -> str | None:
    """Why the fused kernels cannot take the call's tensors, or None.

    bfloat16 travels as its bits (int16 both ways, viewed as ml_dtypes' bfloat16, the dtype
    CuPy's kernels take), so it needs ml_dtypes; complex and other dtypes have no kernels.
    """
    import torch

    named: list[tuple[str, Any]] = []
    for field in dataclasses.fields(call):
        value = getattr(call, field.name)
        # A dict holds a call's arrays by name (the elementwise losses).
        named += list(value.items()) if isinstance(value, dict) else [(field.name, value)]
    for name, value in named:
        dtype = value if isinstance(value, torch.dtype) else getattr(value, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            continue
        if dtype == torch.bfloat16 and importlib.util.find_spec("ml_dtypes") is None:
            return "bfloat16 tensors need ml_dtypes (pip install ml_dtypes)"
        if str(dtype).removeprefix("torch.") not in _DTYPES:
            return f"{name} has dtype {dtype}, which the fused kernels do not take"
    return None


#: The torch dtypes whose tensors the kernels take (floating inputs, integer targets).
_DTYPES = {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64",
           "uint8", "uint16", "uint32", "uint64", "bool"}


class _Views:
    """Zero-copy views between torch tensors and the device library's arrays, for one call."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.tensors: dict[int, Any] = {}  # id of a device array -> the tensor it views

    def to_device(self, value: Any) -> Any:
        import torch

        if isinstance(value, torch.dtype):  # a call's result dtype
            return _device_dtype(value)
        if isinstance(value, dict):  # a call's arrays by name (the elementwise losses)
            return {key: self.to_device(item) for key, item in value.items()}
        if not isinstance(value, torch.Tensor):
            return value
        tensor = value.detach()
        if tensor.dtype == torch.bfloat16:
            array = self.device.from_dlpack(tensor.view(torch.int16)).view(_bfloat16())
        else:
            array = self.device.from_dlpack(tensor)
        self.tensors[id(array)] = value
        return array

    def to_torch(self, value: Any) -> Any:
        import torch

        if isinstance(value, tuple):
            return tuple(self.to_torch(item) for item in value)
        if value is None or isinstance(value, (float, int)) or not hasattr(value, "dtype"):
            return value  # a backend's saved state stays on the device, as it is
        if id(value) in self.tensors:  # `out`, handed back as the caller's own tensor
            return self.tensors[id(value)]
        if value.dtype == _bfloat16():
            return torch.from_dlpack(value.view(np.int16)).view(torch.bfloat16)
        return torch.from_dlpack(value)


def _device_dtype(dtype: Any) -> Any:
    """The NumPy dtype (CuPy's dtypes are NumPy's) of a torch dtype."""
    name = str(dtype).removeprefix("torch.")
    return _bfloat16() if name == "bfloat16" else np.dtype(name)


@functools.cache
def _bfloat16() -> Any:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)
