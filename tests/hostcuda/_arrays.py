"""A stand-in for ``cupy.ndarray`` backed by NumPy memory, and the devices it lives on.

It carries exactly what arrayloss's CuPy backend reads (shape, dtype, strides, device,
contiguity, views, ``get``) plus what a kernel launch needs (the data address, CuPy's 32-bit
index flag).  A launch is recognised by CuPy itself: ``ElementwiseKernel.__call__`` hands any
argument with ``__cupy_override_elementwise_kernel__`` to it before touching a device.
"""

from __future__ import annotations

import threading
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: CuPy uses 32-bit indexing when an array spans at most this many bytes (and an indexer this
#: many elements); the harness lowers it to reach the 64-bit path with small arrays.
INDEX_32_BITS_LIMIT = [1 << 31]


@dataclass
class Counters:
    """What the harness saw: launches per kernel, distinct sources, host reads, and each
    launch's memory traffic (:attr:`trace`, for the performance proxy)."""

    launches: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # content hash -> source
    host_reads: int = 0
    execute: bool = True  # False: record sources without compiling or running them
    #: Every launch in order: name, source digest (None for CuPy's own operations), and the
    #: bytes its array arguments span, read and written (see :func:`traffic`).
    trace: list[dict[str, Any]] = field(default_factory=list)

    def reset_launches(self) -> None:
        self.launches.clear()
        self.host_reads = 0

    def record(self, name: str, reads: list[Any], writes: list[Any],
               digest: str | None = None, read_names: list[str] | None = None,
               write_names: list[str] | None = None) -> None:
        arguments = []
        for role, arrays, names in (("read", reads, read_names), ("write", writes, write_names)):
            for position, array in enumerate(arrays):
                if isinstance(array, HostArray):
                    start, size = footprint(array)
                    arguments.append({"param": names[position] if names else str(position),
                                      "role": role, "start": start, "bytes": size,
                                      "itemsize": array.itemsize})
        self.trace.append({"name": name, "digest": digest, "read_bytes": traffic(reads),
                           "write_bytes": traffic(writes), "arguments": arguments})


def footprint(array: HostArray) -> tuple[int, int]:
    """(start address, bytes) an array's elements span once each: a broadcast axis (stride 0)
    adds nothing, so a variance broadcast over a row counts once."""
    if array.size == 0:
        return array.pointer, 0
    elements = 1
    for size, stride in zip(array.shape, array.strides, strict=True):
        if stride != 0:
            elements *= size
    return array.pointer, elements * array.itemsize


def traffic(arrays: list[Any]) -> int:
    """Bytes that ``arrays`` span, each distinct span once: the minimum a launch moves for
    them (the same buffer passed twice, as a stand-in argument, is read once)."""
    spans = {footprint(array) for array in arrays if isinstance(array, HostArray)}
    return sum(size for _, size in spans)


COUNTERS = Counters()

_local = threading.local()


def current_device_id() -> int:
    stack = getattr(_local, "devices", None)
    return stack[-1] if stack else 0


class HostDevice:
    """``cupy.cuda.Device`` as far as arrayloss uses it: an id and a ``with`` block."""

    def __init__(self, device_id: int = 0) -> None:
        self.id = device_id

    def __enter__(self) -> HostDevice:
        if not hasattr(_local, "devices"):
            _local.devices = []
        _local.devices.append(self.id)
        return self

    def __exit__(self, *exc: object) -> None:
        _local.devices.pop()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostDevice) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("hostcuda-device", self.id))

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class _Buffer:
    """One allocation: its device and whether anything has written it yet."""

    def __init__(self, device_id: int, written: bool, nbytes: int) -> None:
        self.device_id = device_id
        self.written = written
        self.index_32_bits = nbytes <= INDEX_32_BITS_LIMIT[0]


