"""The elementwise losses (MSE, L1, smooth L1, Huber, both binary cross-entropies, KL
divergence, Poisson NLL) against PyTorch 2.13, on every backend of the matrix.

Every case comes from the shared table (``_elementwise_cases.py``); PyTorch is the oracle:
forward values, both gradients (its autograd), shapes, reductions, 0-d, empty and broadcast
inputs, float16, bfloat16, float32 and float64.
"""

from __future__ import annotations

import inspect
import itertools
import re
import warnings
from typing import Any

import _elementwise_cases as ec
import numpy as np
import pytest
from _helpers import from_numpy, load_lazy_modules, to_numpy

import arrayloss as al

VARIANTS = [pytest.param(variant, id=variant.id) for variant in ec.VARIANTS]


def _grad_output(reduction: str, shape: tuple[int, ...], seed: int = 0) -> Any:
    if reduction != "none":
        return 0.75
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape)


def _scalar_reductions(variant: ec.Variant) -> tuple[str, ...]:
    """'sum', and 'mean' too where a weight's sum divides it (the weighted-mean adapter)."""
    return ("sum", "mean") if ec.spec(variant).mean_over and variant.weights else ("sum",)


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


@pytest.mark.parametrize("variant", VARIANTS)
def test_numpy_every_shape_reduction_and_dtype(variant: ec.Variant) -> None:
    xp = al._validation._numpy_namespace()
    for (input_shape, target_shape), reduction, dtype in itertools.product(
            ec.shapes_for(variant), variant.reductions, ec.DTYPES):
        _check(xp, variant, input_shape, target_shape, reduction, dtype)


@pytest.mark.parametrize("variant", VARIANTS)
def test_backend_matrix(xp: Any, backend_name: str, variant: ec.Variant) -> None:
    dtypes: tuple[str, ...] = ("float32", "float64")
    if backend_name == "array_api_strict":
        dtypes = ("float64",)
    elif backend_name == "jax":
        # JAX compiles each operation again for every new shape and dtype: one dtype per
        # variant, float32 and float64 in turn (NumPy runs every dtype on every variant).
        dtypes = (dtypes[ec.VARIANTS.index(variant) % 2],)
    for (input_shape, target_shape), reduction, dtype in itertools.product(
            ec.shapes_for(variant), variant.reductions, dtypes):
        _check(xp, variant, input_shape, target_shape, reduction, dtype)


@pytest.mark.parametrize("variant", ec.SPECIAL_VARIANTS, ids=lambda v: v.id)
def test_special_values_on_every_backend(xp: Any, backend_name: str,
                                         variant: ec.Variant) -> None:
    """NaN, infinite and kink differences (the case table's): PyTorch's gradients, 0 where
    its sign(NaN) is 0 (l1, smooth L1 with beta = 0), NaN where its branches give NaN; in
    NumPy's blocks too (the values tiled past a block)."""
    dtype = "float32" if backend_name == "jax" else "float64"  # (JAX's default dtype)
    values = ec.special_arrays(dtype)
    if backend_name == "numpy":
        values = {name: np.tile(v, 200_000) for name, v in values.items()}
    arrays = {name: from_numpy(xp, v) for name, v in values.items()}
    for reduction in ("none", "sum"):
        upstream: Any = 0.5
        if reduction == "none":
            upstream = np.linspace(-1.5, 1.5, values["input"].size).astype(dtype)
        want = ec.oracle(variant, values, reduction, upstream)
        what = f"{backend_name} {variant.id} {reduction}"
        grads = variant.function("_backward")(
            from_numpy(xp, upstream) if reduction == "none" else upstream, arrays["input"],
            arrays["target"], reduction=reduction, **variant.options)
        ec.assert_close(to_numpy(grads[0]), want["grad_input"], dtype, what + " grad_input")
        ec.assert_close(to_numpy(grads[1]), want["grad_target"], dtype, what + " grad_target")
        if reduction == "sum":
            loss, grads = variant.function("_and_grad")(arrays["input"], arrays["target"],
                                                        reduction=reduction, **variant.options)
            want_one = ec.oracle(variant, values, reduction, 1.0)
            ec.assert_close(to_numpy(loss), want_one["loss"], dtype, what + " loss")
            ec.assert_close(to_numpy(grads[0]), want_one["grad_input"], dtype,
                            what + " and_grad grad_input")


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"])
def test_a_target_of_another_shape_warns_as_pytorch_does(name: str) -> None:
    """PyTorch's regression losses warn where the target's shape differs from the input's (an
    (N,) target against an (N, 1) input broadcasts to (N, N)); so does arrayloss, at the
    caller's line, through the functions, the loss object and the torch CPU lane alike."""
    import torch

    x, t = np.ones((4, 1)), np.arange(4.0)
    with pytest.warns(UserWarning, match=r"^Using a target size") as theirs:
        getattr(torch.nn.functional, name)(torch.tensor(x), torch.tensor(t))
    module = al.__dict__[{"mse_loss": "MSELoss", "l1_loss": "L1Loss",
                          "smooth_l1_loss": "SmoothL1Loss", "huber_loss": "HuberLoss"}[name]]()
    leaf = torch.tensor(x, requires_grad=True)
    calls = [lambda: getattr(al, name)(x, t), lambda: getattr(al, name + "_and_grad")(x, t),
             lambda: module(x, t), lambda: getattr(al, name)(torch.tensor(x), torch.tensor(t)),
             lambda: getattr(al, name)(leaf, torch.tensor(t)).backward()]
    jax = pytest.importorskip("jax")
    calls.append(lambda: jax.grad(lambda a: getattr(al, name)(a, jax.numpy.asarray(t)))(
        jax.numpy.asarray(x)))
    for call in calls:
        with pytest.warns(UserWarning, match=r"^Using a target size \(4,\) that is different "
                                             r"to the input size \(4, 1\)") as ours:
            call()
        # Once, at the caller's line (the autograd bridges' calls made again do not warn).
        assert len(ours) == 1 and ours[0].filename == __file__ and len(theirs) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(al, name)(x, x)  # the same shape: no warning
        al.kl_div(x, t)  # (PyTorch's kl_div does not warn either)


