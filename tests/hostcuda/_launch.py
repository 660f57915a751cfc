"""Kernel launches as CuPy makes them, run on the host.

:func:`launch_elementwise` follows ``cupy.ElementwiseKernel.__call__`` step by step (CuPy 14:
broadcast the non-raw arrays, decide the parameter types, return early for an empty loop,
reduce the dimensions, build the indexer, pick the 32- or 64-bit index, ``linear_launch``'s grid
and block) and asks CuPy's own generator for the source.  :class:`HostRawModule` stands in for
``cupy.RawModule``.  Both marshal their arguments in CuPy's struct layouts and run the kernel
through :mod:`._compiler`.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import struct
from typing import Any

import numpy as np

from . import _compiler, _nvrtc
from ._arrays import COUNTERS, INDEX_32_BITS_LIMIT, HostArray, current_device_id

# cupy._core._kernel._ArgKind (a cdef enum).
_NDARRAY, _INDEXER, _SCALAR = 1, 2, 3


class UninitialisedInputError(RuntimeError):
    """A kernel was handed, as an input, a buffer that nothing ever wrote."""


class WrongDeviceError(ValueError):
    """A kernel was launched on one device with an array that lives on another."""


def _check_device(name: str, args: tuple[Any, ...]) -> None:
    device_id = current_device_id()
    for position, arg in enumerate(args):
        if isinstance(arg, HostArray) and arg._buffer.device_id != device_id:
            raise WrongDeviceError(
                f"{name}: argument {position} lives on device {arg._buffer.device_id} but the "
                f"kernel is launched on the current device {device_id}")


def _broadcast_view(array: HostArray, shape: tuple[int, ...]) -> HostArray:
    if array.shape == shape:
        return array
    return array._view(np.broadcast_to(array._array, shape))


def _reduce_dims(args: list[Any], params: tuple[Any, ...],
                 shape: tuple[int, ...]) -> tuple[list[Any], tuple[int, ...]]:
    """CuPy's ``_reduced_view_core``: merge axes along which every array is contiguous."""
    if len(shape) <= 1:
        return args, shape
    arrays = [i for i, (p, a) in enumerate(zip(params, args, strict=False))
              if not p.raw and isinstance(a, HostArray)]
    strided = [i for i in arrays if not args[i].c_contiguous]
    if not arrays:
        return args, shape
    if strided and len(shape) == 2:
        return args, shape
    if not strided:
        total = args[arrays[0]].size
        for i in arrays:
            args[i] = _flag_view(args[i], (total,), (args[i].itemsize,), args[i].c_contiguous)
        return args, (total,)
    sizes = list(shape)
    axes: list[int] = []
    last = -1
    for axis in range(len(shape)):
        if sizes[axis] == 1:
            continue
        if last < 0:
            last = axis
            continue
        if any(args[i].strides[axis] * sizes[axis] != args[i].strides[last] for i in strided):
            axes.append(last)
        else:
            sizes[axis] *= sizes[last]
        last = axis
    if last >= 0:
        axes.append(last)
    if len(axes) == len(shape):
        return args, shape
    new_shape = tuple(sizes[axis] for axis in axes)
    for i in arrays:
        strides = tuple(args[i].strides[axis] for axis in axes)
        args[i] = _flag_view(args[i], new_shape, strides, args[i].c_contiguous)
    return args, new_shape


class _FlaggedView(HostArray):
    """A reduced view keeping its source's C-contiguity flag, as CuPy's ``_view`` does."""

    def __init__(self, array: np.ndarray, buffer: Any, c_contiguous: bool) -> None:
        super().__init__(array, buffer)
        self._c_contiguous = c_contiguous

    @property
    def c_contiguous(self) -> bool:
        return self._c_contiguous


def _flag_view(array: HostArray, shape: tuple[int, ...], strides: tuple[int, ...],
               c_contiguous: bool) -> HostArray:
    view = np.lib.stride_tricks.as_strided(array._array, shape=shape, strides=strides)
    return _FlaggedView(view, array._buffer, c_contiguous)


def _array_bytes(array: HostArray) -> bytes:
    header = struct.pack("<Qq", array.pointer, array.size)
    if array.ndim == 0:
        return header
    return header + struct.pack(f"<{array.ndim}q{array.ndim}q", *array.shape, *array.strides)


def _indexer_bytes(shape: tuple[int, ...]) -> bytes:
    size = math.prod(shape)
    return struct.pack(f"<q{len(shape)}q{len(shape)}q", size, *shape, *([0] * len(shape)))


