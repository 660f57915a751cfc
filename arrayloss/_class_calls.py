"""The argument rules of the losses over class targets (NLL, cross-entropy) and their
validated *call* objects.

The layout of class-index targets, the class weight and the gradient's ``out`` are checked here
once for every such loss; the backends receive the validated call and never re-check.  Host only:
shapes, dtypes and Python values, never array contents.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import (
    array_namespace,
    device,
    is_array_api_obj,
    is_dask_namespace,
    is_jax_namespace,
    is_torch_array,
)

from ._validation import (
    _INT64_MAX,
    _INT64_MIN,
    NDARRAY,
    REDUCTIONS,
    _is_floating,
    _is_integer,
    _namespace,
    _numpy_namespace,
    _reject_masked,
    _require_floating,
    _shape,
    _value_checks,
    check_flag,
    check_ignore_index,
    check_label_smoothing,
    check_reduction,
    type_name,
)

__all__ = ["CrossEntropyCall", "NLLCall", "check_gradient_out", "class_layout",
           "cross_entropy_call", "nll_call"]

Array = Any


# --------------------------------------------------------------------------- class targets


def class_layout(input: Array, target: Array, *, probabilities: bool = False
                 ) -> tuple[int, tuple[int, ...]]:
    """(C, the loss's shape) for class-index targets, PyTorch's layouts of NLL and cross-entropy.

    ``input`` is ``(C,)`` with a ``()`` or ``(1,)`` target, or ``(N, C, d1, ..., dK)`` with an
    ``(N, d1, ..., dK)`` target.  ``probabilities``: whether the loss also takes class
    probabilities (cross-entropy), which the hint for a one-hot target then suggests.
    """
    input_shape, target_shape = _shape(input), _shape(target)
    if len(input_shape) == 0:
        raise ValueError(
            "input must have at least 1 dimension: (C,), (N, C) or (N, C, d1, ..., dK)"
        )
    if len(input_shape) == 1:
        if target_shape not in ((), (1,)):
            raise ValueError(
                f"for 1-D input (C,) target must have shape () or (1,), got {target_shape}"
                + _one_hot_hint(input_shape, target_shape, probabilities)
            )
        return input_shape[0], ()
    expected = (input_shape[0], *input_shape[2:])
    if target_shape != expected:
        raise ValueError(
            f"target with shape {target_shape} does not match input with shape "
            f"{input_shape}; expected (N, d1, ..., dK) = {expected}"
            + _one_hot_hint(input_shape, target_shape, probabilities)
        )
    return input_shape[1], expected


def _one_hot_hint(input_shape: tuple[int, ...], target_shape: tuple[int, ...],
                  probabilities: bool) -> str:
    """What to do with an integer target of the input's shape: a one-hot encoding, most
    likely, which is not a class index."""
    if target_shape != input_shape:
        return ""
    axis = 0 if len(input_shape) == 1 else 1
    indices = f"class indices with target.argmax(axis={axis})"
    if not probabilities:
        return f"; an integer target of the input's shape looks one-hot: pass {indices}"
    return ("; an integer target of the input's shape looks one-hot: for class "
            "probabilities cast it to the input's floating dtype "
            f"(target.astype(input.dtype)), or pass {indices}")


def check_class_weight(weight: Array, n_classes: int, input: Array) -> None:
    """A class weight is a ``(C,)`` array with the input's dtype."""
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


def _class_options(reduction: object, validate: object, ignore_index: object
                   ) -> tuple[str, bool, int]:
    """The options every loss over classes has, checked: ``(reduction, validate,
    ignore_index)``."""
    if (type(reduction) is str and reduction in REDUCTIONS
            and (validate is True or validate is False)
            and type(ignore_index) is int and _INT64_MIN <= ignore_index <= _INT64_MAX):
        # The plainest of their kinds, which pass every rule below as they are: at once.
        return reduction, validate, ignore_index
    return (check_reduction(reduction), check_flag("validate", validate),
            check_ignore_index(ignore_index))


def _common_arguments(input: Array, target: Array, weight: Array | None, validate: bool
                      ) -> tuple[ModuleType, bool]:
    """The array checks every loss over classes starts with: one array library for the
    arrays, a floating input.  Returns ``(xp, validate)``, the value checks off where the
    arrays have no values to check (see :func:`._validation._value_checks`)."""
    arrays = {"input": input, "target": target}
    if weight is not None:
        arrays["weight"] = weight
    xp = _namespace(arrays)
    _require_floating(xp, "input", input)
    # Only class indices have values to check (a probability target has none).
    checked = None if _is_floating(xp, target.dtype) else "target"
    return xp, _value_checks(validate, arrays, checked)


def _plain_numpy_layout(input: Array, target: Array, weight: Array | None
                        ) -> tuple[int, tuple[int, ...]] | None:
    """``(C, the loss's shape)`` at once for the plainest arguments of a loss over class
    indices: NumPy arrays (not subclasses), a floating ``(N, C, d1, ..., dK)`` input, an
    integer ``(N, d1, ..., dK)`` target, no weight or a ``(C,)`` one of input's dtype object.

    Such arguments pass every array rule here, which would give the same layout after a few
    microseconds of looking for a rule that fails; anything else (None) goes through them.
    """
    if type(input) is not NDARRAY or type(target) is not NDARRAY:
        return None
    shape = input.shape
    if (len(shape) < 2 or input.dtype.kind != "f" or target.dtype.kind not in "iu"
            or target.shape != (shape[0], *shape[2:])):
        return None
    n_classes = shape[1]
    if weight is not None and (type(weight) is not NDARRAY or weight.dtype is not input.dtype
                               or weight.shape != (n_classes,)):
        return None
    return n_classes, target.shape


# --------------------------------------------------------------------------- NLL


@dataclass(slots=True)
class NLLCall:
    """A validated NLL call, as every backend receives it (never modified once built; not
    ``frozen``, whose construction costs microseconds per call on small inputs)."""

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
    reduction, validate, ignore_index = _class_options(reduction, validate, ignore_index)
    layout = _plain_numpy_layout(input, target, weight)
    if layout is not None:
        xp = _numpy_namespace()
    else:
        xp, validate = _common_arguments(input, target, weight, validate)
        if not _is_integer(xp, target.dtype):
            raise TypeError(
                f"target must have an integer dtype (class indices), got {target.dtype}")
        layout = class_layout(input, target)
        if weight is not None:
            check_class_weight(weight, layout[0], input)
    n_classes, loss_shape = layout

    # Positional, in the fields' order: keywords cost a small call a microsecond.
    return NLLCall(xp, input, target, weight, ignore_index, reduction,
                   validate, n_classes, loss_shape, input.dtype)


# --------------------------------------------------------------------------- cross-entropy


@dataclass(slots=True)
class CrossEntropyCall:
    """A validated cross-entropy call, as every backend receives it (never modified once
    built; see :class:`NLLCall`)."""

    xp: ModuleType
    input: Array
    #: Class indices (integer dtype) or class probabilities (floating, input's shape).
    target: Array
    weight: Array | None
    ignore_index: int
    reduction: str
    validate: bool
    label_smoothing: float
    #: Whether ``target`` holds class probabilities rather than class indices.
    probabilities: bool
    n_classes: int
    loss_shape: tuple[int, ...]
    #: The loss's dtype: input's, promoted with a probability target's.
    dtype: Any

    @property
    def nll(self) -> NLLCall:
        """The same arguments as an NLL call (index targets): the target rules are NLL's."""
        return NLLCall(xp=self.xp, input=self.input, target=self.target, weight=self.weight,
                       ignore_index=self.ignore_index, reduction=self.reduction,
                       validate=self.validate, n_classes=self.n_classes,
                       loss_shape=self.loss_shape, dtype=self.input.dtype)


def _cross_entropy_layout(xp: ModuleType, input: Array, target: Array, weight: Array | None,
                          ignore_index: int) -> tuple[bool, int, tuple[int, ...], Any]:
    """``(probabilities, C, the loss's shape, the loss's dtype)`` of a cross-entropy call,
    checked: class indices (NLL's layouts) or class probabilities of input's shape."""
    probabilities = _is_floating(xp, target.dtype)
    dtype = input.dtype
    if probabilities:
        input_shape, target_shape = _shape(input), _shape(target)
        if target_shape != input_shape:
            raise ValueError(
                f"a floating target holds class probabilities and must have the input's shape "
                f"{input_shape}, got {target_shape}; for class indices use an integer dtype"
            )
        if not input_shape:
            raise ValueError(
                "input must have at least 1 dimension: (C,), (N, C) or (N, C, d1, ..., dK)"
            )
        if ignore_index >= 0:
            # PyTorch's rule: an ignore_index would be a class, and a probability target has
            # no per-element class to compare it with.
            raise ValueError(
                f"ignore_index={ignore_index} is not supported with class-probability (floating) "
                "targets; leave it at its default"
            )
        n_classes = input_shape[0] if len(input_shape) == 1 else input_shape[1]
        loss_shape = () if len(input_shape) == 1 else (input_shape[0], *input_shape[2:])
        try:
            dtype = xp.result_type(input.dtype, target.dtype)
        except TypeError:  # NumPy's DTypePromotionError, e.g. bfloat16 with float16
            raise TypeError(f"input {input.dtype} and target {target.dtype} have no common type; "
                            "cast them to one dtype") from None
    elif _is_integer(xp, target.dtype):
        n_classes, loss_shape = class_layout(input, target, probabilities=True)
    else:
        raise TypeError("target must have an integer dtype (class indices) or a real floating "
                        f"dtype (class probabilities), got {target.dtype}")
    if weight is not None:
        check_class_weight(weight, n_classes, input)
    return probabilities, n_classes, loss_shape, dtype


def cross_entropy_call(
    input: Array,
    target: Array,
    weight: Array | None,
    *,
    ignore_index: object,
    reduction: object,
    label_smoothing: object,
    validate: object,
) -> CrossEntropyCall:
    """Check every argument of a cross-entropy function and return the validated call.

    An integer ``target`` holds class indices (NLL's layouts); a floating one holds class
    probabilities and must have the input's shape.
    """
    label_smoothing = check_label_smoothing(label_smoothing)
    reduction, validate, ignore_index = _class_options(reduction, validate, ignore_index)
    layout = _plain_numpy_layout(input, target, weight)
    if layout is not None:
        xp, probabilities, dtype = _numpy_namespace(), False, input.dtype
        n_classes, loss_shape = layout
    else:
        xp, validate = _common_arguments(input, target, weight, validate)
        probabilities, n_classes, loss_shape, dtype = _cross_entropy_layout(
            xp, input, target, weight, ignore_index)

    # Positional, in the fields' order (see nll_call).
    return CrossEntropyCall(xp, input, target, weight, ignore_index,
                            reduction, validate, label_smoothing, probabilities, n_classes,
                            loss_shape, dtype)


def check_gradient_out(out: Any, call: CrossEntropyCall) -> None:
    """``out`` may receive the gradient with respect to ``call.input``: an array of the same
    library, device, shape and dtype, writable, and either ``input`` itself (the logits are
    then consumed) or memory that no argument uses."""
    _reject_masked("out", out)
    if not is_array_api_obj(out):
        raise TypeError(f"out must be an array, got {type_name(out)}")
    if array_namespace(out) is not call.xp:
        raise TypeError("out must come from the same array library as input")
    if is_jax_namespace(call.xp):
        raise TypeError("out is not supported for JAX arrays, which are immutable; use the "
                        "returned gradient")
    if is_dask_namespace(call.xp):
        raise TypeError("out is not supported for Dask arrays, which are lazy; use the "
                        "returned gradient")
    input = call.input
    if out.dtype != input.dtype:
        raise TypeError(f"out must have the input's dtype {input.dtype}, got {out.dtype}")
    if _shape(out) != _shape(input):
        raise ValueError(f"out must have the input's shape {_shape(input)}, got {_shape(out)}")
    if None not in (device(out), device(input)) and device(out) != device(input):
        raise ValueError(f"out must be on the input's device {device(input)}, got {device(out)}")
    if getattr(getattr(out, "flags", None), "writeable", True) is False:
        raise ValueError("out is read-only")
    may_share = _overlap_test(out)
    if may_share is None:
        return  # no overlap test in this library: its generic path copies into out at the end
    others = {"target": call.target, "weight": call.weight}
    for name, other in others.items():
        if other is not None and may_share(out, other):
            raise ValueError(f"out must not share memory with {name}")
    if may_share(out, input) and not _same_memory(out, input):
        raise ValueError("out overlaps input without being input itself; pass out=input to "
                         "overwrite the logits, or memory of its own")


def _overlap_test(out: Array) -> Any:
    """``may_share_memory`` of ``out``'s library (NumPy, CuPy), or None for the others."""
    if isinstance(out, np.ndarray):
        return np.may_share_memory
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(out, cupy.ndarray):
        return cupy.may_share_memory
    if is_torch_array(out):
        return _torch_may_share_memory
    return None


def _torch_may_share_memory(a: Array, b: Array) -> bool:
    """Whether two tensors' bytes may overlap (the same storage and overlapping ranges, as
    NumPy's ``may_share_memory`` bounds them)."""
    if a.device != b.device or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    return bool(_byte_range(a)[0] < _byte_range(b)[1] and _byte_range(b)[0] < _byte_range(a)[1])


def _byte_range(tensor: Array) -> tuple[int, int]:
    """The first byte a tensor's elements reach, and one past the last."""
    start = tensor.data_ptr()
    if tensor.numel() == 0:
        return start, start
    item = tensor.element_size()
    steps = [(size - 1) * stride * item for size, stride in
             zip(tensor.shape, tensor.stride(), strict=True)]
    return (start + sum(step for step in steps if step < 0),
            start + sum(step for step in steps if step > 0) + item)


def _same_memory(a: Array, b: Array) -> bool:
    """Whether two arrays are the same elements in the same layout (``out=input`` or a copy
    of its view)."""
    if a is b:
        return True
    if isinstance(a, np.ndarray):
        return bool(a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                    and a.strides == b.strides)
    if is_torch_array(a):
        return bool(a.data_ptr() == b.data_ptr() and a.stride() == b.stride())
    return bool(a.data.ptr == b.data.ptr and a.strides == b.strides)  # CuPy
