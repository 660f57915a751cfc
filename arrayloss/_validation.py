"""Argument rules shared by every loss: options, numbers, namespaces, dtypes, upstream
gradients, and their error messages.

Everything here runs on the host and reads only shapes, dtypes and Python values, never array
contents, so it costs no device synchronisation.  Each loss's own rules and its validated call
object are in :mod:`arrayloss._calls`, built from these.
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
from types import ModuleType
from typing import Any, TypeGuard

import numpy as np
from array_api_compat import (
    array_namespace,
    device,
    is_array_api_obj,
    is_numpy_namespace,
    is_torch_array,
)

from ._agnostic._helpers import torch_compiling

__all__ = [
    "TargetOutOfRangeError",
    "broadcast_shapes",
    "check_eps",
    "check_flag",
    "check_grad_output",
    "check_ignore_index",
    "check_reduction",
    "negative_var_error",
    "require_scalar_loss",
    "target_out_of_range_error",
]

REDUCTIONS = ("none", "mean", "sum")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

Array = Any


class TargetOutOfRangeError(IndexError, ValueError):
    """A class target lies outside ``[0, C)`` and is not ``ignore_index``.

    It subclasses both :class:`IndexError` (what PyTorch raises on the CPU) and
    :class:`ValueError` (a bad value), so either ``except`` clause catches it.
    """


# --------------------------------------------------------------------------- the error messages


#: ``np.ndarray``, looked up once: each ``np.<name>`` passes through NumPy's module
#: ``__getattr__`` (a tenth of a microsecond), a measurable share of a small call's checks.
NDARRAY = np.ndarray

def negative_var_error(value: float | None = None) -> ValueError:
    """The error for a negative variance: a scalar ``value``, or an array with negative entries.

    Every backend raises this one.
    """
    if value is not None:
        return ValueError(f"var is {value!r}, which is negative; a variance must be >= 0")
    return ValueError("var has negative entries; a variance must be >= 0 (NaN is passed through)")


def target_out_of_range_error(
    value: int, n_classes: int, ignore_index: int
) -> TargetOutOfRangeError:
    """The error for a class target outside ``[0, n_classes)`` that is not ``ignore_index``.

    It suggests ``ignore_index=value`` only where that is itself accepted (int64).
    """
    if _INT64_MIN <= value <= _INT64_MAX:
        advice = f"pass ignore_index={value} to skip such targets"
    else:
        advice = ("ignore_index must fit in int64, so such targets cannot be skipped: use "
                  "int64 targets")
    return TargetOutOfRangeError(
        f"target contains {value}, which is outside the class range [0, {n_classes}) "
        f"(C={n_classes}) and is not ignore_index={ignore_index}; {advice}"
    )


# --------------------------------------------------------------------------- small host-side rules


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    """The broadcast of ``shapes`` under the array API rules, or None if they do not broadcast."""
    first = shapes[0] if shapes else ()
    if (len(shapes) == 2 and first == shapes[1]) or all(s == first for s in shapes):
        return tuple(first)  # the common case, without the loop below
    ndim = 0
    for shape in shapes:  # not max() over a generator, which TorchDynamo cannot trace
        ndim = max(ndim, len(shape))
    result = []
    for axis in range(-ndim, 0):
        sizes = {s[axis] for s in shapes if len(s) >= -axis} - {1}
        if len(sizes) > 1:
            return None
        result.append(sizes.pop() if sizes else 1)
    return tuple(result)


def check_reduction(reduction: object) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean' or 'sum', got {reduction!r}")
    return reduction


def type_name(value: object) -> str:
    """A value's type as a reader knows it: ``int``, ``numpy.bool``, ``torch.Tensor``."""
    kind = type(value)
    module = kind.__module__.split(".")[0]
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def check_flag(name: str, value: object) -> bool:
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {type_name(value)}")
    return bool(value)


