"""Fused linear cross-entropy's argument rules and the validated *call* its backends receive.

The head's arrays (``input`` ``(..., d)``, ``linear_weight`` ``(V, d)``, ``linear_bias``
``(V,)``) are checked here, and the target by cross-entropy's own rules (:mod:`._class_calls`)
as if the ``(..., V)`` logits existed: class indices of shape ``(...)`` or class probabilities
of shape ``(..., V)``.  Host only: shapes, dtypes and Python values, never array contents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ._class_calls import check_class_weight
from ._validation import (
    _is_floating,
    _is_integer,
    _is_real_scalar,
    _namespace,
    _require_floating,
    _shape,
    _value_checks,
    as_float,
    check_flag,
    check_ignore_index,
    check_label_smoothing,
    check_reduction,
    type_name,
)

__all__ = ["CHUNK_BYTES", "LinearCrossEntropyCall", "default_chunk_size",
           "linear_cross_entropy_call"]

Array = Any

#: The default chunk's logits, in bytes of the compute dtype: chunk x V x itemsize is about
#: this (64 MiB: 524 tokens of a 32,000-word vocabulary in float32, 130 of a 128,256-word one),
#: divided by the number of chunk-sized buffers the options need (softcap, and z-loss or
#: return_lse, keep one more each), and never more tokens than there are.
CHUNK_BYTES = 64 << 20


def default_chunk_size(n_tokens: int, n_classes: int, itemsize: int, buffers: int = 1) -> int:
    """Tokens per chunk: ``CHUNK_BYTES // (V * itemsize * buffers)``, a multiple of 16 where
    that is at least 16, at least 1 and at most ``n_tokens`` (``itemsize`` is the compute
    dtype's: 4 for 16-bit inputs, which are computed in float32)."""
    rows = CHUNK_BYTES // max(1, n_classes * itemsize * buffers)
    if rows >= 16:
        rows -= rows % 16
    return max(1, min(max(1, n_tokens), rows))


@dataclass(slots=True)
class LinearCrossEntropyCall:
    """A validated linear cross-entropy call (never modified once built)."""

    xp: ModuleType
    #: The tokens as ``(N, d)`` (an unbatched ``(d,)`` input is one token).
    input: Array
    linear_weight: Array  # (V, d)
    linear_bias: Array | None  # (V,)
    #: ``(N,)`` class indices, or ``(N, V)`` class probabilities.
    target: Array
    weight: Array | None  # (V,) class weights
    #: The index targets' ignored value: -100 where the caller gave None (PyTorch's default).
    ignore_index: int
    reduction: str
    label_smoothing: float
    z_loss: float
    softcap: float | None
    return_lse: bool
    validate: bool
    probabilities: bool
    n_tokens: int
    n_classes: int
    #: The caller's shapes: the loss's for ``'none'`` (and the lse's), the input's.
    loss_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    chunk_size: int
    dtype: Any

    @property
    def ignore_option(self) -> int | None:
        """``ignore_index`` as the caller may pass it again to make this call (None for
        class probabilities, which refuse any other)."""
        return None if self.probabilities else self.ignore_index


def _bits(xp: ModuleType, dtype: Any) -> int:
    try:
        return int(xp.finfo(dtype).bits)
    except (TypeError, ValueError, AttributeError):  # ml_dtypes bfloat16 on NumPy, CuPy
        return np.dtype(dtype).itemsize * 8


def _check_real(name: str, value: object) -> float:
    if not _is_real_scalar(value):
        raise TypeError(f"{name} must be a real number, got {type_name(value)}")
    return as_float(name, value)


def check_linear_ignore_index(ignore_index: object) -> int:
    """``ignore_index`` of the head: an int, or None (PyTorch's default), which is -100 for
    index targets."""
    return check_ignore_index(-100 if ignore_index is None else ignore_index)


def _check_options(z_loss: object, softcap: object, chunk_size: object
                   ) -> tuple[float, float | None, int | None]:
    z = _check_real("z_loss", z_loss)
    if not (math.isfinite(z) and z >= 0):
        raise ValueError(f"z_loss must be finite and >= 0, got {z!r}")
    cap = None
    if softcap is not None:
        cap = _check_real("softcap", softcap)
        if not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"softcap must be None or a finite number > 0, got {cap!r}")
    size = None
    if chunk_size is not None:
        if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(
                chunk_size, (int, np.integer)):
            raise TypeError(f"chunk_size must be None or an int, got {type_name(chunk_size)}")
        size = int(chunk_size)
        if size < 1:
            raise ValueError(f"chunk_size must be >= 1 (tokens per chunk), got {size}")
    return z, cap, size


