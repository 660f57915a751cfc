"""Gaussian NLL's log-variance form and beta-NLL, against PyTorch composites and finite
differences (issue "Gaussian NLL for heteroscedastic regression")."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from _helpers import from_numpy, to_numpy

import arrayloss as al

torch = pytest.importorskip("torch")
F = torch.nn.functional

VAR_SHAPES = {"full": (6, 5), "rows": (6, 1), "one fewer": (6,), "columns": (1, 5)}
TOLERANCE = {"float32": 2e-5, "float64": 1e-11}


def _torch_reference(x: np.ndarray, t: np.ndarray, third: np.ndarray | float, *,
                     log_var: bool, beta: float, eps: float, full: bool, reduction: str,
                     upstream: np.ndarray | float) -> dict[str, Any]:
    """PyTorch's composite: F.gaussian_nll_loss on exp(s) (eps=0), times var.detach()**beta."""
    leaves = {"input": torch.tensor(x, requires_grad=True),
              "target": torch.tensor(t, requires_grad=True)}
    if isinstance(third, np.ndarray):
        leaves["var"] = torch.tensor(third, requires_grad=True)
        third_t: Any = leaves["var"]
        if third.ndim == x.ndim - 1:
            third_t = third_t.unsqueeze(-1)
        if third_t.shape != leaves["input"].shape:
            third_t = third_t.expand(leaves["input"].shape)
        var: Any = third_t.exp() if log_var else third_t
        clamped = var.detach() if log_var else var.detach().clamp(min=eps)
    else:  # PyTorch takes a Python float only
        var = math.exp(third) if log_var else float(third)
        clamped = torch.tensor(var if log_var else max(var, eps), dtype=torch.float64)
    elementwise = F.gaussian_nll_loss(leaves["input"], leaves["target"], var,
                                      eps=0.0 if log_var else eps, full=full, reduction="none")
    if beta:
        elementwise = elementwise * clamped**beta
    loss = {"none": elementwise, "mean": elementwise.mean(), "sum": elementwise.sum()}[reduction]
    loss.backward(torch.as_tensor(upstream, dtype=torch.float64).expand(loss.shape))
    result = {"loss": loss.detach().numpy()}
    for name, leaf in leaves.items():
        result[name] = leaf.grad.numpy()
    return result


def _draw(var_kind: str, log_var: bool, rng: np.random.Generator) -> tuple[Any, ...]:
    x = rng.normal(size=(6, 5))
    t = rng.normal(size=(6, 5))
    if var_kind == "scalar":
        third: Any = -0.7 if log_var else 0.6
    else:
        third = rng.normal(size=VAR_SHAPES[var_kind]) if log_var else rng.uniform(
            0.0, 2.0, VAR_SHAPES[var_kind])  # some below eps=0.05
    return x, t, third


