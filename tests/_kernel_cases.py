"""The fused CUDA kernels' test cases, shared by the GPU run and the CPU harness.

``test_cupy_gpu.py`` runs them on a real device and ``test_hostcuda.py`` through the host
harness (``tests/hostcuda``), each with a :class:`Device` adapter; one definition, so the two
cannot drift apart.  Every case checks arrayloss's CuPy path against float64 formulas written
here, independently of arrayloss, on the exact (rounded) values the device saw.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import arrayloss as al

DTYPES = ("float16", "bfloat16", "float32", "float64")
TARGET_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
REDUCTIONS = ("none", "mean", "sum")
# Relative to the largest magnitude of the reference.  float32 and below compute in float32
# (fused multiply-adds on the device), so a few float32 ulps of a sum of thousands of terms.
TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5, "float64": 1e-12}


def numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclass
class Device:
    """How a case reaches the arrays of one runner (a GPU, or the host harness)."""

    asarray: Callable[[np.ndarray], Any]
    asnumpy: Callable[[Any], np.ndarray]
    #: Runs a callable and fails if it synchronised with the host.
    assert_no_host_sync: Callable[[Callable[[], Any]], None]

    def put(self, values: np.ndarray, dtype: str | None = None) -> Any:
        return self.asarray(values.astype(numpy_dtype(dtype)) if dtype else values)

    def exact(self, array: Any) -> np.ndarray:
        """The device array's values in float64 (the reference's inputs)."""
        return self.asnumpy(array).astype(np.float64)


class Checks:
    """Counts the assertions a test made, for the harness's report."""

    count = 0


def assert_close(got: Any, want: np.ndarray, dtype: str, device: Device, what: str) -> None:
    """One output against its float64 reference: shape, dtype and values."""
    assert got is not None, f"{what}: missing"
    assert tuple(got.shape) == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.dtype(got.dtype) == numpy_dtype(dtype), f"{what}: dtype {got.dtype}"
    with np.errstate(over="ignore"):  # the result is rounded once to its dtype: inf past max
        want = np.asarray(want).astype(numpy_dtype(dtype)).astype(np.float64)
    rtol = TOLERANCE[dtype]
    scale = np.abs(want[np.isfinite(want)]).max(initial=1.0)
    np.testing.assert_allclose(device.exact(got), want, rtol=rtol, atol=rtol * scale,
                               equal_nan=True, err_msg=what)
    Checks.count += 1


# ------------------------------------------------------------------ float64 references


def _sum_to(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    lead = values.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + a for a, size in enumerate(shape)
                                      if size == 1 and values.shape[lead + a] != 1)
    return values.sum(axis=axes, keepdims=True).reshape(shape) if axes else values


