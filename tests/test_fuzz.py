"""A fuzzer over every loss and the NumPy, array-api-strict and torch backends.

Each draw (shapes, 0-sized and 0-d included; dtypes, some of which must be rejected; var
shapes; reductions; weights; ignore_index; NaN, inf, subnormal, huge and negative values;
scalar or array upstream gradients) must do one of two things:

* match PyTorch 2.13 (forward, every gradient, and the fused loss-and-gradient), inf and NaN
  where PyTorch gives them;
* raise TypeError or ValueError (TargetOutOfRangeError for a target out of range) with a
  message.

No other exception, no hang, no change to the inputs.  CI runs a fixed number of draws per
loss and backend (``ARRAYLOSS_FUZZ_EXAMPLES``, default 400), and a fortieth as many NumPy draws
large enough for its blocks (2**20 elements, extreme values at drawn places).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from _cases import Case, cast_inputs, grad_output, torch_oracle
from _helpers import from_numpy, to_numpy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_parity import TOLERANCE

import arrayloss as al

pytest.importorskip("torch", reason="PyTorch is the fuzzer's oracle")

EXAMPLES = int(os.environ.get("ARRAYLOSS_FUZZ_EXAMPLES", "400"))
FUZZ_BACKENDS = ("numpy", "array_api_strict", "torch")

# Values a real model produces, and the ones it produces on a bad day.
SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -1e-40, 5e-324, 1e300, -1e300, 65504.0]
VALUES = st.one_of(st.floats(-8, 8, allow_nan=False), st.sampled_from(SPECIAL))
FLOAT_DTYPES = ("float16", "float32", "float64")
REJECTED_DTYPES = ("int32", "bool")
REDUCTIONS = ("none", "mean", "sum")
#: Index target dtypes; a negative int64 value cast to an unsigned one is near its maximum
#: (2**64 - 1 for -1 in uint64), the values that once wrapped around (issue 33, item 2).
TARGET_DTYPES = ("int64", "int32", "uint8", "int16", "uint16", "uint32", "uint64")


def _mostly(draw: Any, good: tuple[Any, ...], bad: tuple[Any, ...]) -> Any:
    """One of ``good``, or (one draw in eight) one of ``bad``, which must be rejected."""
    return draw(st.sampled_from(bad if draw(st.integers(0, 7)) == 7 else good))


def _dims(draw: Any, ndim: int) -> tuple[int, ...]:
    return tuple(draw(st.integers(0, 3)) if draw(st.booleans()) else draw(st.integers(1, 3))
                 for _ in range(ndim))


def _fill(draw: Any, shape: tuple[int, ...], values: Any = VALUES) -> np.ndarray:
    count = int(np.prod(shape))
    return np.array(draw(st.lists(values, min_size=count, max_size=count)),
                    dtype=np.float64).reshape(shape)


@st.composite
def gaussian_draws(draw: Any) -> Case:
    shape = _dims(draw, draw(st.integers(0, 3)))
    target_kind = _mostly(draw, ("same", "last 1", "fewer"), ("other",))
    target_shape = {"same": shape, "last 1": (*shape[:-1], 1) if shape else shape,
                    "fewer": shape[1:], "other": _dims(draw, draw(st.integers(0, 3)))}[target_kind]
    var_kind = _mostly(draw, ("same", "no last", "some 1", "scalar"), ("other",))
    arrays = {"input": _fill(draw, shape), "target": _fill(draw, target_shape)}
    var_scalar = None
    if var_kind == "scalar":
        var_scalar = draw(st.sampled_from([1.0, 0.5, 0, 2, -1.0, np.nan, 5e-324, 1e300]))
    else:
        var_shape = {"same": shape, "no last": shape[:-1],
                     "some 1": tuple(s if draw(st.booleans()) else 1 for s in shape),
                     "other": _dims(draw, draw(st.integers(0, 3)))}[var_kind]
        positive = st.one_of(st.floats(1e-3, 8), st.sampled_from([0.0, 1e-40, 5e-324, 1e300,
                                                                    np.inf, np.nan, -1.0]))
        arrays["var"] = _fill(draw, var_shape, positive)
    dtype = _mostly(draw, FLOAT_DTYPES, REJECTED_DTYPES)
    options: dict[str, Any] = {"full": draw(st.booleans()),
                               "eps": _mostly(draw, (1e-6, 0.0, 1e-2), (-1.0, np.nan))}
    reduction = _mostly(draw, REDUCTIONS, ("average",))
    name = f"fuzz-gaussian-{draw(st.integers(0, 2**30))}"
    return Case(name, "gaussian", dtype, reduction, arrays, options, var_scalar=var_scalar)


@st.composite
def nll_draws(draw: Any) -> Case:
    n_classes = draw(st.integers(0, 4))
    layout = draw(st.sampled_from(["unbatched", "batched", "spatial"]))
    batch = draw(st.integers(0, 4))
    spatial = _dims(draw, draw(st.integers(1, 2))) if layout == "spatial" else ()
    shape = (n_classes,) if layout == "unbatched" else (batch, n_classes, *spatial)
    target_shape = () if layout == "unbatched" else (batch, *spatial)
    if draw(st.integers(0, 9)) == 0:
        target_shape = _dims(draw, draw(st.integers(0, 2)))  # a mismatch, now and then
    ignore_index = draw(st.sampled_from([-100, 0, 1, 255]))
    classes = st.one_of(st.integers(0, max(n_classes - 1, 0)), st.just(ignore_index),
                        st.integers(-3, n_classes + 2))
    count = int(np.prod(target_shape))
    target = np.array(draw(st.lists(classes, min_size=count, max_size=count)),
                      dtype=np.int64).reshape(target_shape)
    arrays = {"input": _fill(draw, shape), "target": target}
    if draw(st.booleans()):
        weight_size = n_classes if draw(st.integers(0, 9)) else n_classes + 1
        arrays["weight"] = _fill(draw, (weight_size,), st.one_of(
            st.floats(0, 4), st.sampled_from([0.0, np.nan, np.inf])))
    dtype = _mostly(draw, FLOAT_DTYPES, REJECTED_DTYPES)
    target_dtype = _mostly(draw, TARGET_DTYPES, ("float32",))
    reduction = _mostly(draw, REDUCTIONS, ("average",))
    name = f"fuzz-nll-{draw(st.integers(0, 2**30))}"
    return Case(name, "nll", dtype, reduction, arrays, {"ignore_index": ignore_index},
                target_dtype=target_dtype)


@st.composite
def cross_entropy_draws(draw: Any) -> Case:
    """Index or probability targets, label smoothing with and without class weights (zero,
    negative and infinite ones among them), ignore_index, every target dtype."""
    n_classes = draw(st.integers(1, 4))
    layout = draw(st.sampled_from(["unbatched", "batched", "spatial"]))
    batch = draw(st.integers(0, 4))
    spatial = _dims(draw, draw(st.integers(1, 2))) if layout == "spatial" else ()
    shape = (n_classes,) if layout == "unbatched" else (batch, n_classes, *spatial)
    probabilities = draw(st.booleans())
    ignore_index = -100 if probabilities else draw(st.sampled_from([-100, 0, 1, 255]))
    if probabilities:
        probability = st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, -0.5, 2.0]))
        target = _fill(draw, shape, probability)
    else:
        target_shape = () if layout == "unbatched" else (batch, *spatial)
        classes = st.one_of(st.integers(0, n_classes - 1), st.just(ignore_index),
                            st.integers(-3, n_classes + 2))
        count = int(np.prod(target_shape))
        target = np.array(draw(st.lists(classes, min_size=count, max_size=count)),
                          dtype=np.int64).reshape(target_shape)
    arrays = {"input": _fill(draw, shape), "target": target}
    if draw(st.booleans()):
        # No weight that is subnormal in the drawn dtype (float16's smallest normal is
        # 2**-14): with label smoothing, a row's two terms are each scaled before the rows
        # are summed (PyTorch sums each term over the rows first), and a product of a
        # subnormal weight keeps a bit or two, so the two orders differ by whole percents,
        # both far from the exact value (float32 w = 1.4e-45: 1.0 and 0.95, exactly 0.66).
        arrays["weight"] = _fill(draw, (n_classes,), st.one_of(
            st.floats(2.0**-14, 4), st.sampled_from([0.0, -1.0, np.nan, np.inf])))
    options = {"label_smoothing": draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
               "ignore_index": ignore_index}
    dtype = _mostly(draw, FLOAT_DTYPES, REJECTED_DTYPES)
    reduction = _mostly(draw, REDUCTIONS, ("average",))
    name = f"fuzz-cross-entropy-{draw(st.integers(0, 2**30))}"
    return Case(name, "cross_entropy", dtype, reduction, arrays, options,
                target_dtype=draw(st.sampled_from(TARGET_DTYPES)))


#: Values placed among zeros in a blocked draw, one kind per draw: a huge value of one sign
#: (finite per block, overflowing in total) or infinities and NaN (whose sum is the same in
#: any order; a huge value beside an opposite infinity would make PyTorch's order matter).
EXTREMES = ([1e308], [-1e308], [np.inf, -np.inf], [np.inf, np.nan], [65504.0, 1e4])


@st.composite
def blocked_draws(draw: Any) -> Case:
    """Inputs large enough for NumPy's blocks (2**20 elements and more), zeros with a few
    extreme values at drawn places: every loss, scalar reductions (the block sums)."""
    loss = draw(st.sampled_from(["nll", "cross_entropy", "gaussian"]))
    rows, columns = draw(st.sampled_from([(1 << 20, 2), (1 << 18, 4), (2, 1 << 19)]))
    extremes = draw(st.sampled_from(EXTREMES))
    values = np.zeros(rows * columns)
    for _ in range(draw(st.integers(1, 6))):
        values[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from(extremes))
    infinite_only = not any(np.isfinite(v) and abs(v) > 1e300 for v in extremes)
    dtype = draw(st.sampled_from(("float32", "float64") if extremes[0] != 65504.0
                                 else ("float16", "float32")))
    reduction = draw(st.sampled_from(("mean", "sum")))
    name = f"fuzz-blocked-{loss}-{draw(st.integers(0, 2**30))}"
    if loss == "gaussian":
        arrays = {"input": values, "target": np.zeros(values.size),
                  "var": np.ones(values.size)}
        return Case(name, "gaussian", dtype, reduction, arrays, {"eps": 1e-6})
    x = values.reshape(rows, columns)
    target: np.ndarray = np.zeros(rows, dtype=np.int64)
    target[:: draw(st.sampled_from([1, 3]))] = columns - 1
    options: dict[str, Any] = {}
    if loss == "cross_entropy":
        options["label_smoothing"] = draw(st.sampled_from([0.0, 0.2]))
        if draw(st.booleans()):  # probability targets, negative ones among them
            probabilities = np.full((rows, columns), 1.0 / columns)
            probabilities[0, 0] = -1.0 if infinite_only else 0.0
            target = probabilities
    arrays = {"input": x, "target": target}
    if draw(st.booleans()):
        # A negative weight makes losses of both signs: only where they are infinities.
        lowest = -1.0 if infinite_only else 0.5
        arrays["weight"] = np.linspace(lowest, 2.0, columns)
    return Case(name, loss, dtype, reduction, arrays, options,
                target_dtype=draw(st.sampled_from(("int64", "uint64", "uint8"))))


def _run(xp: Any, case: Case) -> tuple[dict[str, np.ndarray] | None, BaseException | None]:
    """arrayloss's answers for ``case`` on ``xp`` (as in ``test_parity``), or its exception.

    Also checks that no input array was changed.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # 1e300 in float16 is inf: that is the input
        cast = cast_inputs(case)
    moved = {key: from_numpy(xp, value) for key, value in cast.items()}
    before = {key: to_numpy(value).copy() for key, value in moved.items()}
    result: dict[str, np.ndarray] = {}
    try:
        if case.loss == "gaussian":
            args = [moved["input"], moved["target"],
                    case.var_scalar if case.var_scalar is not None else moved["var"]]
            function, backward, fused = (al.gaussian_nll_loss, al.gaussian_nll_loss_backward,
                                         al.gaussian_nll_loss_and_grad)
            names = ("input", "target", "var")
        elif case.loss == "cross_entropy":
            args = [moved["input"], moved["target"], moved.get("weight")]
            function, backward, fused = (al.cross_entropy, al.cross_entropy_backward,
                                         al.cross_entropy_and_grad)
            names = ("input",)
        else:
            args = [moved["input"], moved["target"], moved.get("weight")]
            function, backward, fused = al.nll_loss, al.nll_loss_backward, al.nll_loss_and_grad
            names = ("input",)
        loss = function(*args, reduction=case.reduction, **case.options)
        result["loss"] = to_numpy(loss)
        upstream64 = grad_output(case, tuple(loss.shape))
        upstream: Any = float(upstream64) if case.reduction != "none" else None
        if case.reduction == "none" or case.seed % 2:  # an array, 0-d for a reduced loss
            upstream = from_numpy(xp, upstream64.astype(np.dtype(case.dtype)))
        grads = backward(upstream, *args, reduction=case.reduction, **case.options)
        grads = grads if isinstance(grads, tuple) else (grads,)
        for name, grad in zip(names, grads, strict=False):
            if grad is not None:
                result[f"grad_{name}"] = to_numpy(grad)
        if case.reduction != "none":
            fused_loss, fused_grads = fused(*args, reduction=case.reduction, **case.options)
            fused_grads = fused_grads if isinstance(fused_grads, tuple) else (fused_grads,)
            result["fused_loss"] = to_numpy(fused_loss)
            for name, grad in zip(names, fused_grads, strict=False):
                if grad is not None:
                    result[f"fused_grad_{name}"] = to_numpy(grad)  # for grad_output = 1
        error = None
    except (TypeError, ValueError) as caught:  # TargetOutOfRangeError is a ValueError too
        error = caught
    for key, value in moved.items():
        np.testing.assert_array_equal(to_numpy(value), before[key], err_msg=f"{key} changed")
    return (None, error) if error is not None else (result, None)