def linear_cross_entropy_call(
    input: Array,
    linear_weight: Array,
    target: Array,
    *,
    linear_bias: Array | None,
    weight: Array | None,
    reduction: object,
    ignore_index: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
    return_lse: object,
    chunk_size: object,
    validate: object,
) -> LinearCrossEntropyCall:
    """Check every argument of a linear cross-entropy function; return the validated call."""
    reduction = check_reduction(reduction)
    ignore_given = ignore_index is not None
    ignore_index = check_linear_ignore_index(ignore_index)
    label_smoothing = check_label_smoothing(label_smoothing)
    validate = check_flag("validate", validate)
    return_lse = check_flag("return_lse", return_lse)
    z, cap, size = _check_options(z_loss, softcap, chunk_size)

    arrays = {"input": input, "linear_weight": linear_weight, "target": target}
    if linear_bias is not None:
        arrays["linear_bias"] = linear_bias
    if weight is not None:
        arrays["weight"] = weight
    xp = _namespace(arrays)
    validate = _value_checks(validate, arrays)
    _require_floating(xp, "input", input)

    input_shape, weight_shape = _shape(input), _shape(linear_weight)
    if len(input_shape) == 0:
        raise ValueError("input must have at least 1 dimension: (d,) or (..., d), the features "
                         "last")
    if len(weight_shape) != 2:
        raise ValueError(f"linear_weight must have shape (V, d), got {weight_shape}")
    n_classes, in_features = weight_shape
    if input_shape[-1] != in_features:
        raise ValueError(f"input's last dimension ({input_shape[-1]}) must equal "
                         f"linear_weight's second ({in_features}): input is (..., d) and "
                         "linear_weight (V, d)")
    for name, array in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if array is not None and array.dtype != input.dtype:
            raise TypeError(f"{name} must have the input's dtype {input.dtype}, "
                            f"got {array.dtype}")
    if linear_bias is not None and _shape(linear_bias) != (n_classes,):
        raise ValueError(f"linear_bias must have shape (V,) = ({n_classes},), got "
                         f"{_shape(linear_bias)}")

    loss_shape = input_shape[:-1]
    n_tokens = math.prod(loss_shape)
    target_shape = _shape(target)
    probabilities = _is_floating(xp, target.dtype)
    if probabilities:
        if target_shape != (*loss_shape, n_classes):
            raise ValueError(
                f"a floating target holds class probabilities and must have the logits' shape "
                f"(..., V) = {(*loss_shape, n_classes)}, got {target_shape}; for class "
                "indices use an integer dtype")
        if target.dtype != input.dtype:
            raise TypeError(f"class probabilities must have the input's dtype {input.dtype}, "
                            f"got {target.dtype}")
        if ignore_given:
            # PyTorch's F.linear_cross_entropy refuses any ignore_index here, -100 included
            # (its default is None, which cross_entropy's -100 cannot tell apart).
            raise ValueError(
                f"ignore_index={ignore_index} cannot be given with class-probability "
                "(floating) targets: leave it at its default, None")
        target2 = xp.reshape(target, (n_tokens, n_classes))
    elif _is_integer(xp, target.dtype):
        if target_shape != loss_shape and not (loss_shape == () and target_shape == (1,)):
            raise ValueError(f"target with shape {target_shape} does not match input with shape "
                             f"{input_shape}; expected the input's shape without its last "
                             f"dimension, {loss_shape}")
        target2 = xp.reshape(target, (n_tokens,))
    else:
        raise TypeError("target must have an integer dtype (class indices) or a real floating "
                        f"dtype (class probabilities), got {target.dtype}")
    if weight is not None:
        check_class_weight(weight, n_classes, input)

    input2 = xp.reshape(input, (n_tokens, in_features))
    itemsize = max(4, _bits(xp, input.dtype) // 8)  # 16-bit inputs compute in float32
    # The chunk-sized buffers a pass keeps: the logits, and one more each for the softcap's
    # tanh and the lse's exponentials (z-loss or return_lse).
    buffers = 1 + (cap is not None) + (z != 0.0 or return_lse)
    chunk = size if size is not None else default_chunk_size(n_tokens, n_classes, itemsize,
                                                             buffers)
    return LinearCrossEntropyCall(
        xp=xp, input=input2, linear_weight=linear_weight, linear_bias=linear_bias,
        target=target2, weight=weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z, softcap=cap, return_lse=return_lse,
        validate=validate, probabilities=probabilities, n_tokens=n_tokens,
        n_classes=n_classes, loss_shape=loss_shape, input_shape=input_shape,
        target_shape=target_shape, chunk_size=chunk, dtype=input.dtype)
