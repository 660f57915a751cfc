"""An elementwise loss's argument rules, from its declaration, and the validated call.

:func:`make_call` checks every argument of a public function of any elementwise loss, with
the shared rules and messages of :mod:`arrayloss._validation`, and returns the
:class:`ElementwiseCall` every backend receives.  Host only: shapes, dtypes and Python values,
never array contents (the value checks run in the backends, fused into their first pass).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any

from .._agnostic._helpers import torch_compiling
from .._validation import (
    _is_floating,
    _is_integer,
    _is_real_scalar,
    _namespace,
    _require_floating,
    _shape,
    _value_checks,
    as_float,
    broadcast_shapes,
    check_flag,
    result_dtype,
    type_name,
)
from .spec import ElementwiseLoss, Option

__all__ = ["ElementwiseCall", "check_wrt", "make_call"]

Array = Any


@dataclass(slots=True)
class ElementwiseCall:
    """A validated call of an elementwise loss, as every backend receives it.

    Never modified once built; the backends (and the bridges) derive new ones with
    :func:`dataclasses.replace`.
    """

    xp: ModuleType
    #: The array arguments by name; an absent optional one (no ``weight``) is not there.
    arrays: dict[str, Array]
    #: The options by name: flags as bools, numbers as floats.
    options: dict[str, Any]
    loss_shape: tuple[int, ...]
    #: The result dtype; the math runs in its compute dtype (float32 for 16-bit floats).
    dtype: Any
    reduction: str
    validate: bool

    @property
    def input(self) -> Array:
        return self.arrays["input"]

    @property
    def numel(self) -> int:
        """The number of elements of the unreduced loss."""
        return math.prod(self.loss_shape)


def check_option(option: Option, value: object) -> bool | float:
    """One option's value, checked against its declaration."""
    if option.is_flag:
        return check_flag(option.name, value)
    if not _is_real_scalar(value):
        raise TypeError(f"{option.name} must be a real number, got {type_name(value)}")
    number = as_float(option.name, value)
    below = number < option.minimum if option.inclusive else number <= option.minimum
    if not math.isfinite(number) or below:
        bound = (f">= {option.minimum:g}" if option.inclusive else f"> {option.minimum:g}")
        expected = "finite" if option.minimum == -math.inf else f"finite and {bound}"
        hint = f" ({option.hint})" if option.hint else ""
        raise ValueError(f"{option.name} must be {expected}{hint}, got {number!r}")
    return number


def check_options(spec: ElementwiseLoss, reduction: object, validate: object,
                  options: Mapping[str, object]) -> tuple[str, bool, dict[str, Any]]:
    """``(reduction, validate, options)``, checked: what the loss objects hold too."""
    if not isinstance(reduction, str) or reduction not in spec.reductions:
        names = [repr(name) for name in spec.reductions]
        listed = ", ".join(names[:-1]) + f" or {names[-1]}"
        raise ValueError(f"reduction must be one of {listed}, got {reduction!r}")
    checked = {option.name: check_option(option, options[option.name])
               for option in spec.options}
    return reduction, check_flag("validate", validate), checked


