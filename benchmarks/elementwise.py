"""The elementwise losses' benchmark: loss and gradient at 1e6 elements, against PyTorch (and
JAX ``jit`` where installed), timed in the same interleaved rounds.

Each loss runs once per round for every provider (in a shuffled order), float32, ``'mean'``,
the gradient with respect to the input only (what a training step needs; PyTorch's input
alone requires grad).  Targets, for every loss: a speedup over PyTorch of at least 1x (the
median of the per-round ratios, *inconclusive* when their 20-80% range crosses 1), and a peak
extra memory no larger than PyTorch's.  On a GPU (``--device gpu``) the same calls run on
CuPy's fused kernels and PyTorch's CUDA eager mode, timed with CUDA events.

``python -m benchmarks.elementwise`` writes ``elementwise.md`` (and ``.json``) to the
git-ignored scratch folder; ``--save`` to ``benchmarks/results/<device>/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import timing
from .report import noise_warning, speedup_at_least, verdict

ROOT = Path(__file__).resolve().parent
Call = Callable[[], Any]

#: The benchmarked call of each loss: its arrayloss and PyTorch names, options, weights.
ELEMENTWISE_LOSSES: dict[str, dict[str, Any]] = {
    "mse_loss": {},
    "l1_loss": {},
    "smooth_l1_loss": {"options": {"beta": 0.5}},
    "huber_loss": {"options": {"delta": 0.5}},
    "binary_cross_entropy": {"domain": "probability", "weights": ("weight",)},
    "binary_cross_entropy_with_logits": {"domain": "logit", "weights": ("pos_weight",)},
    "kl_div": {"domain": "log_probability", "reduction": "batchmean"},
    "poisson_nll_loss": {"domain": "count"},
}


def make_arrays(loss: str, shape: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """float32 inputs in the loss's domain; weights along the last axis."""
    rng = np.random.default_rng(seed)
    domain = ELEMENTWISE_LOSSES[loss].get("domain")
    if domain == "probability":
        x, t = rng.uniform(0.02, 0.98, shape), rng.uniform(0, 1, shape)
    elif domain == "logit":
        x, t = rng.normal(0, 3, shape), rng.uniform(0, 1, shape)
    elif domain == "log_probability":
        x, t = np.log(rng.uniform(0.05, 1, shape)), rng.uniform(0.01, 1, shape)
    elif domain == "count":
        x, t = rng.normal(0, 1, shape), rng.poisson(2.5, shape).astype(np.float64)
    else:
        x, t = rng.normal(0, 2, shape), rng.normal(0, 2, shape)
    arrays = {"input": x, "target": t}
    for name in ELEMENTWISE_LOSSES[loss].get("weights", ()):
        arrays[name] = rng.uniform(0.5, 2, shape[-1:])
    return {name: array.astype(np.float32) for name, array in arrays.items()}


def _keywords(loss: str, arrays: dict[str, Any]) -> dict[str, Any]:
    entry = ELEMENTWISE_LOSSES[loss]
    keywords = dict(entry.get("options", {}))
    keywords["reduction"] = entry.get("reduction", "mean")
    for name in entry.get("weights", ()):
        keywords[name] = arrays[name]
    return keywords


def arrayloss_call(loss: str, arrays: dict[str, Any]) -> Call:
    import arrayloss as al

    function = getattr(al, loss + "_and_grad")
    keywords = _keywords(loss, arrays)
    return lambda: function(arrays["input"], arrays["target"], wrt="input",
                            validate=False, **keywords)


def torch_call(loss: str, arrays: dict[str, Any]) -> Call:
    import torch
    import torch.nn.functional as F

    function = getattr(F, loss)
    keywords = _keywords(loss, arrays)
    source = arrays["input"]

    def forward_backward() -> Any:
        x = source.detach().requires_grad_(True)
        value = function(x, arrays["target"], **keywords)
        (grad,) = torch.autograd.grad(value, x)
        return value, grad

    return forward_backward


def jax_call(loss: str, arrays: dict[str, Any]) -> Call:
    import jax

    import arrayloss as al

    function = getattr(al, loss)
    keywords = _keywords(loss, arrays)
    step = jax.jit(jax.value_and_grad(lambda x, t: function(x, t, validate=False, **keywords)))

    def run() -> Any:
        _, grad = step(arrays["input"], arrays["target"])
        return grad.block_until_ready()

    return run


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_cpu(shape: tuple[int, int], budget: float, max_rounds: int, losses: list[str]
            ) -> list[dict[str, Any]]:
    import torch

    rows = []
    for loss in losses:
        arrays = make_arrays(loss, shape)
        tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
        calls = {"arrayloss numpy": [arrayloss_call(loss, arrays)],
                 "torch cpu": [torch_call(loss, tensors)]}
        peaks: dict[str, Any] = {"arrayloss numpy": timing.numpy_peak,
                                 "torch cpu": timing.torch_cpu_peak}
        if _available("jax"):
            import jax.numpy as jnp

            calls["jax jit"] = [jax_call(loss, {k: jnp.asarray(v) for k, v in arrays.items()})]
            peaks["jax jit"] = None
        timings = timing.time_cpu_interleaved(calls, peaks, warmup=2, budget_s=budget,
                                              max_rounds=max_rounds)
        rows.append(_row(loss, shape, timings, "arrayloss numpy", "torch cpu"))
    return rows


