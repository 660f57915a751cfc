"""``python -m arrayloss``: find the array libraries here, run every loss on each, check them.

For every backend found it runs the forward pass, the backward pass and the fused
loss-and-gradient of every loss in :data:`LOSSES` (Gaussian NLL, NLL, cross-entropy and the
eight elementwise losses), compares every result with float64 formulas written in this file
(independent of arrayloss), and prints a table with the time per call.  It says why a library
is missing, and exits non-zero if any result disagrees.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import array_namespace, to_device

import arrayloss as al


def shadowed_package_message(package: ModuleType) -> str | None:
    """Why ``package`` is not arrayloss but a folder of the same name, or None.

    Run from the folder that contains a checkout named ``arrayloss``, Python imports that
    checkout's folder (no ``__init__.py``) as an empty namespace package, ahead of an
    editable install's finder; only this file is still found, through the install.
    """
    if getattr(package, "__file__", None) is not None:
        return None
    folders = ", ".join(str(path) for path in getattr(package, "__path__", [])) or "?"
    return (f"'import arrayloss' found the folder {folders}, not the arrayloss package: a "
            "folder named arrayloss without __init__.py, most likely the checkout, seen from "
            "the folder that contains it.  Run from inside the checkout (cd arrayloss), or "
            "from any other folder once it is installed (pip install -e arrayloss).")


if (_shadowed := shadowed_package_message(al)) is not None:  # before LOSSES reads al
    sys.exit(_shadowed)


@dataclass(frozen=True)
class Backend:
    """One array library (and device) to run on."""

    name: str
    xp: ModuleType
    device: Any
    fused: bool  # whether the fused CuPy kernels are in play

    def asarray(self, array: np.ndarray) -> Any:
        return self.xp.asarray(array, device=self.device)


def _found_backends() -> tuple[list[Backend], list[str]]:
    """The backends that work here, and a line for each library that does not, saying why."""
    backends = [Backend("numpy", array_namespace(np.empty(0)), "cpu", False)]
    missing: list[str] = []
    try:
        import array_api_strict

        xp = array_namespace(array_api_strict.empty(0))
        backends.append(Backend("array_api_strict", xp, None, False))
    except ImportError:
        missing.append("array_api_strict: not installed (pip install array-api-strict)")
    try:
        import torch

        xp = array_namespace(torch.empty(0))
        backends.append(Backend("torch (cpu)", xp, torch.device("cpu"), False))
        if torch.cuda.is_available():
            backends.append(Backend("torch (cuda)", xp, torch.device("cuda"), False))
    except ImportError:
        missing.append("torch: not installed")
    try:
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)
        xp = array_namespace(jnp.empty(0))
        backends.append(Backend("jax", xp, None, False))
    except ImportError:
        missing.append("jax: not installed")
    reason = _cupy_unavailable()
    if reason is None:
        import cupy

        xp = array_namespace(cupy.empty(0))
        backends.append(Backend("cupy (fused)", xp, None, True))
        backends.append(Backend("cupy (generic)", xp, None, False))
    else:
        missing.append(f"cupy: {reason}")
    return backends, missing


def _cupy_unavailable() -> str | None:
    """Why CuPy cannot run here (not installed, no driver, no device), or None."""
    try:
        import cupy
    except ImportError:
        return "not installed (pip install '.[cuda12]' on a machine with an NVIDIA GPU)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError without a driver
        return f"installed, but no CUDA driver here ({str(error).split(':')[0]})"
    if count == 0:
        return "installed, but no CUDA device"
    try:
        (cupy.arange(2) + 1).sum().get()
    except Exception as error:  # a driver too old, or no NVRTC
        return f"installed, but a test kernel failed: {error}"
    return None


def _problem_shape(size: int) -> tuple[int, int]:
    """(rows, columns) with at most ``size`` elements: up to 100 columns (the classes)."""
    columns = min(100, size)
    return max(size // columns, 1), columns


# ------------------------------------------------------------------------------ the losses
# Each loss is one row of LOSSES: its three entry points, its float32 inputs and its float64
# reference.  A new loss adds a row; the table, the checks and the timings follow from it
# (tests/test_cli.py checks each reference against PyTorch's loss: add it to TORCH_LOSSES).

IGNORED = -100  # the targets of every 7th row, from the 4th: a single row still counts


@dataclass(frozen=True)
class LossCheck:
    """One loss to run: its functions, how to make its inputs, and the reference."""

    name: str
    #: What the inputs are and which options are in play, for the problem line.
    problem: str
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    loss_and_grad: Callable[..., Any]
    #: ``(rng, rows, columns)`` to the positional NumPy arguments of the forward.
    make_inputs: Callable[[np.random.Generator, int, int], tuple[np.ndarray, ...]]
    #: The same arguments to ``(loss, gradients...)`` in float64, without arrayloss.
    reference: Callable[..., tuple[np.ndarray, ...]]
    options: dict[str, Any]


def _gaussian_inputs(rng: np.random.Generator, rows: int, columns: int
                     ) -> tuple[np.ndarray, ...]:
    mean = rng.normal(size=(rows, columns)).astype(np.float32)
    target = rng.normal(size=(rows, columns)).astype(np.float32)
    var = rng.uniform(0.1, 2.0, size=(rows, 1)).astype(np.float32)
    return mean, target, var


def _labels_and_weight(rng: np.random.Generator, rows: int, columns: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, columns, size=rows)
    labels[3::7] = IGNORED
    weight = rng.uniform(0.5, 2.0, size=columns).astype(np.float32)
    return labels, weight


def _nll_inputs(rng: np.random.Generator, rows: int, columns: int) -> tuple[np.ndarray, ...]:
    logits = rng.normal(size=(rows, columns)).astype(np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return (log_probs, *_labels_and_weight(rng, rows, columns))


def _cross_entropy_inputs(rng: np.random.Generator, rows: int, columns: int
                          ) -> tuple[np.ndarray, ...]:
    logits = rng.normal(size=(rows, columns)).astype(np.float32)
    return (logits, *_labels_and_weight(rng, rows, columns))


def _gaussian_reference(mean: np.ndarray, target: np.ndarray,
                        var: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean Gaussian NLL and its three gradients in float64, from the formulas."""
    x, t, v = (a.astype(np.float64) for a in (mean, target, var))
    v = np.maximum(v, 1e-6)
    d = x - t
    n = d.size
    loss = np.mean(0.5 * (np.log(v) + d**2 / v))
    grad_input = d / v / n
    grad_var = (0.5 * (1 / v - d**2 / v**2) / n).sum(axis=1, keepdims=True)
    return np.asarray(loss), grad_input, -grad_input, grad_var


