"""Array-API helpers shared by the generic loss implementations."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import is_numpy_namespace

Array = Any


@functools.lru_cache(maxsize=64)
def compute_dtype(xp: ModuleType, dtype: Any) -> Any:
    """The dtype arithmetic runs in: float32 for 16-bit floats, the dtype itself otherwise.

    Half and bfloat16 lose too much in intermediate rounding and overflow past 65504 in sums, so
    they are computed and accumulated in float32 and rounded once at the end.  A byte-swapped
    NumPy dtype (``'>f4'`` on a little-endian machine) computes in its native twin: a ufunc's
    ``dtype=`` takes no byte order.
    """
    try:
        bits = xp.finfo(dtype).bits
    except (TypeError, ValueError, AttributeError):  # ml_dtypes bfloat16 on NumPy, CuPy
        bits = np.dtype(dtype).itemsize * 8
    if bits < 32:
        return xp.float32
    if isinstance(dtype, np.dtype) and not dtype.isnative:
        return dtype.newbyteorder("=")
    return dtype


def as_compute(xp: ModuleType, x: Array, dtype: Any) -> Array:
    """``x`` in ``dtype`` without a copy when it already has it."""
    return x if x.dtype == dtype else xp.astype(x, dtype)


def from_zero(total: Any) -> Any:
    """A sum of losses as PyTorch's, accumulated from +0: a total of zero is +0, never -0.

    NumPy's sum starts from its first term (all terms -0 give -0), and a sum of the picked
    values negated (``-sum(x)``, one pass fewer than ``sum(-x)``) turns a +0 into -0; adding
    +0 changes nothing else (NaN and inf included).  For NLL's totals (PyTorch's nll_loss
    accumulates from +0; its soft-target cross-entropy, a plain sum, keeps -0), before
    ``'mean'`` divides them (a negative total weight then gives -0, as PyTorch's).
    """
    return total + 0.0


def as_0d(xp: ModuleType, x: Array) -> Array:
    """A reduction's result as a 0-d array: NumPy reductions return NumPy scalars instead."""
    return np.asarray(x) if is_numpy_namespace(xp) else x


try:
    # NumPy >= 2 keeps its floating-point error state in a context variable; setting it to
    # one prepared "ignore everything" state costs a fifth of entering ``np.errstate``
    # (0.2 against 1.3 us per call, measured), a large share of a small call's budget.
    # Private names: where a NumPy lacks them, ``np.errstate`` itself is used.
    from numpy._core._ufunc_config import (  # type: ignore[attr-defined]
        _extobj_contextvar,
        _make_extobj,
    )

    # Half NumPy's default buffer (8192 elements): a ufunc that broadcasts an operand
    # (``z - row_max``) takes an iterator buffer of this many elements per call and thread,
    # the largest temporary of a small block; 4096 measured as fast.
    _IGNORE_ALL: Any = _make_extobj(all="ignore", bufsize=4096)
except (ImportError, AttributeError, TypeError):  # pragma: no cover - another NumPy layout
    _extobj_contextvar = None


class _Quiet:
    """``np.errstate(all="ignore")`` (and a smaller ufunc buffer) by its context variable
    (one use per instance)."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = silence_floating_point()

    def __exit__(self, *exc_info: object) -> None:
        restore_floating_point(self._token)


def _enter_errstate() -> Any:
    state = np.errstate(all="ignore")
    state.__enter__()
    return state


def _exit_errstate(token: Any) -> None:
    token.__exit__(None, None, None)


#: :func:`quiet_floating_point` without a ``with`` block, for the small-call paths where the
#: context manager's two Python method calls are a measurable share of the call: returns a
#: token for :func:`restore_floating_point`, to be called in a ``finally`` clause.
silence_floating_point: Callable[[], Any]
#: Undo :func:`silence_floating_point` (its token).
restore_floating_point: Callable[[Any], None]
if _extobj_contextvar is None:  # pragma: no cover - another NumPy layout
    silence_floating_point, restore_floating_point = _enter_errstate, _exit_errstate
else:
    # The context variable's own methods, bound: no Python frame (0.3 against 0.7 us for
    # the pair, measured), on the path of every small call.
    silence_floating_point = functools.partial(_extobj_contextvar.set, _IGNORE_ALL)
    restore_floating_point = _extobj_contextvar.reset


def quiet_floating_point() -> contextlib.AbstractContextManager[Any]:
    """Silence NumPy's floating-point warnings and errors (log(0), 0/0, inf-inf, underflow).

    Those values are the documented results (an all-ignored ``'mean'`` is NaN, a zero variance
    with ``eps=0`` is infinite), as in PyTorch, which neither warns nor raises.  So the
    caller's ``np.seterr`` (even ``all='raise'``) cannot break a correct computation; worker
    threads enter this too, and NumPy's state is restored on exit.
    """
    if _extobj_contextvar is None:  # pragma: no cover - another NumPy layout
        return np.errstate(all="ignore")
    if torch_compiling():
        # Inside a torch.compile graph only torch runs: NumPy's state does not matter, and
        # TorchDynamo cannot trace a ContextVar (a graph break under fullgraph=True).
        return contextlib.nullcontext()
    return _Quiet()


def torch_compiling() -> bool:
    """Whether TorchDynamo is tracing (False where torch was never imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def sum_to_shape(xp: ModuleType, x: Array, shape: tuple[int, ...]) -> Array:
    """Sum a broadcast result back to ``shape``, the reverse of broadcasting to ``x.shape``."""
    x_shape = tuple(x.shape)
    if x_shape == shape:
        return x
    lead = len(x_shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + axis
        for axis, size in enumerate(shape)
        if size == 1 and x_shape[lead + axis] != 1
    )
    summed = xp.sum(x, axis=axes, keepdims=True) if axes else x
    return xp.reshape(summed, shape)