def gaussian_reference(x: np.ndarray, t: np.ndarray, v: np.ndarray | float, *, full: bool,
                       eps: float, reduction: str, upstream: Any = 1.0,
                       compute: Any = np.float64, log_var: bool = False,
                       beta: float = 0.0) -> tuple[Any, ...]:
    """(loss, grad_input, grad_target, grad_var), PyTorch's formulas in its operation order.

    ``compute`` is float64 by default; float32 reproduces PyTorch's float32 arithmetic where
    its rounding and overflow are the contract (subnormal variances).
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        return _gaussian_reference(x, t, v, full=full, eps=eps, reduction=reduction,
                                   upstream=upstream, compute=np.dtype(compute).type,
                                   log_var=log_var, beta=beta)


def _gaussian_reference(x: np.ndarray, t: np.ndarray, v: np.ndarray | float, *, full: bool,
                        eps: float, reduction: str, upstream: Any,
                        compute: Any, log_var: bool, beta: float) -> tuple[Any, ...]:
    x, t = x.astype(compute), t.astype(compute)
    fitted = np.asarray(v, dtype=compute)
    if isinstance(v, np.ndarray) and x.ndim and v.shape == x.shape[:-1]:
        fitted = fitted[..., None]
    diff = x - t
    # The variance form, max(var, eps), or the log-variance s (loss 0.5 (s + d^2 exp(-s))).
    term = fitted if log_var else np.maximum(fitted, compute(eps))
    if log_var:
        loss = compute(0.5) * (term + diff * diff * np.exp(-term))
    else:
        loss = compute(0.5) * (np.log(term) + diff * diff / term)
    if full:
        loss = loss + compute(0.5 * math.log(2 * math.pi))
    # beta-NLL: each element weighted by var**beta, a constant for the gradients.
    weight = (np.exp(compute(beta) * term) if log_var else term ** compute(beta)) if beta else 1
    loss = loss * weight
    g = np.asarray(upstream, dtype=np.float64)
    if reduction == "mean":
        g = g / loss.size if loss.size else np.full((), np.nan)
    g = np.broadcast_to(g.astype(compute), loss.shape) * weight
    half = compute(0.5) * g
    if log_var:
        grad_input = g * diff * np.exp(-term)
        grad_var = half * (compute(1) - diff * diff * np.exp(-term))
    else:
        grad_input = (half / term) * (compute(2) * diff)
        grad_var = half / term + (-half) * ((diff * diff / term) / term)
    loss64 = loss.astype(np.float64)
    reduced = loss64 if reduction == "none" else (
        (loss64.sum() / loss64.size if loss64.size else np.nan) if reduction == "mean"
        else loss64.sum())
    var_grad = None
    if isinstance(v, np.ndarray):
        var_grad = _sum_to(grad_var.astype(np.float64), np.shape(fitted)).reshape(v.shape)
    return (np.asarray(reduced), _sum_to(grad_input.astype(np.float64), x.shape),
            _sum_to(-grad_input.astype(np.float64), t.shape), var_grad)


def nll_reference(x: np.ndarray, t: np.ndarray, w: np.ndarray | None, *, ignore_index: int,
                  reduction: str, upstream: Any = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(loss, grad_input) in float64, PyTorch's formulas (CPU rule for 1-D input)."""
    unbatched = x.ndim == 1
    batched_x = x[None] if unbatched else x
    batched_t = t.reshape(1) if unbatched else t
    n_classes = batched_x.shape[1]
    targets = batched_t.astype(object)  # exact for uint64
    ignored = targets == ignore_index
    classes = np.where(ignored, 0, targets).astype(np.int64)
    picked = np.take_along_axis(batched_x, classes[:, None], axis=1)[:, 0] if n_classes else \
        np.zeros(classes.shape)
    weights = (np.ones(n_classes) if w is None else w)[classes] if n_classes else \
        np.zeros(classes.shape)
    weights = np.where(ignored, 0.0, weights)
    losses = -weights * picked
    total = weights.sum()
    if reduction == "none":
        loss = losses.reshape(t.shape) if not unbatched else losses.reshape(())
        g = np.asarray(upstream, np.float64)
        g = g.reshape(batched_t.shape) if g.ndim else np.broadcast_to(g, batched_t.shape)
        coefficient = -weights * g
    elif reduction == "sum":
        loss, coefficient = losses.sum(), weights * -float(upstream)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = losses.sum() / total
            coefficient = weights * -(float(upstream) / total)
    grad = np.zeros(batched_x.shape)
    if n_classes:
        np.put_along_axis(grad, classes[:, None], np.where(ignored, 0.0, coefficient)[:, None],
                          axis=1)
    return np.asarray(loss), grad.reshape(x.shape)


# ------------------------------------------------------------------ running one call


def _default_upstream(device: Device, dtype: str, reduction: str, loss_shape: tuple[int, ...],
                      scalar: float) -> Any:
    """A number for a reduced loss, an array of varied values for ``'none'``."""
    if reduction != "none":
        return scalar
    return device.put(np.linspace(-1, 2, math.prod(loss_shape)).reshape(loss_shape), dtype)


def check_gaussian(device: Device, dtype: str, x: Any, t: Any, v: Any, *, reduction: str,
                   full: bool = False, eps: float = 1e-6, upstream: Any = None,
                   wrts: tuple[tuple[str, ...], ...] = (("input", "target", "var"),),
                   compute: Any = np.float64, log_var: bool = False, beta: float = 0.0) -> None:
    """Forward, backward (each ``wrt``) and, for a scalar loss, loss-and-grad."""
    options = {"reduction": reduction, "full": full, "eps": eps, "log_var": log_var,
               "beta": beta}
    options_reference = {**options, "compute": compute}
    host_v = v if isinstance(v, float) else device.exact(v)
    want = gaussian_reference(device.exact(x), device.exact(t), host_v, **options_reference)
    assert_close(al.gaussian_nll_loss(x, t, v, **options), want[0], dtype, device, "loss")
    if upstream is None:
        upstream = _default_upstream(device, dtype, reduction, want[0].shape, 0.5)
    g = upstream if isinstance(upstream, float) else device.exact(upstream)
    want = gaussian_reference(device.exact(x), device.exact(t), host_v, upstream=g,
                              **options_reference)
    for wrt in wrts:
        grads = al.gaussian_nll_loss_backward(upstream, x, t, v, wrt=wrt, **options)
        for name, got, expected in zip(("input", "target", "var"), grads, want[1:],
                                       strict=True):
            if name in wrt and expected is not None:
                assert_close(got, expected, dtype, device, f"grad_{name} wrt={wrt}")
            else:
                assert got is None
    if reduction != "none":
        want = gaussian_reference(device.exact(x), device.exact(t), host_v, **options_reference)
        loss, grads = al.gaussian_nll_loss_and_grad(x, t, v, **options)
        assert_close(loss, want[0], dtype, device, "and_grad loss")
        for name, got, expected in zip(("input", "target", "var"), grads, want[1:],
                                       strict=True):
            if expected is not None:
                assert_close(got, expected, dtype, device, f"and_grad grad_{name}")


