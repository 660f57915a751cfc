"""Heteroscedastic regression with arrayloss: a small network learns a mean and a variance.

A two-layer MLP written in plain array code (NumPy by default, CuPy with ``--cupy``, the same
code) predicts, for every input x, the mean and the variance of y.  The data have noise whose
size grows with |x|, so a good model must learn both.  It is trained with
``arrayloss.gaussian_nll_loss_and_grad``; the network's own backward pass is written by hand,
and checked against finite differences once at start.  ``--beta 0.5`` trains with beta-NLL
(Seitzer et al., ICLR 2022), which fits the mean better where the noise is large; with
``--out`` the figure shows the fits for beta = 0 and beta = 0.5 side by side.

    python examples/heteroscedastic_regression.py --out docs/_static/examples
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _training import (
    Params,
    max_gradient_error,
    namespace,
    print_summary,
    to_host,
    train_adam,
)

import arrayloss as al


def true_std(x: Any, xp: Any) -> Any:
    return 0.1 + 0.25 * xp.abs(x)


def make_data(xp: Any, n: int, seed: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, n)
    y = np.sin(1.5 * x) + rng.normal(size=n) * (0.1 + 0.25 * np.abs(x))
    return xp.asarray(x[:, None]), xp.asarray(y)


def init(xp: Any, hidden: int, seed: int) -> Params:
    rng = np.random.default_rng(seed)
    shapes = {"w1": (1, hidden), "b1": (hidden,), "w2": (hidden, hidden), "b2": (hidden,),
              "w3": (hidden, 2), "b3": (2,)}
    params = {}
    for name, shape in shapes.items():
        scale = 0.0 if name.startswith("b") else 1.0 / math.sqrt(shape[0])
        params[name] = xp.asarray(rng.normal(size=shape) * scale)
    return params


def softplus(z: Any, xp: Any) -> Any:
    return xp.maximum(z, 0.0) + xp.log1p(xp.exp(-xp.abs(z)))


def sigmoid(z: Any, xp: Any) -> Any:
    return 1.0 / (1.0 + xp.exp(-z))


def forward(params: Params, x: Any, xp: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The predicted mean and variance, and what the backward pass needs."""
    h1 = xp.tanh(x @ params["w1"] + params["b1"])
    h2 = xp.tanh(h1 @ params["w2"] + params["b2"])
    out = h2 @ params["w3"] + params["b3"]
    mean = out[:, 0]
    var = softplus(out[:, 1], xp) + 1e-6
    return mean, var, {"x": x, "h1": h1, "h2": h2, "raw_var": out[:, 1]}


def backward(params: Params, cache: dict[str, Any], grad_mean: Any, grad_var: Any,
             xp: Any) -> Params:
    """Gradients of the parameters from the loss's gradients (the chain rule by hand)."""
    grad_out = xp.stack([grad_mean, grad_var * sigmoid(cache["raw_var"], xp)], axis=1)
    grads = {"w3": cache["h2"].T @ grad_out, "b3": xp.sum(grad_out, axis=0)}
    grad_h2 = (grad_out @ params["w3"].T) * (1 - cache["h2"] ** 2)
    grads["w2"], grads["b2"] = cache["h1"].T @ grad_h2, xp.sum(grad_h2, axis=0)
    grad_h1 = (grad_h2 @ params["w2"].T) * (1 - cache["h1"] ** 2)
    grads["w1"], grads["b1"] = cache["x"].T @ grad_h1, xp.sum(grad_h1, axis=0)
    return grads


def loss_and_grads(params: Params, x: Any, y: Any, xp: Any,
                   beta: float = 0.0) -> tuple[float, Params]:
    mean, var, cache = forward(params, x, xp)
    loss, (grad_mean, _, grad_var) = al.gaussian_nll_loss_and_grad(mean, y, var, beta=beta,
                                                                   wrt=("input", "var"))
    return float(loss), backward(params, cache, grad_mean, grad_var, xp)


def check_gradients(xp: Any) -> float:
    x, y = make_data(xp, 16, seed=1)
    return max_gradient_error(lambda p: loss_and_grads(p, x, y, xp), init(xp, 5, seed=2), xp)


def train(xp: Any, steps: int, seed: int, beta: float = 0.0) -> tuple[Params, list[float]]:
    x, y = make_data(xp, 1024, seed)
    return train_adam(lambda p: loss_and_grads(p, x, y, xp, beta), init(xp, 48, seed + 1), xp,
                      steps, rate=3e-3)


