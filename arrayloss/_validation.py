"""Argument rules shared by every backend: shapes, dtypes, options and their error messages.

Everything here runs on the host and reads only shapes, dtypes and Python values, never array
contents, so it costs no device synchronisation. Each public function turns its arguments into a
frozen *call* object (:class:`GaussianNLLCall`, :class:`NLLCall`) once; the generic and the CuPy
backends receive that object and never re-check what is checked here.
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import (
    array_namespace,
    device,
    is_array_api_obj,
    is_numpy_namespace,
    is_torch_array,
)

__all__ = [
    "GaussianNLLCall",
    "NLLCall",
    "TargetOutOfRangeError",
    "broadcast_shapes",
    "check_eps",
    "check_flag",
    "check_grad_output",
    "check_ignore_index",
    "check_reduction",
    "check_wrt",
    "gaussian_nll_call",
    "negative_var_error",
    "nll_call",
    "require_scalar_loss",
    "target_out_of_range_error",
]

REDUCTIONS = ("none", "mean", "sum")
GAUSSIAN_GRADIENTS = ("input", "target", "var")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

Array = Any


class TargetOutOfRangeError(IndexError, ValueError):
    """A class target lies outside ``[0, C)`` and is not ``ignore_index``.

    It subclasses both :class:`IndexError` (what PyTorch raises on the CPU) and
    :class:`ValueError` (a bad value), so either ``except`` clause catches it.
    """


# --------------------------------------------------------------------------- the error messages


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
    """The error for a class target outside ``[0, n_classes)`` that is not ``ignore_index``."""
    return TargetOutOfRangeError(
        f"target contains {value}, which is outside the class range [0, {n_classes}) "
        f"(C={n_classes}) and is not ignore_index={ignore_index}; "
        f"pass ignore_index={value} to skip such targets"
    )


# --------------------------------------------------------------------------- small host-side rules


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    """The broadcast of ``shapes`` under the array API rules, or None if they do not broadcast."""
    ndim = max((len(s) for s in shapes), default=0)
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
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, np.generic):
        return isinstance(value, (np.integer, np.floating))
    return isinstance(value, numbers.Real)


def check_eps(eps: object) -> float:
    if not _is_real_scalar(eps):
        raise TypeError(f"eps must be a real number, got {type_name(eps)}")
    value = as_float("eps", eps)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {value!r}")
    return value


def check_beta(beta: object) -> float:
    if not _is_real_scalar(beta):
        raise TypeError(f"beta must be a real number, got {type_name(beta)}")
    value = as_float("beta", beta)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"beta must be finite and >= 0 (the beta-NLL paper uses 0 to 1), "
                         f"got {value!r}")
    return value


def check_ignore_index(ignore_index: object) -> int:
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(
        ignore_index, (numbers.Integral, np.integer)
    ):
        raise TypeError(f"ignore_index must be an int, got {type_name(ignore_index)}")
    value = int(ignore_index)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"ignore_index must fit in int64, got {value}")
    return value


def _value_checks(validate: bool, named: dict[str, Any]) -> bool:
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
    return True


def _reject_masked(name: str, value: object) -> None:
    # A mask is not part of the array API: honoured by some NumPy calls and not others, it
    # would make the answer depend on the code path.  Say so instead of guessing.
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray; arrayloss does not apply masks. Pass "
            f"{name}.filled(value) or drop the masked elements (for NLL, set their targets "
            "to ignore_index)"
        )


def _namespace(named: dict[str, Any]) -> ModuleType:
    """The array namespace shared by the named arrays, with errors that name the argument."""
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
    if len(named) > 1 and not is_numpy_namespace(xp):  # NumPy has a single device
        # A JAX tracer has no device (None) until it is run: nothing to compare.
        devices = {name: dev for name, value in named.items()
                   if (dev := device(value)) is not None}
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
        return "integral" if xp.isdtype(dtype, "integral") else "other"
    except (TypeError, ValueError):
        # NumPy's and CuPy's isdtype reject extension dtypes such as ml_dtypes' bfloat16.
        numpy_dtype = np.dtype(dtype)
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


def _shape(x: Array) -> tuple[int, ...]:
    shape = tuple(x.shape)
    if any(size is None for size in shape):
        raise ValueError("arrays with unknown (lazy) dimensions are not supported")
    return shape


# --------------------------------------------------------------------------- Gaussian NLL


@dataclass(frozen=True)
class GaussianNLLCall:
    """A validated Gaussian NLL call, as every backend receives it."""

    xp: ModuleType
    input: Array
    target: Array
    #: An array with ``input.ndim`` dimensions, each equal to input's or 1 (the "one fewer
    #: dimension" case is already a view with a trailing axis), or a Python float.
    var: Array | float
    #: The caller's var shape, which ``grad_var`` takes; ``None`` for a scalar var.
    var_shape: tuple[int, ...] | None
    loss_shape: tuple[int, ...]
    dtype: Any
    full: bool
    eps: float
    reduction: str
    validate: bool
    #: ``var`` holds log-variances (no eps clamp, no sign check).
    log_var: bool = False
    #: The beta-NLL exponent; 0 is plain Gaussian NLL.
    beta: float = 0.0

    @property
    def numel(self) -> int:
        """The number of elements of the unreduced loss (the divisor of ``'mean'``)."""
        return math.prod(self.loss_shape)


def _fit_var(xp: ModuleType, var: Array, input_shape: tuple[int, ...]) -> Array:
    """Apply PyTorch's variance shape rule, extended to several size-1 dimensions."""
    var_shape = _shape(var)
    if var_shape == input_shape:
        return var
    if input_shape and var_shape == input_shape[:-1]:
        # Homoscedastic over the last dimension: one variance per row.
        return xp.expand_dims(var, axis=-1)
    if len(var_shape) == len(input_shape) and all(
        v == i or v == 1 for v, i in zip(var_shape, input_shape, strict=True)
    ):
        return var
    hint = ""
    if var_shape == ():
        hint = ("; for one variance shared by every element, pass it as a number "
                "(var=float(v)) rather than a 0-d array")
    raise ValueError(
        f"var with shape {var_shape} does not fit input with shape {input_shape}; expected "
        f"input's shape, input's shape without its last dimension ({input_shape[:-1]}), or "
        f"input's shape with some dimensions set to 1{hint}"
    )