def check_nll(device: Device, dtype: str, x: Any, t: Any, w: Any = None, *, reduction: str,
              ignore_index: int = -100, upstream: Any = None) -> None:
    """Forward, backward and, for a scalar loss, loss-and-grad."""
    options = {"reduction": reduction, "ignore_index": ignore_index}
    host_w = None if w is None else device.exact(w)
    host_t = device.asnumpy(t)
    want = nll_reference(device.exact(x), host_t, host_w, **options)
    assert_close(al.nll_loss(x, t, w, **options), want[0], dtype, device, "loss")
    if upstream is None:
        upstream = _default_upstream(device, dtype, reduction, want[0].shape, 0.75)
    g = upstream if isinstance(upstream, float) else device.exact(upstream)
    want = nll_reference(device.exact(x), host_t, host_w, upstream=g, **options)
    assert_close(al.nll_loss_backward(upstream, x, t, w, **options), want[1], dtype, device,
                 "grad_input")
    if reduction != "none":
        want = nll_reference(device.exact(x), host_t, host_w, **options)
        loss, grad = al.nll_loss_and_grad(x, t, w, **options)
        assert_close(loss, want[0], dtype, device, "and_grad loss")
        assert_close(grad, want[1], dtype, device, "and_grad grad_input")


# ------------------------------------------------------------------ the cases

GAUSSIAN_VAR_SHAPES = {"full": (300, 33), "rows": (300, 1), "one fewer": (300,),
                       "columns": (1, 33), "scalar": None}


def case_gaussian(device: Device, dtype: str, var_kind: str, reduction: str) -> None:
    rng = np.random.default_rng(0)
    x = device.put(rng.normal(size=(300, 33)), dtype)
    t = device.put(rng.normal(size=(300, 33)), dtype)
    shape = GAUSSIAN_VAR_SHAPES[var_kind]
    v: Any = 0.75 if shape is None else device.put(rng.uniform(0, 2, shape), dtype)
    wrts = (("input", "target", "var"), ("input",), ("var",), ("target", "var"))
    check_gaussian(device, dtype, x, t, v, reduction=reduction, full=True, eps=1e-3, wrts=wrts)


def case_gaussian_variant(device: Device, dtype: str, var_kind: str, log_var: bool,
                          beta: float) -> None:
    """The log-variance form and beta-NLL, every reduction."""
    rng = np.random.default_rng(10)
    x = device.put(rng.normal(size=(300, 33)), dtype)
    t = device.put(rng.normal(size=(300, 33)), dtype)
    shape = GAUSSIAN_VAR_SHAPES[var_kind]
    values = rng.normal(size=shape) if log_var else rng.uniform(0, 2, shape)
    v: Any = (-0.3 if log_var else 0.75) if shape is None else device.put(values, dtype)
    for reduction in REDUCTIONS:
        check_gaussian(device, dtype, x, t, v, reduction=reduction, full=True, eps=1e-3,
                       log_var=log_var, beta=beta, wrts=(("input", "target", "var"), ("var",)))


def case_gaussian_broadcast_target_0d_upstream(device: Device) -> None:
    rng = np.random.default_rng(1)
    x = device.put(rng.normal(size=(64, 8)), "float32")
    t = device.put(rng.normal(size=(3, 64, 8)), "float32")
    v = device.put(rng.uniform(0.5, 2, (64, 1)), "float32")
    g = device.put(np.array(0.25), "float32")
    for reduction in REDUCTIONS:
        check_gaussian(device, "float32", x, t, v, reduction=reduction,
                       upstream=g if reduction != "none" else None)


#: The contiguous kernels' layouts (``arrayloss/_cupy/gaussian_nll_contiguous.py``): shapes
#: whose rows and sizes are whole vector chunks for every dtype (48 columns), and odd ones
#: (partial chunks: a last partial chunk of the flat kernels, partial row chunks).
CONTIGUOUS_SHAPES = {"whole": (64, 48), "odd": (37, 29)}
#: Var kinds of the contiguous kernels: flat (full, scalar) and rows (rows, one fewer).
CONTIGUOUS_VARS = ("full", "rows", "one fewer", "scalar")


def put_offset(device: Device, values: np.ndarray, dtype: str) -> Any:
    """``values`` on the device one element past an allocation's start: a C-contiguous
    view that no vector load may read (its address is not a multiple of 16)."""
    padded = np.concatenate([np.zeros(1), values.reshape(-1)])
    return device.put(padded, dtype)[1:].reshape(values.shape)


