"""The explicit backward functions against central finite differences, in float64."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _helpers import from_numpy, to_numpy

import arrayloss as al

STEP = 1e-6


def numerical_gradient(objective: Callable[[np.ndarray], float], at: np.ndarray) -> np.ndarray:
    """Central differences of a scalar objective, one coordinate at a time."""
    grad = np.zeros_like(at)
    for index in np.ndindex(at.shape):
        shifted = at.copy()
        shifted[index] += STEP
        upper = objective(shifted)
        shifted[index] -= 2 * STEP
        lower = objective(shifted)
        grad[index] = (upper - lower) / (2 * STEP)
    return grad


def _objective(xp: Any, loss: Callable[..., Any], reduction: str,
               weights: np.ndarray) -> Callable[..., float]:
    """A scalar function of the loss: the loss itself, or <weights, loss> for 'none'."""
    def scalar(*args: Any) -> float:
        value = to_numpy(loss(*args, reduction=reduction))
        return float(np.sum(value * weights)) if reduction == "none" else float(value)
    return scalar


GAUSSIAN_SHAPES = [
    ((3, 4), (3, 4), (3, 4)),
    ((3, 4), (3, 4), (3, 1)),
    ((3, 4), (3, 4), (3,)),
    ((3, 4), (1, 4), (1, 4)),
    ((2, 3, 2), (3, 2), (1, 3, 1)),
    ((4,), (4,), ()),
]


@pytest.mark.parametrize("shapes", GAUSSIAN_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("full", [False, True])
def test_gaussian_nll_gradients(xp: Any, shapes: tuple, reduction: str, full: bool) -> None:
    input_shape, target_shape, var_shape = shapes
    rng = np.random.default_rng(len(str(shapes)) + len(reduction))
    arrays = {"input": rng.normal(size=input_shape), "target": rng.normal(size=target_shape),
              "var": rng.uniform(0.3, 2.0, var_shape)}
    loss_shape = np.broadcast_shapes(input_shape, target_shape)
    weights = rng.uniform(0.5, 1.5, loss_shape)

    def loss(input: Any, target: Any, var: Any, reduction: str) -> Any:
        return al.gaussian_nll_loss(input, target, var, full=full, reduction=reduction)

    scalar = _objective(xp, loss, reduction, weights)
    moved = {key: from_numpy(xp, value) for key, value in arrays.items()}
    upstream = from_numpy(xp, weights) if reduction == "none" else 1.0
    analytic = al.gaussian_nll_loss_backward(upstream, moved["input"], moved["target"],
                                             moved["var"], full=full, reduction=reduction)
    for position, name in enumerate(("input", "target", "var")):
        def objective(value: np.ndarray, name: str = name) -> float:
            args = dict(moved, **{name: from_numpy(xp, value)})
            return scalar(args["input"], args["target"], args["var"])

        expected = numerical_gradient(objective, arrays[name])
        np.testing.assert_allclose(to_numpy(analytic[position]), expected, rtol=1e-6,
                                   atol=1e-8, err_msg=name)


def test_gaussian_gradient_ignores_the_clamp() -> None:
    # Below eps the loss is flat in var, yet the gradient is the unclamped formula at eps
    # (PyTorch's documented behaviour): 0.5 * (1/eps - d^2/eps^2).
    eps = 1e-3
    input, target, var = np.array([0.5]), np.array([0.0]), np.array([1e-9])
    _, _, grad_var = al.gaussian_nll_loss_backward(1.0, input, target, var, eps=eps,
                                                   reduction="sum")
    np.testing.assert_allclose(grad_var, 0.5 * (1 / eps - 0.25 / eps**2), rtol=1e-12)


@pytest.mark.parametrize("shape", [(5, 4), (4,), (2, 3, 2, 2), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_gradients(xp: Any, shape: tuple[int, ...], reduction: str, weighted: bool) -> None:
    rng = np.random.default_rng(len(shape) * 7 + len(reduction))
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    input = rng.normal(size=shape)
    target = rng.integers(0, n_classes, target_shape)
    if target.ndim:
        target.reshape(-1)[::3] = 1  # some targets equal ignore_index
    else:
        target = np.array(2)  # an ignored unbatched 'mean' is NaN, with a zero gradient
    weight = from_numpy(xp, rng.uniform(0.5, 2.0, n_classes)) if weighted else None
    weights = rng.uniform(0.5, 1.5, target_shape)
    moved_target = from_numpy(xp, target)

    def loss(input: Any, reduction: str) -> Any:
        return al.nll_loss(input, moved_target, weight, ignore_index=1, reduction=reduction)

    scalar = _objective(xp, loss, reduction, weights)
    upstream = from_numpy(xp, weights) if reduction == "none" else 1.0
    analytic = al.nll_loss_backward(upstream, from_numpy(xp, input), moved_target, weight,
                                    ignore_index=1, reduction=reduction)
    expected = numerical_gradient(lambda value: scalar(from_numpy(xp, value)), input)
    np.testing.assert_allclose(to_numpy(analytic), expected, rtol=1e-6, atol=1e-8)