def _documented_extension(case: Case) -> dict[str, np.ndarray] | None:
    """PyTorch's answer extended where PyTorch fails and docs/pytorch.rst says what we give.

    NLL with no classes (C = 0) and spatial dimensions: PyTorch 2.13 raises "size mismatch";
    arrayloss applies its own 2-D rule (every target must be ignored): a 'mean' of NaN, a
    'sum' of 0, zeros for 'none', and a zero gradient of the input's shape.
    """
    input_shape = case.arrays["input"].shape
    if case.loss != "nll" or len(input_shape) < 3 or input_shape[1] != 0:
        return None
    target_shape = case.arrays["target"].shape
    loss = {"none": np.zeros(target_shape), "mean": np.array(np.nan), "sum": np.array(0.0)}
    return {"loss": loss[case.reduction], "grad_input": np.zeros(input_shape)}


def _compare(case: Case, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    rtol = TOLERANCE[case.dtype]
    for key, reference in want.items():
        for name in (key, f"fused_{key}"):
            if name not in got:
                continue
            actual = got[name].astype(np.float64)
            assert actual.shape == reference.shape, f"{case.name}: {name} shape"
            expected = reference
            if name.startswith("fused_grad_"):  # PyTorch's backward had grad_output = upstream
                expected = reference / float(grad_output(case, ()))
            with np.errstate(over="ignore"):  # the result is rounded once to its dtype
                expected = expected.astype(case.dtype).astype(np.float64)
            if key == "grad_var" and np.broadcast(case.arrays["input"],
                                                  case.arrays["target"]).size == 0:
                # Documented: over an empty loss a var gradient is a sum of nothing, 0;
                # PyTorch multiplies that 0 by 1/var after summing, NaN for a NaN or 0 var.
                expected = np.where(np.isfinite(expected), expected, 0.0)
            scale = np.max(np.abs(expected[np.isfinite(expected)]), initial=1.0)
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale,
                                       equal_nan=True, err_msg=f"{case.name}: {name}")


