"""Autograd through arrayloss: PyTorch's ``loss.backward()`` and JAX's ``jax.grad`` /
``jax.jit`` give PyTorch's gradients on every parity case, through the explicit backward."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from _cases import Case, all_cases, cast_inputs, grad_output, one_per_stratum, torch_oracle
from _helpers import load_lazy_modules
from test_parity import TOLERANCE, _stored_case

import arrayloss as al

torch = pytest.importorskip("torch")

CASES = all_cases()


def _live(case: Case) -> Case:
    inputs, _ = _stored_case(case)
    return Case(case.name, case.loss, case.dtype, case.reduction, inputs, case.options,
                case.var_scalar, case.target_dtype)


def _arrayloss_call(case: Case, arrays: dict[str, Any]) -> Any:
    if case.loss == "gaussian":
        var = case.var_scalar if case.var_scalar is not None else arrays["var"]
        return al.gaussian_nll_loss(arrays["input"], arrays["target"], var,
                                    reduction=case.reduction, **case.options)
    function = al.nll_loss if case.loss == "nll" else al.cross_entropy
    return function(arrays["input"], arrays["target"], arrays.get("weight"),
                    reduction=case.reduction, **case.options)


def _assert_gradients(case: Case, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    rtol = TOLERANCE[case.dtype]
    for key, expected in want.items():
        if not key.startswith("grad_") or key not in got:
            continue
        scale = np.max(np.abs(expected[np.isfinite(expected)]), initial=1.0)
        np.testing.assert_allclose(got[key], expected, rtol=rtol, atol=rtol * scale,
                                   equal_nan=True, err_msg=f"{case.name}: {key}")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_torch_backward_matches_pytorch(case: Case) -> None:
    live = _live(case)
    cast = cast_inputs(live)
    tensors = {}
    for key, value in cast.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        if key != "weight" and tensor.is_floating_point():
            tensor.requires_grad_()
        tensors[key] = tensor
    loss = _arrayloss_call(live, tensors)
    assert loss.grad_fn is not None
    upstream = torch.from_numpy(grad_output(live, tuple(loss.shape))).to(loss.dtype)
    loss.backward(upstream)
    got = {f"grad_{key}": tensor.grad.to(torch.float64).numpy()
           for key, tensor in tensors.items() if tensor.grad is not None}
    assert "grad_input" in got
    _assert_gradients(live, got, torch_oracle(live))


def test_torch_gradcheck_float64() -> None:
    rng = np.random.default_rng(0)

    def tensor(values: np.ndarray) -> Any:
        return torch.tensor(values, dtype=torch.float64, requires_grad=True)

    x, t = tensor(rng.normal(size=(4, 3))), tensor(rng.normal(size=(4, 3)))
    v = tensor(rng.uniform(0.5, 2.0, (4, 1)))  # above eps: the clamp is not differentiable
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda a, b, c, r=reduction: al.gaussian_nll_loss(a, b, c, reduction=r, full=True),
            (x, t, v))
        assert torch.autograd.gradcheck(
            lambda a, b, c, r=reduction: al.gaussian_nll_loss(a, b, c, reduction=r,
                                                              log_var=True, beta=0.0),
            (x, t, v))
    log_probs = tensor(rng.normal(size=(5, 4, 2)))
    labels = torch.tensor(rng.integers(0, 4, (5, 2)))
    weight = torch.tensor(rng.uniform(0.5, 2, 4))
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda a, r=reduction: al.nll_loss(a, labels, weight, reduction=r), (log_probs,))


def test_torch_gradcheck_cross_entropy_float64() -> None:
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(4, 5, 2)), requires_grad=True)
    labels = torch.tensor(rng.integers(0, 5, (4, 2)))
    labels[0, 0] = -100
    weight = torch.tensor(rng.uniform(0.5, 2, 5))
    soft = torch.tensor(rng.dirichlet(np.ones(5), size=(4, 2)).transpose(0, 2, 1).copy(),
                        requires_grad=True)
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda a, r=reduction: al.cross_entropy(a, labels, weight, reduction=r,
                                                    label_smoothing=0.2), (logits,))
        # A probability target has a gradient too, as in PyTorch.
        assert torch.autograd.gradcheck(
            lambda a, q, r=reduction: al.cross_entropy(a, q, weight, reduction=r,
                                                       label_smoothing=0.1), (logits, soft))


def test_cross_entropy_under_torch_compile() -> None:
    """A small training step compiles, with a graph break at arrayloss's autograd.Function
    (its forward leaves PyTorch's ops), or runs eagerly: never a crash."""
    model = torch.nn.Linear(6, 4).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))

    def step() -> Any:
        model.zero_grad()
        loss = al.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        return loss

    eager = float(step().detach())
    want = model.weight.grad.clone()
    load_lazy_modules()
    compiled = torch.compile(step, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Dynamo's notes about lru_cache and graph breaks
        loss = compiled()
    assert float(loss.detach()) == pytest.approx(eager, rel=1e-12)
    torch.testing.assert_close(model.weight.grad, want)


def test_clamped_variance_gets_pytorchs_gradient_not_zero() -> None:
    v = torch.tensor([1e-9, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    al.gaussian_nll_loss(x, torch.zeros(3, dtype=torch.float64), v, reduction="sum").backward()
    got = v.grad.clone()
    v.grad = None
    torch.nn.functional.gaussian_nll_loss(x, torch.zeros(3, dtype=torch.float64), v,
                                          reduction="sum").backward()
    np.testing.assert_allclose(got.numpy(), v.grad.numpy(), rtol=1e-12)
    assert got[0] < -1e10  # 0.5 g (1/eps - d^2/eps^2): the clamp is invisible, as in PyTorch


def test_explicit_backward_outputs_carry_no_grad_fn() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    v = torch.rand(4, 1, requires_grad=True)
    grads = al.gaussian_nll_loss_backward(1.0, x, x.detach(), v)
    loss, fused = al.gaussian_nll_loss_and_grad(x, x.detach(), v)
    log_probs = torch.log_softmax(torch.randn(4, 3), 1).requires_grad_()
    nll_grad = al.nll_loss_backward(1.0, log_probs, torch.tensor([0, 1, 2, 0]))
    nll_loss, nll_fused = al.nll_loss_and_grad(log_probs, torch.tensor([0, 1, 2, 0]))
    ce_grad = al.cross_entropy_backward(1.0, log_probs, torch.tensor([0, 1, 2, 0]))
    ce_loss, ce_fused = al.cross_entropy_and_grad(log_probs, torch.tensor([0, 1, 2, 0]))
    for result in (*grads, loss, *fused, nll_grad, nll_loss, nll_fused, ce_grad, ce_loss,
                   ce_fused):
        assert result is None or (result.grad_fn is None and not result.requires_grad)


def test_double_backward_is_a_clear_error() -> None:
    x = torch.randn(3, requires_grad=True)
    loss = al.gaussian_nll_loss(x, torch.zeros(3), 1.0)
    with pytest.raises(RuntimeError, match=r"differentiable once.*create_graph=True"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_no_grad_and_plain_tensors_take_the_direct_path() -> None:
    x = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        assert al.gaussian_nll_loss(x, torch.zeros(3), 1.0).grad_fn is None
    assert al.gaussian_nll_loss(x.detach(), torch.zeros(3), 1.0).grad_fn is None


def test_torch_compile_training_step() -> None:
    # Works, with graph breaks where values are validated on the host (documented).
    model = torch.nn.Linear(3, 2, dtype=torch.float64)
    data = torch.randn(16, 3, dtype=torch.float64)
    target = torch.randn(16, 1, dtype=torch.float64)

    def step() -> Any:
        out = model(data)
        mean, log_var = out[:, :1], out[:, 1:]
        loss = al.gaussian_nll_loss(mean, target, log_var, log_var=True)
        loss.backward()
        return loss

    load_lazy_modules()
    compiled = torch.compile(step, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Dynamo's notes about lru_cache and graph breaks
        loss = compiled()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    eager = step()
    assert float(loss.detach()) == pytest.approx(float(eager.detach()))
    for compiled_grad, parameter in zip(grads, model.parameters(), strict=True):
        np.testing.assert_allclose(compiled_grad.numpy(), parameter.grad.numpy(), rtol=1e-12)


# ------------------------------------------------------------------ JAX

JAX_CASES = [case for case in CASES if case.dtype != "float16"]
# JAX compiles every operation again for each new shape: jax.grad on one case of each code
# path (one_per_stratum), and jax.jit(jax.grad) on every fifth case.
_JAX_GRAD_CASES = {case.name for case in one_per_stratum(JAX_CASES)}
JAX_RUNS = [pytest.param(case, jit, id=f"{case.name}-{'jit-grad' if jit else 'grad'}")
            for case in JAX_CASES for jit in (False, True)
            if (jit and case.seed % 5 == 0) or (not jit and case.name in _JAX_GRAD_CASES)]


@pytest.fixture(scope="module")
def jnp() -> Any:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax.numpy


@pytest.mark.parametrize(("case", "jit"), JAX_RUNS)
def test_jax_grad_matches_pytorch(jnp: Any, case: Case, jit: bool) -> None:
    import jax

    live = _live(case)
    cast = cast_inputs(live)
    names = [key for key, value in cast.items()
             if key != "weight" and np.issubdtype(value.dtype, np.floating)]
    fixed = {key: jnp.asarray(value) for key, value in cast.items() if key not in names}
    loss_shape = tuple(_arrayloss_call(live, {k: jnp.asarray(v) for k, v in cast.items()}).shape)
    upstream = jnp.asarray(grad_output(live, loss_shape).astype(live.dtype))

    def objective(*arrays: Any) -> Any:
        loss = _arrayloss_call(live, {**fixed, **dict(zip(names, arrays, strict=True))})
        return jnp.sum(loss * upstream)

    gradient = jax.grad(objective, argnums=tuple(range(len(names))))
    if jit:
        gradient = jax.jit(gradient)
    grads = gradient(*(jnp.asarray(cast[name]) for name in names))
    got = {f"grad_{name}": np.asarray(grad, dtype=np.float64)
           for name, grad in zip(names, grads, strict=True)}
    _assert_gradients(live, got, torch_oracle(live))
