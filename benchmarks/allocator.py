"""``python -m benchmarks.allocator``: the same NumPy calls with and without PyTorch imported.

Importing torch changes how the process allocates memory, and a NumPy call that allocates
large temporaries can run several times slower in a process that has not imported it (freed
buffers go back to the OS and every call page-faults them in again).  This runs each case in
fresh processes, some that import torch first and some that do not, timed in a plain loop
(the median of many calls, nothing interleaved inside a process), and reports the ratio:
issue 16 asks for the same speed in both.  The processes run in pairs, one of each kind back
to back, several pairs per case: a machine whose speed drifts from minute to minute moves
both of a pair, and the verdict reads the range of the pairs' ratios (inconclusive where it
crosses a bound), as the main benchmark's verdicts read the spread of their rounds.

Results go to ``benchmarks/results/_scratch/<device>/allocator.md`` (git-ignored), or to the
committed record with ``--save``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from .__main__ import cpu_record
from ._cli import check_budget_and_torch, torch_cpu_parser, write_record

#: (name, setup, call): NumPy cases whose temporaries are large enough for the allocator to
#: return them to the OS between calls.
CASES = [
    ("GNLL backward, 65,536 elements",
     "x, t = rng.standard_normal((2, 1024, 64), dtype=np.float32); "
     "v = rng.uniform(0.5, 2, (1024, 64)).astype(np.float32)",
     "al.gaussian_nll_loss_backward(1.0, x, t, v, wrt=('input', 'var'))"),
    ("GNLL loss+grad, 1e6 elements",
     "x, t = rng.standard_normal((2, 10000, 100), dtype=np.float32); "
     "v = rng.uniform(0.5, 2, (10000, 100)).astype(np.float32)",
     "al.gaussian_nll_loss_and_grad(x, t, v, wrt=('input', 'var'))"),
    ("NLL loss+grad, 10000 x 1000",
     "x = rng.standard_normal((10000, 1000), dtype=np.float32); "
     "t = rng.integers(0, 1000, 10000)",
     "al.nll_loss_and_grad(x, t)"),
    ("NLL forward, 8 x 21 x 128 x 128",
     "x = rng.standard_normal((8, 21, 128, 128), dtype=np.float32); "
     "t = rng.integers(0, 21, (8, 128, 128))",
     "al.nll_loss(x, t)"),
    ("cross-entropy loss+grad, 1000 x 1000",
     "x = rng.standard_normal((1000, 1000), dtype=np.float32); "
     "t = rng.integers(0, 1000, 1000)",
     "al.cross_entropy_and_grad(x, t)"),
]

_CHILD = """
import json, sys, time
if {with_torch}:
    import torch
import numpy as np
import arrayloss as al
rng = np.random.default_rng(0)
{setup}
for _ in range(5):
    {call}
times = []
deadline = time.perf_counter() + {budget}
while len(times) < 20 or time.perf_counter() < deadline:
    start = time.perf_counter()
    {call}
    times.append(time.perf_counter() - start)
times.sort()
print(json.dumps({{"median_s": times[len(times) // 2], "calls": len(times),
                   "torch": "torch" in sys.modules}}))
"""


def measure(setup: str, call: str, with_torch: bool, budget: float) -> dict[str, float]:
    """The median time of ``call`` in a fresh interpreter (with torch imported or not)."""
    code = _CHILD.format(with_torch=with_torch, setup=setup, call=call, budget=budget)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    measured: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["torch"] == with_torch
    return measured


#: The ratios (time without torch over time with it) that count as the same speed.
SAME_SPEED = (0.8, 1.25)


def allocator_verdict(ratios: list[float]) -> str:
    """'met' where every pair's ratio lies within ``SAME_SPEED``, 'missed' where none does
    (all on one side), else 'inconclusive'."""
    low, high = SAME_SPEED
    inside = [low <= ratio <= high for ratio in ratios]
    if all(inside):
        return "met"
    if not any(inside) and (max(ratios) < low or min(ratios) > high):
        return "missed"
    return "inconclusive"


def main(argv: list[str] | None = None) -> int:
    parser = torch_cpu_parser("python -m benchmarks.allocator", __doc__, 1.0,
                              "seconds per process")
    parser.add_argument("--pairs", type=int, default=3,
                        help="process pairs (without, with torch) per case")
    args = parser.parse_args(argv)
    check_budget_and_torch(parser, args)
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    name, out = cpu_record(args.save)
    rows = []
    for label, setup, call in CASES:
        pairs = [(measure(setup, call, False, args.budget)["median_s"],
                  measure(setup, call, True, args.budget)["median_s"])
                 for _ in range(args.pairs)]
        ratios = sorted(without / with_torch for without, with_torch in pairs)
        without_s = statistics.median(without for without, _ in pairs)
        with_s = statistics.median(with_torch for _, with_torch in pairs)
        rows.append((label, without_s, with_s, ratios))
        print(f"{label}: {without_s * 1e3:.3f} ms without torch, {with_s * 1e3:.3f} ms with "
              f"(ratio {statistics.median(ratios):.2f}x, {ratios[0]:.2f}-{ratios[-1]:.2f})",
              flush=True)
    lines = [f"# NumPy calls with and without torch imported: {name}", "",
             f"Each case in {args.pairs} pairs of fresh processes (one without torch, one "
             "with it imported, back to back), each timed in a plain loop (median of at least "
             f"20 calls over {args.budget:g} s, after 5 warm-up calls); `python -m "
             "benchmarks.allocator`.  The ratio is the median of the pairs' ratios (time "
             "without over time with), with their range.  Issue 16's target: the same speed "
             "in both, the ratio within 0.8-1.25; inconclusive where the range crosses a "
             "bound.", "",
             "| case | without torch | with torch imported | ratio (range) | status |",
             "|---|---|---|---|---|"]
    for label, without_s, with_s, ratios in rows:
        lines.append(f"| {label} | {without_s * 1e3:,.3f} ms | {with_s * 1e3:,.3f} ms | "
                     f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) | "
                     f"{allocator_verdict(ratios)} |")
    write_record(out, "allocator.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
