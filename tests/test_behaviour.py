"""What users rely on beyond parity: result types, devices, no mutation, modules, extensions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from _helpers import from_numpy, to_numpy
from array_api_compat import array_namespace, device

import arrayloss as al


def _gaussian(xp: Any, shape=(6, 4), var_shape=(6, 1), dtype="float64") -> tuple[Any, ...]:
    rng = np.random.default_rng(1)
    return (from_numpy(xp, rng.normal(size=shape), dtype),
            from_numpy(xp, rng.normal(size=shape), dtype),
            from_numpy(xp, rng.uniform(0.5, 2.0, var_shape), dtype))


def _nll(xp: Any, dtype="float64") -> tuple[Any, ...]:
    rng = np.random.default_rng(2)
    return (from_numpy(xp, rng.normal(size=(6, 4, 3)), dtype),
            from_numpy(xp, np.array([[0, 1, 3], [2, -100, 1], [3, 3, 0], [1, 1, 1],
                                     [0, 2, -100], [2, 0, 3]])),
            from_numpy(xp, rng.uniform(0.5, 2.0, 4), dtype))


def every_call(xp: Any) -> list[tuple[str, Any, tuple[Any, ...]]]:
    """(name, function, arguments) for every public entry point."""
    g, n = _gaussian(xp), _nll(xp)
    none_g = from_numpy(xp, np.ones((6, 4)))
    none_n = from_numpy(xp, np.ones((6, 3)))
    return [
        ("gaussian forward", lambda *a: al.gaussian_nll_loss(*a), g),
        ("gaussian none", lambda *a: al.gaussian_nll_loss(*a, reduction="none"), g),
        ("gaussian backward", lambda *a: al.gaussian_nll_loss_backward(1.0, *a), g),
        ("gaussian backward none",
         lambda *a: al.gaussian_nll_loss_backward(none_g, *a, reduction="none"), g),
        ("gaussian and_grad", lambda *a: al.gaussian_nll_loss_and_grad(*a, reduction="sum"), g),
        ("gaussian module", lambda *a: al.GaussianNLLLoss(full=True)(*a), g),
        ("gaussian module backward", lambda *a: al.GaussianNLLLoss().backward(1.0, *a), g),
        ("gaussian module and_grad", lambda *a: al.GaussianNLLLoss().loss_and_grad(*a), g),
        ("nll forward", lambda *a: al.nll_loss(*a), n),
        ("nll none", lambda *a: al.nll_loss(*a, reduction="none"), n),
        ("nll backward", lambda *a: al.nll_loss_backward(1.0, *a), n),
        ("nll backward none", lambda *a: al.nll_loss_backward(none_n, *a, reduction="none"), n),
        ("nll and_grad", lambda *a: al.nll_loss_and_grad(*a), n),
        ("nll module", lambda x, t, w: al.NLLLoss(w, reduction="sum")(x, t), n),
        ("nll module backward", lambda x, t, w: al.NLLLoss(w).backward(1.0, x, t), n),
        ("nll module and_grad", lambda x, t, w: al.NLLLoss(w).loss_and_grad(x, t), n),
    ]


def test_inputs_are_never_modified(xp: Any) -> None:
    for name, function, args in every_call(xp):
        before = [to_numpy(arg).copy() for arg in args]
        function(*args)
        for original, arg in zip(before, args, strict=True):
            np.testing.assert_array_equal(to_numpy(arg), original, err_msg=name)


def test_read_only_numpy_inputs() -> None:
    # Any write into an input would raise on a read-only array.
    xp = array_namespace(np.empty(0))
    for _, function, args in every_call(xp):
        for arg in args:
            arg.flags.writeable = False
        function(*args)


def test_results_belong_to_the_callers_library_and_device(xp: Any) -> None:
    for name, function, args in every_call(xp):
        results = function(*args)
        flat = []
        for item in results if isinstance(results, tuple) else (results,):
            flat.extend(item if isinstance(item, tuple) else (item,))
        for result in flat:
            if result is None:
                continue
            assert array_namespace(result) is xp, name
            assert device(result) == device(args[0]), name


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_return_0d_arrays(xp: Any, reduction: str) -> None:
    loss = al.gaussian_nll_loss(*_gaussian(xp), reduction=reduction)
    assert not isinstance(loss, float)
    assert loss.shape == () and hasattr(loss, "dtype")
    loss = al.nll_loss(*_nll(xp), reduction=reduction)
    assert not isinstance(loss, float) and loss.shape == ()


@pytest.mark.parametrize(("input_dtype", "target_dtype", "var_dtype", "expected"),
                         [("float32", "float32", "float32", "float32"),
                          ("float32", "float32", "float64", "float64"),
                          ("float64", "float64", "float32", "float64"),
                          ("float32", "float64", "float32", "float64"),
                          ("float64", "float32", "float32", "float64")])
@pytest.mark.parametrize("var_shape", [(3, 1), (3, 2), None], ids=str)
def test_gaussian_result_dtype_and_gradient_dtypes(xp: Any, input_dtype: str,
                                                   target_dtype: str, var_dtype: str,
                                                   expected: str, var_shape: Any) -> None:
    """The result promotes as PyTorch's; each gradient has its argument's dtype (the NumPy
    fast path, which a var of the input's shape or a number takes, gave the result's)."""
    rng = np.random.default_rng(3)
    x = from_numpy(xp, rng.normal(size=(3, 2)), input_dtype)
    t = from_numpy(xp, rng.normal(size=(3, 2)), target_dtype)
    v: Any = 2.0 if var_shape is None else from_numpy(xp, rng.uniform(1, 2, var_shape),
                                                      var_dtype)
    if var_shape is None:  # A Python scalar var is weak: it never promotes.
        expected = "float64" if "float64" in (input_dtype, target_dtype) else "float32"
    assert al.gaussian_nll_loss(x, t, v).dtype == getattr(xp, expected)
    for grads in (al.gaussian_nll_loss_backward(1.0, x, t, v),
                  al.gaussian_nll_loss_and_grad(x, t, v)[1]):
        grad_x, grad_t, grad_v = grads
        assert grad_x.dtype == x.dtype and grad_t.dtype == t.dtype
        assert grad_v is None if var_shape is None else grad_v.dtype == v.dtype


def test_integer_target_and_var_arrays(xp: Any) -> None:
    x = from_numpy(xp, np.array([1.5, 2.5], dtype=np.float32))
    t = from_numpy(xp, np.array([1, 2]))
    v = from_numpy(xp, np.array([1, 4]))
    loss = al.gaussian_nll_loss(x, t, v, reduction="none")
    assert loss.dtype == xp.float32
    np.testing.assert_allclose(to_numpy(loss), 0.5 * (np.log([1, 4]) + 0.25 / np.array([1, 4])),
                               rtol=1e-6)
    grad_x, grad_t, grad_v = al.gaussian_nll_loss_backward(1.0, x, t, v)
    assert grad_t is None and grad_v is None  # integer arrays have no gradient
    assert grad_x.dtype == xp.float32


def test_wrt_computes_only_what_is_asked(xp: Any) -> None:
    args = _gaussian(xp)
    all_grads = al.gaussian_nll_loss_backward(1.0, *args)
    for wrt in ("input", ("target",), ["var", "input"], ()):
        grads = al.gaussian_nll_loss_backward(1.0, *args, wrt=wrt)
        names = {wrt} if isinstance(wrt, str) else set(wrt)
        for name, grad, full in zip(("input", "target", "var"), grads, all_grads, strict=True):
            if name in names:
                np.testing.assert_array_equal(to_numpy(grad), to_numpy(full))
            else:
                assert grad is None
    # A scalar var has no gradient, whatever wrt says.
    assert al.gaussian_nll_loss_backward(1.0, args[0], args[1], 1.0)[2] is None


def test_grad_output_as_0d_array(xp: Any) -> None:
    args = _gaussian(xp)
    scalar = al.gaussian_nll_loss_backward(2.0, *args)
    array = al.gaussian_nll_loss_backward(from_numpy(xp, np.array(2.0)), *args)
    for a, b in zip(scalar, array, strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-15)


def test_float16_nll_mean_beyond_65504_stays_finite() -> None:
    # PyTorch's CPU sums float16 in float16: N=70000 gives inf and NaN.  arrayloss sums in
    # float32, so the mean of -x with x = -1 is exactly 1 and the gradient is -1/N.
    n = 70_000
    x = np.full((n, 2), -1.0, dtype=np.float16)
    t = np.zeros(n, dtype=np.int64)
    assert float(al.nll_loss(x, t)) == 1.0
    assert float(al.nll_loss(x, t, reduction="sum")) == math.inf  # 70000 > float16 max
    grad = al.nll_loss_backward(1.0, x, t)
    # -1/N is a float16 subnormal: the nearest one, not zero as in PyTorch.
    assert np.all(grad[:, 0] == np.float16(-1 / n)) and np.all(grad[:, 1] == 0)


def test_float16_gaussian_large_sum_in_float32() -> None:
    n = 100_000
    x = np.full(n, 0.5, dtype=np.float16)
    loss = al.gaussian_nll_loss(x, np.zeros(n, np.float16), 1.0)
    assert loss.dtype == np.float16
    np.testing.assert_allclose(float(loss), 0.125, rtol=1e-3)


def test_bfloat16_on_torch() -> None:
    torch = pytest.importorskip("torch")
    x = torch.tensor([[0.5, 1.5], [2.0, 4.0]], dtype=torch.bfloat16)
    t = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.bfloat16)
    v = torch.tensor([[0.5], [1.5]], dtype=torch.bfloat16)
    want = torch.nn.functional.gaussian_nll_loss(x.double(), t.double(), v.double())
    got = al.gaussian_nll_loss(x, t, v)
    assert got.dtype == torch.bfloat16
    assert abs(float(got) - float(want)) < 1e-2 * abs(float(want))
    log_probs = torch.log_softmax(torch.randn(8, 5, dtype=torch.float64), dim=1)
    target = torch.arange(8) % 5
    want = torch.nn.functional.nll_loss(log_probs.bfloat16().double(), target)
    got = al.nll_loss(log_probs.bfloat16(), target)
    assert got.dtype == torch.bfloat16 and abs(float(got) - float(want)) < 1e-2 * float(want)


def test_unbatched_nll_uses_the_cpu_rule(xp: Any) -> None:
    x = from_numpy(xp, np.log(np.array([0.2, 0.3, 0.5])))
    w = from_numpy(xp, np.array([1.0, 3.0, 1.0]))
    loss = al.nll_loss(x, from_numpy(xp, np.array(1)), w)
    np.testing.assert_allclose(to_numpy(loss), (-3.0 * math.log(0.3)) / 3.0, rtol=1e-15)
    ignored = al.nll_loss(x, from_numpy(xp, np.array(1)), w, ignore_index=1)
    assert math.isnan(float(to_numpy(ignored)))


# (rows, targets, weight, reduction, PyTorch 2.13's answer): PyTorch accumulates from +0, so a
# total of zero is +0 whatever the zeros' signs, and 'mean' then divides it (a negative total
# weight gives -0).  Rows of 5,000 take the NumPy blocks, rows of 3 the small-batch index.
_ZERO_TOTALS = [
    (rows, targets, weight, reduction, -0.0 if weight == -1.0 and reduction == "mean"
     and targets != "ignored" else 0.0)
    for rows in (3, 5000)
    for targets in ("zeros", "ignored", "one kept")
    for weight in (None, 1.0, -1.0)
    for reduction in ("sum", "mean")
    if not (targets == "ignored" and reduction == "mean")  # NaN: 0 / 0
]


@pytest.mark.parametrize(("rows", "targets", "weight", "reduction", "want"), _ZERO_TOTALS)
@pytest.mark.parametrize("value", [0.0, -0.0])
def test_nll_zero_total_is_positive_zero(xp: Any, rows: int, targets: str, weight: Any,
                                         reduction: str, want: float, value: float) -> None:
    """NumPy's sum of the picked values, negated, gave -0 where PyTorch gives +0."""
    x = np.full((rows, 3), value)
    t = np.zeros(rows, dtype=np.int64)
    if targets != "zeros":
        t[1 if targets == "one kept" else 0:] = -100
    w = None if weight is None else from_numpy(xp, np.full(3, weight))
    args = (from_numpy(xp, x), from_numpy(xp, t), w)
    for loss in (al.nll_loss(*args, reduction=reduction),
                 al.nll_loss_and_grad(*args, reduction=reduction)[0]):
        got = float(to_numpy(loss))
        assert got == 0.0 and math.copysign(1.0, got) == math.copysign(1.0, want), (got, want)