def _check(xp: Any, case: Case) -> None:
    got, error = _run(xp, case)
    if error is not None:
        assert str(error), f"{type(error).__name__} without a message"
        return
    assert got is not None
    if case.dtype not in FLOAT_DTYPES:
        raise AssertionError(f"{case.name}: a {case.dtype} input was accepted")
    oracle_case = case
    if case.var_scalar is not None and case.dtype != "float64":
        # arrayloss computes below float64 in float32: a number var takes float32's range.
        with np.errstate(over="ignore"):
            rounded = float(np.float32(case.var_scalar))
        oracle_case = Case(case.name, case.loss, case.dtype, case.reduction, case.arrays,
                           case.options, var_scalar=rounded, target_dtype=case.target_dtype)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            want = torch_oracle(oracle_case)
    except (RuntimeError, ValueError, IndexError, TypeError) as torch_error:
        want = _documented_extension(case)
        if want is not None:
            _compare(case, got, want)
            return
        # PyTorch refuses what arrayloss deliberately accepts (docs/pytorch.rst): any integer
        # target dtype, several size-1 var dims, int or NumPy scalars for var.  Its answer for
        # the equivalent legal call is what torch_oracle computes; anything else is a bug.
        raise AssertionError(f"{case.name}: PyTorch failed ({torch_error}) where arrayloss "
                             "answered") from None
    _compare(case, got, want)


FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow,
                                                HealthCheck.filter_too_much])


@pytest.fixture(params=FUZZ_BACKENDS)
def fuzz_xp(request: pytest.FixtureRequest) -> Any:
    from conftest import _load

    namespace, reason = _load(request.param)
    if namespace is None:
        pytest.skip(reason)
    return namespace


@FUZZ_SETTINGS
@given(case=gaussian_draws())
def test_fuzz_gaussian(fuzz_xp: Any, case: Case) -> None:
    if not hasattr(fuzz_xp, case.dtype):
        return
    _check(fuzz_xp, case)


#: The draws that found issue 33's items 2 (a uint64 target near 2**64 on the small-batch
#: path) and 5 (label smoothing, class weights, a zero total weight), always run.
UINT64_NEAR_2_64 = Case("fuzz-nll-uint64", "nll", "float64", "sum",
                        {"input": np.arange(12.0).reshape(3, 4),
                         "target": np.array([0, 1, -1])}, target_dtype="uint64")
SMOOTHED_ZERO_WEIGHT = Case("fuzz-cross-entropy-zero-weight", "cross_entropy", "float64",
                            "mean", {"input": np.arange(12.0).reshape(4, 3) / 7,
                                     "target": np.array([0, 1, 0, 1]),
                                     "weight": np.array([0.0, 0.0, 1.0])},
                            {"label_smoothing": 0.1})