def make_call(spec: ElementwiseLoss, arrays: Mapping[str, Array | None], *,
              reduction: object, validate: object,
              options: Mapping[str, object], warn: bool = True) -> ElementwiseCall:
    """Check every argument of one of ``spec``'s public functions; the validated call.
    ``warn=False`` for a call made again from the same arguments (the autograd bridges'),
    which the caller's call has warned of already."""
    reduction, validate, checked = check_options(spec, reduction, validate, options)
    named: dict[str, Array] = {}
    for argument in spec.arguments:
        value = arrays[argument.name]
        if value is None and argument.optional:
            continue
        named[argument.name] = value
    xp = _namespace(named)
    validate = _value_checks(validate, named)

    _require_floating(xp, "input", named["input"])
    for argument in spec.arguments[1:]:
        if argument.name not in named:
            continue
        dtype = named[argument.name].dtype
        if argument.boolean and dtype == xp.bool:
            continue
        if argument.integer:
            if not (_is_floating(xp, dtype) or _is_integer(xp, dtype)):
                kinds = "floating, integer or bool" if argument.boolean else "floating or integer"
                raise TypeError(f"{argument.name} must have a real {kinds} dtype, got {dtype}")
        elif not _is_floating(xp, dtype):
            raise TypeError(f"{argument.name} must have a real floating dtype, got {dtype}"
                            + ("; cast it with astype" if _is_integer(xp, dtype) else ""))

    input_shape = _shape(named["input"])
    loss_shape = input_shape
    for argument in spec.arguments[1:]:
        if argument.name not in named:
            continue
        shape = _shape(named[argument.name])
        if argument.shape == "input" and shape != input_shape:
            raise ValueError(
                f"{argument.name} with shape {shape} must have input's shape {input_shape} "
                f"(as PyTorch's {spec.name} requires)")
        if argument.shape == "broadcast":
            fitted = broadcast_shapes(loss_shape, shape)
            if fitted is None:
                raise ValueError(f"{argument.name} with shape {shape} does not broadcast "
                                 f"against input with shape {input_shape}")
            loss_shape = fitted
    if warn and spec.warns_on_broadcast and _shape(named["target"]) != input_shape:
        # PyTorch's words, so that a filter of its warning filters this one too.
        _warn(f"Using a target size {_shape(named['target'])} that is different to the input "
              f"size {input_shape} in {spec.name}. This will likely lead to incorrect results "
              "due to broadcasting. Please ensure they have the same size.")
    for argument in spec.arguments[1:]:
        if argument.shape == "into" and argument.name in named:
            shape = _shape(named[argument.name])
            if broadcast_shapes(loss_shape, shape) != loss_shape:
                raise ValueError(
                    f"{argument.name} with shape {shape} does not broadcast to the loss's "
                    f"shape {loss_shape} (it may not add dimensions or grow one)")

    floating = {argument.name: named[argument.name].dtype for argument in spec.arguments
                if argument.promotes and argument.name in named
                and _is_floating(xp, named[argument.name].dtype)}
    dtype = result_dtype(xp, floating)
    for argument in spec.arguments:
        # A weight does not promote, but it must be a floating array the math can cast.
        if not argument.promotes and argument.name in named:
            _require_floating(xp, argument.name, named[argument.name])
    return ElementwiseCall(xp=xp, arrays=named, options=checked, loss_shape=loss_shape,
                           dtype=dtype, reduction=reduction, validate=validate)


def check_wrt(spec: ElementwiseLoss, wrt: object, call: ElementwiseCall) -> frozenset[str]:
    """``wrt`` as the set of gradients a backward actually computes.

    Unknown names are an error; an integer argument has no gradient and is dropped.
    """
    choices = spec.gradient_names
    listed = ", ".join(repr(name) for name in choices)
    names = (wrt,) if isinstance(wrt, str) else wrt
    if not isinstance(names, Iterable) or isinstance(names, (bytes, bytearray)):
        raise TypeError(f"wrt must be one of {listed} or a sequence of them, got "
                        f"{type_name(wrt)}")
    names = tuple(names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"wrt must be one of {listed} or a sequence of them; it contains "
                            f"{name!r} ({type_name(name)})")
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise ValueError(f"wrt may contain only {listed}, got {', '.join(map(repr, unknown))}")
    return frozenset(name for name in names
                     if name in call.arrays and _is_floating(call.xp, call.arrays[name].dtype))


def _warn(message: str) -> None:
    """A ``UserWarning`` attributed to the caller's line: the first frame of code outside
    arrayloss (the public functions, made by ``exec``, the loss objects and the torch CPU
    lane add frames of their own)."""
    if torch_compiling():  # TorchDynamo traces neither frames nor warnings.warn
        return
    frame: FrameType | None = sys._getframe(1)
    level = 2  # the frame that called _warn
    while frame is not None and (
            str(frame.f_globals.get("__name__", "")).startswith("arrayloss.")
            or frame.f_globals.get("_ARRAYLOSS_FRAME")):  # (public.py's generated functions)
        level, frame = level + 1, frame.f_back
    warnings.warn(message, UserWarning, stacklevel=level)
