"""What both examples share: the array namespace, Adam, and the finite-difference check.

Plain array code: it runs on NumPy and, unchanged, on CuPy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from array_api_compat import array_namespace

Params = dict[str, Any]


def namespace(use_cupy: bool) -> Any:
    """NumPy's array namespace, or CuPy's (a GPU) when asked."""
    if use_cupy:
        import cupy

        return array_namespace(cupy.empty(0))
    return array_namespace(np.empty(0))


def to_host(array: Any) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array (for checks and plots)."""
    return array.get() if hasattr(array, "get") else np.asarray(array)


def max_gradient_error(loss_and_grads: Callable[[Params], tuple[float, Params]],
                       params: Params, xp: Any, per_parameter: int = 6) -> float:
    """The largest relative error of the analytic gradients against central differences.

    ``loss_and_grads(params)`` returns the loss as a float and a gradient per parameter.
    """
    _, analytic = loss_and_grads(params)
    worst = 0.0
    for name in params:
        host = to_host(params[name])
        for index in list(np.ndindex(host.shape))[:per_parameter]:
            values = []
            for step in (1e-6, -1e-6):
                shifted = host.copy()
                shifted[index] += step
                values.append(loss_and_grads({**params, name: xp.asarray(shifted)})[0])
            numeric = (values[0] - values[1]) / 2e-6
            exact = float(analytic[name][index])
            worst = max(worst, abs(numeric - exact) / max(abs(numeric), abs(exact), 1e-8))
    return worst


def train_adam(loss_and_grads: Callable[[Params], tuple[float, Params]], params: Params,
               xp: Any, steps: int, rate: float) -> tuple[Params, list[float]]:
    """Adam (beta1 0.9, beta2 0.999) for ``steps`` full-batch steps; the loss history."""
    beta1, beta2 = 0.9, 0.999
    moments = {name: (xp.zeros_like(p), xp.zeros_like(p)) for name, p in params.items()}
    history = []
    for step in range(1, steps + 1):
        loss, grads = loss_and_grads(params)
        history.append(loss)
        for name, grad in grads.items():
            m, v = moments[name]
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad**2
            moments[name] = (m, v)
            update = (m / (1 - beta1**step)) / (xp.sqrt(v / (1 - beta2**step)) + 1e-8)
            params = {**params, name: params[name] - rate * update}
    return params, history


def print_summary(title: str, metrics: dict[str, float], labels: dict[str, str]) -> None:
    """The run's numbers, one labelled line each, to check against docs/examples.rst.

    ``.4g`` keeps small numbers readable (a final loss of 2.3e-05 is not 0.0000).
    """
    print(f"{title}:")
    width = max(len(labels[key]) for key in metrics)
    for key, value in metrics.items():
        print(f"  {labels[key]:<{width}}  {value:.4g}")
