"""Property-based tests: random valid inputs match a float64 NumPy formula written here;
random bad inputs get the documented error, never a crash or a wrong number."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arrayloss as al

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def reduce_to(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes along which an array of ``shape`` was broadcast."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


def gaussian_reference(x, t, v, full, eps, reduction, var_rows):
    """Loss and gradients (upstream 1 per element, then reduced) in float64."""
    x, t = x.astype(np.float64), t.astype(np.float64)
    scalar = np.isscalar(v)
    v64 = np.float64(v) if scalar else v.astype(np.float64)
    if var_rows:
        v64 = v64[..., None]
    clamped = np.maximum(v64, eps)
    d = x - t
    loss = 0.5 * (np.log(clamped) + d**2 / clamped) + (0.5 * math.log(2 * math.pi) if full else 0)
    loss = np.broadcast_to(loss, np.broadcast_shapes(x.shape, t.shape))
    scale = 1.0 / loss.size if reduction == "mean" else 1.0
    g = np.full(loss.shape, scale)
    grad_x = reduce_to(g * d / clamped, x.shape)
    grad_t = reduce_to(-g * d / clamped, t.shape)
    grad_v = None
    if not scalar:
        grad_v = reduce_to(np.broadcast_to(0.5 * g * (1 / clamped - d**2 / clamped**2),
                                           loss.shape), clamped.shape)
        grad_v = grad_v.reshape(v.shape)
    reduced = {"none": loss, "sum": loss.sum(), "mean": loss.mean() if loss.size else np.nan}
    return reduced[reduction], grad_x, grad_t, grad_v


@st.composite
def gaussian_problems(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(dtype)
    target_shape = shape if not shape or draw(st.booleans()) else shape[1:]
    t = rng.normal(size=target_shape).astype(dtype)
    kind = draw(st.sampled_from(["full", "rows", "ones", "scalar"]))
    var_rows = False
    if kind == "scalar":
        v = draw(st.one_of(st.floats(0, 10), st.integers(0, 10)))
    elif kind == "rows" and shape:
        v = rng.uniform(0, 3, shape[:-1]).astype(dtype)
        var_rows = True
    elif kind == "ones":
        mask = draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
        var_shape = tuple(1 if m else s for s, m in zip(shape, mask, strict=True))
        v = rng.uniform(0, 3, var_shape).astype(dtype)
    else:
        v = rng.uniform(0, 3, shape).astype(dtype)
    full = draw(st.booleans())
    eps = draw(st.sampled_from([1e-6, 1e-3, 0.1]))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return x, t, v, full, eps, reduction, var_rows


@SETTINGS
@given(gaussian_problems())
def test_gaussian_matches_float64_formula(problem) -> None:
    x, t, v, full, eps, reduction, _ = problem
    want_loss, want_x, want_t, want_v = gaussian_reference(*problem)
    loss = al.gaussian_nll_loss(x, t, v, full=full, eps=eps, reduction=reduction)
    rtol = 1e-11 if x.dtype == np.float64 else 2e-5
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=rtol * 10, equal_nan=True)
    assert np.asarray(loss).dtype == x.dtype
    upstream = np.ones(np.shape(want_loss), x.dtype) if reduction == "none" else 1.0
    grads = al.gaussian_nll_loss_backward(upstream, x, t, v, full=full, eps=eps,
                                          reduction=reduction)
    for got, want in zip(grads, (want_x, want_t, want_v), strict=True):
        if want is None:
            assert got is None
        else:
            scale = np.max(np.abs(want), initial=1.0)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def nll_reference(x, t, w, ignore_index, reduction):
    """Loss and gradient (upstream 1 per element, then reduced), with explicit loops."""
    unbatched = x.ndim == 1
    xb = x[None] if unbatched else x
    tb = np.reshape(t, (1,)) if unbatched else t
    n_classes = xb.shape[1]
    weight = np.ones(n_classes) if w is None else w.astype(np.float64)
    loss = np.zeros(tb.shape)
    used = np.zeros(tb.shape)
    for index in np.ndindex(tb.shape):
        target = int(tb[index])
        if target == ignore_index:
            continue
        position = (index[0], target, *index[1:])
        loss[index] = -weight[target] * xb[position]
        used[index] = weight[target]
    total_weight = used.sum()
    grad = np.zeros(xb.shape)
    for index in np.ndindex(tb.shape):
        target = int(tb[index])
        if target == ignore_index:
            continue
        upstream = 1.0 / total_weight if reduction == "mean" else 1.0
        grad[(index[0], target, *index[1:])] = -weight[target] * upstream
    if unbatched:
        loss, grad = loss.reshape(()), grad[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        reduced = {"none": loss, "sum": loss.sum(), "mean": loss.sum() / total_weight}
    return reduced[reduction], grad


@st.composite
def nll_problems(draw):
    n_classes = draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    unbatched = draw(st.booleans()) and not spatial
    batch = draw(st.integers(0, 4))
    shape = (n_classes,) if unbatched else (batch, n_classes, *spatial)
    target_shape = () if unbatched else (batch, *spatial)
    dtype = draw(st.sampled_from(["float32", "float64"]))
    target_dtype = draw(st.sampled_from(["int8", "int32", "int64", "uint8", "uint32"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=shape).astype(dtype)
    ignore_index = draw(st.sampled_from([-100, 0, 1, 255]))
    choices = list(range(n_classes)) + ([ignore_index] if
                                        np.can_cast(np.min_scalar_type(ignore_index),
                                                    target_dtype) else [])
    t = rng.choice(choices, size=target_shape).astype(target_dtype)
    w = rng.uniform(0.1, 2, n_classes).astype(dtype) if draw(st.booleans()) else None
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return x, t, w, ignore_index, reduction


@SETTINGS
@given(nll_problems())
def test_nll_matches_float64_formula(problem) -> None:
    x, t, w, ignore_index, reduction = problem
    want_loss, want_grad = nll_reference(*problem)
    loss = al.nll_loss(x, t, w, ignore_index=ignore_index, reduction=reduction)
    rtol = 1e-12 if x.dtype == np.float64 else 2e-5
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=rtol, equal_nan=True)
    upstream = np.ones(np.shape(want_loss), x.dtype) if reduction == "none" else 1.0
    grad = al.nll_loss_backward(upstream, x, t, w, ignore_index=ignore_index,
                                reduction=reduction)
    assert grad.shape == x.shape and grad.dtype == x.dtype
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=rtol, equal_nan=True)


# ---------------------------------------------------------------- bad inputs


DOCUMENTED = (ValueError, TypeError)


@SETTINGS
@given(input_shape=st.lists(st.integers(0, 3), max_size=3),
       var_shape=st.lists(st.integers(0, 3), max_size=4),
       target_shape=st.lists(st.integers(0, 3), max_size=4),
       reduction=st.sampled_from(["none", "mean", "sum", "avg", ""]))
def test_gaussian_bad_shapes_raise_documented_errors(input_shape, var_shape, target_shape,
                                                     reduction) -> None:
    x, t, v = np.ones(input_shape), np.ones(target_shape), np.ones(var_shape)
    try:
        loss = al.gaussian_nll_loss(x, t, v, reduction=reduction)
    except DOCUMENTED:
        return
    # It was accepted: then the shapes really do follow the rules, and the value is right.
    input_shape, var_shape = tuple(input_shape), tuple(var_shape)
    fits = (var_shape == input_shape or (input_shape and var_shape == input_shape[:-1]) or (
        len(var_shape) == len(input_shape)
        and all(v in (i, 1) for v, i in zip(var_shape, input_shape, strict=True))))
    assert fits and reduction in ("none", "mean", "sum")
    expected = np.broadcast_to(0.0, np.broadcast_shapes(input_shape, tuple(target_shape)))
    want = {"none": expected, "sum": 0.0, "mean": np.nan if expected.size == 0 else 0.0}
    np.testing.assert_allclose(loss, want[reduction], atol=1e-12, equal_nan=True)


@SETTINGS
@given(input_shape=st.lists(st.integers(0, 3), max_size=4),
       target_shape=st.lists(st.integers(0, 3), max_size=4),
       weight_shape=st.one_of(st.none(), st.lists(st.integers(0, 4), max_size=2)),
       target_value=st.integers(-300, 300),
       ignore_index=st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.booleans()))
def test_nll_bad_inputs_raise_documented_errors(input_shape, target_shape, weight_shape,
                                                target_value, ignore_index) -> None:
    x = np.zeros(input_shape)
    t = np.full(target_shape, target_value, dtype=np.int64)
    w = None if weight_shape is None else np.ones(weight_shape)
    try:
        loss = al.nll_loss(x, t, w, ignore_index=ignore_index, reduction="sum")
    except DOCUMENTED:
        return
    # Accepted: the input is valid, so every target is a class or ignored, and the loss is 0.
    n_classes = input_shape[0] if len(input_shape) == 1 else input_shape[1]
    assert t.size == 0 or 0 <= target_value < n_classes or target_value == ignore_index
    assert float(loss) == 0.0


def test_property_references_are_independent_of_arrayloss() -> None:
    # A sanity check of the float64 formulas themselves on a hand-computed case.
    loss, grad_x, _, grad_v = gaussian_reference(np.array([1.0]), np.array([0.0]),
                                                 np.array([4.0]), False, 1e-6, "sum", False)
    assert loss == pytest.approx(0.5 * (math.log(4.0) + 0.25))
    assert grad_x[0] == pytest.approx(0.25) and grad_v[0] == pytest.approx(0.5 * (0.25 - 1 / 16))
    loss, grad = nll_reference(np.log(np.array([[0.5, 0.5]])), np.array([1]), None, -100, "mean")
    assert loss == pytest.approx(math.log(2)) and grad.tolist() == [[0.0, -1.0]]