def _contiguous_arrays(device: Device, dtype: str, shape_kind: str, var_kind: str,
                       aligned: bool, log_var: bool = False) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(20)
    shape = CONTIGUOUS_SHAPES[shape_kind]
    var_shape = {"full": shape, "rows": (shape[0], 1), "one fewer": (shape[0],),
                 "scalar": None}[var_kind]
    put = device.put if aligned else functools.partial(put_offset, device)
    x = put(rng.normal(size=shape), dtype)
    t = put(rng.normal(size=shape), dtype)
    if var_shape is None:
        return x, t, (-0.3 if log_var else 0.75)
    values = rng.normal(size=var_shape) if log_var else rng.uniform(0, 2, var_shape)
    return x, t, put(values, dtype)


def case_gaussian_contiguous(device: Device, dtype: str, shape_kind: str, var_kind: str,
                             aligned: bool) -> None:
    """Every reduction and gradient subset through the contiguous kernels, with vector
    loads (aligned) and without (an offset view), whole and partial chunks."""
    x, t, v = _contiguous_arrays(device, dtype, shape_kind, var_kind, aligned)
    wrts = (("input", "target", "var"), ("input",), ("var",), ("target", "var"))
    for reduction in REDUCTIONS:
        check_gaussian(device, dtype, x, t, v, reduction=reduction, full=True, eps=1e-3,
                       wrts=wrts)


def case_gaussian_contiguous_variant(device: Device, dtype: str, var_kind: str, log_var: bool,
                                     beta: float) -> None:
    """The log-variance form and beta-NLL through the vector kernels (whole chunks)."""
    x, t, v = _contiguous_arrays(device, dtype, "whole", var_kind, True, log_var)
    for reduction in REDUCTIONS:
        check_gaussian(device, dtype, x, t, v, reduction=reduction, full=True, eps=1e-3,
                       log_var=log_var, beta=beta, wrts=(("input", "target", "var"), ("var",)))


def case_gaussian_contiguous_upstream(device: Device) -> None:
    """A 0-d array upstream (read once per thread) and an offset upstream array of the
    loss's shape (the scalar-load kernels), for flat and row variances."""
    rng = np.random.default_rng(21)
    for var_kind in ("full", "rows"):
        x, t, v = _contiguous_arrays(device, "float32", "whole", var_kind, True)
        for reduction in ("mean", "sum"):
            check_gaussian(device, "float32", x, t, v, reduction=reduction,
                           upstream=device.put(np.array(0.25), "float32"))
        offset = put_offset(device, rng.uniform(-1, 2, CONTIGUOUS_SHAPES["whole"]), "float32")
        check_gaussian(device, "float32", x, t, v, reduction="none", upstream=offset)


def contiguous_results(device: Device, aligned: bool, var_kind: str) -> list[bytes]:
    """The bits of every entry point on one layout, aligned or as offset views (rows of
    whole chunks, which alone have vector row kernels; a flat size with a partial chunk)."""
    shape_kind = "whole" if var_kind == "rows" else "odd"
    x, t, v = _contiguous_arrays(device, "float32", shape_kind, var_kind, aligned)
    results = [al.gaussian_nll_loss(x, t, v), al.gaussian_nll_loss(x, t, v, reduction="none")]
    loss, grads = al.gaussian_nll_loss_and_grad(x, t, v)
    results += [loss, *grads, *al.gaussian_nll_loss_backward(0.5, x, t, v)]
    return [device.asnumpy(result).tobytes() for result in results if result is not None]


def case_gaussian_vector_and_scalar_loads_agree(device: Device) -> None:
    """The vector kernels and their scalar-load fallbacks give each thread the same elements
    in the same order: the same bits, repeatably."""
    for var_kind in ("full", "rows", "scalar"):
        vector = contiguous_results(device, True, var_kind)
        assert contiguous_results(device, True, var_kind) == vector, var_kind
        assert contiguous_results(device, False, var_kind) == vector, var_kind
        Checks.count += 1


def case_gaussian_contiguous_negative_variance(device: Device) -> None:
    """A negative variance in whole and partial chunks, flat and row layouts, aligned and
    not: an error when validated; unvalidated, PyTorch's values (the clamp to eps)."""
    for var_kind, aligned in itertools.product(("full", "rows"), (True, False)):
        x, t, v = _contiguous_arrays(device, "float32", "odd", var_kind, aligned)
        values = device.asnumpy(v).copy()
        values.reshape(-1)[[5, -1]] = -0.5  # one in a whole chunk, one in the last
        bad = (device.put if aligned else functools.partial(put_offset, device))(
            values, "float32")
        want_error = _numpy_error(al.gaussian_nll_loss, device.asnumpy(x), device.asnumpy(t),
                                  values)
        for call in (functools.partial(al.gaussian_nll_loss, reduction="none"),
                     al.gaussian_nll_loss, al.gaussian_nll_loss_and_grad,
                     functools.partial(al.gaussian_nll_loss_backward, 1.0)):
            with pytest.raises(type(want_error)) as got:
                call(x, t, bad)
            assert str(got.value) == str(want_error)
            Checks.count += 1
        want = gaussian_reference(device.exact(x), device.exact(t), device.exact(bad),
                                  full=False, eps=1e-6, reduction="none", upstream=1.0)
        assert_close(al.gaussian_nll_loss(x, t, bad, reduction="none", validate=False), want[0],
                     "float32", device, "unchecked loss")
        grads = al.gaussian_nll_loss_backward(1.0, x, t, bad, reduction="sum", validate=False)
        for name, got, expected in zip(("input", "target", "var"), grads, want[1:],
                                       strict=True):
            assert_close(got, expected, "float32", device, f"unchecked grad_{name}")