def as_float(name: str, value: Any) -> float:
    """A real number as a Python float, or a ValueError naming the argument if it has none."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float (above 1.8e308), got "
                         f"{str(value)[:30]}...") from None


def _is_real_scalar(value: object) -> bool:
    """A Python or NumPy real number (bool excluded), as accepted for ``var``."""
    kind = type(value)
    if kind is float or kind is int:
        return True
    if kind is np.ndarray:
        return False
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, np.generic):
        return isinstance(value, (np.integer, np.floating))
    return isinstance(value, numbers.Real)


def _plain_nonnegative(value: object) -> TypeGuard[float]:
    """A Python float, finite and >= 0: the common case of eps and beta, decided at once."""
    return type(value) is float and 0.0 <= value < math.inf  # False for NaN


def check_eps(eps: object) -> float:
    if _plain_nonnegative(eps):
        return eps
    if not _is_real_scalar(eps):
        raise TypeError(f"eps must be a real number, got {type_name(eps)}")
    value = as_float("eps", eps)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {value!r}")
    return value


def check_beta(beta: object) -> float:
    if _plain_nonnegative(beta):
        return beta
    if not _is_real_scalar(beta):
        raise TypeError(f"beta must be a real number, got {type_name(beta)}")
    value = as_float("beta", beta)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"beta must be finite and >= 0 (the beta-NLL paper uses 0 to 1), "
                         f"got {value!r}")
    return value


def check_label_smoothing(label_smoothing: object) -> float:
    if not _is_real_scalar(label_smoothing):
        raise TypeError(f"label_smoothing must be a real number, got {type_name(label_smoothing)}")
    value = as_float("label_smoothing", label_smoothing)
    # PyTorch rejects values above 1 but silently ignores negative ones; both are errors here.
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {value!r}")
    return value


def check_ignore_index(ignore_index: object) -> int:
    if type(ignore_index) is int and _INT64_MIN <= ignore_index <= _INT64_MAX:
        return ignore_index  # the common case, decided at once
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(
        ignore_index, (numbers.Integral, np.integer)
    ):
        raise TypeError(f"ignore_index must be an int, got {type_name(ignore_index)}")
    value = int(ignore_index)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"ignore_index must fit in int64, got {value}")
    return value


def _value_checks(validate: bool, named: dict[str, Any], checked: str | None = None) -> bool:
    """Whether the value checks (negative var, targets out of range) can run on these arrays.

    A torch tensor on the meta device has no values, so asking for the checks is a clear
    error; a JAX tracer (under ``jax.jit`` or ``jax.grad``) has none yet, so they are skipped
    there and only shapes and dtypes are checked.
    """
    if not validate:
        return False
    for name, value in named.items():
        if getattr(value, "is_meta", False) is True and is_torch_array(value):
            raise ValueError(
                f"{name} is a torch tensor on the meta device, which has no values to check; "
                "pass validate=False (shapes and dtypes are checked either way)"
            )
        if "jax" in sys.modules and isinstance(value, sys.modules["jax"].core.Tracer):
            return False
    if checked is not None and is_torch_array(named[checked]) and _batched(named[checked]):
        raise ValueError(
            f"{checked} is batched by torch.func.vmap, and the value checks (validate=True) "
            f"read its values, which vmap does not allow; pass validate=False (shapes and "
            f"dtypes are checked either way)")
    return True


def _batched(tensor: Any) -> bool:
    """Whether a tensor is a ``torch.func.vmap`` batch (a BatchedTensor, at any level)."""
    functorch = getattr(sys.modules["torch"]._C, "_functorch", None)
    return bool(functorch is not None and functorch.is_batchedtensor(tensor))


def batch_of_upstreams(value: Any) -> bool:
    """Whether an upstream gradient is a batch of them: autograd's own legacy batching
    (``is_grads_batched=True``, ``jacobian(vectorize=True)``) or a ``torch.func.vmap``
    batch; False for anything but a torch tensor."""
    if not is_torch_array(value) or torch_compiling():  # (Dynamo traces no functorch query)
        return False
    legacy = getattr(sys.modules["torch"]._C._functorch, "is_legacy_batchedtensor", None)
    return bool((legacy is not None and legacy(value)) or _batched(value))


def _reject_masked(name: str, value: object) -> None:
    # A mask is not part of the array API: honoured by some NumPy calls and not others, it
    # would make the answer depend on the code path.  Say so instead of guessing.
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray; arrayloss does not apply masks. Pass "
            f"{name}.filled(value) or drop the masked elements (for NLL, set their targets "
            "to ignore_index)"
        )


@functools.cache
def _numpy_namespace() -> ModuleType:
    # The module array_namespace gives NumPy arrays, imported rather than asked for: an
    # array made here would stop TorchDynamo (which traces this function, ignoring the cache)
    # at NumPy's ndarray.dtype in a torch.compile(fullgraph=True) graph.
    import array_api_compat.numpy as namespace

    return namespace


def _namespace(named: dict[str, Any]) -> ModuleType:
    """The array namespace shared by the named arrays, with errors that name the argument."""
    if all(type(value) is NDARRAY for value in named.values()):
        # The common case, decided without array_namespace's scan (a few microseconds per
        # call): plain NumPy arrays, one device, no mask (a MaskedArray is a subclass).
        return _numpy_namespace()
    for name, value in named.items():
        _reject_masked(name, value)
    try:
        xp = array_namespace(*named.values())
    except TypeError:
        for name, value in named.items():
            if not is_array_api_obj(value):
                raise TypeError(f"{name} must be an array, got {type_name(value)}") from None
        kinds = ", ".join(f"{name}: {type(value).__module__}.{type(value).__name__}"
                          for name, value in named.items())
        raise TypeError(f"all arrays must come from the same array library; got {kinds}") from None
    for name, value in named.items():
        # array_namespace takes Python scalars; an argument documented as an array must be one.
        if not is_array_api_obj(value):
            raise TypeError(f"{name} must be an array, got {type_name(value)}")
        check_known_shape(name, value)
    if len(named) > 1 and not is_numpy_namespace(xp):  # NumPy has a single device
        # A JAX tracer has no device (None) until it is run: nothing to compare.
        # A loop, not a comprehension with `:=`: TorchDynamo reads such a cell before it is
        # set ("Read uninitialized cell"), which broke torch.compile(fullgraph=True).
        devices = {}
        for name, value in named.items():
            value_device = device(value)
            if value_device is not None:
                devices[name] = value_device
        if not devices:
            return xp
        first_name, first_device = next(iter(devices.items()))
        for name, dev in devices.items():
            if dev != first_device:
                raise ValueError(
                    f"all arrays must be on the same device; {first_name} is on {first_device} "
                    f"but {name} is on {dev}"
                )
    return xp


@functools.lru_cache(maxsize=256)
def _dtype_kind(xp: ModuleType, dtype: Any) -> str:
    """'floating', 'integral' or 'other'; cached, as ``isdtype`` costs microseconds per call."""
    try:
        if xp.isdtype(dtype, "real floating"):
            return "floating"
        if xp.isdtype(dtype, "integral"):
            return "integral"
    except (TypeError, ValueError):
        pass
    # Extension dtypes such as ml_dtypes' bfloat16: NumPy's and CuPy's isdtype reject them,
    # Dask's does not know them (False).
    try:
        numpy_dtype = np.dtype(dtype)
    except TypeError:  # another library's dtype that isdtype has answered for
        return "other"
    if numpy_dtype.name == "bfloat16" or numpy_dtype.kind == "f":
        return "floating"
    return "integral" if numpy_dtype.kind in "iu" else "other"


def _is_floating(xp: ModuleType, dtype: Any) -> bool:
    return _dtype_kind(xp, dtype) == "floating"


def _is_integer(xp: ModuleType, dtype: Any) -> bool:
    return _dtype_kind(xp, dtype) == "integral"


def _require_floating(xp: ModuleType, name: str, x: Array) -> None:
    if not _is_floating(xp, x.dtype):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")


def check_known_shape(name: str, x: Array) -> None:
    """Every dimension of ``x`` is known at call time: shapes decide the loss's layout and
    the ``'mean'``'s divisor, and an unknown one (``None`` in the array API, NaN in Dask
    after boolean indexing) would reach them as NaN."""
    shape = x.shape
    if isinstance(shape, tuple) and all(type(size) is int for size in shape):
        return  # the common case: a tuple of ints (NumPy, torch.Size)
    shape = tuple(shape)
    if all(size is not None and size == size for size in shape):
        return
    shown = tuple("?" if size is None or size != size else size for size in shape)
    if "dask" in type(x).__module__:
        raise ValueError(
            f"{name} has unknown chunk sizes (shape {shown}), as after boolean indexing; "
            f"call {name}.compute_chunk_sizes() first (or index with known sizes)")
    raise ValueError(f"{name} has unknown (lazy) dimensions (shape {shown}); arrayloss needs "
                     "every dimension at call time")


def _shape(x: Array) -> tuple[int, ...]:
    if type(x) is NDARRAY:
        return x.shape  # a tuple of ints already
    shape = tuple(x.shape)
    if any(size is None for size in shape):
        raise ValueError("arrays with unknown (lazy) dimensions are not supported")
    return shape


def result_dtype(xp: ModuleType, floating: dict[str, Any]) -> Any:
    """The result dtype of arguments with these floating dtypes (by argument name): their
    common type, or a TypeError naming them all when they have none."""
    dtypes = list(floating.values())
    try:
        # One dtype object for all (the common case) needs no promotion table.  Identity, not
        # ==: ml_dtypes' bfloat16 compares equal to float16, which do not promote.
        first = dtypes[0]
        if all(d is first for d in dtypes):
            return first
        if isinstance(first, np.dtype) and any(np.dtype(d).name == "bfloat16" for d in dtypes):
            # ml_dtypes' bfloat16 promotes with nothing on NumPy; decided here, not by NumPy's
            # promotion state, which other libraries in the process can change.
            raise TypeError
        return xp.result_type(*dtypes)
    except TypeError:  # NumPy's DTypePromotionError, e.g. bfloat16 with float16
        listed = ", ".join(f"{name} {dtype}" for name, dtype in floating.items())
        raise TypeError(f"the floating dtypes of {listed} have no common type; cast them to "
                        "one dtype (for example float32)") from None


# --------------------------------------------------------------------------- upstream gradients


def require_scalar_loss(reduction: object, function: str, loss: str) -> None:
    """A fused loss-and-gradient function needs a scalar loss to differentiate."""
    if reduction == "none":
        raise ValueError(
            f"{function} needs reduction='mean' or 'sum'; for 'none' call {loss} and "
            f"{loss}_backward with a grad_output array"
        )


def check_grad_output(
    grad_output: object, input: Array, xp: ModuleType, loss_shape: tuple[int, ...],
    reduction: str,
) -> Array | float:
    """Check the upstream gradient of a backward function against the loss it belongs to.

    ``'none'`` needs a real floating array of the loss's shape; ``'mean'`` and ``'sum'`` need a
    real number or a 0-d real floating array.  Python and NumPy numbers come back as a float.
    """
    if reduction != "none" and _is_real_scalar(grad_output):
        return as_float("grad_output", grad_output)
    _reject_masked("grad_output", grad_output)
    if not is_array_api_obj(grad_output):
        expected = "an array" if reduction == "none" else "a real number or a 0-d array"
        raise TypeError(f"grad_output must be {expected}, got {type_name(grad_output)}")
    if array_namespace(grad_output) is not xp:
        raise TypeError("grad_output must come from the same array library as the inputs")
    if None not in (device(grad_output), device(input)) and device(grad_output) != device(input):
        raise ValueError(f"grad_output must be on the inputs' device {device(input)}, "
                         f"got {device(grad_output)}")
    _require_floating(xp, "grad_output", grad_output)
    check_known_shape("grad_output", grad_output)
    expected_shape = loss_shape if reduction == "none" else ()
    if _shape(grad_output) != expected_shape:
        raise ValueError(
            f"grad_output must have the loss's shape {expected_shape} for "
            f"reduction={reduction!r}, got {_shape(grad_output)}"
        )
    return grad_output
