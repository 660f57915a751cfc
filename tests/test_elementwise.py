"""The elementwise losses (MSE, L1, smooth L1, Huber, both binary cross-entropies, KL
divergence, Poisson NLL) against PyTorch 2.13, on every backend of the matrix.

Every case comes from the shared table (``_elementwise_cases.py``); PyTorch is the oracle:
forward values, both gradients (its autograd), shapes, reductions, 0-d, empty and broadcast
inputs, float16, bfloat16, float32 and float64.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import _elementwise_cases as ec
import numpy as np
import pytest
from _helpers import from_numpy, to_numpy

import arrayloss as al

VARIANTS = [pytest.param(variant, id=variant.id) for variant in ec.VARIANTS]


def _grad_output(reduction: str, shape: tuple[int, ...], seed: int = 0) -> Any:
    if reduction != "none":
        return 0.75
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape)


def _check(xp: Any, variant: ec.Variant, input_shape: tuple[int, ...],
           target_shape: tuple[int, ...], reduction: str, dtype: str) -> None:
    """One call of forward, backward and loss-and-grad on ``xp`` against PyTorch."""
    values = ec.rounded(ec.make_arrays(variant, input_shape, target_shape), dtype, variant)
    loss_shape = np.broadcast_shapes(input_shape, target_shape)
    upstream = _grad_output(reduction, loss_shape)
    if reduction == "none":
        upstream = upstream.astype(values["input"].dtype)
    want = ec.oracle(variant, values, reduction, upstream)
    numpy = xp is al._validation._numpy_namespace()
    arrays = values if numpy else {name: from_numpy(xp, array) for name, array in values.items()}
    keywords = ec.arrayloss_keywords(variant, arrays)
    what = f"{variant.id} {input_shape} {target_shape} {reduction} {dtype}"

    loss = variant.function()(arrays["input"], arrays["target"], reduction=reduction, **keywords)
    ec.assert_close(to_numpy(loss), want["loss"], dtype, what + " loss")
    grad_upstream = (from_numpy(xp, upstream) if reduction == "none" and not numpy
                     else upstream)
    grads = variant.function("_backward")(grad_upstream, arrays["input"], arrays["target"],
                                          reduction=reduction, **keywords)
    ec.assert_close(to_numpy(grads[0]), want["grad_input"], dtype, what + " grad_input")
    if "grad_target" in want:
        ec.assert_close(to_numpy(grads[1]), want["grad_target"], dtype, what + " grad_target")
    else:
        assert grads[1] is None, "an integer target has no gradient"
    if reduction != "none":
        want_one = ec.oracle(variant, values, reduction, 1.0)
        loss, grads = variant.function("_and_grad")(arrays["input"], arrays["target"],
                                                    reduction=reduction, **keywords)
        ec.assert_close(to_numpy(loss), want_one["loss"], dtype, what + " and_grad loss")
        ec.assert_close(to_numpy(grads[0]), want_one["grad_input"], dtype,
                        what + " and_grad grad_input")


@pytest.fixture(autouse=True)
def _oracle() -> None:
    pytest.importorskip("torch", reason="PyTorch 2.13 is the oracle")
    warnings.filterwarnings("ignore", message=".*target size", category=UserWarning)
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides", category=UserWarning)


@pytest.mark.parametrize("variant", VARIANTS)
def test_numpy_every_shape_reduction_and_dtype(variant: ec.Variant) -> None:
    xp = al._validation._numpy_namespace()
    for (input_shape, target_shape), reduction, dtype in itertools.product(
            ec.shapes_for(variant), variant.reductions, ec.DTYPES):
        _check(xp, variant, input_shape, target_shape, reduction, dtype)


@pytest.mark.parametrize("variant", VARIANTS)
def test_backend_matrix(xp: Any, backend_name: str, variant: ec.Variant) -> None:
    dtypes = ("float32", "float64") if backend_name != "array_api_strict" else ("float64",)
    for (input_shape, target_shape), reduction, dtype in itertools.product(
            ec.shapes_for(variant), variant.reductions, dtypes):
        _check(xp, variant, input_shape, target_shape, reduction, dtype)


@pytest.mark.parametrize("variant", VARIANTS)
def test_numpy_blocks_in_threads(variant: ec.Variant) -> None:
    """Large inputs run in blocks (broadcast arguments along and across the blocks)."""
    xp = al._validation._numpy_namespace()
    shapes = [((600, 300), (600, 300)), ((3, 2**17), (3, 2**17))]
    if variant.broadcast_target:
        shapes += [((600, 300), (300,)), ((600, 300), (600, 1))]
    for (input_shape, target_shape), reduction in itertools.product(shapes, ("none", "sum")):
        _check(xp, variant, input_shape, target_shape, reduction, "float32")


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_autograd(variant: ec.Variant) -> None:
    import torch

    values = ec.make_arrays(variant, (4, 5), (4, 5))
    for reduction in variant.reductions:
        ours = {name: torch.tensor(v, requires_grad=name in ("input", "target")
                                   and not (name == "target" and variant.integer_target))
                for name, v in values.items()}
        theirs = {name: t.detach().clone().requires_grad_(t.requires_grad)
                  for name, t in ours.items()}
        loss = variant.function()(ours["input"], ours["target"], reduction=reduction,
                                  **ec.arrayloss_keywords(variant, ours))
        want = ec.torch_loss(variant, theirs, reduction)
        (loss.sum() * 1.5).backward()
        (want.sum() * 1.5).backward()
        for name in ("input", "target"):
            if theirs[name].requires_grad:
                torch.testing.assert_close(ours[name].grad, theirs[name].grad, equal_nan=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_jax_grad_and_jit(variant: ec.Variant) -> None:
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    import jax.numpy as jnp

    values = ec.make_arrays(variant, (3, 4), (3, 4))
    keywords = {name: jnp.asarray(values[name]) for name in variant.weights}
    function = variant.function()

    def objective(x: Any, t: Any) -> Any:
        return function(x, t, reduction="sum", **variant.options, **keywords)

    x, t = jnp.asarray(values["input"]), jnp.asarray(values["target"])
    grad_x, grad_t = jax.jit(jax.grad(objective, argnums=(0, 1)))(x, t)
    want = ec.oracle(variant, values, "sum", 1.0)
    ec.assert_close(np.asarray(jax.jit(objective)(x, t)), want["loss"], "float64", "jit loss")
    ec.assert_close(np.asarray(grad_x), want["grad_input"], "float64", "grad input")
    ec.assert_close(np.asarray(grad_t), want["grad_target"], "float64", "grad target")


@pytest.mark.parametrize("variant", VARIANTS)
def test_dask(variant: ec.Variant) -> None:
    da = pytest.importorskip("dask.array", reason="Dask is not installed")
    shapes = [((6, 5), (6, 5))] + ([((6, 5), (5,))] if variant.broadcast_target else [])
    for (input_shape, target_shape), reduction in itertools.product(shapes, variant.reductions):
        values = ec.make_arrays(variant, input_shape, target_shape)
        lazy = {name: da.from_array(v, chunks=2) for name, v in values.items()}
        keywords = ec.arrayloss_keywords(variant, lazy)
        upstream = _grad_output(reduction, np.broadcast_shapes(input_shape, target_shape))
        want = ec.oracle(variant, values, reduction, upstream)
        what = f"dask {variant.id} {input_shape} {target_shape} {reduction}"
        loss = variant.function()(lazy["input"], lazy["target"], reduction=reduction,
                                  **keywords)
        assert isinstance(loss, da.Array)
        ec.assert_close(loss.compute(), want["loss"], "float64", what)
        upstream_lazy = da.from_array(upstream, chunks=3) if reduction == "none" else upstream
        grads = variant.function("_backward")(upstream_lazy, lazy["input"], lazy["target"],
                                              reduction=reduction, **keywords)
        ec.assert_close(grads[0].compute(), want["grad_input"], "float64", what + " input")
        ec.assert_close(grads[1].compute(), want["grad_target"], "float64", what + " target")


@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_finite_differences(variant: ec.Variant) -> None:
    """Both gradients against central differences of the forward (smooth points only)."""
    values = ec.make_arrays(variant, (3, 4), (3, 4), seed=7)
    keywords = ec.arrayloss_keywords(variant, values)
    function = variant.function()
    grads = variant.function("_backward")(1.0, values["input"], values["target"],
                                          reduction="sum", **keywords)
    step = 1e-6
    for position, name in enumerate(("input", "target")):
        if name == "target" and (variant.integer_target or variant.options.get("full")):
            # Counts are integers; the Stirling term's mask at t = 1 has no derivative there.
            continue
        numeric = np.empty_like(values[name])
        for index in np.ndindex(values[name].shape):
            shifted = {key: value.copy() for key, value in values.items()}
            shifted[name][index] += step
            up = float(function(shifted["input"], shifted["target"], reduction="sum",
                                **ec.arrayloss_keywords(variant, shifted)))
            shifted[name][index] -= 2 * step
            down = float(function(shifted["input"], shifted["target"], reduction="sum",
                                  **ec.arrayloss_keywords(variant, shifted)))
            numeric[index] = (up - down) / (2 * step)
        np.testing.assert_allclose(grads[position], numeric, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{variant.id} d/d{name}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_module_holds_the_options(variant: ec.Variant) -> None:
    values = ec.make_arrays(variant, (4, 5), (4, 5))
    spec = next(module for module in _modules() if module._spec.name == variant.loss)
    weights = {name: values[name] for name in variant.weights}
    loss_object = spec(**weights, **variant.options, reduction="sum")
    want = variant.function()(values["input"], values["target"], reduction="sum",
                              **ec.arrayloss_keywords(variant, values))
    np.testing.assert_array_equal(loss_object(values["input"], values["target"]), want)
    loss, grads = loss_object.loss_and_grad(values["input"], values["target"], wrt="input")
    np.testing.assert_array_equal(loss, want)
    assert grads[1] is None
    assert repr(loss_object).startswith(spec.__name__ + "(")


def _modules() -> list[Any]:
    return [getattr(al, name) for name in ("MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss",
                                           "BCELoss", "BCEWithLogitsLoss", "KLDivLoss",
                                           "PoissonNLLLoss")]


def test_inputs_are_never_modified() -> None:
    for variant in ec.VARIANTS:
        values = ec.make_arrays(variant, (300, 400), (300, 400))
        copies = {name: value.copy() for name, value in values.items()}
        keywords = ec.arrayloss_keywords(variant, values)
        variant.function("_and_grad")(values["input"], values["target"], **keywords)
        for name, value in values.items():
            np.testing.assert_array_equal(value, copies[name], err_msg=variant.id)