@pytest.mark.parametrize("var_kind", [*VAR_SHAPES, "scalar"])
@pytest.mark.parametrize(("log_var", "beta"), [(True, 0.0), (False, 0.5), (True, 0.5),
                                               (False, 1.0), (True, 1.0)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_pytorch_composite(xp: Any, var_kind: str, log_var: bool, beta: float,
                                   reduction: str, dtype: str) -> None:
    rng = np.random.default_rng(abs(hash((var_kind, log_var, beta, reduction))) % 2**32)
    x, t, third = _draw(var_kind, log_var, rng)
    options = {"log_var": log_var, "beta": beta, "eps": 0.05, "full": True,
               "reduction": reduction}
    cast = [np.asarray(a, dtype=dtype) for a in (x, t)]
    third_cast = third if var_kind == "scalar" else np.asarray(third, dtype=dtype)
    want_loss = _torch_reference(*[a.astype(np.float64) for a in cast],
                                 third_cast if var_kind == "scalar" else third_cast.astype(
                                     np.float64), upstream=1.0, **options)["loss"]
    args = [from_numpy(xp, a) for a in cast] + [
        third_cast if var_kind == "scalar" else from_numpy(xp, third_cast)]
    rtol = TOLERANCE[dtype]
    loss = al.gaussian_nll_loss(*args, **options)
    np.testing.assert_allclose(to_numpy(loss), want_loss, rtol=rtol, atol=rtol)
    upstream64: Any = 0.75 if reduction != "none" else rng.uniform(0.5, 1.5, (6, 5))
    upstream = upstream64 if reduction != "none" else from_numpy(xp, upstream64.astype(dtype))
    want = _torch_reference(*[a.astype(np.float64) for a in cast],
                            third_cast if var_kind == "scalar" else third_cast.astype(
                                np.float64), upstream=upstream64, **options)
    grads = al.gaussian_nll_loss_backward(upstream, *args, **options)
    for name, grad in zip(("input", "target", "var"), grads, strict=True):
        if name not in want:
            assert grad is None
            continue
        np.testing.assert_allclose(to_numpy(grad), want[name], rtol=rtol, atol=rtol,
                                   err_msg=name)
    if reduction != "none":
        fused_loss, fused = al.gaussian_nll_loss_and_grad(*args, **options)
        np.testing.assert_allclose(to_numpy(fused_loss), want_loss, rtol=rtol, atol=rtol)
        for name, grad in zip(("input", "target", "var"), fused, strict=True):
            if name in want:
                np.testing.assert_allclose(to_numpy(grad) * upstream64, want[name],
                                           rtol=rtol, atol=rtol, err_msg=f"fused {name}")


@pytest.mark.parametrize(("log_var", "beta"), [(True, 0.0), (False, 0.5), (True, 1.0)])
def test_finite_differences(log_var: bool, beta: float) -> None:
    rng = np.random.default_rng(3)
    x, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    third = rng.normal(size=(4, 1)) if log_var else rng.uniform(0.5, 2.0, (4, 1))
    options = {"log_var": log_var, "beta": beta, "reduction": "sum"}
    _, grads = al.gaussian_nll_loss_and_grad(x, t, third, **options)
    # beta-NLL's weight is a constant for the gradient: difference with the weight frozen.
    frozen = (np.exp(third) if log_var else np.maximum(third, 1e-6)) ** beta

    def objective(x_: np.ndarray, t_: np.ndarray, third_: np.ndarray) -> float:
        elementwise = al.gaussian_nll_loss(x_, t_, third_, log_var=log_var, reduction="none")
        return float((elementwise * frozen).sum())

    for position, argument in enumerate((x, t, third)):
        numeric = np.zeros_like(argument)
        for index in np.ndindex(argument.shape):
            step = 1e-6 * max(1.0, abs(argument[index]))
            up, down = argument.copy(), argument.copy()
            up[index] += step
            down[index] -= step
            args_up = [x, t, third]
            args_down = [x, t, third]
            args_up[position], args_down[position] = up, down
            numeric[index] = (objective(*args_up) - objective(*args_down)) / (2 * step)
        np.testing.assert_allclose(grads[position], numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("log_var_value", [80.0, -80.0])
def test_extreme_log_variances_stay_finite_and_exact(log_var_value: float) -> None:
    x, t = np.array([0.5, -2.0]), np.zeros(2)
    s = np.full(2, log_var_value)
    loss, (grad_x, _, grad_s) = al.gaussian_nll_loss_and_grad(x, t, s, log_var=True,
                                                              reduction="sum")
    d2 = x**2
    np.testing.assert_allclose(loss, np.sum(0.5 * (s + d2 * np.exp(-s))), rtol=1e-14)
    np.testing.assert_allclose(grad_x, x * np.exp(-s), rtol=1e-14)
    np.testing.assert_allclose(grad_s, 0.5 * (1 - d2 * np.exp(-s)), rtol=1e-14)
    assert np.all(np.isfinite(grad_s)) and np.isfinite(float(loss))
    # float32 too: exp(-s) (never 1 / exp(s)) keeps it finite at |s| = 80.
    loss32 = al.gaussian_nll_loss(x.astype(np.float32), t.astype(np.float32),
                                  s.astype(np.float32), log_var=True, reduction="sum")
    assert np.isfinite(float(loss32))


def test_beta_zero_is_plain_gaussian_nll_bit_for_bit(xp: Any) -> None:
    rng = np.random.default_rng(4)
    args = [from_numpy(xp, a) for a in (rng.normal(size=(7, 3)), rng.normal(size=(7, 3)),
                                        rng.uniform(0.1, 2.0, (7, 1)))]
    for reduction in ("none", "mean", "sum"):
        plain = al.gaussian_nll_loss(*args, reduction=reduction)
        zero = al.gaussian_nll_loss(*args, reduction=reduction, beta=0.0, log_var=False)
        assert to_numpy(plain).tobytes() == to_numpy(zero).tobytes()
    plain_grads = al.gaussian_nll_loss_and_grad(*args)[1]
    zero_grads = al.gaussian_nll_loss_and_grad(*args, beta=0)[1]
    for a, b in zip(plain_grads, zero_grads, strict=True):
        assert to_numpy(a).tobytes() == to_numpy(b).tobytes()


def test_log_variance_may_be_negative_and_skips_eps() -> None:
    x, t = np.array([1.0]), np.array([0.0])
    s = np.array([-5.0])
    loss = al.gaussian_nll_loss(x, t, s, log_var=True, eps=1.0, reduction="sum")
    assert float(loss) == pytest.approx(0.5 * (-5.0 + np.exp(5.0)))
    assert float(al.gaussian_nll_loss(x, t, -5, log_var=True)) == pytest.approx(float(loss))


@pytest.mark.parametrize(("beta", "error", "message"), [
    (-0.5, ValueError, "beta must be finite and >= 0"),
    (float("nan"), ValueError, "beta must be finite"),
    (float("inf"), ValueError, "beta must be finite"),
    ("0.5", TypeError, "beta must be a real number, got str"),
    (10**400, ValueError, "beta is too large"),
])
def test_bad_beta(beta: Any, error: type, message: str) -> None:
    x = np.zeros(3)
    for call in (lambda: al.gaussian_nll_loss(x, x, 1.0, beta=beta),
                 lambda: al.gaussian_nll_loss_backward(1.0, x, x, 1.0, beta=beta),
                 lambda: al.GaussianNLLLoss(beta=beta)):
        with pytest.raises(error, match=message):
            call()


def test_bad_log_var_flag_and_module_options() -> None:
    with pytest.raises(TypeError, match="log_var must be a bool"):
        al.gaussian_nll_loss(np.zeros(2), np.zeros(2), 1.0, log_var=1)
    module = al.GaussianNLLLoss(log_var=True, beta=0.5, reduction="sum")
    x, t, s = np.array([1.0, 2.0]), np.zeros(2), np.array([0.0, np.log(4.0)])
    expected = al.gaussian_nll_loss(x, t, s, log_var=True, beta=0.5, reduction="sum")
    assert float(module(x, t, s)) == float(expected)
    assert module.loss_and_grad(x, t, s)[1][2] is not None
    for log_var, beta in itertools.product((False, True), (0.0, 0.5)):
        assert f"log_var={log_var}, beta={beta}" in repr(al.GaussianNLLLoss(log_var=log_var,
                                                                            beta=beta))
