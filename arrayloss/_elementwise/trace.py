"""The ``ops`` an elementwise loss's math is written against, interpreted two ways.

A declaration's ``forward`` and ``gradients`` use Python's arithmetic and comparison
operators on their operands and ``ops`` for everything else (``ops.log``, ``ops.where``, ...).
The same function is then run

* with :class:`ArrayOps`: the operands are arrays of the compute dtype (and Python floats for
  numeric options), so it *is* the generic array-API code, run on whole arrays or, on NumPy, on
  cache-sized blocks of them;
* with :class:`SourceOps`: the operands are :class:`Expr` values that record each operation as
  one line of C++ (``const A v3 = v1 * v2;``), which becomes a CUDA kernel's body.

Only operations both can express are offered here, each with NumPy's semantics for NaN and
infinities (but ``sign``, PyTorch's: 0 at NaN), so the two interpretations agree element by
element.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from array_api_compat import is_numpy_namespace

__all__ = ["ArrayOps", "Expr", "SourceOps"]

Operand = Any


class ArrayOps:
    """``ops`` over arrays of namespace ``xp`` in the compute ``dtype``."""

    def __init__(self, xp: ModuleType, dtype: Any, device: Any = None) -> None:
        self.xp, self.dtype, self.device = xp, dtype, device
        self._numpy = is_numpy_namespace(xp)

    def _array(self, value: Operand) -> Any:
        if isinstance(value, (bool, int, float)):
            return self.xp.asarray(value, dtype=self.dtype, device=self.device)
        return value

    def log(self, x: Operand) -> Any:
        return self.xp.log(self._array(x))

    def log1p(self, x: Operand) -> Any:
        return self.xp.log1p(self._array(x))

    def exp(self, x: Operand) -> Any:
        return self.xp.exp(self._array(x))

    def abs(self, x: Operand) -> Any:
        return self.xp.abs(self._array(x))

    def sign(self, x: Operand) -> Any:
        """PyTorch's sign: 1, -1, or 0 at a zero and at NaN (NumPy's sign(NaN) is NaN)."""
        x = self._array(x)
        if self._numpy:
            return self.xp.where(x != x, 0.0, self.xp.sign(x))
        # Two wheres: array-api-compat's torch sign sets NaN through a boolean mask, which
        # torch.func.vmap cannot batch.
        one = self.xp.ones_like(x)
        return self.xp.where(x > 0, one, self.xp.where(x < 0, -one, self.xp.zeros_like(x)))

    def sqrt(self, x: Operand) -> Any:
        return self.xp.sqrt(self._array(x))

    def tanh(self, x: Operand) -> Any:
        return self.xp.tanh(self._array(x))

    def maximum(self, x: Operand, y: Operand) -> Any:
        """The larger of ``x`` and ``y``, NaN if either is NaN."""
        return self.xp.maximum(self._array(x), self._array(y))

    def minimum(self, x: Operand, y: Operand) -> Any:
        """The smaller of ``x`` and ``y``, NaN if either is NaN."""
        return self.xp.minimum(self._array(x), self._array(y))

    def where(self, condition: Operand, x: Operand, y: Operand) -> Any:
        return self.xp.where(condition, self._array(x), self._array(y))

    def clip(self, x: Operand, low: float, high: float) -> Any:
        """``x`` within ``[low, high]`` (NaN stays NaN); the bounds are numbers."""
        return self.xp.clip(self._array(x), low, high)

    def logical_or(self, x: Operand, y: Operand) -> Any:
        return self.xp.logical_or(x, y)

    def logical_and(self, x: Operand, y: Operand) -> Any:
        return self.xp.logical_and(x, y)


# ------------------------------------------------------------------ C++ source


def _literal(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"the kernel source has no literal for {value!r}")
    return f"A({float(value)!r})"


class Expr:
    """A value of the kernel being traced: the name of a local variable (or a literal)."""

    __slots__ = ("code", "kind", "ops")

    def __init__(self, ops: SourceOps, code: str, kind: str = "A") -> None:
        self.ops, self.code, self.kind = ops, code, kind

    def _binary(self, other: Operand, operator: str, swap: bool = False,
                kind: str = "A") -> Expr:
        left, right = self.code, self.ops.operand(other)
        if swap:
            left, right = right, left
        return self.ops.emit(f"{left} {operator} {right}", kind)

    def __add__(self, other: Operand) -> Expr:
        return self._binary(other, "+")

    def __radd__(self, other: Operand) -> Expr:
        return self._binary(other, "+", swap=True)

    def __sub__(self, other: Operand) -> Expr:
        return self._binary(other, "-")

    def __rsub__(self, other: Operand) -> Expr:
        return self._binary(other, "-", swap=True)

    def __mul__(self, other: Operand) -> Expr:
        return self._binary(other, "*")

    def __rmul__(self, other: Operand) -> Expr:
        return self._binary(other, "*", swap=True)

    def __truediv__(self, other: Operand) -> Expr:
        return self._binary(other, "/")

    def __rtruediv__(self, other: Operand) -> Expr:
        return self._binary(other, "/", swap=True)

    def __neg__(self) -> Expr:
        return self.ops.emit(f"-{self.code}")

    def __lt__(self, other: Operand) -> Expr:
        return self._binary(other, "<", kind="bool")

    def __le__(self, other: Operand) -> Expr:
        return self._binary(other, "<=", kind="bool")

    def __gt__(self, other: Operand) -> Expr:
        return self._binary(other, ">", kind="bool")

    def __ge__(self, other: Operand) -> Expr:
        return self._binary(other, ">=", kind="bool")

    def __eq__(self, other: object) -> Expr:  # type: ignore[override]
        return self._binary(other, "==", kind="bool")

    def __ne__(self, other: object) -> Expr:  # type: ignore[override]
        return self._binary(other, "!=", kind="bool")

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        raise TypeError("a traced kernel value has no truth value: the math must choose with "
                        "ops.where, and between formulas only by flag options")


class SourceOps:
    """``ops`` that record C++: one ``const`` local per operation, in order (see the module
    docstring).  The functions are ``al_ew::*`` of the kernels' preamble (NumPy's NaN rules,
    but sign's, PyTorch's).
    """

    def __init__(self) -> None:
        self.lines: list[str] = []

    def operand(self, value: Operand) -> str:
        if isinstance(value, Expr):
            return value.code
        if isinstance(value, (bool, int, float)):
            return _literal(float(value))
        raise TypeError(f"a kernel operand must be a traced value or a number, got {value!r}")

    def emit(self, code: str, kind: str = "A") -> Expr:
        name = f"v{len(self.lines)}"
        self.lines.append(f"const {kind} {name} = {code};")
        return Expr(self, name, kind)

    def value(self, code: str) -> Expr:
        """A value the kernel already has (an argument converted to ``A``)."""
        return self.emit(code)

    def _call(self, function: str, *operands: Operand, kind: str = "A") -> Expr:
        arguments = ", ".join(self.operand(operand) for operand in operands)
        return self.emit(f"al_ew::{function}({arguments})", kind)

    def log(self, x: Operand) -> Expr:
        return self._call("log", x)

    def log1p(self, x: Operand) -> Expr:
        return self._call("log1p", x)

    def exp(self, x: Operand) -> Expr:
        return self._call("exp", x)

    def abs(self, x: Operand) -> Expr:
        return self._call("abs", x)

    def sign(self, x: Operand) -> Expr:
        return self._call("sign", x)

    def sqrt(self, x: Operand) -> Expr:
        return self._call("sqrt", x)

    def tanh(self, x: Operand) -> Expr:
        return self._call("tanh", x)

    def maximum(self, x: Operand, y: Operand) -> Expr:
        return self._call("maximum", x, y)

    def minimum(self, x: Operand, y: Operand) -> Expr:
        return self._call("minimum", x, y)

    def clip(self, x: Operand, low: Operand, high: Operand) -> Expr:
        return self._call("minimum", self._call("maximum", x, low), high)

    def where(self, condition: Operand, x: Operand, y: Operand) -> Expr:
        if not (isinstance(condition, Expr) and condition.kind == "bool"):
            raise TypeError("ops.where needs a traced comparison as its condition")
        return self.emit(f"{condition.code} ? {self.operand(x)} : {self.operand(y)}")

    def logical_or(self, x: Expr, y: Expr) -> Expr:
        return self.emit(f"{x.code} || {y.code}", "bool")

    def logical_and(self, x: Expr, y: Expr) -> Expr:
        return self.emit(f"{x.code} && {y.code}", "bool")
