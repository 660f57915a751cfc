"""Gaussian NLL's argument rules and the validated *call* object its backends receive.

A public function turns its arguments into a validated call (:class:`GaussianNLLCall`; the losses
over class targets have theirs in :mod:`arrayloss._class_calls`) once, with the shared rules of
:mod:`arrayloss._validation`; the generic and the CuPy backends receive that object and never
re-check what is checked here.  Host only: shapes, dtypes and Python values, never array
contents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ._validation import (
    NDARRAY,
    REDUCTIONS,
    _is_floating,
    _is_integer,
    _is_real_scalar,
    _namespace,
    _numpy_namespace,
    _plain_nonnegative,
    _require_floating,
    _shape,
    _value_checks,
    as_float,
    broadcast_shapes,
    check_beta,
    check_eps,
    check_flag,
    check_reduction,
    negative_var_error,
    result_dtype,
    type_name,
)

__all__ = ["GAUSSIAN_GRADIENTS", "GaussianNLLCall", "check_wrt", "gaussian_nll_call"]

GAUSSIAN_GRADIENTS = ("input", "target", "var")

Array = Any


# --------------------------------------------------------------------------- Gaussian NLL


@dataclass(slots=True)
class GaussianNLLCall:
    """A validated Gaussian NLL call, as every backend receives it.

    Never modified once built (backends derive new ones with :func:`dataclasses.replace`);
    not ``frozen``, whose construction costs microseconds per call on small inputs.
    """

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
        f"{_var_shapes_text(input_shape)}{hint}"
    )


def _var_shapes_text(input_shape: tuple[int, ...]) -> str:
    """The variance shapes that fit ``input_shape``, each written out as a shape."""
    if not input_shape:
        return "shape () as the input, or var as a number"
    ones = (*input_shape[:-1], 1)
    return (f"{input_shape} (the input's shape), {input_shape[:-1]} (without its last "
            f"dimension) or the input's shape with some dimensions set to 1, such as {ones}")


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
    if not (type(reduction) is str and reduction in REDUCTIONS
            and (full is False or full is True) and (validate is True or validate is False)
            and (log_var is False or log_var is True)
            and _plain_nonnegative(eps) and _plain_nonnegative(beta)):
        # Anything but the plainest options of their kinds (which pass every rule as they
        # are; decided here, without a call that a small call would feel): the rules.
        reduction, full, eps, validate, log_var, beta = _options(reduction, full, eps,
                                                                validate, log_var, beta)
    plain = _plain_numpy_call(input, target, var, full, eps, reduction, validate, log_var, beta)
    if plain is not None:
        return plain

    scalar_var = _is_real_scalar(var)
    arrays = {"input": input, "target": target}
    if not scalar_var:
        if isinstance(var, (bool, np.bool_, complex, np.complexfloating)):
            raise TypeError(f"var must be a real number or an array, got {type_name(var)}")
        arrays["var"] = var
    xp = _namespace(arrays)
    validate = _value_checks(validate, arrays, None if scalar_var else "var")

    _require_floating(xp, "input", input)
    for name, array in arrays.items():
        dtype = array.dtype
        if name != "input" and not (_is_floating(xp, dtype) or _is_integer(xp, dtype)):
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
    dtype = result_dtype(xp, floating)
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


def _options(reduction: object, full: object, eps: object, validate: object, log_var: object,
             beta: object) -> tuple[str, bool, float, bool, bool, float]:
    """The options, checked: ``(reduction, full, eps, validate, log_var, beta)``."""
    return (check_reduction(reduction), check_flag("full", full), check_eps(eps),
            check_flag("validate", validate), check_flag("log_var", log_var),
            check_beta(beta))


def _plain_numpy_call(input: Array, target: Array, var: Array | float, full: bool, eps: float,
                      reduction: str, validate: bool, log_var: bool, beta: float
                      ) -> GaussianNLLCall | None:
    """The call at once, for the plainest arguments (options already checked): NumPy arrays
    (not subclasses) of one floating dtype object, ``target`` of input's shape, ``var`` a
    Python float >= 0 or an array of input's shape.

    Such arguments pass every rule of :func:`gaussian_nll_call`, which would build this same
    call after a few microseconds of looking for a rule that fails; anything else (None) goes
    through the rules.
    """
    if type(input) is not NDARRAY or type(target) is not NDARRAY:
        return None
    dtype, shape = input.dtype, input.shape
    if dtype.kind != "f" or target.dtype is not dtype or target.shape != shape:
        return None
    if type(var) is float:
        if var < 0 and not log_var:
            return None  # the rules raise the error
        var_shape = None
    elif type(var) is NDARRAY and var.dtype is dtype and var.shape == shape:
        var_shape = shape
    else:
        return None
    # Positional, in the fields' order: thirteen keywords cost the call a microsecond.
    return GaussianNLLCall(_numpy_namespace(), input, target, var, var_shape, shape, dtype,
                           full, eps, reduction, validate, log_var, beta)


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