def _host_source(source: str, entries: list[str]) -> str:
    lines = [f"HOSTCUDA_ENTRY({index}, {entry})" for index, entry in enumerate(entries)]
    return _compiler.PRELUDE + source + "\n" + "\n".join(lines) + "\n"


def _run(name: str, source: str, entry: int, entries: list[str], grid: int, block: int,
         buffers: list[bytes], flush_to_zero: bool, raw_module: bool = False,
         reads: list[Any] | None = None, writes: list[Any] | None = None,
         read_names: list[str] | None = None, write_names: list[str] | None = None,
         size: int = 0, options: tuple[str, ...] = ()) -> None:
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    if digest not in COUNTERS.sources and _nvrtc.unavailable() is None:
        _nvrtc.compile_for_device(source, tuple(entries) if raw_module else (), options)
    COUNTERS.sources.setdefault(digest, source)
    COUNTERS.launches[name] = COUNTERS.launches.get(name, 0) + 1
    COUNTERS.record(name, reads or [], writes or [], digest, read_names, write_names)
    COUNTERS.trace[-1].update(grid=grid, block=block, size=size or grid * block)
    if not COUNTERS.execute:
        return
    library = _compiler.load(_host_source(source, entries))
    size_of = getattr(library, f"hostcuda_parameter_size_{entry}")
    size_of.restype = ctypes.c_longlong
    if size_of(len(buffers)) != -1:
        raise AssertionError(f"{name}: the kernel takes more than {len(buffers)} parameters")
    holders = []
    for index, data in enumerate(buffers):
        expected = size_of(index)
        if expected != len(data):
            raise AssertionError(f"{name}: parameter {index} is {expected} bytes in C++, "
                                 f"{len(data)} bytes marshalled")
        holders.append(ctypes.create_string_buffer(data, max(len(data), 8)))
    pointers = (ctypes.c_void_p * max(len(holders), 1))(
        *(ctypes.cast(holder, ctypes.c_void_p) for holder in holders))
    launch = getattr(library, f"hostcuda_launch_{entry}")
    launch.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_int)
    launch(grid, block, pointers, int(flush_to_zero))


def _flush_to_zero(args: Any) -> bool:
    # -ftz=true flushes float32 only; a kernel with a float64 array computes in double.
    return not any(isinstance(a, HostArray) and a.dtype == np.float64 for a in args)