def test_kl_div_target_gradient_where_no_upstream_reaches(xp: Any) -> None:
    """PyTorch's target gradient is xlogy(G, t) + G t / t - G x: 0 where G is 0, a negative
    target's NaN log included (a masked slot), and NaN at t = 0 (0 / 0) as everywhere."""
    import torch

    x = np.array([-1.2, -0.7, -0.5, 0.3, 0.1])
    t = np.array([-1.0, 0.3, 0.0, 0.0, -2.0])
    upstream = np.array([0.0, 1.0, 0.0, 1.0, 2.0])
    leaf = torch.tensor(t, requires_grad=True)
    torch.nn.functional.kl_div(torch.tensor(x), leaf, reduction="none").backward(
        torch.tensor(upstream))
    got = al.kl_div_backward(from_numpy(xp, upstream), from_numpy(xp, x), from_numpy(xp, t),
                             reduction="none")[1]
    np.testing.assert_allclose(to_numpy(got), leaf.grad.numpy(), rtol=1e-6, equal_nan=True)
    leaf.grad = None
    (torch.nn.functional.kl_div(torch.tensor(x), leaf, reduction="sum") * 0).backward()
    got = al.kl_div_backward(0.0, from_numpy(xp, x), from_numpy(xp, t), reduction="sum")[1]
    np.testing.assert_allclose(to_numpy(got), leaf.grad.numpy(), rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kl_div_log_target_gradient_in_pytorchs_order(xp: Any, dtype: str) -> None:
    """With ``log_target``, PyTorch's autograd through exp(t) (t - x) gives the target
    G (t - x) exp(t) + G exp(t): NaN where G (t - x) overflows against exp(t) = 0 (or
    against exp(t) = inf), which exp(t) (t - x + 1) G would give as -0 (or -inf)."""
    import torch

    big = float(np.finfo(dtype).max)
    x = np.array([0.5, np.inf, 0.3, -1.2, 2.0], dtype=dtype)
    t = np.array([-big, 1000.0 if dtype == "float64" else 100.0, -0.4, 1.5, -3.0], dtype=dtype)
    upstream = np.array([1.5, 1.0, 0.7, 1.0, 2.0], dtype=dtype)
    leaf = torch.tensor(t, requires_grad=True)
    torch.nn.functional.kl_div(torch.tensor(x), leaf, reduction="none",
                               log_target=True).backward(torch.tensor(upstream))
    got = to_numpy(al.kl_div_backward(from_numpy(xp, upstream), from_numpy(xp, x),
                                      from_numpy(xp, t), reduction="none", log_target=True)[1])
    want = leaf.grad.numpy()
    assert np.isnan(want[:2]).all()
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)