NLL_SHAPES = [(500, 10), (30, 100), (8, 5, 17, 9), (4, 3, 2, 5, 6), (37,)]


def case_gaussian_long_broadcast_var(device: Device, var_shape: tuple[int, int]) -> None:
    """A variance broadcast over many rows: its gradient is summed in two stages (groups of
    rows, then the groups), including a last group of fewer rows."""
    rng = np.random.default_rng(12)
    rows = 2 * 4096 + 1234
    x = device.put(rng.normal(size=(rows, 3)), "float32")
    t = device.put(rng.normal(size=(rows, 3)), "float32")
    v = device.put(rng.uniform(0.5, 2, var_shape), "float32")
    for reduction in ("mean", "sum"):
        check_gaussian(device, "float32", x, t, v, reduction=reduction)


def case_nll(device: Device, dtype: str, shape: tuple[int, ...], reduction: str) -> None:
    rng = np.random.default_rng(2)
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    x = device.put(rng.normal(size=shape), dtype)
    targets = rng.integers(0, n_classes, target_shape)
    if targets.ndim:
        targets.reshape(-1)[::5] = 3  # ignored
    t = device.put(targets)
    w = device.put(rng.uniform(0.2, 2, n_classes), dtype)
    for weight in (None, w):
        check_nll(device, dtype, x, t, weight, reduction=reduction, ignore_index=3)


def case_nll_target_dtype(device: Device, target_dtype: str) -> None:
    rng = np.random.default_rng(3)
    x = device.put(rng.normal(size=(1000, 7)), "float32")
    targets = rng.integers(0, 7, 1000)
    targets[::4] = 100
    t = device.put(targets.astype(target_dtype))
    for reduction in REDUCTIONS:
        check_nll(device, "float32", x, t, reduction=reduction, ignore_index=100)


def case_strided_inputs(device: Device) -> None:
    rng = np.random.default_rng(4)
    x = device.put(rng.normal(size=(64, 20)), "float32")[:, ::2]
    t = device.put(rng.normal(size=(20, 64)), "float32").T[:, ::2]
    v = device.put(rng.uniform(0.5, 2, (64, 10)), "float32")
    v_strided = device.put(rng.uniform(0.5, 2, (64, 3)), "float32")[:, 1:2]
    for reduction in REDUCTIONS:
        check_gaussian(device, "float32", x, t, v, reduction=reduction)
        check_gaussian(device, "float32", x, t, v_strided, reduction=reduction)
    logits = device.put(rng.normal(size=(10, 64)), "float32").T
    labels = device.put(rng.integers(0, 10, 128))[::2]
    spatial = device.put(rng.normal(size=(3, 5, 4, 6)), "float64").transpose(0, 1, 3, 2)
    spatial_labels = device.put(rng.integers(0, 5, (3, 6, 4)))
    for reduction in REDUCTIONS:
        check_nll(device, "float32", logits, labels, reduction=reduction)
        check_nll(device, "float64", spatial, spatial_labels, reduction=reduction)


def case_zero_d_and_empty(device: Device, reduction: str) -> None:
    rng = np.random.default_rng(5)
    # 0-d input, target and var.
    x0, t0, v0 = (device.put(np.array(value), "float32") for value in (0.5, -1.0, 2.0))
    check_gaussian(device, "float32", x0, t0, v0, reduction=reduction)
    check_gaussian(device, "float32", x0, t0, 1.5, reduction=reduction)
    # Empty inputs.
    for shape in [(0,), (0, 3), (2, 0)]:
        x = device.put(np.zeros(shape), "float32")
        v = device.put(np.ones(shape), "float32")
        check_gaussian(device, "float32", x, x, v, reduction=reduction)
    for shape in [(0, 3), (2, 3, 0, 4)]:
        x = device.put(rng.normal(size=shape), "float32")
        t = device.put(np.zeros((shape[0], *shape[2:]), np.int64))
        check_nll(device, "float32", x, t, reduction=reduction)
    # Unbatched NLL: a (C,) input and a 0-d target.
    check_nll(device, "float32", device.put(rng.normal(size=7), "float32"),
              device.put(np.array(4)), reduction=reduction)


