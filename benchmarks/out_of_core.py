"""Out of core: losses over Dask arrays far larger than memory, on this machine.

Three float32 arrays of 2**31 elements (8 GiB each; 24 GiB in all, more than the 2-core CI
machine's memory) are generated lazily by ``dask.array.random``, chunk by chunk, and reduced by
arrayloss's Gaussian NLL (``'mean'``, and loss plus gradients, the gradients consumed by a
reduction as a training step would consume them); NLL runs the same way over 2**31 logits.
Each run happens in a fresh child process, whose peak resident memory is reported.

The yardstick is arrayloss's NumPy path on one in-memory chunk of the same size, timed on
already generated arrays, and timed with its generation included (what the Dask run also
does): throughput per core, elements per second per core.

    python -m benchmarks.out_of_core                 # 2**31 elements, prints the table
    python -m benchmarks.out_of_core --save          # and writes benchmarks/results/<cpu>/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._cli import HelpFormatter, plain_text

RESULTS = Path(__file__).resolve().parent / "results"
CASES = ("gaussian_nll mean", "gaussian_nll loss+grad", "nll mean")
N_CLASSES = 1000


def _generate(rng: Any, case: str, shape: tuple[int, ...], chunks: Any = None) -> list[Any]:
    """The case's inputs from ``rng`` (NumPy's or Dask's Generator)."""
    kwargs = {} if chunks is None else {"chunks": chunks}
    if case.startswith("nll"):
        logits = rng.random(shape, dtype=np.float32, **kwargs)
        target = rng.integers(0, N_CLASSES, shape[:1], **({} if chunks is None else
                                                           {"chunks": chunks[:1]}))
        return [logits, target]
    x = rng.random(shape, dtype=np.float32, **kwargs)
    t = rng.random(shape, dtype=np.float32, **kwargs)
    v = rng.random(shape, dtype=np.float32, **kwargs) + np.float32(0.5)
    return [x, t, v]


def _shape(case: str, elements: int) -> tuple[int, ...]:
    if case.startswith("nll"):
        return (elements // N_CLASSES, N_CLASSES)
    return (elements // 1024, 1024)


def _run(case: str, arrays: list[Any]) -> list[Any]:
    """The outputs to compute for ``case`` (lazy for Dask arrays)."""
    import arrayloss as al

    if case == "nll mean":
        return [al.nll_loss(*arrays, validate=False)]
    if case == "gaussian_nll mean":
        return [al.gaussian_nll_loss(*arrays, validate=False)]
    loss, (grad_input, _, grad_var) = al.gaussian_nll_loss_and_grad(
        *arrays, wrt=("input", "var"), validate=False)
    # The gradients are consumed as a step consumes them; a reduction keeps them out of memory.
    return [loss, grad_input.sum(), grad_var.sum()]


def child(case: str, elements: int, chunk_elements: int) -> dict[str, Any]:
    """One Dask run of ``case`` in this (fresh) process: seconds and peak RSS."""
    import dask
    import dask.array as da

    shape = _shape(case, elements)
    rows = max(1, chunk_elements // shape[1])
    arrays = _generate(da.random.default_rng(0), case, shape, chunks=(rows, shape[1]))
    start = time.perf_counter()
    dask.compute(*_run(case, arrays), scheduler="threads")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"seconds": seconds, "peak_rss_bytes": peak}


def reference(case: str, chunk_elements: int, repeats: int = 3) -> dict[str, float]:
    """arrayloss on NumPy, one in-memory chunk: seconds per element, without and with the
    generation of its inputs."""
    shape = _shape(case, chunk_elements)
    compute_only, with_generation = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        arrays = _generate(np.random.default_rng(0), case, shape)
        generated = time.perf_counter()
        _run(case, arrays)
        done = time.perf_counter()
        compute_only.append((done - generated) / np.prod(shape))
        with_generation.append((done - start) / np.prod(shape))
    return {"compute": float(np.median(compute_only)),
            "with_generation": float(np.median(with_generation))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.out_of_core",
                                     description=plain_text(__doc__),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--log2-elements", type=int, default=31, choices=range(20, 36),
                        metavar="{20..35}", help="elements per array, as a power of 2")
    parser.add_argument("--chunk-log2", type=int, default=23, choices=range(16, 28),
                        metavar="{16..27}", help="elements per chunk, as a power of 2")
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/<cpu>/out_of_core.{json,md}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    elements, chunk = 1 << args.log2_elements, 1 << args.chunk_log2
    if args.child:
        print(json.dumps(child(args.child, elements, chunk)))
        return 0

    cores = os.cpu_count() or 1
    rows = []
    for case in CASES:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.out_of_core", "--child", case,
             "--log2-elements", str(args.log2_elements), "--chunk-log2", str(args.chunk_log2)],
            check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        measured = json.loads(completed.stdout.strip().splitlines()[-1])
        yardstick = reference(case, chunk)
        per_core = elements / measured["seconds"] / cores
        rows.append({
            "case": case, "elements": elements, "seconds": measured["seconds"],
            "peak_rss_gib": measured["peak_rss_bytes"] / 2**30,
            "per_core_elements_per_s": per_core,
            "vs_numpy_compute": per_core / (1 / yardstick["compute"] / cores),
            "vs_numpy_with_generation": per_core / (1 / yardstick["with_generation"] / cores),
        })
    table = _markdown(rows, elements, chunk, cores)
    print(table)
    if args.save:
        from .__main__ import _device_description, _slug

        folder = RESULTS / _slug(f"cpu-{_device_description('cpu')['device_name']}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "out_of_core.json").write_text(json.dumps(rows, indent=1) + "\n")
        (folder / "out_of_core.md").write_text(table)
        print(f"wrote {folder / 'out_of_core.md'}")
    return 0


def _markdown(rows: list[dict[str, Any]], elements: int, chunk: int, cores: int) -> str:
    lines = [
        "# Out of core: arrayloss on Dask arrays",
        "",
        f"{platform.processor() or platform.machine()}, {cores} cores; {elements:,} elements "
        f"per array ({elements * 4 / 2**30:.0f} GiB each in float32), chunks of {chunk:,}, "
        "generated lazily by `dask.array.random`; the threaded scheduler.  The yardstick is "
        "arrayloss's NumPy path on one in-memory chunk, per core.",
        "",
        "| case | time (s) | peak RSS (GiB) | M elements/s per core | vs NumPy chunk | "
        "vs NumPy chunk incl. generation |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['seconds']:.1f} | {row['peak_rss_gib']:.2f} | "
            f"{row['per_core_elements_per_s'] / 1e6:.1f} | {row['vs_numpy_compute']:.0%} | "
            f"{row['vs_numpy_with_generation']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