def _nll_reference(log_probs: np.ndarray, labels: np.ndarray,
                   weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted-mean NLL with ignore_index=-100 and its gradient in float64."""
    x, w = log_probs.astype(np.float64), weight.astype(np.float64)
    kept = labels != IGNORED
    rows = np.flatnonzero(kept)
    classes = labels[kept]
    total = w[classes].sum()
    loss = -(w[classes] * x[rows, classes]).sum() / total
    grad = np.zeros_like(x)
    grad[rows, classes] = -w[classes] / total
    return np.asarray(loss), grad


CROSS_ENTROPY_SMOOTHING = 0.1


def _cross_entropy_reference(logits: np.ndarray, labels: np.ndarray,
                             weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted-mean cross-entropy of logits with ignore_index=-100 and label smoothing 0.1,
    and its gradient, in float64: PyTorch's definition, written out."""
    z, w, eps = logits.astype(np.float64), weight.astype(np.float64), CROSS_ENTROPY_SMOOTHING
    n_classes = z.shape[1]
    kept = labels != IGNORED
    rows, classes = np.flatnonzero(kept), labels[kept]
    shifted = z[rows] - z[rows].max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    total = w[classes].sum()
    # (1 - eps) of the weighted NLL plus eps/C of every class's weighted -log p, both over
    # the total weight of the kept targets.
    nll = -(w[classes] * log_p[np.arange(rows.size), classes]).sum()
    smooth = -(log_p * w).sum()
    loss = ((1 - eps) * nll + eps / n_classes * smooth) / total
    p = np.exp(log_p)
    one_hot = np.zeros_like(p)
    one_hot[np.arange(rows.size), classes] = 1.0
    grad = np.zeros_like(z)
    grad[rows] = ((1 - eps) * w[classes, None] * (p - one_hot)
                  + eps / n_classes * (w.sum() * p - w)) / total
    return np.asarray(loss), grad


# The elementwise losses: a prediction and a target of one shape, 'mean' ('batchmean' for
# kl_div); each reference returns (loss, grad_input, grad_target) for a unit upstream.

def _elementwise_inputs(kind: str) -> Callable[[np.random.Generator, int, int],
                                               tuple[np.ndarray, ...]]:
    def make(rng: np.random.Generator, rows: int, columns: int) -> tuple[np.ndarray, ...]:
        shape = (rows, columns)
        if kind == "probability":
            pair = rng.uniform(0.02, 0.98, shape), rng.uniform(0.0, 1.0, shape)
        elif kind == "log_probability":
            pair = np.log(rng.uniform(0.05, 1.0, shape)), rng.uniform(0.01, 1.0, shape)
        elif kind == "count":
            pair = rng.normal(size=shape), rng.poisson(2.5, shape).astype(np.float64)
        else:
            pair = rng.normal(size=shape), rng.normal(size=shape)
        return tuple(a.astype(np.float32) for a in pair)

    return make


def _elementwise_reference(loss: str) -> Callable[..., tuple[np.ndarray, ...]]:
    def reference(x32: np.ndarray, t32: np.ndarray) -> tuple[np.ndarray, ...]:
        x, t = x32.astype(np.float64), t32.astype(np.float64)
        d, n = x - t, x.size
        if loss == "mse_loss":
            values, grad = d * d, 2 * d
        elif loss == "l1_loss":
            values, grad = np.abs(d), np.sign(d)
        elif loss == "smooth_l1_loss":  # beta = 1
            values = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5)
            grad = np.clip(d, -1, 1)
        elif loss == "huber_loss":  # delta = 0.5
            values = np.where(np.abs(d) < 0.5, 0.5 * d * d, 0.5 * (np.abs(d) - 0.25))
            grad = np.clip(d, -0.5, 0.5)
        elif loss == "binary_cross_entropy":
            values = -(t * np.log(x) + (1 - t) * np.log(1 - x))
            grad = (x - t) / (x * (1 - x))
            return np.asarray(values.mean()), grad / n, -np.log(x / (1 - x)) / n
        elif loss == "binary_cross_entropy_with_logits":
            values = (1 - t) * x + np.logaddexp(0, -x)
            return (np.asarray(values.mean()), (1 / (1 + np.exp(-x)) - t) / n, -x / n)
        elif loss == "kl_div":  # 'batchmean': the sum over the rows
            rows = x.shape[0]
            values = t * np.log(t) - t * x
            return (np.asarray(values.sum() / rows), -t / rows, (np.log(t) + 1 - x) / rows)
        else:  # poisson_nll_loss, log_input
            values = np.exp(x) - t * x
            return np.asarray(values.mean()), (np.exp(x) - t) / n, -x / n
        return np.asarray(values.mean()), grad / n, -grad / n

    return reference