def test_binary_cross_entropy_clamp_is_pytorchs_float_constant(xp: Any) -> None:
    """PyTorch clamps x (1 - x) at a C++ float 1e-12 (9.99999996e-13) in every dtype: a
    float64 gradient at x = 0, 1 or 1e-13 divides by that, 4e-9 away from 1e-12."""
    import torch

    x = np.array([0.0, 1.0, 1e-13, 0.5])
    t = np.array([0.25, 0.5, 0.3, 0.2])
    leaf = torch.tensor(x, requires_grad=True)
    torch.nn.functional.binary_cross_entropy(leaf, torch.tensor(t), reduction="sum").backward()
    got = al.binary_cross_entropy_backward(1.0, from_numpy(xp, x), from_numpy(xp, t),
                                           reduction="sum")[0]
    np.testing.assert_allclose(to_numpy(got), leaf.grad.numpy(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_numpy_blocks_in_threads(variant: ec.Variant) -> None:
    """Large inputs run in blocks (broadcast arguments along and across the blocks)."""
    xp = al._validation._numpy_namespace()
    shapes = [((600, 300), (600, 300)), ((3, 2**17), (3, 2**17))]
    if variant.broadcast_target:
        shapes += [((600, 300), (300,)), ((600, 300), (600, 1))]
    reductions = ("none", *_scalar_reductions(variant))
    for (input_shape, target_shape), reduction in itertools.product(shapes, reductions):
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

    jax.config.update("jax_enable_x64", True)  # as the backend matrix runs JAX (conftest)

    values = ec.make_arrays(variant, (3, 4), (3, 4))
    keywords = {name: jnp.asarray(values[name]) for name in variant.weights}
    function = variant.function()

    x, t = jnp.asarray(values["input"]), jnp.asarray(values["target"])
    for reduction in _scalar_reductions(variant):
        def objective(x: Any, t: Any, reduction: str = reduction) -> Any:
            return function(x, t, reduction=reduction, **variant.options, **keywords)

        grad_x, grad_t = jax.jit(jax.grad(objective, argnums=(0, 1)))(x, t)
        want = ec.oracle(variant, values, reduction, 1.0)
        what = f"{variant.id} {reduction}"
        ec.assert_close(np.asarray(jax.jit(objective)(x, t)), want["loss"], "float64",
                        what + " jit loss")
        ec.assert_close(np.asarray(grad_x), want["grad_input"], "float64", what + " input")
        ec.assert_close(np.asarray(grad_t), want["grad_target"], "float64", what + " target")


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
    step = 1e-6
    for reduction, (position, name) in itertools.product(_scalar_reductions(variant),
                                                         enumerate(("input", "target"))):
        if name == "target" and (variant.integer_target or variant.options.get("full")):
            # Counts are integers; the Stirling term's mask at t = 1 has no derivative there.
            continue
        grads = variant.function("_backward")(1.0, values["input"], values["target"],
                                              reduction=reduction, **keywords)
        numeric = np.empty_like(values[name])
        for index in np.ndindex(values[name].shape):
            shifted = {key: value.copy() for key, value in values.items()}
            shifted[name][index] += step
            up = float(function(shifted["input"], shifted["target"], reduction=reduction,
                                **ec.arrayloss_keywords(variant, shifted)))
            shifted[name][index] -= 2 * step
            down = float(function(shifted["input"], shifted["target"], reduction=reduction,
                                  **ec.arrayloss_keywords(variant, shifted)))
            numeric[index] = (up - down) / (2 * step)
        np.testing.assert_allclose(grads[position], numeric, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{variant.id} {reduction} d/d{name}")


@pytest.mark.parametrize("variant", [
    pytest.param(variant, id=variant.id) for variant in ec.VARIANTS
    if all(ec.spec(variant).argument(name).held for name in variant.weights)])
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


@pytest.mark.parametrize("name", ["MSELoss", "L1Loss", "HuberLoss"])
def test_per_element_weights_come_with_each_call_not_the_object(name: str) -> None:
    # PyTorch's modules take no per-element weight (F.mse_loss does, with each call).
    torch = pytest.importorskip("torch")
    assert "weight" not in inspect.signature(getattr(al, name)).parameters
    assert "weight" not in inspect.signature(getattr(torch.nn, name)).parameters
    with pytest.raises(TypeError, match="weight"):
        getattr(al, name)(weight=np.ones(3))


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


class TestErrors:
    """Bad arguments raise before any work, naming the argument and what was expected."""

    x = np.array([0.2, 0.6, 0.9])

    def test_reduction(self) -> None:
        with pytest.raises(ValueError, match=r"reduction must be one of 'none', 'mean' or "
                                             r"'sum', got 'batchmean'"):
            al.mse_loss(self.x, self.x, reduction="batchmean")
        with pytest.raises(ValueError, match="'sum' or 'batchmean', got 'avg'"):
            al.kl_div(self.x, self.x, reduction="avg")
        with pytest.raises(ValueError, match="reduction='mean' or 'sum'"):
            al.mse_loss_and_grad(self.x, self.x, reduction="none")

    def test_options(self) -> None:
        with pytest.raises(ValueError, match=r"beta must be finite and >= 0 \(0 gives the L1 "
                                             r"loss\), got -1.0"):
            al.smooth_l1_loss(self.x, self.x, beta=-1.0)
        with pytest.raises(ValueError, match=r"delta must be finite and > 0, got 0\.0"):
            al.huber_loss(self.x, self.x, delta=0.0)
        with pytest.raises(ValueError, match=r"delta must be finite and > 0, got inf"):
            al.HuberLoss(delta=float("inf"))
        with pytest.raises(TypeError, match="delta must be a real number, got str"):
            al.huber_loss(self.x, self.x, delta="1")
        with pytest.raises(TypeError, match=r"log_target must be a bool \(True or False\)"):
            al.kl_div(self.x, self.x, log_target=1)
        with pytest.raises(ValueError, match="eps must be finite and >= 0"):
            al.poisson_nll_loss(self.x, self.x, eps=-1e-8)
        with pytest.raises(TypeError, match="unexpected keyword argument 'size_average'"):
            al.mse_loss(self.x, self.x, size_average=True)
        with pytest.raises(TypeError, match="positional"):
            al.kl_div(self.x, self.x, "mean")

    def test_probability_ranges(self) -> None:
        with pytest.raises(ValueError, match=r"^input has entries outside \[0, 1\] \(or "
                                             r"NaN\): .*binary_cross_entropy_with_logits"):
            al.binary_cross_entropy(np.array([0.5, 1.5]), np.array([1.0, 0.0]))
        with pytest.raises(ValueError, match=r"^input has entries outside \[0, 1\]"):
            al.binary_cross_entropy_backward(1.0, np.array([np.nan, 0.5]), np.array([1.0, 0.0]))
        with pytest.raises(ValueError, match=r"^target has entries outside \[0, 1\]"):
            al.binary_cross_entropy(np.array([0.5, 0.5]), np.array([1.0, -0.5]))
        # validate=False skips the check: PyTorch's formula on whatever it is given.
        loss = al.binary_cross_entropy(np.array([1.5]), np.array([1.0]), validate=False,
                                       reduction="none")
        assert np.isnan(loss).all()

    def test_shapes(self) -> None:
        with pytest.raises(ValueError, match=r"target with shape \(2,\) does not broadcast "
                                             r"against input with shape \(3,\)"):
            al.mse_loss(self.x, np.zeros(2))
        with pytest.raises(ValueError, match=r"target with shape \(3,\) must have input's "
                                             r"shape \(3, 1\)"):
            al.binary_cross_entropy(self.x[:, None], self.x)
        with pytest.raises(ValueError, match=r"weight with shape \(2, 3\) does not broadcast "
                                             r"to the loss's shape \(3,\)"):
            al.binary_cross_entropy(self.x, self.x, np.ones((2, 3)))
        with pytest.raises(ValueError, match=r"pos_weight with shape \(4,\)"):
            al.binary_cross_entropy_with_logits(self.x, self.x, pos_weight=np.ones(4))
        with pytest.raises(ValueError, match=r"grad_output must have the loss's shape \(3,\)"):
            al.l1_loss_backward(np.ones(2), self.x, self.x, reduction="none")

    def test_dtypes(self) -> None:
        with pytest.raises(TypeError, match="input must have a real floating dtype, got int64"):
            al.mse_loss(np.arange(3), self.x)
        with pytest.raises(TypeError, match="target must have a real floating dtype, got "
                                            "int64; cast it with astype"):
            al.kl_div(self.x, np.arange(3))
        with pytest.raises(TypeError, match="target must have a real floating or integer"):
            al.l1_loss(self.x, np.array([True, False, True]))
        with pytest.raises(TypeError, match="weight must have a real floating dtype"):
            al.binary_cross_entropy(self.x, self.x, np.arange(3))
        with pytest.raises(TypeError, match="target must be an array, got list"):
            al.mse_loss(self.x, [0.0, 1.0, 2.0])

    def test_wrt(self) -> None:
        with pytest.raises(ValueError, match="wrt may contain only 'input', 'target', got "
                                             "'weight'"):
            al.binary_cross_entropy_backward(1.0, self.x, self.x, wrt="weight")
        grads = al.mse_loss_backward(1.0, self.x, np.arange(3), wrt=("input", "target"))
        assert grads[1] is None  # an integer target has no gradient


class TestPerElementWeights:
    """PyTorch 2.13's ``weight=`` of mse_loss, l1_loss and huber_loss beyond the case table:
    its shape rule, its dtypes, weights that sum to zero, and autograd."""

    names = ("mse_loss", "l1_loss", "huber_loss")
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    t = np.array([0.0, 0.5, -0.25])

    @pytest.mark.parametrize("name", names)
    def test_weight_must_have_the_inputs_shape(self, name: str) -> None:
        # PyTorch: "Weights and input must have the same size.", even where it broadcasts.
        for shape in ((3,), (1, 3), (2, 3, 1)):
            with pytest.raises(ValueError, match=rf"^weight with shape {re.escape(str(shape))}"
                                                 r" must have input's shape \(2, 3\)"):
                getattr(al, name)(self.x, self.t, weight=np.ones(shape))

    @pytest.mark.parametrize("name", names)
    def test_dtypes_as_pytorch(self, name: str) -> None:
        torch = pytest.importorskip("torch")
        F = torch.nn.functional
        x32, t32 = self.x.astype(np.float32), self.t.astype(np.float32)
        mask = np.array([[True, False, True], [True, True, False]])
        for weight in (np.array([[1, 2, 3], [0, 1, 4]]), self.x.astype(np.float64) ** 2, mask):
            ours = getattr(al, name)(x32, t32, weight=weight)
            theirs = getattr(F, name)(torch.tensor(x32), torch.tensor(t32),
                                      weight=torch.tensor(weight))
            assert ours.dtype == np.dtype(str(theirs.dtype).removeprefix("torch."))
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
        with pytest.raises(TypeError, match="weight must have a real floating, integer or "
                                            "bool dtype, got complex128"):
            getattr(al, name)(self.x, self.t, weight=np.ones((2, 3), dtype=complex))

    @pytest.mark.parametrize("name", names)
    def test_weight_is_keyword_only(self, name: str) -> None:
        # PyTorch's comes after reduction (and the legacy arguments): never third.
        with pytest.raises(TypeError, match="positional"):
            getattr(al, name)(self.x, self.t, np.ones((2, 3)))

    @pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
    def test_float16_weighted_mean_is_rounded_once(self, name: str) -> None:
        # PyTorch divides two float16 sums, inf / inf past 65504 (NaN): documented.
        x = np.full((300, 400), 1.5, dtype=np.float16)
        weight = np.ones(x.shape, dtype=np.float16)
        loss = getattr(al, name)(x, np.zeros_like(x), weight=weight)
        assert loss.dtype == np.float16
        assert float(loss) == (2.25 if name == "mse_loss" else 1.5)

    @pytest.mark.parametrize("name", names)
    def test_weights_summing_to_zero_give_pytorchs_infinities_and_nans(self, name: str
                                                                       ) -> None:
        torch = pytest.importorskip("torch")
        weight = np.array([[1.0, -1.0, 0.0], [2.0, -2.0, 0.0]])
        x = torch.tensor(self.x, requires_grad=True)
        want = getattr(torch.nn.functional, name)(x, torch.tensor(self.t),
                                                  weight=torch.tensor(weight))
        want.backward()
        loss, (grad_input, grad_target) = getattr(al, name + "_and_grad")(self.x, self.t,
                                                                         weight=weight)
        np.testing.assert_array_equal(loss, want.detach().numpy())
        np.testing.assert_allclose(grad_input, x.grad.numpy(), rtol=1e-12)
        assert grad_target.shape == self.t.shape

    @pytest.mark.parametrize("name", names)
    def test_torch_autograd_takes_the_weight_as_a_constant(self, name: str) -> None:
        torch = pytest.importorskip("torch")
        weight = torch.tensor(self.x ** 2, requires_grad=True)
        x = torch.tensor(self.x, requires_grad=True)
        getattr(al, name)(x, torch.tensor(self.t), weight=weight).backward()
        assert weight.grad is None  # documented: PyTorch's weight has a gradient
        x_torch = torch.tensor(self.x, requires_grad=True)
        getattr(torch.nn.functional, name)(x_torch, torch.tensor(self.t),
                                           weight=weight.detach()).backward()
        np.testing.assert_allclose(x.grad.numpy(), x_torch.grad.numpy(), rtol=1e-12)


def test_empty_and_0d_results_are_arrays() -> None:
    empty = np.zeros((0, 3))
    assert np.isnan(al.mse_loss(empty, empty))
    assert al.l1_loss(empty, empty, reduction="sum") == 0
    assert np.isnan(al.kl_div(empty, empty, reduction="batchmean"))
    for loss in (al.huber_loss(np.float64(1.5) * np.ones(()), np.zeros(())),
                 al.mse_loss(np.ones(()), np.zeros(()), reduction="none")):
        assert isinstance(loss, np.ndarray) and loss.shape == ()


@pytest.mark.parametrize("variant", VARIANTS)
def test_numpy_blocks_are_the_generic_math_bit_for_bit(variant: ec.Variant) -> None:
    """The blocks (threads, reused buffers) give every element and gradient exactly what the
    generic code on whole arrays gives; only a reduced sum's order differs."""
    from arrayloss._elementwise import generic
    from arrayloss._elementwise.call import make_call

    values = ec.rounded(ec.make_arrays(variant, (300, 700), (300, 700)), "float32", variant)
    spec = next(spec for spec in al.losses.SPECS if spec.name == variant.loss)
    arrays = {argument.name: values.get(argument.name) for argument in spec.arguments}
    options = {option.name: variant.options.get(option.name, option.default)
               for option in spec.options}
    call = make_call(spec, arrays, reduction="none", validate=True, options=options)
    backend = generic.ElementwiseBackend(spec)
    upstream = np.random.default_rng(3).uniform(0.5, 1.5, call.loss_shape).astype(np.float32)
    wanted = frozenset(name for name in ("input", "target") if values[name].dtype.kind == "f")
    blocked_loss, blocked_grads = backend._run(call, True, upstream, wanted)
    with np.errstate(all="ignore"):  # the whole-array path, run directly
        whole_loss, whole_grads = backend._whole(call, True, upstream, wanted)
    np.testing.assert_array_equal(blocked_loss, whole_loss)
    for name in wanted:
        np.testing.assert_array_equal(blocked_grads[name], whole_grads[name], err_msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Dynamo's notes on functools caches
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_torch_func_and_compile(variant: ec.Variant) -> None:
    """torch.func.grad and vmap(grad), and torch.compile(fullgraph=True) with validate=False,
    through the same bridge as every loss."""
    import torch

    values = ec.make_arrays(variant, (3, 4), (3, 4))
    tensors = {name: torch.tensor(value) for name, value in values.items()}
    keywords = ec.arrayloss_keywords(variant, tensors)
    # A weight per element (mse_loss's) is mapped by vmap with the input; others are held.
    mapped = [name for name in variant.weights
              if ec.spec(variant).argument(name).shape == "input"]
    for name in mapped:
        del keywords[name]
    function = variant.function()

    arguments = (tensors["input"], tensors["target"], *(tensors[name] for name in mapped))
    for reduction in _scalar_reductions(variant):
        def ours(x: Any, t: Any, *weights: Any, reduction: str = reduction) -> Any:
            return function(x, t, reduction=reduction, validate=False, **keywords,
                            **dict(zip(mapped, weights, strict=True)))

        what = f"{variant.id} {reduction}"
        want = ec.oracle(variant, values, reduction, 1.0)
        grad = torch.func.grad(ours)(*arguments)
        ec.assert_close(grad.numpy(), want["grad_input"], "float64", what + " func.grad")
        if reduction == "sum":  # (vmap maps rows: a row's 'mean' is another mean)
            rows = torch.func.vmap(torch.func.grad(ours))(*arguments)
            ec.assert_close(rows.numpy(), want["grad_input"], "float64", what + " vmap")
        torch._dynamo.reset()
        load_lazy_modules()
        compiled = torch.compile(ours, fullgraph=True, backend="eager")
        ec.assert_close(compiled(*arguments).numpy(), want["loss"], "float64",
                        what + " compiled")
