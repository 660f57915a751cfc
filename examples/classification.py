"""Classification with arrayloss: a softmax classifier trained with ``cross_entropy``.

Three interleaved spirals in the plane, generated here (nothing is downloaded).  A two-layer
MLP in plain array code (NumPy, or CuPy with ``--cupy``) produces logits, trained with
``arrayloss.cross_entropy_and_grad`` using class weights (the rarer class counts more), label
smoothing, and 10% of the labels missing, marked ``ignore_index=-1``.  The loss writes its
gradient over the logits (``out=logits``): no second ``N x C`` buffer, and no log-softmax or its
backward in the network code.  The network's backward pass is written by hand and checked
against finite differences once at start.

    python examples/classification.py --out docs/_static/examples
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

IGNORE = -1
N_CLASSES = 3
SMOOTHING = 0.05


def spirals(n_per_class: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for label, count in enumerate(n_per_class):
        radius = rng.uniform(0.1, 1.0, count)
        angle = 3.0 * radius + label * 2 * math.pi / N_CLASSES + rng.normal(0, 0.12, count)
        points.append(np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1))
        labels.append(np.full(count, label))
    return np.concatenate(points), np.concatenate(labels)


def make_data(xp: Any, seed: int) -> dict[str, Any]:
    # Class 2 is rarer; its weight makes up for it.
    x, y = spirals([400, 400, 150], seed)
    rng = np.random.default_rng(seed + 1)
    observed = y.copy()
    observed[rng.uniform(size=y.size) < 0.1] = IGNORE  # missing labels
    test_x, test_y = spirals([300, 300, 300], seed + 2)
    counts = np.bincount(y, minlength=N_CLASSES)
    weight = counts.sum() / (N_CLASSES * counts)
    return {"x": xp.asarray(x), "labels": xp.asarray(observed), "weight": xp.asarray(weight),
            "test_x": xp.asarray(test_x), "test_y": test_y}


def init(xp: Any, hidden: int, seed: int) -> Params:
    rng = np.random.default_rng(seed)
    shapes = {"w1": (2, hidden), "b1": (hidden,), "w2": (hidden, hidden), "b2": (hidden,),
              "w3": (hidden, N_CLASSES), "b3": (N_CLASSES,)}
    return {name: xp.asarray(rng.normal(size=shape) * (0.0 if name.startswith("b") else
                                                       1.0 / math.sqrt(shape[0])))
            for name, shape in shapes.items()}


def forward(params: Params, x: Any, xp: Any) -> tuple[Any, dict[str, Any]]:
    h1 = xp.tanh(x @ params["w1"] + params["b1"])
    h2 = xp.tanh(h1 @ params["w2"] + params["b2"])
    logits = h2 @ params["w3"] + params["b3"]
    return logits, {"x": x, "h1": h1, "h2": h2}


def backward(params: Params, cache: dict[str, Any], grad_logits: Any, xp: Any) -> Params:
    grads = {"w3": cache["h2"].T @ grad_logits, "b3": xp.sum(grad_logits, axis=0)}
    grad_h2 = (grad_logits @ params["w3"].T) * (1 - cache["h2"] ** 2)
    grads["w2"], grads["b2"] = cache["h1"].T @ grad_h2, xp.sum(grad_h2, axis=0)
    grad_h1 = (grad_h2 @ params["w2"].T) * (1 - cache["h1"] ** 2)
    grads["w1"], grads["b1"] = cache["x"].T @ grad_h1, xp.sum(grad_h1, axis=0)
    return grads


def loss_and_grads(params: Params, data: dict[str, Any], xp: Any) -> tuple[float, Params]:
    logits, cache = forward(params, data["x"], xp)
    # The logits are not needed again: their gradient takes their place.
    loss, grad = al.cross_entropy_and_grad(logits, data["labels"], data["weight"],
                                           ignore_index=IGNORE, label_smoothing=SMOOTHING,
                                           out=logits)
    return float(loss), backward(params, cache, grad, xp)


def check_gradients(xp: Any) -> float:
    data = make_data(xp, seed=5)
    data = {**data, "x": data["x"][:24], "labels": data["labels"][:24]}
    return max_gradient_error(lambda p: loss_and_grads(p, data, xp), init(xp, 5, seed=6), xp)


def train(xp: Any, data: dict[str, Any], steps: int, seed: int) -> tuple[Params, list[float]]:
    return train_adam(lambda p: loss_and_grads(p, data, xp), init(xp, 64, seed), xp, steps,
                      rate=1e-2)


def accuracy(params: Params, data: dict[str, Any], xp: Any) -> float:
    logits, _ = forward(params, data["test_x"], xp)
    predicted = to_host(xp.argmax(logits, axis=1))
    return float(np.mean(predicted == data["test_y"]))


def plot(params: Params, data: dict[str, Any], history: list[float], xp: Any,
         out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = np.linspace(-1.1, 1.1, 200)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    logits, _ = forward(params, xp.asarray(grid), xp)
    regions = to_host(xp.argmax(logits, axis=1)).reshape(200, 200)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.contourf(axis, axis, regions, levels=[-0.5, 0.5, 1.5, 2.5], alpha=0.25,
                  colors=["C0", "C1", "C2"])
    x, labels = to_host(data["x"]), to_host(data["labels"])
    for label in range(N_CLASSES):
        chosen = labels == label
        left.scatter(x[chosen, 0], x[chosen, 1], s=6, color=f"C{label}", label=f"class {label}")
    left.scatter(x[labels == IGNORE, 0], x[labels == IGNORE, 1], s=8, color="k", marker="x",
                 label="label missing (ignored)")
    left.set(title=f"Decision regions (test accuracy {accuracy(params, data, xp):.1%})",
             aspect="equal")
    left.legend(fontsize=7, loc="lower right")
    right.plot(history)
    right.set(title="Training curve", xlabel="step", ylabel="weighted cross-entropy (mean)",
              yscale="log")
    right.grid(alpha=0.3)
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "classification.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return [path]


#: How the summary names each number.
LABELS = {
    "gradient_check_error": "gradient check, max relative error vs finite differences",
    "first_loss": "training loss, first step",
    "final_loss": "training loss, last step",
    "test_accuracy": "held-out accuracy",
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for the figure (none if omitted)")
    parser.add_argument("--cupy", action="store_true", help="run on the GPU with CuPy")
    args = parser.parse_args(argv)
    xp = namespace(args.cupy)

    error = check_gradients(xp)
    assert error < 1e-6, "the hand-written backward pass disagrees with finite differences"
    data = make_data(xp, args.seed)
    params, history = train(xp, data, args.steps, args.seed)
    metrics = {"gradient_check_error": error, "first_loss": history[0],
               "final_loss": history[-1], "test_accuracy": accuracy(params, data, xp)}
    print_summary("three-spiral classification (see docs/examples.rst)", metrics, LABELS)
    if args.out:
        for path in plot(params, data, history, xp, args.out):
            print(f"wrote {path}")
    return metrics


def learned(metrics: dict[str, float]) -> bool:
    """Whether the classifier learned: chance is 33%."""
    return metrics["test_accuracy"] > 0.9 and metrics["final_loss"] < 0.5 * metrics["first_loss"]


if __name__ == "__main__":
    sys.exit(0 if learned(main()) else 1)
