"""Any elementwise loss on CuPy arrays: fused kernels generated from its declaration.

The declaration's math, traced by :class:`~arrayloss._elementwise.trace.SourceOps`, is the
body of CuPy ``ElementwiseKernel`` objects, one per kind of pass, built by a memoized factory
(:func:`elementwise_kernel`) for each flag setting, present weights and compute type:

* ``'none'``: one pass writing the losses;
* ``'mean'``, ``'sum'`` and the extra reductions: one pass writing per-block partial sums,
  then the deterministic second pass of :mod:`.reduce`;
* backward: one pass writing only the requested gradients;
* loss and gradient: one pass writing the partials and the gradients.

Each argument is read once per element, converted to the compute type ``A`` once; the value
checks (ranges) are fused into the same pass and record the first invalid index in a flag
that a checked call reads once.  A gradient whose argument spans the loss is written in its
final dtype; one whose argument was broadcast is written to a compute-dtype array of the
loss's shape and summed back.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import cupy
import numpy as np

from .._elementwise import generic
from .._elementwise.call import ElementwiseCall
from .._elementwise.spec import ElementwiseLoss
from .._elementwise.trace import SourceOps
from . import reduce
from ._common import compute_dtype
from ._kernels import NO_INVALID, REDUCE_BLOCK, block_partial, kernel_factory, preamble
from .gaussian_nll import _sum_to as sum_to

__all__ = ["ELEMENTWISE_MATH", "cupy_backend", "elementwise_kernel", "kernel_source"]

Array = Any

#: The functions the traced math calls, with NumPy's NaN rules (but sign's, PyTorch's: 0 at
#: NaN), for float and double, on the device and (for the CPU harness) on the host.
ELEMENTWISE_MATH = r"""
namespace al_ew {
#define AL_EW_UNARY(NAME, FLOAT, DOUBLE) \
    AL_HD float NAME(float x) { return FLOAT(x); } \
    AL_HD double NAME(double x) { return DOUBLE(x); }
AL_EW_UNARY(log, logf, ::log)
AL_EW_UNARY(log1p, log1pf, ::log1p)
AL_EW_UNARY(exp, expf, ::exp)
AL_EW_UNARY(abs, fabsf, ::fabs)
AL_EW_UNARY(sqrt, sqrtf, ::sqrt)
AL_EW_UNARY(tanh, tanhf, ::tanh)
#undef AL_EW_UNARY
// sign(0) and sign(NaN) are 0, as PyTorch's (NumPy's sign(NaN) is NaN).
template <typename T> AL_HD T sign(T x) { return x > T(0) ? T(1) : x < T(0) ? T(-1) : T(0); }
// NaN if either is NaN, as NumPy's maximum and minimum.
template <typename T> AL_HD T maximum(T x, T y) { return (x != x || x > y) ? x : y; }
template <typename T> AL_HD T minimum(T x, T y) { return (x != x || x < y) ? x : y; }
}  // namespace al_ew
"""

#: Type placeholders of the arguments, in declaration order, and of their gradients.
_ARGUMENT_TYPES = ("X", "T", "W", "Q", "S", "U")
_GRADIENT_TYPES = ("J", "K", "L", "M")

_KINDS = ("none", "partials", "backward", "loss_and_grad")


def _trace(spec: ElementwiseLoss, present: tuple[str, ...], flags: tuple[tuple[str, bool], ...],
           want_loss: bool, want_gradients: bool) -> tuple[list[str], str | None, list[str]]:
    """The body's lines, the loss's local (or None) and the gradients' locals (declaration
    order of the differentiable arguments; "" for one not present)."""
    ops = SourceOps()
    arrays = {name: ops.value(f"A(in_{name})") for name in present}
    options: dict[str, Any] = dict(flags)
    for option in spec.options:
        if not option.is_flag:
            options[option.name] = ops.value(f"A(opt_{option.name})")
    loss = spec.forward(ops, **arrays, **options).code if want_loss else None
    grads: list[str] = []
    if want_gradients:
        upstream = ops.value("upstream")
        traced = spec.gradients(ops, upstream, **arrays, **options)
        # Every gradient is in the source (a function computing one is called here): the
        # kernel's `want` bits choose at run time, and the compiler drops what no bit needs.
        grads = [(value() if callable(value := traced[name]) else value).code
                 if name in present else "" for name in spec.gradient_names]
    return ops.lines, loss, grads


def _check_lines(spec: ElementwiseLoss, present: tuple[str, ...]) -> list[str]:
    lines = []
    for position, check in enumerate(spec.checks):
        if check.argument in present:
            value = f"A(in_{check.argument})"
            lines.append(f"if (check && !({value} >= A({check.low!r}) && {value} <= "
                         f"A({check.high!r}))) al::record_invalid(&invalid[{position}], i);")
    return lines


def kernel_source(spec: ElementwiseLoss, kind: str, present: tuple[str, ...],
                  flags: tuple[tuple[str, bool], ...], compute: str,
                  upstream_array: bool = False) -> dict[str, Any]:
    """The ``ElementwiseKernel`` arguments of one kind of pass (see the module docstring)."""
    if kind not in _KINDS:
        raise ValueError(kind)
    types = dict(zip((a.name for a in spec.arguments), _ARGUMENT_TYPES, strict=False))
    inputs = [f"{types[name]} in_{name}" for name in present]
    if kind == "backward":
        inputs.append("G g" if upstream_array else "float64 g")
    elif kind == "loss_and_grad":
        inputs.append("float64 g")
    inputs += [f"float64 opt_{o.name}" for o in spec.options if not o.is_flag]
    if kind == "backward":
        inputs.append("float64 divisor")
    if kind in ("backward", "loss_and_grad"):
        inputs.append("int32 want")
    inputs.append("int32 check")

    want_loss = kind != "backward"
    want_gradients = kind in ("backward", "loss_and_grad")
    lines, loss, grads = _trace(spec, present, flags, want_loss, want_gradients)
    body = _check_lines(spec, present)
    if kind == "backward":
        body.append("const A upstream = A(g) / A(divisor);")
    elif kind == "loss_and_grad":
        body.append("const A upstream = A(g);")
    body += lines

    outputs = []
    loop_prep = after_loop = None
    if kind == "none":
        outputs.append("R loss")
        body.append(f"loss = R({loss});")
    elif kind in ("partials", "loss_and_grad"):
        outputs.append("raw P partials")
        body.append(f"thread_total += {loss};")
        loop_prep = "A thread_total = 0;"
        after_loop = block_partial("thread_total", "partials")
    for position, (name, code) in enumerate(zip(spec.gradient_names, grads, strict=False)):
        placeholder = _GRADIENT_TYPES[position]
        outputs.append(f"raw {placeholder} grad_{name}")
        if code:
            body.append(f"if (want & {1 << position}) grad_{name}[i] = {placeholder}({code});")
    outputs.append("raw uint64 invalid")
    arguments: dict[str, Any] = {
        "in_params": ", ".join(inputs),
        "out_params": ", ".join(outputs),
        "operation": "\n".join(body),
        "name": f"arrayloss_{spec.name}_{kind}",
        "preamble": preamble(compute) + ELEMENTWISE_MATH,
    }
    if loop_prep is not None:
        arguments["loop_prep"] = loop_prep
        arguments["after_loop"] = after_loop
    return arguments


@kernel_factory
def elementwise_kernel(spec: ElementwiseLoss, kind: str, present: tuple[str, ...],
                       flags: tuple[tuple[str, bool], ...], compute: str,
                       upstream_array: bool = False) -> cupy.ElementwiseKernel:
    """The kernel of one kind of pass of ``spec`` (memoized: one object per arguments)."""
    return cupy.ElementwiseKernel(**kernel_source(spec, kind, present, flags, compute,
                                                  upstream_array))


# ------------------------------------------------------------------ the backend


class _Gradients:
    """The kernel's gradient outputs and how each becomes the caller's gradient."""

    def __init__(self, spec: ElementwiseLoss, call: ElementwiseCall,
                 wanted: frozenset[str]) -> None:
        compute = compute_dtype(call.dtype)
        self.spec, self.call, self.want = spec, call, 0
        self.arrays: list[cupy.ndarray] = []
        for position, name in enumerate(spec.gradient_names):
            if name not in wanted:
                self.arrays.append(cupy.empty(1, dtype=compute))  # never written
                continue
            self.want |= 1 << position
            argument = call.arrays[name]
            spans_loss = tuple(argument.shape) == call.loss_shape
            self.arrays.append(cupy.empty(call.loss_shape,
                                          dtype=argument.dtype if spans_loss else compute))

    def results(self) -> tuple[Array | None, ...]:
        grads: list[Array | None] = []
        for position, (name, array) in enumerate(zip(self.spec.gradient_names, self.arrays,
                                                     strict=True)):
            if not self.want & (1 << position):
                grads.append(None)
                continue
            argument = self.call.arrays[name]
            if array.dtype != argument.dtype or array.shape != tuple(argument.shape):
                array = sum_to(array, tuple(argument.shape)).astype(argument.dtype)
            grads.append(array)
        return tuple(grads)


class CupyBackend:
    """The fused-kernel backend of one elementwise loss."""

    def __init__(self, spec: ElementwiseLoss) -> None:
        self.spec = spec

    def _setup(self, call: ElementwiseCall) -> tuple[tuple[str, ...], tuple[Any, ...], Any,
                                                     list[float], bool]:
        present = tuple(a.name for a in self.spec.arguments if a.name in call.arrays)
        flags = tuple((o.name, bool(call.options[o.name])) for o in self.spec.options
                      if o.is_flag)
        numbers = [float(call.options[o.name]) for o in self.spec.options if not o.is_flag]
        checked = call.validate and any(c.argument in call.arrays for c in self.spec.checks)
        compute = "double" if compute_dtype(call.dtype) == np.float64 else "float"
        return present, flags, compute, numbers, checked

    def _flag(self, checked: bool) -> cupy.ndarray:
        count = max(len(self.spec.checks), 1)
        if checked:
            return cupy.full((count,), np.uint64(NO_INVALID), dtype=cupy.uint64)
        return cupy.empty((count,), dtype=cupy.uint64)

    def _raise_if_invalid(self, flag: cupy.ndarray, checked: bool) -> None:
        if not checked:
            return
        recorded = flag.get()  # the one device-to-host read of a checked call
        for position, check in enumerate(self.spec.checks):
            if int(recorded[position]) != NO_INVALID:
                raise generic.range_error(self.spec, check.argument)

    def _mode_and_divisor(self, call: ElementwiseCall) -> tuple[int, float]:
        if call.reduction == "sum":
            return reduce.MODE_SUM, 1.0
        count = generic.divisor(self.spec, call)
        return reduce.MODE_MEAN, float(count) if count else math.nan

    def forward(self, call: ElementwiseCall) -> Array:
        """The loss, reduced as ``call.reduction`` says."""
        present, flags, compute, numbers, checked = self._setup(call)
        inputs = [call.arrays[name] for name in present]
        with call.input.device:
            flag = self._flag(checked)
            if call.reduction == "none":
                loss = cupy.empty(call.loss_shape, dtype=call.dtype)
                elementwise_kernel(self.spec, "none", present, flags, compute)(
                    *inputs, *numbers, int(checked), loss, flag)
            else:
                partials = reduce.empty_partials(call.numel, compute_dtype(call.dtype))
                elementwise_kernel(self.spec, "partials", present, flags, compute)(
                    *inputs, *numbers, int(checked), partials, flag, block_size=REDUCE_BLOCK)
                mode, divisor = self._mode_and_divisor(call)
                totals = reduce.finish(partials, call.numel, mode, divisor=divisor)
                loss = reduce.as_result(totals, call.dtype)
            self._raise_if_invalid(flag, checked)
        return loss

    def backward(self, call: ElementwiseCall, grad_output: Array | float,
                 wanted: frozenset[str]) -> tuple[Array | None, ...]:
        """The gradients named in ``wanted``, in one pass."""
        present, flags, compute, numbers, checked = self._setup(call)
        inputs = [call.arrays[name] for name in present]
        divisor = 1.0 if call.reduction == "none" else self._mode_and_divisor(call)[1]
        upstream_array = not isinstance(grad_output, float)
        with call.input.device:
            flag = self._flag(checked)
            outputs = _Gradients(self.spec, call, wanted)
            elementwise_kernel(self.spec, "backward", present, flags, compute, upstream_array)(
                *inputs, grad_output, *numbers, divisor, outputs.want, int(checked),
                *outputs.arrays, flag)
            self._raise_if_invalid(flag, checked)
            return outputs.results()

    def loss_and_grad(self, call: ElementwiseCall, wanted: frozenset[str]
                      ) -> tuple[Array, tuple[Array | None, ...]]:
        """The reduced loss and the gradients named in ``wanted``, in one pass."""
        present, flags, compute, numbers, checked = self._setup(call)
        inputs = [call.arrays[name] for name in present]
        mode, divisor = self._mode_and_divisor(call)
        upstream = 1.0 if mode == reduce.MODE_SUM else 1.0 / divisor
        with call.input.device:
            flag = self._flag(checked)
            outputs = _Gradients(self.spec, call, wanted)
            partials = reduce.empty_partials(call.numel, compute_dtype(call.dtype))
            elementwise_kernel(self.spec, "loss_and_grad", present, flags, compute)(
                *inputs, upstream, *numbers, outputs.want, int(checked), partials,
                *outputs.arrays, flag, block_size=REDUCE_BLOCK)
            totals = reduce.finish(partials, call.numel, mode, divisor=divisor)
            self._raise_if_invalid(flag, checked)
            return reduce.as_result(totals, call.dtype), outputs.results()


@functools.cache
def cupy_backend(spec: ElementwiseLoss) -> CupyBackend:
    """The CuPy backend of ``spec`` (one per loss)."""
    return CupyBackend(spec)
