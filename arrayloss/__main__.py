"""``python -m arrayloss``: find the array libraries here, run both losses on each, check them.

For every backend found it runs the forward pass, the backward pass and the fused
loss-and-gradient of both losses, compares every result with float64 formulas written here
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
    """(rows, columns) with at most ``size`` elements: up to 100 columns (NLL's classes)."""
    columns = min(100, size)
    return max(size // columns, 1), columns


def _problems(rng: np.random.Generator, size: int) -> dict[str, tuple[Callable, tuple, dict]]:
    """The calls to run, each as (function, NumPy arguments, options)."""
    rows, n_classes = _problem_shape(size)
    mean = rng.normal(size=(rows, n_classes)).astype(np.float32)
    target = rng.normal(size=(rows, n_classes)).astype(np.float32)
    var = rng.uniform(0.1, 2.0, size=(rows, 1)).astype(np.float32)
    logits = rng.normal(size=(rows, n_classes)).astype(np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    labels = rng.integers(0, n_classes, size=rows)
    labels[3::7] = -100  # every 7th ignored, from the 4th: a single row still counts
    weight = rng.uniform(0.5, 2.0, size=n_classes).astype(np.float32)
    gauss = (mean, target, var)
    nll = (log_probs, labels, weight)
    return {
        "gaussian_nll forward": (al.gaussian_nll_loss, gauss, {}),
        "gaussian_nll backward": (al.gaussian_nll_loss_backward, (np.float32(1.0), *gauss), {}),
        "gaussian_nll loss_and_grad": (al.gaussian_nll_loss_and_grad, gauss, {}),
        "nll forward": (al.nll_loss, nll, {}),
        "nll backward": (al.nll_loss_backward, (np.float32(1.0), *nll), {}),
        "nll loss_and_grad": (al.nll_loss_and_grad, nll, {}),
    }


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
    kept = labels != -100
    rows = np.flatnonzero(kept)
    classes = labels[kept]
    total = w[classes].sum()
    loss = -(w[classes] * x[rows, classes]).sum() / total
    grad = np.zeros_like(x)
    grad[rows, classes] = -w[classes] / total
    return np.asarray(loss), grad


def _references(problems: dict[str, tuple[Callable, tuple, dict]]) -> dict[str, list[Any]]:
    gauss = problems["gaussian_nll forward"][1]
    nll = problems["nll forward"][1]
    gaussian = _gaussian_reference(*gauss)
    negative = _nll_reference(*nll)
    return {"gaussian_nll forward": [gaussian[0]], "gaussian_nll backward": list(gaussian[1:]),
            "gaussian_nll loss_and_grad": list(gaussian), "nll forward": [negative[0]],
            "nll backward": [negative[1]], "nll loss_and_grad": list(negative)}


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
Find the array libraries installed here, run both losses (forward, backward, and the
fused loss-and-gradient) on each, check every result against float64 formulas that do not
use arrayloss, and print the time per call.  Exits with status 1 if any result disagrees.
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
          f"(--size {args.size}); Gaussian NLL 'mean' with one variance per row; NLL 'mean' "
          f"with C={columns}, class weights, every 7th target ignored")
    problems = _problems(np.random.default_rng(0), args.size)
    references = _references(problems)

    rows = []
    failed = False
    for backend in backends:
        sync = _synchronizer(backend)
        for name, (fn, inputs, options) in problems.items():
            arrays = tuple(backend.asarray(a) if isinstance(a, np.ndarray) else a for a in inputs)
            if isinstance(arrays[0], np.float32):
                arrays = (1.0, *arrays[1:])  # the upstream gradient as a Python number

            def run(fn=fn, arrays=arrays, options=options, fused=backend.fused):
                with al.fused_kernels(fused):
                    return fn(*arrays, **options)

            error = _max_relative_error(_flatten(run()), references[name])
            ok = error < 1e-4  # float32 against float64
            failed |= not ok
            seconds = _time_call(run, sync, args.budget)
            rows.append((backend.name, name, f"{error:.1e}", "ok" if ok else "MISMATCH",
                         f"{seconds * 1e6:,.1f}"))

    header = ("backend", "call", "max rel. error vs float64", "check", "us/call")
    right_aligned = {2, 4}
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        cells = [str(cell).rjust(width) if i in right_aligned else str(cell).ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
    print("all results agree with the float64 reference (relative error below 1e-4)"
          if not failed else "SOME RESULTS DISAGREE with the float64 reference")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