def launch_elementwise(kernel: Any, args: tuple[Any, ...], size: int = -1,
                       block_size: int = 128, stream: Any = None) -> Any:
    """Run ``kernel(*args)`` as ``cupy.ElementwiseKernel.__call__`` would on a device."""
    from cupy._core import _kernel
    from cupy._core import core as cupy_core

    if len(args) != kernel.nargs:
        raise TypeError(f"{kernel.name}: the harness needs every output passed "
                        f"({kernel.nargs} arguments), got {len(args)}")
    _check_device(kernel.name, args)
    params = kernel.params
    nonraw = [i for i, (p, a) in enumerate(zip(params, args, strict=False))
              if not p.raw and isinstance(a, HostArray)]
    if size != -1 and nonraw:
        raise ValueError("Specified 'size' can be used only if all of the ndarray are 'raw'.")
    if size == -1 and not nonraw:
        raise ValueError("Loop size is undecided.")
    shape = np.broadcast_shapes(*(args[i].shape for i in nonraw)) if nonraw else (size,)
    in_args = [(_broadcast_view(a, shape) if i in nonraw else a)
               for i, a in enumerate(args[:kernel.nin])]
    out_args = list(args[kernel.nin:])
    for param, arg in zip(kernel.out_params, out_args, strict=True):
        if not isinstance(arg, HostArray):
            raise TypeError("Output arguments type must be cupy.ndarray")
        if not param.raw and arg.shape != shape:
            raise ValueError("Out shape is mismatched")
    in_types, _, type_map = kernel._decide_params_type(
        tuple(a.dtype if isinstance(a, HostArray) else None for a in in_args),
        tuple(a.dtype for a in out_args))
    if 0 in shape:
        return None  # CuPy returns before launching an empty loop
    for param, arg in zip(kernel.in_params, in_args, strict=True):
        if isinstance(arg, HostArray) and not arg._buffer.written:
            raise UninitialisedInputError(
                f"{kernel.name} reads parameter {param.name!r}, a buffer that was allocated "
                "with cupy.empty and never written")
    scalars = {i: np.array(a).astype(in_types[i]) for i, a in enumerate(in_args)
               if not isinstance(a, HostArray)}
    inout = in_args + out_args
    if kernel.reduce_dims:
        inout, shape = _reduce_dims(inout, params, shape)
    indexer_32_bits = math.prod(shape) <= INDEX_32_BITS_LIMIT[0]

    infos, buffers = [], []
    for i, arg in enumerate(inout):
        if isinstance(arg, HostArray):
            infos.append(_kernel._ArgInfo(_NDARRAY, cupy_core.ndarray, arg.dtype, arg.ndim,
                                          arg.c_contiguous, arg._buffer.index_32_bits))
            buffers.append(_array_bytes(arg))
        else:
            value = scalars[i]
            infos.append(_kernel._ArgInfo(_SCALAR, cupy_core._scalar.CScalar
                                          if hasattr(cupy_core, "_scalar") else _scalar_type(),
                                          value.dtype, 0, True, True))
            buffers.append(value.tobytes())
    infos.append(_kernel._ArgInfo(_INDEXER, _indexer_type(), None, len(shape), True,
                                  indexer_32_bits))
    buffers.append(_indexer_bytes(shape))
    source = _kernel._get_elementwise_kernel_code(
        tuple(infos), type_map, params, kernel.operation, kernel.name, kernel.preamble,
        **{key: value for key, value in kernel.kwargs.items() if key != "options"})
    total = math.prod(shape)
    grid = min(0x7FFFFFFF, -(-total // block_size))
    block = min(block_size, total)
    _run(kernel.name, source, 0, [kernel.name], grid, block, buffers, _flush_to_zero(inout),
         reads=list(in_args), writes=out_args,
         read_names=[p.name for p in kernel.in_params],
         write_names=[p.name for p in kernel.out_params], size=total,
         options=tuple(kernel.kwargs.get("options", ())))
    for arg in out_args:
        arg._buffer.written = True
    return None


def _scalar_type() -> type:
    import cupy

    return cupy._core._scalar.CScalar


def _indexer_type() -> type:
    import cupy

    return cupy._core._carray.Indexer


class HostElementwiseKernel:
    """``cupy.ElementwiseKernel`` whose calls run on the host.

    It wraps a real CuPy kernel object, which parses the parameters, decides the types and
    generates the source; only the launch differs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import cupy._core._kernel as cupy_kernel

        self.kernel = cupy_kernel.ElementwiseKernel(*args, **kwargs)
        self.name = self.kernel.name

    def __call__(self, *args: Any, size: int = -1, block_size: int = 128,
                 stream: Any = None) -> Any:
        return launch_elementwise(self.kernel, args, size=size, block_size=block_size,
                                  stream=stream)


class HostRawModule:
    """``cupy.RawModule(code=..., name_expressions=...)`` with host-run functions."""

    def __init__(self, code: str, name_expressions: tuple[str, ...] = (), **options: Any) -> None:
        self.code = code
        self.name_expressions = tuple(name_expressions)

    def get_function(self, name: str) -> HostFunction:
        if name not in self.name_expressions:
            raise ValueError(f"{name!r} is not one of the module's name_expressions")
        return HostFunction(self, name)


class HostFunction:
    """A kernel of a :class:`HostRawModule`, launched as ``function(grid, block, args)``."""

    def __init__(self, module: HostRawModule, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...],
                 shared_mem: int = 0, stream: Any = None) -> None:
        _check_device(self.name, args)
        if math.prod(grid) == 0 or math.prod(block) == 0:
            raise ValueError(f"{self.name}: empty launch {grid} x {block}")
        if math.prod(grid[1:]) != 1 or math.prod(block[1:]) != 1:
            raise NotImplementedError("the harness runs one-dimensional grids and blocks")
        buffers = []
        for arg in args:
            if isinstance(arg, HostArray):
                buffers.append(struct.pack("<Q", arg.pointer))
            elif isinstance(arg, np.generic):
                buffers.append(arg.tobytes())
            else:
                raise TypeError(f"{self.name}: pass NumPy scalars to a raw kernel, got "
                                f"{type(arg).__name__}")
        entries = list(self.module.name_expressions)
        # A raw kernel declares no directions: a buffer nothing wrote yet is its output.
        arrays = [arg for arg in args if isinstance(arg, HostArray)]
        _run(self.name, self.module.code, entries.index(self.name), entries, grid[0], block[0],
             buffers, flush_to_zero="<double>" not in self.name, raw_module=True,
             reads=[a for a in arrays if a._buffer.written],
             writes=[a for a in arrays if not a._buffer.written])
        for arg in args:
            if isinstance(arg, HostArray):
                arg._buffer.written = True