def evaluate(params: Params, xp: Any, seed: int) -> dict[str, float]:
    x, y = make_data(xp, 4096, seed + 100)
    mean, var, _ = forward(params, x, xp)
    nll = float(al.gaussian_nll_loss(mean, y, var, full=True))
    # The best model with one variance for all x, for comparison.
    constant_var = float(xp.mean((y - mean) ** 2))
    baseline = float(al.gaussian_nll_loss(mean, y, constant_var, full=True))
    predicted, truth = to_host(xp.sqrt(var)), to_host(true_std(x[:, 0], xp))
    correlation = float(np.corrcoef(predicted, truth)[0, 1])
    return {"test_nll": nll, "constant_variance_nll": baseline, "std_correlation": correlation}


def plot(fits: dict[float, tuple[Params, list[float]]], xp: Any, seed: int,
         out: Path) -> list[Path]:
    """One panel per beta (the fitted mean and +-2 std against the truth), then the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = make_data(xp, 600, seed + 7)
    grid = xp.asarray(np.linspace(-3.2, 3.2, 300)[:, None])
    g = to_host(grid[:, 0])
    truth, true_band = np.sin(1.5 * g), 2 * (0.1 + 0.25 * np.abs(g))
    figure, axes = plt.subplots(1, len(fits) + 1, figsize=(5.5 * (len(fits) + 1), 4))
    for axis, (beta, (params, _)) in zip(axes, sorted(fits.items()), strict=False):
        mean, var, _ = forward(params, grid, xp)
        m, s = to_host(mean), to_host(xp.sqrt(var))
        axis.scatter(to_host(x[:, 0]), to_host(y), s=4, alpha=0.4, color="grey", label="data")
        axis.plot(g, m, color="C0", label="predicted mean")
        axis.fill_between(g, m - 2 * s, m + 2 * s, color="C0", alpha=0.2,
                          label="mean ± 2 std")
        axis.plot(g, truth + true_band, "k--", linewidth=0.8, label="true ± 2 std")
        axis.plot(g, truth - true_band, "k--", linewidth=0.8)
        axis.set(title=f"β = {beta:g}" + (" (plain Gaussian NLL)" if beta == 0 else " (β-NLL)"),
                 xlabel="x", ylabel="y")
        axis.legend(fontsize=8)
    curves = axes[-1]
    for beta, (_, history) in sorted(fits.items()):
        curves.plot(history, label=f"β = {beta:g}")
    curves.set(title="Training curves", xlabel="step", ylabel="training loss (mean)")
    curves.legend(fontsize=8)
    curves.grid(alpha=0.3)
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "heteroscedastic_regression.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return [path]


#: How the summary names each number.
LABELS = {
    "gradient_check_error": "gradient check, max relative error vs finite differences",
    "first_loss": "training loss, first step",
    "final_loss": "training loss, last step",
    "test_nll": "held-out Gaussian NLL",
    "constant_variance_nll": "held-out NLL with the best single variance",
    "std_correlation": "correlation of predicted and true std",
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for the figure (none if omitted)")
    parser.add_argument("--cupy", action="store_true", help="run on the GPU with CuPy")
    parser.add_argument("--beta", type=float, default=0.0,
                        help="beta-NLL exponent (0: plain Gaussian NLL; the paper uses 0.5)")
    args = parser.parse_args(argv)
    xp = namespace(args.cupy)

    # The network's hand-written backward, checked with plain NLL (beta-NLL's gradient treats
    # its weight as a constant, which finite differences of the loss would not).
    error = check_gradients(xp)
    assert error < 1e-6, "the hand-written backward pass disagrees with finite differences"
    params, history = train(xp, args.steps, args.seed, args.beta)
    metrics = {"gradient_check_error": error, "first_loss": history[0],
               "final_loss": history[-1], **evaluate(params, xp, args.seed)}
    print_summary(f"heteroscedastic regression, beta = {args.beta:g} (see docs/examples.rst)",
                  metrics, LABELS)
    if args.out:
        fits = {args.beta: (params, history)}
        other = 0.5 if args.beta == 0 else 0.0  # the figure compares beta = 0 and 0.5
        fits[other] = train(xp, args.steps, args.seed, other)
        for path in plot(fits, xp, args.seed, args.out):
            print(f"wrote {path}")
    return metrics


def learned(metrics: dict[str, float]) -> bool:
    """Whether the model learned the noise: better than one variance, std tracks the truth."""
    return (metrics["test_nll"] < metrics["constant_variance_nll"] - 0.05
            and metrics["std_correlation"] > 0.9)


if __name__ == "__main__":
    sys.exit(0 if learned(main()) else 1)