def _elementwise(loss: str, problem: str, kind: str = "", **options: Any) -> LossCheck:
    return LossCheck(loss, problem, getattr(al, loss), getattr(al, loss + "_backward"),
                     getattr(al, loss + "_and_grad"), _elementwise_inputs(kind),
                     _elementwise_reference(loss), options)


LOSSES = (
    LossCheck("gaussian_nll", "Gaussian NLL 'mean' with one variance per row",
              al.gaussian_nll_loss, al.gaussian_nll_loss_backward, al.gaussian_nll_loss_and_grad,
              _gaussian_inputs, _gaussian_reference, {}),
    LossCheck("nll", "NLL 'mean' of log-probabilities, class weights, every 7th target ignored",
              al.nll_loss, al.nll_loss_backward, al.nll_loss_and_grad,
              _nll_inputs, _nll_reference, {}),
    LossCheck("cross_entropy", "cross-entropy 'mean' of logits, class weights, every 7th "
              f"target ignored, label_smoothing={CROSS_ENTROPY_SMOOTHING}",
              al.cross_entropy, al.cross_entropy_backward, al.cross_entropy_and_grad,
              _cross_entropy_inputs, _cross_entropy_reference,
              {"label_smoothing": CROSS_ENTROPY_SMOOTHING}),
    _elementwise("mse_loss", "MSE 'mean'"),
    _elementwise("l1_loss", "L1 'mean'"),
    _elementwise("smooth_l1_loss", "smooth L1 'mean', beta=1"),
    _elementwise("huber_loss", "Huber 'mean', delta=0.5", delta=0.5),
    _elementwise("binary_cross_entropy", "binary cross-entropy 'mean' of probabilities",
                 "probability"),
    _elementwise("binary_cross_entropy_with_logits", "binary cross-entropy 'mean' of logits",
                 "probability"),
    _elementwise("kl_div", "KL divergence 'batchmean' of log-probabilities",
                 "log_probability", reduction="batchmean"),
    _elementwise("poisson_nll_loss", "Poisson NLL 'mean' of log-rates and counts", "count"),
)

#: A call to run: (function, NumPy arguments, options) and its float64 answers.
Problem = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], list[np.ndarray]]


