"""``python -m benchmarks.floor``: the least NumPy work of the torch CPU cases arrayloss misses.

Issue 31 asks the torch CPU lane (CPU tensors on NumPy's fast paths, zero-copy) for at least
PyTorch's speed from 1e5 elements.  The main benchmark finds it slower in a few kinds of case
(``benchmarks/results/<cpu>/results.md``).  This asks whether any NumPy code could be faster:
for each kind it times, in the same interleaved rounds, PyTorch's whole call, arrayloss's
call on the tensors, and a *floor*: only the NumPy calls that every NumPy implementation of
the case has to make, on preallocated buffers, with no validation, no dispatch and no autograd
node (a gather of the targets' values, the zero-fill and scatter of a dense gradient, one
``exp`` and one sum over the logits).  The floor runs on one thread, and the report also gives
it halved: the best that splitting the work over two threads could reach with no hand-off
cost.  A floor above PyTorch's time means no NumPy implementation reaches PyTorch's speed on
that machine; a halved floor above it means not even one split perfectly over two threads.

Results go to ``benchmarks/results/_scratch/<device>/floor.md`` (git-ignored), or to the
committed record with ``--save``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .__main__ import cpu_record
from ._cli import check_budget_and_torch, torch_cpu_parser, write_record
from .timing import time_cpu_interleaved

Call = Callable[[], Any]


def _nll_case(n: int, c: int, weighted: bool) -> dict[str, Call]:
    """NLL forward and ``backward()`` on an ``(n, c)`` tensor; with class weights and one
    target in seven ignored where ``weighted``."""
    import torch
    import torch.nn.functional as F

    import arrayloss as al

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, generator=generator).log_softmax(1).requires_grad_()
    target = torch.randint(0, c, (n,), generator=generator)
    keywords: dict[str, Any] = {}
    if weighted:
        target[::7] = -100
        keywords["weight"] = torch.rand(c, generator=generator)

    def through(loss: Callable[..., Any]) -> Call:
        def call() -> None:
            loss(logits, target, **keywords).backward()
            logits.grad = None
        return call

    # The floor: the targets' values gathered (and their weights, where weighted), a dense
    # gradient zeroed and the targets' gradients scattered into it.
    x, t = logits.detach().numpy(), target.numpy()
    flat_grad = np.empty(n * c, dtype=np.float32)
    rows = np.arange(n) * c
    w = None if not weighted else keywords["weight"].numpy()

    def floor() -> tuple[np.ndarray, np.ndarray]:
        """The (weighted) values at the targets, and the gradient with their places set."""
        classes = np.where(t != -100, t, 0) if weighted else t
        positions = rows + classes
        picked = np.take(x.reshape(-1), positions)
        if w is not None:
            picked *= np.take(w, classes)
        flat_grad.fill(0.0)
        flat_grad[positions] = -1.0 / n
        float(picked.sum())
        return picked, flat_grad

    return {"PyTorch": through(F.nll_loss), "arrayloss": through(al.nll_loss),
            "NumPy floor": floor}


def _cross_entropy_case(n: int, c: int) -> dict[str, Call]:
    """Cross-entropy forward, no autograd, on an ``(n, c)`` tensor."""
    import torch
    import torch.nn.functional as F

    import arrayloss as al

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, generator=generator)
    target = torch.randint(0, c, (n,), generator=generator)

    def through(loss: Callable[..., Any]) -> Call:
        def call() -> None:
            with torch.no_grad():
                loss(logits, target)
        return call

    # The floor: one exp over every logit and one sum per row, without even the row maxima a
    # safe log-sum-exp needs (logits of a standard normal cannot overflow float32's exp).
    x = logits.numpy()
    work = np.empty_like(x)
    sums = np.empty(n, dtype=np.float32)

    def floor() -> np.ndarray:
        """Each row's sum of exponentials."""
        np.exp(x, out=work)
        return np.add.reduce(work, axis=1, out=sums)

    return {"PyTorch": through(F.cross_entropy), "arrayloss": through(al.cross_entropy),
            "NumPy floor": floor}


#: (label, builder): the kinds of case the torch CPU lane misses (issue 31's item 5).
CASES: tuple[tuple[str, Callable[[], dict[str, Call]]], ...] = (
    ("NLL loss, backward(), 1024 x 1000", lambda: _nll_case(1024, 1000, False)),
    ("NLL loss, backward(), 65536 x 10", lambda: _nll_case(65536, 10, False)),
    ("NLL loss, backward(), 65536 x 10, weights, ignored targets",
     lambda: _nll_case(65536, 10, True)),
    ("cross-entropy forward, 1000 x 1000", lambda: _cross_entropy_case(1000, 1000)),
)


def verdict(low: float) -> str:
    """What the floor says of PyTorch's speed for NumPy code, from ``low``, the 20th
    percentile of the per-round ratios floor / PyTorch (four rounds in five are above it)."""
    if low > 2:
        return "out of reach: the floor halved is slower than PyTorch"
    if low > 1:
        return "out of reach on one thread; two would need a hand-off under the gap"
    return "within reach of NumPy code"


def main(argv: list[str] | None = None) -> int:
    parser = torch_cpu_parser("python -m benchmarks.floor", __doc__, 3.0, "seconds per case")
    parser.add_argument("--rounds", type=int, default=60, help="interleaved rounds per case, "
                        "at most")
    args = parser.parse_args(argv)
    check_budget_and_torch(parser, args)
    if args.rounds < 7:
        parser.error(f"--rounds must be at least 7, got {args.rounds}")
    import torch

    name, out = cpu_record(args.save)
    lines = [f"# The least NumPy work of the torch CPU cases arrayloss misses: {name}", "",
             "`python -m benchmarks.floor` (its `--help` explains the method): PyTorch's whole "
             "call, arrayloss's call on the same tensors and the NumPy floor (the NumPy calls "
             "every NumPy implementation makes, on one thread, on preallocated buffers), in "
             f"the same interleaved rounds (at most {args.rounds}, {args.budget:g} s a case), "
             f"float32, `'mean'`, PyTorch {torch.__version__} with "
             f"{torch.get_num_threads()} threads.  Medians, with the 20th-80th percentiles "
             "of the per-round ratios.", "",
             "| case | PyTorch | arrayloss | NumPy floor | floor / PyTorch | verdict |",
             "|---|---|---|---|---|---|"]
    for label, build in CASES:
        calls = build()
        timings = time_cpu_interleaved({key: [call] for key, call in calls.items()},
                                       {}, warmup=3, budget_s=args.budget,
                                       max_rounds=args.rounds)
        ratios = [f / t for f, t in zip(timings["NumPy floor"].round_s,
                                        timings["PyTorch"].round_s, strict=True)]
        low, median, high = (float(q) for q in np.percentile(ratios, (20, 50, 80)))
        floor_s, torch_s = timings["NumPy floor"].median_s, timings["PyTorch"].median_s
        row = (f"| {label} | {torch_s * 1e6:,.0f} us | "
               f"{timings['arrayloss'].median_s * 1e6:,.0f} us | {floor_s * 1e6:,.0f} us | "
               f"{median:.2f}x ({low:.2f}-{high:.2f}) | {verdict(low)} |")
        print(row, flush=True)
        lines.append(row)
    write_record(out, "floor.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
