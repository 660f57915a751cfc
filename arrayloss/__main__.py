"""``python -m arrayloss``: find the array libraries here, run both losses on each, check them.

For every backend found it runs the forward pass, the backward pass and the fused
loss-and-gradient of both losses, compares the results with the generic path on NumPy (and,
on CuPy, the fused kernels with the generic path on the same GPU), and prints a table with
the time per call.  It exits non-zero if any result disagrees.
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


def _found_backends() -> list[Backend]:
    backends = [Backend("numpy", array_namespace(np.empty(0)), "cpu", False)]
    try:
        import array_api_strict

        xp = array_namespace(array_api_strict.empty(0))
        backends.append(Backend("array_api_strict", xp, None, False))
    except ImportError:
        pass
    try:
        import torch

        xp = array_namespace(torch.empty(0))
        backends.append(Backend("torch (cpu)", xp, torch.device("cpu"), False))
        if torch.cuda.is_available():
            backends.append(Backend("torch (cuda)", xp, torch.device("cuda"), False))
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)
        xp = array_namespace(jnp.empty(0))
        backends.append(Backend("jax", xp, None, False))
    except ImportError:
        pass
    try:
        import cupy

        (cupy.arange(2) + 1).sum().get()  # the import works without a GPU; a launch does not
        xp = array_namespace(cupy.empty(0))
        backends.append(Backend("cupy (fused)", xp, None, True))
        backends.append(Backend("cupy (generic)", xp, None, False))
    except Exception:  # ImportError, or a CUDA error on a machine without a usable GPU
        pass
    return backends


def _problems(rng: np.random.Generator, size: int) -> dict[str, tuple[Callable, tuple, dict]]:
    """The calls to run, each as (function, NumPy arguments, options)."""
    n_classes = 100
    rows = max(size // n_classes, 1)
    mean = rng.normal(size=(rows, n_classes)).astype(np.float32)
    target = rng.normal(size=(rows, n_classes)).astype(np.float32)
    var = rng.uniform(0.1, 2.0, size=(rows, 1)).astype(np.float32)
    logits = rng.normal(size=(rows, n_classes)).astype(np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    labels = rng.integers(0, n_classes, size=rows)
    labels[::7] = -100
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


def main(argv: list[str] | None = None) -> int:
    """Run the check and print the table; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m arrayloss", description=__doc__)
    parser.add_argument("--size", type=int, default=1 << 16, help="elements per problem")
    parser.add_argument("--budget", type=float, default=0.2, help="timing seconds per cell")
    args = parser.parse_args(argv)

    backends = _found_backends()
    print(f"arrayloss {al.__version__}; backends found: {', '.join(b.name for b in backends)}")
    problems = _problems(np.random.default_rng(0), args.size)
    with al.fused_kernels(False):
        references = {name: _flatten(fn(*inputs, **kw)) for name, (fn, inputs, kw)
                      in problems.items()}

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
            ok = error < 1e-4
            failed |= not ok
            seconds = _time_call(run, sync, args.budget)
            rows.append((backend.name, name, f"{error:.1e}", "ok" if ok else "MISMATCH",
                         f"{seconds * 1e6:,.1f}"))

    header = ("backend", "call", "max rel err", "check", "us/call")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"problem size: {args.size} elements (float32), NLL with C=100, weights, 1/7 ignored")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    print("all results agree with the generic NumPy path" if not failed
          else "SOME RESULTS DISAGREE with the generic NumPy path")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