#: Sizes around the block sizes (128 elementwise, 256 reduction, 1024 finish) and beyond.
SIZES = (1, 2, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 65_537, 300_001)


def case_size(device: Device, size: int) -> None:
    rng = np.random.default_rng(size)
    x = device.put(rng.normal(size=size), "float32")
    t = device.put(rng.normal(size=size), "float32")
    v = device.put(rng.uniform(0.5, 2, size), "float32")
    for reduction in ("mean", "sum"):
        check_gaussian(device, "float32", x, t, v, reduction=reduction)
    rows = max(size // 3, 1)
    logits = device.put(rng.normal(size=(rows, 3)), "float64")
    labels = device.put(rng.integers(0, 3, rows))
    check_nll(device, "float64", logits, labels, reduction="mean")


def case_float16_beyond_65504_elements(device: Device) -> None:
    n = 300_000
    x = device.put(np.full((n, 2), -1.0), "float16")
    t = device.put(np.zeros(n, np.int64))
    check_nll(device, "float16", x, t, reduction="mean")
    mean = device.put(np.full(n, 0.5), "float16")
    check_gaussian(device, "float16", mean, device.put(np.zeros(n), "float16"), 1.0,
                   reduction="mean")


#: Block sizes of the block reductions: one thread, partial warps, whole warps, the largest.
BLOCK_THREADS = (1, 7, 32, 33, 100, 256, 1000, 1024)


def _warp_order_sum(values: np.ndarray) -> np.float32:
    """al::block_sum's order in float32: a shuffle tree in each warp (lane i adds lane
    i + 16, 8, 4, 2, 1 of the step before), then the warp totals in warp order."""
    totals = []
    for first in range(0, len(values), 32):
        lanes = [np.float32(value) for value in values[first:first + 32]]
        for offset in (16, 8, 4, 2, 1):
            lanes = [np.float32(lanes[lane] + lanes[lane + offset])
                     if lane + offset < len(lanes) else lanes[lane] for lane in range(len(lanes))]
        totals.append(lanes[0])
    total = totals[0]
    for value in totals[1:]:
        total = np.float32(total + value)
    return total


def case_block_reductions(device: Device, threads: int) -> None:
    """al::block_sum and al::block_max on their own: every block's sum is bitwise the fixed
    order above (values spanning many magnitudes, so that the order shows), every maximum
    exact, for whole and partial warps."""
    import cupy

    from arrayloss._cupy import _kernels

    kernel = cupy.ElementwiseKernel(
        "raw float32 x", "raw float32 sums, raw float32 maxima", "",
        name="arrayloss_test_block_reductions", preamble=_kernels.header(),
        after_loop="""
        const float value = x[blockIdx.x * blockDim.x + threadIdx.x];
        const float total = al::block_sum(value);
        const float top = al::block_max(value);
        if (threadIdx.x == 0) { sums[blockIdx.x] = total; maxima[blockIdx.x] = top; }
        """)
    blocks = 3
    rng = np.random.default_rng(threads)
    values = (rng.normal(size=(blocks, threads)) * 10.0 ** rng.integers(-6, 7, (blocks, threads))
              ).astype(np.float32)
    sums = device.put(np.zeros(blocks, np.float32))
    maxima = device.put(np.zeros(blocks, np.float32))
    kernel(device.put(values.reshape(-1)), sums, maxima, size=blocks * threads,
           block_size=threads)
    got_sums, got_maxima = device.asnumpy(sums), device.asnumpy(maxima)
    for block in range(blocks):
        assert got_sums[block] == _warp_order_sum(values[block]), (threads, block)
        assert got_maxima[block] == values[block].max(), (threads, block)
    Checks.count += 1


def case_bitwise_repeatable(device: Device) -> None:
    rng = np.random.default_rng(6)
    x, t, v = (device.put(values, "float32") for values in (
        rng.normal(size=70_000), rng.normal(size=70_000), rng.uniform(0.1, 2, 70_000)))
    logits = device.put(rng.normal(size=(9000, 16)), "float32")
    labels = device.put(rng.integers(0, 16, 9000))
    import _kernel_cases_cross_entropy as cross_entropy

    runs = []
    for _ in range(3):
        loss, grads = al.gaussian_nll_loss_and_grad(x, t, v)
        nll, grad = al.nll_loss_and_grad(logits, labels)
        results = (loss, *grads, nll, grad, *cross_entropy.repeatable_results(device))
        runs.append([device.asnumpy(a).tobytes() for a in results])
    assert all(run == runs[0] for run in runs)
    Checks.count += 1


def no_sync_calls(device: Device) -> list[Callable[[], Any]]:
    """Every entry point with ``validate=False`` (or a scalar var), which must not sync."""
    import _kernel_cases_cross_entropy as cross_entropy

    rng = np.random.default_rng(7)
    x = device.put(rng.normal(size=(512, 8)), "float32")
    v = device.put(rng.uniform(0.1, 2, (512, 1)), "float32")
    logits = device.put(rng.normal(size=(512, 10)), "float32")
    labels = device.put(rng.integers(0, 10, 512))
    g = device.put(np.array(1.0), "float32")
    return [
        lambda: al.gaussian_nll_loss(x, x, v, validate=False),
        lambda: al.gaussian_nll_loss(x, x, v, reduction="none", validate=False),
        lambda: al.gaussian_nll_loss_backward(1.0, x, x, v, validate=False),
        lambda: al.gaussian_nll_loss_backward(g, x, x, v, validate=False),
        lambda: al.gaussian_nll_loss_and_grad(x, x, v, validate=False),
        lambda: al.gaussian_nll_loss_and_grad(x, x, 0.5),
        lambda: al.nll_loss(logits, labels, validate=False),
        lambda: al.nll_loss(logits, labels, reduction="none", validate=False),
        lambda: al.nll_loss_backward(1.0, logits, labels, validate=False),
        lambda: al.nll_loss_backward(1.0, logits, labels, reduction="sum", validate=False),
        lambda: al.nll_loss_and_grad(logits, labels, validate=False),
        *cross_entropy.no_sync_calls(device),
    ]


def case_no_host_sync(device: Device) -> None:
    calls = no_sync_calls(device)
    for call in calls:
        call()  # compile first: loading a kernel may synchronise
    for call in calls:
        device.assert_no_host_sync(call)
        Checks.count += 1


def _numpy_error(function: Callable[..., Any], *args: Any, **kwargs: Any) -> BaseException:
    with pytest.raises(Exception) as error:
        function(*args, **kwargs)
    return error.value


def case_bad_targets(device: Device) -> None:
    values = np.array([0, 1, 7, 2, -5, 1])
    logits = np.zeros((6, 3), np.float32)
    for function, options in ((al.nll_loss, {}), (al.nll_loss, {"reduction": "none"}),
                              (al.nll_loss_and_grad, {}),
                              (al.nll_loss_and_grad, {"reduction": "sum"})):
        want = _numpy_error(function, logits, values, **options)
        with pytest.raises(type(want), match=r"target contains 7, .*\[0, 3\)") as got:
            function(device.put(logits), device.put(values), **options)
        assert str(got.value) == str(want)
        Checks.count += 1
    for reduction in REDUCTIONS:
        upstream = 1.0 if reduction != "none" else device.put(np.ones(6, np.float32))
        with pytest.raises(al.TargetOutOfRangeError, match="target contains 7"):
            al.nll_loss_backward(upstream, device.put(logits), device.put(values),
                                 reduction=reduction)
        Checks.count += 1
    at_c = device.put(np.array([0, 3, 1]))  # target == C: the first value past the range
    for reduction in REDUCTIONS:
        with pytest.raises(al.TargetOutOfRangeError, match=r"target contains 3, .*\[0, 3\)"):
            al.nll_loss(device.put(logits[:3]), at_c, reduction=reduction)
        Checks.count += 1
    big = np.array([0, 2**64 - 5], dtype=np.uint64)
    with pytest.raises(al.TargetOutOfRangeError, match=str(2**64 - 5)):
        al.nll_loss(device.put(logits[:2]), device.put(big))
    Checks.count += 1


def case_negative_variance(device: Device) -> None:
    x = np.zeros((5, 2), np.float32)
    for bad in (-1e-20, -1e-40, -np.inf):  # -1e-40 is a float32 subnormal: flushed by -ftz
        v = np.array([[1.0], [0.5], [bad], [2.0], [1.0]], np.float32)
        want = _numpy_error(al.gaussian_nll_loss, x, x, v)
        dx, dv = device.put(x), device.put(v)
        calls = [functools.partial(al.gaussian_nll_loss, dx, dx, dv, reduction=r)
                 for r in REDUCTIONS]
        calls += [functools.partial(al.gaussian_nll_loss_and_grad, dx, dx, dv),
                  functools.partial(al.gaussian_nll_loss_backward, 1.0, dx, dx, dv)]
        for call in calls:
            with pytest.raises(type(want)) as got:
                call()
            assert str(got.value) == str(want)
            Checks.count += 1


def case_subnormal_variance(device: Device, dtype: str) -> None:
    # eps=0 leaves a subnormal variance as it is; -ftz must not turn it into 0 (inf, NaN).
    tiny = {"float32": 1e-40, "float64": 1e-310, "float16": 3e-8, "bfloat16": 1e-40}[dtype]
    x = device.put(np.array([1e-20, 0.0, 1e-21, 2.0]), dtype)
    t = device.put(np.zeros(4), dtype)
    v = device.put(np.array([tiny, tiny, 4 * tiny, 1.0]), dtype)
    # PyTorch's arithmetic in the compute type (float32 below float64) is the contract here:
    # 0.5 / 1e-40 overflows float32, as it does in PyTorch.
    compute = np.float64 if dtype == "float64" else np.float32
    for reduction in REDUCTIONS:
        check_gaussian(device, dtype, x, t, v, reduction=reduction, eps=0.0, compute=compute)


def gpu_and_host_cases() -> list[Any]:
    """Every case as a pytest param: (function, arguments), with a readable id."""
    params = []
    for dtype, var_kind, reduction in itertools.product(DTYPES, GAUSSIAN_VAR_SHAPES, REDUCTIONS):
        params.append(pytest.param(case_gaussian, (dtype, var_kind, reduction),
                                   id=f"gaussian-{dtype}-{var_kind}-{reduction}"))
    for dtype, var_kind, (log_var, beta) in itertools.product(
            DTYPES, ("full", "rows", "scalar"), ((True, 0.0), (False, 0.5), (True, 1.0))):
        params.append(pytest.param(case_gaussian_variant, (dtype, var_kind, log_var, beta),
                                   id=f"gaussian-{dtype}-{var_kind}-log_var={log_var}-beta={beta}"))
    params.append(pytest.param(case_gaussian_broadcast_target_0d_upstream, (),
                               id="gaussian-broadcast-target"))
    # Every dtype on whole aligned chunks and on offset partial ones; float32 on all four.
    layouts = [(dtype, "whole", True) for dtype in DTYPES] + [
        (dtype, "odd", False) for dtype in DTYPES] + [("float32", "whole", False),
                                                      ("float32", "odd", True)]
    for (dtype, shape_kind, aligned), var_kind in itertools.product(layouts, CONTIGUOUS_VARS):
        params.append(pytest.param(
            case_gaussian_contiguous, (dtype, shape_kind, var_kind, aligned),
            id=f"gaussian-contiguous-{dtype}-{shape_kind}-{var_kind}-"
               + ("aligned" if aligned else "offset")))
    for dtype, var_kind, (log_var, beta) in itertools.product(
            ("float16", "float32", "float64"), ("full", "rows", "scalar"),
            ((True, 0.0), (False, 0.5), (True, 1.0))):
        params.append(pytest.param(
            case_gaussian_contiguous_variant, (dtype, var_kind, log_var, beta),
            id=f"gaussian-contiguous-{dtype}-{var_kind}-log_var={log_var}-beta={beta}"))
    params.append(pytest.param(case_gaussian_contiguous_upstream, (),
                               id="gaussian-contiguous-upstream"))
    params.append(pytest.param(case_gaussian_vector_and_scalar_loads_agree, (),
                               id="gaussian-contiguous-vector-scalar-bits"))
    params.append(pytest.param(case_gaussian_contiguous_negative_variance, (),
                               id="gaussian-contiguous-negative-variance"))
    for var_shape in ((1, 3), (1, 1)):
        params.append(pytest.param(case_gaussian_long_broadcast_var, (var_shape,),
                                   id=f"gaussian-long-broadcast-var-{var_shape}"))
    for dtype, shape, reduction in itertools.product(DTYPES, NLL_SHAPES, REDUCTIONS):
        params.append(pytest.param(case_nll, (dtype, shape, reduction),
                                   id=f"nll-{dtype}-{shape}-{reduction}"))
    for target_dtype in TARGET_DTYPES:
        params.append(pytest.param(case_nll_target_dtype, (target_dtype,),
                                   id=f"nll-target-{target_dtype}"))
    params.append(pytest.param(case_strided_inputs, (), id="strided"))
    for reduction in REDUCTIONS:
        params.append(pytest.param(case_zero_d_and_empty, (reduction,), id=f"0d-empty-{reduction}"))
    for size in SIZES:
        params.append(pytest.param(case_size, (size,), id=f"size-{size}"))
    params.append(pytest.param(case_float16_beyond_65504_elements, (), id="float16-300000"))
    for threads in BLOCK_THREADS:
        params.append(pytest.param(case_block_reductions, (threads,),
                                   id=f"block-reductions-{threads}"))
    params.append(pytest.param(case_bitwise_repeatable, (), id="bitwise-repeatable"))
    params.append(pytest.param(case_no_host_sync, (), id="no-host-sync"))
    params.append(pytest.param(case_bad_targets, (), id="bad-targets"))
    params.append(pytest.param(case_negative_variance, (), id="negative-variance"))
    for dtype in DTYPES:
        params.append(pytest.param(case_subnormal_variance, (dtype,), id=f"subnormal-var-{dtype}"))
    import _kernel_cases_cross_entropy as cross_entropy  # it builds on this module

    return params + cross_entropy.params()