def gaussian_nll_call(
    input: Array,
    target: Array,
    var: Array | float,
    *,
    full: object,
    eps: object,
    reduction: object,
    validate: object,
    log_var: object = False,
    beta: object = 0.0,
) -> GaussianNLLCall:
    """Check every argument of a Gaussian NLL function and return the validated call."""
    reduction = check_reduction(reduction)
    full = check_flag("full", full)
    validate = check_flag("validate", validate)
    eps = check_eps(eps)
    log_var = check_flag("log_var", log_var)
    beta = check_beta(beta)

    scalar_var = _is_real_scalar(var)
    arrays = {"input": input, "target": target}
    if not scalar_var:
        if isinstance(var, (bool, np.bool_, complex, np.complexfloating)):
            raise TypeError(f"var must be a real number or an array, got {type_name(var)}")
        arrays["var"] = var
    xp = _namespace(arrays)
    validate = _value_checks(validate, arrays)

    _require_floating(xp, "input", input)
    for name in arrays.keys() - {"input"}:
        dtype = arrays[name].dtype
        if not (_is_floating(xp, dtype) or _is_integer(xp, dtype)):
            raise TypeError(f"{name} must have a real floating or integer dtype, got {dtype}")

    input_shape, target_shape = _shape(input), _shape(target)
    if broadcast_shapes(input_shape, target_shape) is None:
        raise ValueError(
            f"target with shape {target_shape} does not broadcast against input "
            f"with shape {input_shape}"
        )

    if scalar_var:
        var_value = as_float("var", var)
        if var_value < 0 and not log_var:
            # A scalar is checked on the host whatever `validate` says: it is free.
            raise negative_var_error(var_value)
        fitted: Array | float = var_value
        var_shape = None
        loss_shape = broadcast_shapes(input_shape, target_shape)
    else:
        var_shape = _shape(var)
        fitted = _fit_var(xp, var, input_shape)
        loss_shape = broadcast_shapes(input_shape, target_shape, _shape(fitted))
    assert loss_shape is not None  # var's dims are input's or 1, so it always broadcasts

    floating = {name: x.dtype for name, x in arrays.items() if _is_floating(xp, x.dtype)}
    try:
        dtype = xp.result_type(*floating.values())
    except TypeError:  # NumPy's DTypePromotionError, e.g. bfloat16 with float16
        listed = ", ".join(f"{name} {dtype}" for name, dtype in floating.items())
        raise TypeError(f"the floating dtypes of {listed} have no common type; cast them to "
                        "one dtype (for example float32)") from None
    return GaussianNLLCall(
        xp=xp,
        input=input,
        target=target,
        var=fitted,
        var_shape=var_shape,
        loss_shape=loss_shape,
        dtype=dtype,
        full=full,
        eps=eps,
        reduction=reduction,
        validate=validate,
        log_var=log_var,
        beta=beta,
    )