def test_uint8_target_255_matches_ignore_index_255_not_minus_1(xp: Any) -> None:
    x = from_numpy(xp, np.log(np.full((3, 4), 0.25)))
    t = from_numpy(xp, np.array([0, 255, 1], dtype=np.uint8))
    np.testing.assert_allclose(to_numpy(al.nll_loss(x, t, ignore_index=255)), math.log(4))
    with pytest.raises(al.TargetOutOfRangeError, match="255"):
        al.nll_loss(x, t, ignore_index=-1)


def test_fused_kernels_switch_restores_the_setting() -> None:
    from arrayloss._dispatch import _use_fused

    assert _use_fused.get() is True
    with al.fused_kernels(False):
        assert _use_fused.get() is False
        with al.fused_kernels(True):
            assert _use_fused.get() is True
        assert _use_fused.get() is False
    assert _use_fused.get() is True
    with pytest.raises(TypeError, match="enabled must be a bool"):
        with al.fused_kernels(0):  # type: ignore[arg-type]
            pass


def test_module_repr_and_options() -> None:
    loss = al.GaussianNLLLoss(full=True, eps=1e-3, reduction="sum")
    assert repr(loss) == ("GaussianNLLLoss(full=True, eps=0.001, reduction='sum', validate=True, "
                          "log_var=False, beta=0.0)")
    assert "weight=<array of shape (3,)>" in repr(al.NLLLoss(np.ones(3)))