def _problems(rng: np.random.Generator, size: int) -> dict[str, Problem]:
    """Every call to run, by its name in the table, with the reference answers."""
    rows, columns = _problem_shape(size)
    problems: dict[str, Problem] = {}
    for loss in LOSSES:
        inputs = loss.make_inputs(rng, rows, columns)
        value, *grads = loss.reference(*inputs)
        problems[f"{loss.name} forward"] = (loss.forward, inputs, loss.options, [value])
        problems[f"{loss.name} backward"] = (loss.backward, (np.float32(1.0), *inputs),
                                             loss.options, grads)
        problems[f"{loss.name} loss_and_grad"] = (loss.loss_and_grad, inputs, loss.options,
                                                  [value, *grads])
    return problems


def _flatten(result: Any) -> list[Any]:
    if isinstance(result, tuple):
        return [item for part in result for item in _flatten(part)]
    return [] if result is None else [result]


def _to_numpy(array: Any) -> np.ndarray:
    return np.asarray(to_device(array, "cpu") if hasattr(array, "__cuda_array_interface__")
                      else array)


def _max_relative_error(results: list[Any], references: list[Any]) -> float:
    worst = 0.0
    for got, want in zip(results, references, strict=True):
        got64 = _to_numpy(got).astype(np.float64)
        want64 = _to_numpy(want).astype(np.float64)
        scale = np.maximum(np.abs(want64), 1e-3)
        worst = max(worst, float(np.max(np.abs(got64 - want64) / scale, initial=0.0)))
    return worst


def _time_call(run: Callable[[], Any], synchronize: Callable[[], None], budget: float) -> float:
    """Median seconds per call, after a warm-up, within about ``budget`` seconds."""
    run()
    synchronize()
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _synchronizer(backend: Backend) -> Callable[[], None]:
    if backend.name.startswith("cupy"):
        import cupy

        return cupy.cuda.get_current_stream().synchronize
    if backend.name == "torch (cuda)":
        import torch

        return torch.cuda.synchronize
    return lambda: None


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


DESCRIPTION = """\
Find the array libraries installed here, run every loss (Gaussian NLL, NLL,
cross-entropy: forward, backward, and the fused loss-and-gradient) on each, check every
result against float64 formulas written in arrayloss/__main__.py that do not use arrayloss,
and print the time per call.  Exits with status 1 if any result disagrees.
"""


def main(argv: list[str] | None = None) -> int:
    """Run the check and print the table; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m arrayloss", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=_positive(int), default=1 << 16,
                        help="elements per problem (at most; rows of up to 100 columns), "
                             "default %(default)s")
    parser.add_argument("--budget", type=_positive(float), default=0.2,
                        help="seconds of timing per table cell, default %(default)s")
    args = parser.parse_args(argv)

    backends, missing = _found_backends()
    print(f"arrayloss {al.__version__}")
    print(f"backends found: {', '.join(b.name for b in backends)}")
    for line in missing:
        print(f"  not used: {line}")
    rows_, columns = _problem_shape(args.size)
    print(f"problem: {rows_} x {columns} float32 = {rows_ * columns} elements "
          f"(--size {args.size}), C={columns} classes:")
    for loss in LOSSES:
        print(f"  {loss.problem}")
    print("reference: the same loss and gradients in float64, from formulas written in "
          "arrayloss/__main__.py (no arrayloss code)")
    problems = _problems(np.random.default_rng(0), args.size)

    rows = []
    failed = False
    for backend in backends:
        sync = _synchronizer(backend)
        for name, (fn, inputs, options, reference) in problems.items():
            arrays = tuple(backend.asarray(a) if isinstance(a, np.ndarray) else a for a in inputs)
            if isinstance(arrays[0], np.float32):
                arrays = (1.0, *arrays[1:])  # the upstream gradient as a Python number

            def run(fn=fn, arrays=arrays, options=options, fused=backend.fused):
                with al.fused_kernels(fused):
                    return fn(*arrays, **options)

            error = _max_relative_error(_flatten(run()), reference)
            ok = error < 1e-4  # float32 against float64
            failed |= not ok
            seconds = _time_call(run, sync, args.budget)
            rows.append((backend.name, name, f"{error:.1e}", "ok" if ok else "MISMATCH",
                         f"{seconds * 1e6:,.1f}"))

    header = ("backend", "call", "max rel. error vs float64 formula", "check", "us/call")
    right_aligned = {2, 4}
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        cells = [str(cell).rjust(width) if i in right_aligned else str(cell).ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
    print("all results agree with the float64 formulas (relative error below 1e-4)"
          if not failed else "SOME RESULTS DISAGREE with the float64 formulas")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