@FUZZ_SETTINGS
@given(case=nll_draws())
@example(case=UINT64_NEAR_2_64)
def test_fuzz_nll(fuzz_xp: Any, case: Case) -> None:
    if not hasattr(fuzz_xp, case.dtype) or not hasattr(fuzz_xp, case.target_dtype):
        return
    _check(fuzz_xp, case)


# ------------------------------------------------------------------ the elementwise losses


@st.composite
def elementwise_draws(draw: Any) -> dict[str, Any]:
    """A call of one of the elementwise losses: a variant of the case table, shapes (0-d,
    0-sized and broadcast included), a dtype (one draw in eight rejected), values in the
    loss's domain or special ones, a reduction and an upstream gradient."""
    import _elementwise_cases as ec

    variant = draw(st.sampled_from(ec.VARIANTS))
    shape = _dims(draw, draw(st.integers(0, 3)))
    target_shape = shape
    if variant.broadcast_target and shape and draw(st.booleans()):
        target_shape = tuple(1 if draw(st.booleans()) else size for size in shape)
        target_shape = target_shape[draw(st.integers(0, len(shape))):]
    arrays = ec.make_arrays(variant, shape, target_shape, seed=draw(st.integers(0, 2**16)))
    for name in ("input", "target"):
        if draw(st.integers(0, 3)) == 0 and arrays[name].size:  # special values in places
            flat = arrays[name].reshape(-1)
            for index in draw(st.lists(st.integers(0, flat.size - 1), max_size=3)):
                flat[index] = draw(st.sampled_from(SPECIAL))
    dtype = _mostly(draw, FLOAT_DTYPES, REJECTED_DTYPES)
    reduction = draw(st.sampled_from(variant.reductions))
    return {"variant": variant, "arrays": arrays, "dtype": dtype, "reduction": reduction}


