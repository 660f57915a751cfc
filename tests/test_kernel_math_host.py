"""The per-element math of the CUDA kernels (``kernels.cuh``), compiled for the CPU.

The kernels and this test include the same header; here the host C++ compiler builds it into
a small library, and its float and double results are checked against float64 NumPy formulas
written independently below, over the edge cases.  (Rounding a float result to float16 or
bfloat16 happens in CuPy's conversion, round-to-nearest-even like NumPy's.)
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

HEADER_DIR = Path(__file__).resolve().parents[1] / "arrayloss" / "_cupy"
DRIVER = Path(__file__).resolve().parent / "kernel_host" / "driver.cpp"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no host C++ compiler")
    output = tmp_path_factory.mktemp("kernels") / "libkernels.so"
    subprocess.run([compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror",
                    f"-I{HEADER_DIR}", str(DRIVER), "-o", str(output)], check=True)
    return ctypes.CDLL(str(output))


def _pointer(array: np.ndarray) -> ctypes.c_void_p:
    return array.ctypes.data_as(ctypes.c_void_p)


def run_gaussian(library, x, t, v, eps, constant, upstream, dtype):
    x, t, v = (np.ascontiguousarray(a, dtype=dtype) for a in (x, t, v))
    n = x.size
    loss, grad_input, grad_var = (np.empty(n, dtype) for _ in range(3))
    invalid = np.empty(n, np.int32)
    scalar = ctypes.c_double if dtype == np.float64 else ctypes.c_float
    function = library.gaussian_f64 if dtype == np.float64 else library.gaussian_f32
    function(_pointer(x), _pointer(t), _pointer(v), ctypes.c_longlong(n), scalar(eps),
             scalar(constant), scalar(upstream), _pointer(loss), _pointer(grad_input),
             _pointer(grad_var), _pointer(invalid))
    return loss, grad_input, grad_var, invalid


def gaussian_reference(x, t, v, eps, constant, upstream):
    x, t, v = (np.asarray(a, np.float64) for a in (x, t, v))
    with np.errstate(all="ignore"):
        clamped = np.where(v < eps, eps, v)  # NaN stays NaN
        d = x - t
        loss = 0.5 * (np.log(clamped) + d * d / clamped) + constant
        grad_input = upstream * d / clamped
        grad_var = 0.5 * upstream * (1 / clamped - d * d / clamped**2)
    return loss, grad_input, grad_var, (v < 0).astype(np.int32)


EDGE_VARIANCES = [1.0, 0.5, 2e-7, 1e-6, 0.0, -0.0, 1e-30, 1e30, np.inf, np.nan, -1e-9, -2.0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gaussian_math(library, dtype) -> None:
    rng = np.random.default_rng(0)
    v = np.concatenate([EDGE_VARIANCES, rng.uniform(0, 5, 200)])
    x = np.concatenate([np.linspace(-3, 3, len(EDGE_VARIANCES)), rng.normal(size=200)])
    t = np.concatenate([np.zeros(len(EDGE_VARIANCES)), rng.normal(size=200)])
    x[3], t[3] = 1e4, -1e4  # a large residual at var == eps
    for eps, constant, upstream in [(1e-6, 0.0, 1.0), (1e-3, 0.5 * math.log(2 * math.pi), 0.25)]:
        got = run_gaussian(library, x, t, v, eps, constant, upstream, dtype)
        want = gaussian_reference(x.astype(dtype), t.astype(dtype), v.astype(dtype),
                                  float(np.asarray(eps, dtype)), constant, upstream)
        rtol = 1e-13 if dtype == np.float64 else 2e-5
        for name, a, b in zip(("loss", "grad_input", "grad_var", "invalid"), got, want,
                              strict=True):
            scale = np.abs(b[np.isfinite(b)]).max(initial=1.0) if name != "invalid" else 0
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale * 1e-6,
                                       equal_nan=True, err_msg=f"{name} eps={eps}")


def test_gaussian_clamp_keeps_nan_and_ignores_gradient_clamp(library) -> None:
    loss, grad_input, grad_var, invalid = run_gaussian(
        library, [0.5, 0.5], [0.0, 0.0], [np.nan, 1e-9], 1e-3, 0.0, 1.0, np.float64)
    assert math.isnan(loss[0]) and math.isnan(grad_var[0])
    # Below eps: evaluated at eps, the clamp itself contributes no zero gradient.
    assert grad_var[1] == pytest.approx(0.5 * (1 / 1e-3 - 0.25 / 1e-6))
    assert grad_input[1] == pytest.approx(0.5 / 1e-3)
    assert invalid.tolist() == [0, 0]


def test_gaussian_float16_rounding(library) -> None:
    # The kernels compute in float and round once: compare that rounding with the float64
    # reference rounded to float16 (at most one unit in the last place apart).
    rng = np.random.default_rng(1)
    x16, t16 = rng.normal(size=500).astype(np.float16), rng.normal(size=500).astype(np.float16)
    v16 = rng.uniform(0.1, 3, 500).astype(np.float16)
    got = run_gaussian(library, x16, t16, v16, 1e-6, 0.0, 1.0, np.float32)[0].astype(np.float16)
    want = gaussian_reference(x16, t16, v16, 1e-6, 0.0, 1.0)[0].astype(np.float16)
    ulp = np.spacing(np.abs(want).astype(np.float16))
    assert np.all(np.abs(got.astype(np.float64) - want) <= ulp.astype(np.float64))


def run_nll(library, targets, picked, weights, n_classes, ignore_index, ignore_matches,
            reduction, upstream, total_weight, dtype):
    targets = np.ascontiguousarray(targets, np.int64)
    picked, weights = (np.ascontiguousarray(a, dtype) for a in (picked, weights))
    n = targets.size
    classes = np.empty(n, np.int64)
    loss, weight, coef = (np.empty(n, dtype) for _ in range(3))
    scalar = ctypes.c_double if dtype == np.float64 else ctypes.c_float
    function = library.nll_f64 if dtype == np.float64 else library.nll_f32
    function(_pointer(targets), _pointer(picked), _pointer(weights), ctypes.c_longlong(n),
             ctypes.c_longlong(n_classes), ctypes.c_longlong(ignore_index),
             ctypes.c_int(ignore_matches), ctypes.c_int(reduction), scalar(upstream),
             scalar(total_weight), _pointer(classes), _pointer(loss), _pointer(weight),
             _pointer(coef))
    return classes, loss, weight, coef


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ignore_index", [-100, 2, 255])
def test_nll_math(library, dtype, ignore_index) -> None:
    n_classes = 4
    targets = np.array([0, 1, 2, 3, 4, -1, -100, 255, 2**62, -(2**63)])
    picked = np.array([-0.5, -1.5, np.nan, -2.0, 7.0, 1.0, np.inf, 3.0, 1.0, 1.0])
    weights = np.array([1.0, 0.0, 2.5, 0.5])
    for reduction, upstream, total_weight in [(0, 0.7, 1.0), (1, 0.7, 3.5), (1, 1.0, 0.0),
                                              (2, -1.5, 1.0)]:
        classes, loss, weight, coef = run_nll(library, targets, picked, weights, n_classes,
                                              ignore_index, 1, reduction, upstream,
                                              total_weight, dtype)
        for k, target in enumerate(targets):
            if target == ignore_index:
                assert classes[k] == -1
            elif not 0 <= target < n_classes:
                assert classes[k] == -2
            else:
                assert classes[k] == target
            if classes[k] < 0:
                assert loss[k] == 0 and weight[k] == 0 and coef[k] == 0
                continue
            w = weights[target]
            np.testing.assert_allclose(loss[k], -(picked[k] * w).astype(dtype), equal_nan=True)
            assert weight[k] == w
            with np.errstate(all="ignore"):
                expected = {0: -w * upstream, 2: w * -upstream,
                            1: w * -(np.float64(upstream) / total_weight)}[reduction]
            np.testing.assert_allclose(coef[k], expected, rtol=1e-6, equal_nan=True)


def test_nll_ignore_index_the_dtype_cannot_hold(library) -> None:
    # A uint8 target of 156 must not match ignore_index=-100 (the flag is off): out of range.
    classes = run_nll(library, [156, 1], [0.0, 0.0], [1.0, 1.0], 2, -100, 0, 0, 1.0, 1.0,
                      np.float64)[0]
    assert classes.tolist() == [-2, 1]


def test_compute_type_trait(library) -> None:
    assert library.compute_is_double_f16_f32() == 0
    assert library.compute_is_double_f32_f64() == 1
    assert library.compute_is_double_i64_f32() == 0