def test_blocked_numpy_path_matches_the_single_pass() -> None:
    # Large NumPy calls run in row blocks on threads; the result must be the same math.
    from arrayloss._agnostic._blocked import row_blocks

    rng = np.random.default_rng(5)
    x = rng.normal(size=(1 << 16, 32))
    t = rng.normal(size=(1, 32))
    v = rng.uniform(0.5, 2, (1 << 16, 1))
    upstream = rng.uniform(size=(1 << 16, 32))
    assert row_blocks(array_namespace(x), x.shape) is not None  # the blocked path runs
    d = x - t
    want_loss = 0.5 * (np.log(v) + d**2 / v)
    np.testing.assert_allclose(al.gaussian_nll_loss(x, t, v, reduction="none"), want_loss,
                               rtol=1e-13)
    np.testing.assert_allclose(al.gaussian_nll_loss(x, t, v), want_loss.mean(), rtol=1e-12)
    grad_x, grad_t, grad_v = al.gaussian_nll_loss_backward(upstream, x, t, v, reduction="none")
    np.testing.assert_allclose(grad_x, upstream * d / v, rtol=1e-13)
    np.testing.assert_allclose(grad_t, (-upstream * d / v).sum(axis=0, keepdims=True),
                               rtol=1e-11)
    np.testing.assert_allclose(
        grad_v, (0.5 * upstream * (1 / v - d**2 / v**2)).sum(axis=1, keepdims=True), rtol=1e-11)


def test_main_job_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from arrayloss.__main__ import main

    assert main(["--size", "512", "--budget", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "gaussian_nll forward" in out and "MISMATCH" not in out


def test_bfloat16_on_numpy_with_ml_dtypes() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    x = np.array([[0.5, 1.5], [2.0, 4.0]]).astype(bf16)
    t = np.array([[1.0, 2.0], [1.0, 2.0]]).astype(bf16)
    v = np.array([[0.5], [1.5]]).astype(bf16)
    x64, t64, v64 = (a.astype(np.float64) for a in (x, t, v))
    want = np.mean(0.5 * (np.log(v64) + (x64 - t64) ** 2 / v64))
    got = al.gaussian_nll_loss(x, t, v)
    assert got.dtype == bf16
    assert abs(float(got) - want) <= 8e-3 * abs(want)
    assert all(g.dtype == bf16 for g in al.gaussian_nll_loss_backward(1.0, x, t, v))
    log_probs = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    got = al.nll_loss(log_probs.astype(bf16), np.array([0, 2]))
    want = -(np.log(0.7) + np.log(0.8)) / 2
    assert got.dtype == bf16 and abs(float(got) - want) <= 8e-3 * want