@FUZZ_SETTINGS
@given(draw=elementwise_draws())
def test_fuzz_elementwise(fuzz_xp: Any, draw: dict[str, Any]) -> None:
    """PyTorch's answer, or a TypeError or ValueError with a message where PyTorch fails too
    or the dtype is one arrayloss rejects; never another exception, never a changed input."""
    import _elementwise_cases as ec

    variant, dtype, reduction = draw["variant"], draw["dtype"], draw["reduction"]
    if not hasattr(fuzz_xp, dtype):
        return
    with np.errstate(all="ignore"):  # 1e300 is inf in float16, as the caller would have it
        values = {name: (np.asarray(array).astype(dtype)
                         if name != "target" or not variant.integer_target
                         else np.round(np.clip(np.nan_to_num(array), -1e6, 1e6)).astype(
                             np.int64))
                  for name, array in draw["arrays"].items()}
    arrays = {name: from_numpy(fuzz_xp, value) for name, value in values.items()}
    before = {name: value.copy() for name, value in values.items()}
    keywords = ec.arrayloss_keywords(variant, arrays)
    try:
        loss, (grad_input, _) = (variant.function("_and_grad")(
            arrays["input"], arrays["target"], reduction=reduction, **keywords)
            if reduction != "none" else (variant.function()(
                arrays["input"], arrays["target"], reduction=reduction, **keywords),
                (None, None)))
        error = None
    except (TypeError, ValueError) as caught:
        error = caught
    for name, value in arrays.items():
        np.testing.assert_array_equal(to_numpy(value), before[name], err_msg=f"{name} changed")
    try:
        with np.errstate(all="ignore"):
            want = ec.oracle(variant, values if dtype == "float64" else {
                name: value.astype(np.float32) if value.dtype.kind == "f" else value
                for name, value in values.items()}, reduction, 1.0)
    except (RuntimeError, ValueError, TypeError) as torch_error:
        assert error is not None, f"{variant.id}: PyTorch failed ({torch_error}), arrayloss " \
                                  "answered"
        assert str(error)
        return
    if error is not None:
        assert dtype in REJECTED_DTYPES, f"{variant.id} {dtype}: {error}"
        assert str(error)
        return
    assert dtype in FLOAT_DTYPES, f"a {dtype} input was accepted"
    ec.assert_close(to_numpy(loss), want["loss"], dtype, f"{variant.id} loss")
    if grad_input is not None:
        ec.assert_close(to_numpy(grad_input), want["grad_input"], dtype,
                        f"{variant.id} grad_input")


@FUZZ_SETTINGS
@given(case=cross_entropy_draws())
@example(case=SMOOTHED_ZERO_WEIGHT)
def test_fuzz_cross_entropy(fuzz_xp: Any, case: Case) -> None:
    if not hasattr(fuzz_xp, case.dtype) or not hasattr(fuzz_xp, case.target_dtype):
        return
    _check(fuzz_xp, case)


@settings(FUZZ_SETTINGS, max_examples=max(1, EXAMPLES // 40))  # each draw: 2**20 elements
@given(case=blocked_draws())
def test_fuzz_blocked_numpy(case: Case) -> None:
    """NumPy only: the blocks and their sums are NumPy's (issue 33, item 1)."""
    _check(np, case)