class HostArray:
    """A CuPy-typed array whose memory is a NumPy array on the host."""

    __array_priority__ = 100

    def __init__(self, array: np.ndarray, buffer: _Buffer) -> None:
        self._array = array
        self._buffer = buffer

    # ---------------------------------------------------------------- construction
    @classmethod
    def allocate(cls, array: np.ndarray, written: bool) -> HostArray:
        return cls(array, _Buffer(current_device_id(), written, array.nbytes))

    def _view(self, array: np.ndarray) -> HostArray:
        return HostArray(array, self._buffer)

    # ---------------------------------------------------------------- attributes
    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    @property
    def ndim(self) -> int:
        return self._array.ndim

    @property
    def size(self) -> int:
        return self._array.size

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def strides(self) -> tuple[int, ...]:
        return self._array.strides

    @property
    def itemsize(self) -> int:
        return self._array.itemsize

    @property
    def nbytes(self) -> int:
        return self._array.nbytes

    @property
    def device(self) -> HostDevice:
        return HostDevice(self._buffer.device_id)

    @property
    def flags(self) -> Any:
        return self._array.flags

    @property
    def c_contiguous(self) -> bool:
        return bool(self._array.flags.c_contiguous)

    @property
    def pointer(self) -> int:
        return int(self._array.__array_interface__["data"][0])

    @property
    def data(self) -> Any:
        """CuPy's ``MemoryPointer``, as far as arrayloss reads it (``.ptr``)."""
        return types.SimpleNamespace(ptr=self.pointer)

    @property
    def T(self) -> HostArray:
        return self._view(self._array.T)

    # ---------------------------------------------------------------- views and copies
    def reshape(self, *shape: Any) -> HostArray:
        if len(shape) == 1 and isinstance(shape[0], tuple):
            shape = shape[0]
        reshaped = self._array.reshape(shape)
        if np.shares_memory(reshaped, self._array) or reshaped.size == 0:
            return self._view(reshaped)
        return HostArray.allocate(reshaped, written=True)

    def transpose(self, *axes: int) -> HostArray:
        return self._view(self._array.transpose(*axes))

    def __getitem__(self, key: Any) -> HostArray:
        result = self._array[key]
        if not isinstance(result, np.ndarray):  # an integer index: CuPy gives a 0-d array
            result = self._array[(*key, ...) if isinstance(key, tuple) else (key, ...)]
        return self._view(result)

    def __setitem__(self, key: Any, value: Any) -> None:
        # CuPy copies on the device; here the host writes, and the buffer counts as written.
        target = self[key]
        COUNTERS.record("cupy setitem", [value], [target])
        if COUNTERS.execute:
            self._array[key] = value._array if isinstance(value, HostArray) else value
        self._buffer.written = True

    def astype(self, dtype: Any, copy: bool = True) -> HostArray:
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        with np.errstate(all="ignore"):  # a device cast never warns: inf past the max
            cast = HostArray.allocate(self._array.astype(dtype), written=True)
        COUNTERS.record("cupy astype", [self], [cast])
        return cast

    def copy(self) -> HostArray:
        copied = HostArray.allocate(self._array.copy(), written=True)
        COUNTERS.record("cupy copy", [self], [copied])
        return copied

    def sum(self, axis: Any = None, dtype: Any = None, out: Any = None,
            keepdims: bool = False) -> HostArray:
        # CuPy's own reduction (not arrayloss's kernels), computed in the array's dtype;
        # cupy.ndarray.sum's parameters, in its order (cupy.sum passes them by position).
        if out is not None:
            raise NotImplementedError("the harness's sum takes no out=")
        with np.errstate(all="ignore"):
            summed = np.asarray(self._array.sum(axis=axis, keepdims=keepdims, dtype=dtype))
        result = HostArray.allocate(summed, written=True)
        COUNTERS.record("cupy sum", [self], [result])
        return result

    def __truediv__(self, other: Any) -> HostArray:
        # CuPy's elementwise division (a kernel of its own), with NumPy's promotion; like the
        # device, it never warns (x / 0 is inf).
        operands = [self] + ([other] if isinstance(other, HostArray) else [])
        divisor = other._array if isinstance(other, HostArray) else other
        with np.errstate(all="ignore"):
            quotient = HostArray.allocate(np.asarray(self._array / divisor), written=True)
        COUNTERS.record("cupy divide", operands, [quotient])
        return quotient

    def __rtruediv__(self, other: float) -> HostArray:
        with np.errstate(all="ignore"):
            quotient = HostArray.allocate(np.asarray(other / self._array), written=True)
        COUNTERS.record("cupy divide", [self], [quotient])
        return quotient

    # ---------------------------------------------------------------- reads to the host
    def get(self) -> np.ndarray:
        COUNTERS.host_reads += 1
        return self._array.copy()

    def item(self) -> Any:
        return self.get().item()

    def __float__(self) -> float:
        return float(self.get())

    def __int__(self) -> int:
        return int(self.get())

    def __bool__(self) -> bool:
        return bool(self.get())

    def __len__(self) -> int:
        return len(self._array)

    def __repr__(self) -> str:
        return f"HostArray({self._array!r}, device={self._buffer.device_id})"

    # ---------------------------------------------------------------- the kernel hook
    def __cupy_override_elementwise_kernel__(self, kernel: Any, *args: Any, **kwargs: Any) -> Any:
        # CuPy hands a foreign array to this hook after dropping block_size: a real kernel
        # object (built outside the harness) must not run host arrays with a wrong launch.
        raise RuntimeError(f"{kernel.name} was built outside hostcuda.activated(); "
                           "clear the kernel factories' caches")


