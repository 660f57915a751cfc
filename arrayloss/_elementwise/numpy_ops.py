"""NumPy only: the ``ops`` of :mod:`.trace` with every result in this thread's reused buffers.

The NumPy blocks of :mod:`.generic` run a declaration's math through :class:`ScratchOps`:
each operation writes into a per-thread scratch buffer (:func:`~arrayloss._agnostic._blocked.
scratch`), kept from call to call, and a buffer returns to the free list as soon as the value
in it is dropped (the last reference to its :class:`Value`), so the next operation writes
over memory that is still in cache, as a hand-written chain of in-place ufuncs would.  A large
call allocates nothing beyond its outputs, and no freshly mapped page faults in: the same
ufuncs, with ``out=``, hence bit for bit the values of :class:`~.trace.ArrayOps`.

The arrays the math sees are :class:`Value` wrappers, whose operators are those ufuncs; a
value's array is valid while the :class:`Value` is referenced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._agnostic._blocked import scratch

__all__ = ["ScratchOps", "Value"]

Operand = Any


class Value:
    """A block's array inside :class:`ScratchOps`: operators write into scratch buffers."""

    __slots__ = ("array", "ops", "slot")

    def __init__(self, ops: ScratchOps, array: np.ndarray, slot: tuple[bool, int] | None = None
                 ) -> None:
        self.ops, self.array, self.slot = ops, array, slot

    def __del__(self) -> None:
        if self.slot is not None:  # its buffer is free for the next operation
            self.ops.free.append(self.slot)

    def __add__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.add, self, other)

    def __radd__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.add, other, self)

    def __sub__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.subtract, self, other)

    def __rsub__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.subtract, other, self)

    def __mul__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.multiply, self, other)

    def __rmul__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.multiply, other, self)

    def __truediv__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.divide, self, other)

    def __rtruediv__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.divide, other, self)

    def __neg__(self) -> Value:
        return self.ops.ufunc(np.negative, self)

    def __lt__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.less, self, other, boolean=True)

    def __le__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.less_equal, self, other, boolean=True)

    def __gt__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.greater, self, other, boolean=True)

    def __ge__(self, other: Operand) -> Value:
        return self.ops.ufunc(np.greater_equal, self, other, boolean=True)

    def __eq__(self, other: object) -> Value:  # type: ignore[override]
        return self.ops.ufunc(np.equal, self, other, boolean=True)

    def __ne__(self, other: object) -> Value:  # type: ignore[override]
        return self.ops.ufunc(np.not_equal, self, other, boolean=True)

    def __hash__(self) -> int:
        return id(self)


def _raw(value: Operand) -> Any:
    return value.array if isinstance(value, Value) else value


#: The scratch slots of these buffers start here (below: the other NumPy paths' slots).
_FIRST_SLOT = 100


class ScratchOps:
    """``ops`` whose results are this thread's scratch buffers (see the module docstring).

    One object per thread and call: the free list is this thread's.
    """

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype
        self.free: list[tuple[bool, int]] = []
        self.count = 0

    def wrap(self, array: np.ndarray) -> Value:
        return Value(self, array)

    def _out(self, shape: tuple[int, ...], boolean: bool) -> tuple[np.ndarray, tuple[bool, int]]:
        # The most recently freed buffer of the kind (the warmest in cache), else a new one.
        for position in range(len(self.free) - 1, -1, -1):
            if self.free[position][0] == boolean:
                slot = self.free.pop(position)
                break
        else:
            self.count += 1
            slot = (boolean, _FIRST_SLOT + self.count)
        dtype = np.dtype(np.bool_) if boolean else self.dtype
        return scratch(shape, dtype, slot[1]), slot

    def ufunc(self, function: Any, *operands: Operand, boolean: bool = False) -> Any:
        raw = [operand.array if type(operand) is Value else operand for operand in operands]
        shape = None
        for value in raw:
            if type(value) is np.ndarray:
                if shape is None:
                    shape = value.shape
                elif value.shape != shape:  # broadcast (a weight per column, say): rare
                    shape = np.broadcast_shapes(shape, value.shape)
        if shape is None:  # numbers only: a number, as ArrayOps would give a 0-d array of it
            return function(*(np.asarray(value, dtype=self.dtype) for value in raw))
        out, slot = self._out(shape, boolean)
        return Value(self, function(*raw, out=out), slot)

    def log(self, x: Operand) -> Any:
        return self.ufunc(np.log, x)

    def log1p(self, x: Operand) -> Any:
        return self.ufunc(np.log1p, x)

    def exp(self, x: Operand) -> Any:
        return self.ufunc(np.exp, x)

    def abs(self, x: Operand) -> Any:
        return self.ufunc(np.abs, x)

    def sign(self, x: Operand) -> Any:
        result = self.ufunc(np.sign, x)
        if type(result) is not Value:  # a number: NumPy's sign(NaN) is NaN, PyTorch's 0
            return np.where(np.isnan(result), 0.0, result).astype(self.dtype)
        nan = self.ufunc(np.isnan, result, boolean=True)
        np.copyto(result.array, 0.0, where=nan.array)
        return result

    def sqrt(self, x: Operand) -> Any:
        return self.ufunc(np.sqrt, x)

    def tanh(self, x: Operand) -> Any:
        return self.ufunc(np.tanh, x)

    def maximum(self, x: Operand, y: Operand) -> Any:
        return self.ufunc(np.maximum, x, y)

    def minimum(self, x: Operand, y: Operand) -> Any:
        return self.ufunc(np.minimum, x, y)

    def logical_or(self, x: Operand, y: Operand) -> Any:
        return self.ufunc(np.logical_or, x, y, boolean=True)

    def logical_and(self, x: Operand, y: Operand) -> Any:
        return self.ufunc(np.logical_and, x, y, boolean=True)

    def where(self, condition: Operand, x: Operand, y: Operand) -> Value:
        raw = [_raw(value) for value in (condition, x, y)]
        shape = np.broadcast_shapes(*(np.shape(value) for value in raw))
        out, slot = self._out(shape, False)
        np.copyto(out, raw[2])  # y everywhere, then x where the condition holds
        condition, x = raw[0], raw[1]
        if (type(x) is np.ndarray and x.shape == shape and type(condition) is np.ndarray
                and condition.shape == shape):
            # putmask: 4x faster than copyto(where=) on a random mask (55 against 207 us on
            # 65,536 float32, measured); it needs full-shape operands (it repeats smaller ones).
            np.putmask(out, condition, x)
        else:
            np.copyto(out, x, where=condition)
        return Value(self, out, slot)

    def clip(self, x: Operand, low: Operand, high: Operand) -> Any:
        return self.ufunc(np.clip, x, low, high)