def check_wrt(wrt: object, call: GaussianNLLCall) -> frozenset[str]:
    """Normalise ``wrt`` to the gradients a Gaussian NLL backward actually computes.

    Unknown names are an error; ``"var"`` is dropped for a scalar or integer var and
    ``"target"`` for an integer target, since those have no gradient.
    """
    names = (wrt,) if isinstance(wrt, str) else wrt
    if not isinstance(names, Iterable) or isinstance(names, (bytes, bytearray)):
        raise TypeError("wrt must be 'input', 'target', 'var' or a sequence of them, got "
                        f"{type_name(wrt)}")
    names = tuple(names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError("wrt must be 'input', 'target', 'var' or a sequence of them; it "
                            f"contains {name!r} ({type_name(name)})")
    unknown = [name for name in names if name not in GAUSSIAN_GRADIENTS]
    if unknown:
        raise ValueError(
            f"wrt may contain only 'input', 'target' and 'var', got {', '.join(map(repr, unknown))}"
        )
    wanted = set(names)
    if isinstance(call.var, float) or not _is_floating(call.xp, call.var.dtype):
        wanted.discard("var")
    if not _is_floating(call.xp, call.target.dtype):
        wanted.discard("target")
    return frozenset(wanted)


# --------------------------------------------------------------------------- NLL


@dataclass(frozen=True)
class NLLCall:
    """A validated NLL call, as every backend receives it."""

    xp: ModuleType
    input: Array
    target: Array
    weight: Array | None
    ignore_index: int
    reduction: str
    validate: bool
    n_classes: int
    loss_shape: tuple[int, ...]
    dtype: Any


def nll_call(
    input: Array,
    target: Array,
    weight: Array | None,
    *,
    ignore_index: object,
    reduction: object,
    validate: object,
) -> NLLCall:
    """Check every argument of an NLL function and return the validated call."""
    reduction = check_reduction(reduction)
    validate = check_flag("validate", validate)
    ignore_index = check_ignore_index(ignore_index)

    arrays = {"input": input, "target": target}
    if weight is not None:
        arrays["weight"] = weight
    xp = _namespace(arrays)
    validate = _value_checks(validate, arrays)

    _require_floating(xp, "input", input)
    if not _is_integer(xp, target.dtype):
        raise TypeError(f"target must have an integer dtype (class indices), got {target.dtype}")

    input_shape, target_shape = _shape(input), _shape(target)
    if len(input_shape) == 0:
        raise ValueError(
            "input must have at least 1 dimension: (C,), (N, C) or (N, C, d1, ..., dK)"
        )
    if len(input_shape) == 1:
        n_classes = input_shape[0]
        if target_shape not in ((), (1,)):
            raise ValueError(
                f"for 1-D input (C,) target must have shape () or (1,), got {target_shape}"
            )
        loss_shape: tuple[int, ...] = ()
    else:
        n_classes = input_shape[1]
        expected = (input_shape[0], *input_shape[2:])
        if target_shape != expected:
            raise ValueError(
                f"target with shape {target_shape} does not match input with shape "
                f"{input_shape}; expected (N, d1, ..., dK) = {expected}"
            )
        loss_shape = expected

    if weight is not None:
        if _shape(weight) != (n_classes,):
            raise ValueError(
                f"weight must have shape (C,) = ({n_classes},), one entry per class, "
                f"got {_shape(weight)}"
            )
        if weight.dtype != input.dtype:
            detail = ""
            if getattr(weight.dtype, "byteorder", "=") not in "=|" or getattr(
                    input.dtype, "byteorder", "=") not in "=|":
                detail = (" (the same type in another byte order; convert with "
                          ".astype(x.dtype.newbyteorder('=')))")
            raise TypeError(
                f"weight must have the input's dtype {input.dtype}, got {weight.dtype}{detail}"
            )

    return NLLCall(
        xp=xp,
        input=input,
        target=target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        validate=validate,
        n_classes=n_classes,
        loss_shape=loss_shape,
        dtype=input.dtype,
    )


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
    expected_shape = loss_shape if reduction == "none" else ()
    if _shape(grad_output) != expected_shape:
        raise ValueError(
            f"grad_output must have the loss's shape {expected_shape} for "
            f"reduction={reduction!r}, got {_shape(grad_output)}"
        )
    return grad_output
