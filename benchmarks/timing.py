"""How it is measured: timers and memory trackers for each library.

GPU calls are timed with CUDA events around each call, after a warm-up (which also compiles
the kernels), cycling through several input sets so the 50 MB L2 cache of an H100 does not
serve repeated inputs.  The host time of a call (launch overhead) is recorded beside it.
CPU calls are timed interleaved (:func:`time_cpu_interleaved`): every provider of a case runs
one batch per round, in a shuffled order, so a slow phase of the machine (another process, a
frequency change) hits all of them alike; each round gives a ratio between providers, and
the report's verdicts use the spread of those ratios.  Each measurement reports the median and
the 20th and 80th percentiles.  Peak extra memory: tracemalloc for NumPy, the profiler's
allocation events for PyTorch on the CPU, the allocators' counters on a GPU.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Call = Callable[[], Any]


@dataclass(frozen=True)
class Timing:
    median_s: float
    p20_s: float
    p80_s: float
    host_us: float  # time the host spends in the call (launch overhead on a GPU)
    repeats: int
    peak_extra_bytes: int | None
    #: The per-call time of each interleaved round (CPU), in round order.
    round_s: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median_s, "p20_s": self.p20_s, "p80_s": self.p80_s,
                "host_us": self.host_us, "repeats": self.repeats,
                "peak_extra_bytes": self.peak_extra_bytes, "round_s": list(self.round_s)}


def _summary(seconds: Sequence[float], host: Sequence[float], peak: int | None) -> Timing:
    values = np.asarray(seconds)
    return Timing(float(np.median(values)), float(np.percentile(values, 20)),
                  float(np.percentile(values, 80)), float(np.median(host)) * 1e6, len(values),
                  peak)


def time_cpu(calls: Sequence[Call], warmup: int, budget_s: float, max_repeats: int,
             track_memory: bool) -> Timing:
    """Median wall time of ``calls`` (cycled), within about ``budget_s`` seconds."""
    for k in range(warmup):
        calls[k % len(calls)]()
    peak = None
    if track_memory:  # NumPy reports its allocations to tracemalloc
        tracemalloc.start()
        calls[0]()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    seconds: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(seconds) < 3 or (len(seconds) < max_repeats and time.perf_counter() < deadline):
        start = time.perf_counter()
        calls[len(seconds) % len(calls)]()
        seconds.append(time.perf_counter() - start)
    return _summary(seconds, seconds, peak)


def numpy_peak(call: Call) -> int:
    """Peak extra memory of one call on NumPy (NumPy reports its allocations to tracemalloc)."""
    tracemalloc.start()
    try:
        result = call()
        del result
        return int(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at the null device: PyTorch's profiler writes two lines
    there from C++ (Kineto's ``profiler_start`` / ``profiler_stop``, whatever its log level)
    on every use, which buried the CLI's progress under a few hundred of them."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def torch_cpu_peak(call: Call) -> int:
    """Peak extra CPU memory of one PyTorch call: the running sum of the profiler's allocation
    and free events, in time order (resolution: one operator).

    The legacy profiler: Kineto's leaves hooks behind that make every later call slower.
    """
    import torch

    with _stderr_silenced(), torch.autograd.profiler.profile(profile_memory=True,
                                                             use_kineto=False) as profiler:
        result = call()
        del result
    current = peak = 0
    for event in sorted(profiler.function_events, key=lambda event: event.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return int(peak)


def lane_peak(call: Call) -> int:
    """Peak extra CPU memory of arrayloss on torch CPU tensors, an upper bound: NumPy's
    allocations (tracemalloc: the NumPy backend's, which the profiler does not see) plus
    PyTorch's (the profiler: its autograd graph), each measured in a call of its own."""
    return numpy_peak(call) + torch_cpu_peak(call)


def _batch_size(call: Call, minimum_s: float = 1e-3) -> tuple[int, float]:
    """Calls per timed batch, so that a batch lasts at least ``minimum_s`` (timeit's
    autorange, which the perf_counter resolution and the loop's own cost need), and the
    seconds per call that it measured."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            call()
        elapsed = time.perf_counter() - start
        if elapsed >= minimum_s or number >= 1 << 12:
            return number, elapsed / number
        number *= 2


#: A batch starts with one untimed call where a call takes less than this (see
#: :func:`time_cpu_interleaved`); longer ones are their own warm-up.
WARM_UP_BELOW_S = 0.1


def time_cpu_interleaved(calls: dict[str, Sequence[Call]], peaks: dict[str, Call | None],
                         warmup: int, budget_s: float, max_rounds: int,
                         min_rounds: int = 7) -> dict[str, Timing]:
    """Per-call CPU times of several providers of one case, measured in interleaved rounds.

    ``calls`` maps a provider to its calls (input sets, cycled); ``peaks`` to the function
    measuring one call's peak memory (or None).  Each round times one batch of every provider
    in an order shuffled afresh (seeded: the same sequence every run).  A rotation keeps the
    cyclic order, so one provider would always follow the same other one, and pay for it:
    the batch after PyTorch's runs on caches PyTorch has filled and beside its OpenMP threads
    still spinning (measured: 2-3 us more per small NumPy call than the same call after
    another NumPy batch).  For the same reason each batch starts with one untimed call (but
    for calls of ``WARM_UP_BELOW_S`` or more): with it, the 20-80% range of the per-round
    ratios of a 17 ms threaded NumPy call and another, with PyTorch timed in the same
    rounds, narrowed from 0.71-1.12 to 0.93-1.00 (measured on the 2-core EPYC).
    """
    names = list(calls)
    order = random.Random(0)
    for name in names:
        for k in range(warmup):
            calls[name][k % len(calls[name])]()
    sizes = {name: _batch_size(calls[name][0]) for name in names}
    numbers = {name: number for name, (number, _) in sizes.items()}
    warm_up = {name: seconds < WARM_UP_BELOW_S for name, (_, seconds) in sizes.items()}
    rounds: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.perf_counter() + budget_s
    count = 0
    while count < min_rounds or (count < max_rounds and time.perf_counter() < deadline):
        shuffled = names[:]
        order.shuffle(shuffled)
        for name in shuffled:
            batch, number = calls[name], numbers[name]
            if warm_up[name]:
                batch[-1]()
            start = time.perf_counter()
            for k in range(number):
                batch[k % len(batch)]()
            rounds[name].append((time.perf_counter() - start) / number)
        count += 1
    # Memory last, once the times are taken.
    memory = {name: (None if peaks.get(name) is None else peaks[name](calls[name][0]))
              for name in names}  # type: ignore[misc]
    timings = {}
    for name in names:
        summary = _summary(rounds[name], rounds[name], memory[name])
        timings[name] = Timing(summary.median_s, summary.p20_s, summary.p80_s, summary.host_us,
                               summary.repeats * numbers[name], summary.peak_extra_bytes,
                               tuple(rounds[name]))
    return timings


@contextlib.contextmanager
def tracked_cupy_pool() -> Iterator[Callable[[], int]]:
    """CuPy's default pool behind a tracking allocator, inside the block: yields a function
    that gives the peak extra bytes since the block began (after it, too)."""
    import cupy

    pool = cupy.get_default_memory_pool()
    cupy.cuda.get_current_stream().synchronize()
    baseline = pool.used_bytes()
    peak = baseline

    def tracking_malloc(size: int) -> Any:
        nonlocal peak
        memory = pool.malloc(size)
        peak = max(peak, pool.used_bytes())
        return memory

    cupy.cuda.set_allocator(tracking_malloc)
    try:
        yield lambda: peak - baseline
    finally:
        cupy.cuda.set_allocator(pool.malloc)


def _cupy_peak(call: Call) -> int:
    """Peak extra device memory of one call, through a tracking allocator on CuPy's pool."""
    with tracked_cupy_pool() as peak:
        result = call()
        del result
    return peak()


def _torch_peak(call: Call) -> int:
    import torch

    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = call()
    del result
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - baseline


def time_gpu(calls: Sequence[Call], library: str, warmup: int, budget_s: float,
             max_repeats: int) -> Timing:
    """Per-call GPU time from CUDA events (on the library's current stream)."""
    if library == "torch":
        import torch

        def event() -> Any:
            return torch.cuda.Event(enable_timing=True)

        synchronize: Callable[[], None] = torch.cuda.synchronize

        def elapsed_s(start: Any, end: Any) -> float:
            return float(start.elapsed_time(end)) / 1e3
    else:
        import cupy

        def event() -> Any:
            return cupy.cuda.Event()

        def synchronize() -> None:
            cupy.cuda.get_current_stream().synchronize()

        def elapsed_s(start: Any, end: Any) -> float:
            return float(cupy.cuda.get_elapsed_time(start, end)) / 1e3

    for k in range(warmup):
        calls[k % len(calls)]()
    synchronize()
    peak = _torch_peak(calls[0]) if library == "torch" else _cupy_peak(calls[0])
    seconds: list[float] = []
    host: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(seconds) < 5 or (len(seconds) < max_repeats and time.perf_counter() < deadline):
        start, end = event(), event()
        call = calls[len(seconds) % len(calls)]
        start.record()
        launched = time.perf_counter()
        call()
        host.append(time.perf_counter() - launched)
        end.record()
        end.synchronize()
        seconds.append(elapsed_s(start, end))
    return _summary(seconds, host, peak)