# -------------------------------------------------------------------- cupy-module functions


def empty(shape: Any, dtype: Any = float, order: str = "C") -> HostArray:
    """Uninitialised, as on the device: filled with a poison pattern (0xA5 bytes)."""
    array = np.empty(shape, dtype=dtype, order=order)
    if array.size and COUNTERS.execute:  # recording only: untouched, so never in memory
        array.reshape(-1).view(np.uint8)[:] = 0xA5
    return HostArray.allocate(array, written=False)


def _filled(array: np.ndarray, name: str) -> HostArray:
    filled = HostArray.allocate(array, written=True)
    COUNTERS.record(name, [], [filled])  # a fill kernel (or a memset) on the device
    return filled


def full(shape: Any, fill_value: Any, dtype: Any = None) -> HostArray:
    return _filled(np.full(shape, fill_value, dtype=dtype), "cupy full")


def zeros(shape: Any, dtype: Any = float) -> HostArray:
    return _filled(np.zeros(shape, dtype=dtype), "cupy zeros")


def ones(shape: Any, dtype: Any = float) -> HostArray:
    return _filled(np.ones(shape, dtype=dtype), "cupy ones")


def asarray(value: Any, dtype: Any = None) -> HostArray:
    if isinstance(value, HostArray):
        return value if dtype is None or np.dtype(dtype) == value.dtype else value.astype(dtype)
    copied = HostArray.allocate(np.array(value, dtype=dtype, copy=True), written=True)
    COUNTERS.record("cupy asarray (host to device)", [], [copied])
    return copied


def ascontiguousarray(value: HostArray, dtype: Any = None) -> HostArray:
    if value.c_contiguous and (dtype is None or np.dtype(dtype) == value.dtype):
        return value
    copied = HostArray.allocate(np.ascontiguousarray(value._array, dtype=dtype), written=True)
    COUNTERS.record("cupy ascontiguousarray", [value], [copied])
    return copied


def asnumpy(value: Any) -> np.ndarray:
    return value.get() if isinstance(value, HostArray) else np.asarray(value)


def concatenate(arrays: Any, axis: int = 0) -> HostArray:
    """``cupy.concatenate`` of host arrays (a device copy there, a host one here)."""
    parts = [a._array for a in arrays]
    joined = HostArray.allocate(np.concatenate(parts, axis=axis), written=True)
    COUNTERS.record("cupy concatenate", list(arrays), [joined])
    return joined


def may_share_memory(a: HostArray, b: HostArray, max_work: Any = None) -> bool:
    """``cupy.may_share_memory``: whether the memory bounds of two arrays overlap."""
    return bool(np.may_share_memory(a._array, b._array))


def expand_dims(value: HostArray, axis: Any) -> HostArray:
    return value._view(np.expand_dims(value._array, axis))