def run_gpu(shape: tuple[int, int], budget: float, max_rounds: int, losses: list[str]
            ) -> list[dict[str, Any]]:
    import cupy
    import torch

    rows = []
    for loss in losses:
        arrays = make_arrays(loss, shape)
        device = {name: cupy.asarray(array) for name, array in arrays.items()}
        tensors = {name: torch.from_numpy(array).cuda() for name, array in arrays.items()}
        timings = {
            "arrayloss fused": timing.time_gpu([arrayloss_call(loss, device)], "cupy", 3,
                                               budget, max_rounds),
            "torch eager": timing.time_gpu([torch_call(loss, tensors)], "torch", 3, budget,
                                           max_rounds),
        }
        rows.append(_row(loss, shape, timings, "arrayloss fused", "torch eager"))
    return rows


def _row(loss: str, shape: tuple[int, int], timings: dict[str, timing.Timing], ours: str,
         theirs: str) -> dict[str, Any]:
    mine, base = timings[ours], timings[theirs]
    ratios = [b / m for b, m in zip(base.round_s, mine.round_s, strict=True) if m > 0]
    speedup = float(np.median(ratios)) if ratios else base.median_s / mine.median_s
    spread = ([float(np.percentile(ratios, 20)), float(np.percentile(ratios, 80))]
              if ratios else None)
    return {
        "loss": loss, "shape": list(shape), "elements": math.prod(shape),
        "times_s": {name: t.median_s for name, t in timings.items()},
        "peaks_bytes": {name: t.peak_extra_bytes for name, t in timings.items()},
        "speedup": speedup, "spread": spread,
        "speed_verdict": verdict(speedup, spread, 1.0),
        "noise": noise_warning(speedup, spread, base.median_s / mine.median_s),
        "memory_verdict": _memory_verdict(mine.peak_extra_bytes, base.peak_extra_bytes),
    }


#: What the memory target allows beyond PyTorch's peak: the Python objects of a call (its
#: validated call, the blocks' small results), which tracemalloc counts and the profiler's
#: operator events do not.
MEMORY_SLACK_BYTES = 64 << 10


def _memory_verdict(ours: int | None, theirs: int | None) -> str:
    if ours is None or theirs is None:
        return "not measured"
    return "met" if ours <= theirs + MEMORY_SLACK_BYTES else "missed"


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    providers = list(rows[0]["times_s"]) if rows else []
    ours, theirs = [*providers, "", ""][:2]
    lines = [f"# Elementwise losses: loss and gradient, {meta['device']}", "",
             f"Measured {meta['date']} with `{meta['command']}`; {meta['versions']}.  "
             "float32, the gradient with respect to the input; 'mean' ('batchmean' for "
             "kl_div).  Speedup: the median of the per-round ratios of PyTorch's time to "
             "arrayloss's, with the 20-80% range.", "",
             "| loss | " + " | ".join(f"{p} (ms)" for p in providers)
             + f" | {speedup_at_least(1.0)} | peak extra MiB ({ours} / {theirs}) | memory "
               "at most PyTorch's (+64 KiB) |",
             "|---|" + "---|" * len(providers) + "---|---|---|"]
    for row in rows:
        times = " | ".join(f"{row['times_s'][p] * 1e3:.2f}" for p in providers)
        spread = (f" ({row['spread'][0]:.2f}-{row['spread'][1]:.2f})" if row["spread"]
                  else "")
        noise = f", {row['noise']}" if row["noise"] else ""
        peaks = " / ".join("-" if row["peaks_bytes"][p] is None
                           else f"{row['peaks_bytes'][p] / 2**20:.1f}" for p in (ours, theirs))
        lines.append(f"| {row['loss']} {'x'.join(map(str, row['shape']))} | {times} | "
                     f"{row['speedup']:.2f}x{spread}: {row['speed_verdict']}{noise} | "
                     f"{peaks} | {row['memory_verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.elementwise",
        description="Time the elementwise losses' loss and gradient against PyTorch (and "
                    "JAX jit) in interleaved rounds; write elementwise.md and .json.")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                        help="where to run (default: cpu)")
    parser.add_argument("--rows", type=int, default=1000,
                        help="rows of the (rows, 1000) float32 inputs (default: 1000, 1e6 "
                             "elements)")
    parser.add_argument("--losses", nargs="+", choices=list(ELEMENTWISE_LOSSES),
                        default=list(ELEMENTWISE_LOSSES), metavar="LOSS",
                        help="losses to time (default: all)")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="seconds of timing per loss (default: 3.0)")
    parser.add_argument("--max-rounds", type=int, default=60,
                        help="the most interleaved rounds per loss (default: 60)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--save", action="store_true",
                       help="write to benchmarks/results/<device>/ (the committed record)")
    where.add_argument("--out", type=Path, help="write to this folder instead (default: "
                                                "benchmarks/results/_scratch/<device>/)")
    args = parser.parse_args(argv)
    from .__main__ import _device_description, _slug, _versions

    described = _device_description(args.device)
    described["folder"] = _slug(f"{args.device}-{described['device_name']}")
    shape = (args.rows, 1000)
    run = run_gpu if args.device == "gpu" else run_cpu
    rows = run(shape, args.budget, args.max_rounds, args.losses)
    import datetime

    meta = {"device": described["device_name"],
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "command": "python -m benchmarks.elementwise " + " ".join(argv),
            "versions": ", ".join(f"{k} {v}" for k, v in _versions().items())}
    folder = (ROOT / "results" / described["folder"] if args.save else args.out
              or ROOT / "results" / "_scratch" / described["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "elementwise.md").write_text(markdown(meta, rows))
    (folder / "elementwise.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                        indent=1))
    print(markdown(meta, rows))
    print(f"written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
