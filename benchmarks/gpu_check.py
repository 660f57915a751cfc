"""``python -m benchmarks.gpu_check STAGE --out DIR``: the stages of ``gpu_check.sh``.

One lent GPU call must measure what the issue's targets read, within minutes, and bring back
at most 8 files.  Each stage appends its records to ``DIR/check.jsonl`` as it goes (one JSON
object a line, flushed and synced), so a stage stopped by its budget (``timeout -s INT``:
a KeyboardInterrupt here) leaves everything it measured and an ``interrupted`` record:

* ``probe``: versions, the GPU, a CuPy kernel launched and checked, one fused arrayloss call
  against NumPy, the ceilings (copy bandwidth, launch costs: :mod:`benchmarks.ceilings`).
  It fails (exit 2) when CuPy cannot launch a kernel: the script stops there.
* ``targets``: the target cases first (GNLL 2^26 forward and loss+grad, NLL 2^20 x 1000,
  cross-entropy 4096 x 32000 fp32 and 8192 x 128256 bf16 with ``out=input``), each timed
  with CUDA events for arrayloss fused (CuPy arrays), arrayloss through the torch bridge
  (counted: the fused backend must have run, the generic one not), PyTorch eager and
  ``torch.compile`` in the same run, with the peak extra GPU memory (CuPy's pool and
  PyTorch's allocator together).  The ``torch.compile`` baselines come last, within what
  is left of the stage's budget, since compiling costs tens of seconds each.
* ``determinism``: every fused target case 10 times, outputs compared bit for bit.
* ``summary``: ``summary.md`` from the records, the test report and the sweep; the exit
  status says whether the check passed (non-zero when anything failed, when no target was
  measured, or when the tests all skipped).

``--dry-run`` runs the same stages on the CPU at tiny sizes: NumPy arrays stand in for CuPy
ones (the generic code), CPU tensors for CUDA ones with a stand-in device behind the torch
bridge (counted as on a GPU), wall-clock timers for CUDA events, and ``torch.compile``'s
``eager`` backend for inductor.  It checks the plumbing, never a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from arrayloss import _torch_cpu, _torch_cuda

from .cases import Case, make_inputs, model_bytes
from .timing import tracked_cupy_pool

RECORDS = "check.jsonl"
SUMMARY = "summary.md"
#: What the device tool brings back from $OUT.
MAX_FILES = 8
REPEATS = 10  # the determinism check
#: The share of the logits that ``out=input`` may add to the peak memory (its O(N) row
#: statistics and partials; a second N x C buffer would be 100%).
IN_PLACE_PEAK_SHARE = 0.05
#: A torch.compile baseline starts only with this many seconds of the stage's budget left.
COMPILE_RESERVE_S = 45.0

Call = Callable[[], Any]
#: The backends' entry points the torch bridge may call.
METHODS = _torch_cuda._METHODS


@dataclasses.dataclass(frozen=True)
class Target:
    """One target case: its GPU shape and the tiny shape of a dry run."""

    case: Case
    dry_shape: tuple[int, ...]
    #: Also measure the peak GPU memory of ``out=input`` against the logits' size.
    in_place: bool = False

    def sized(self, dry_run: bool) -> Case:
        return dataclasses.replace(self.case, shape=self.dry_shape) if dry_run else self.case


TARGETS = [
    Target(Case("gaussian_nll", "forward", "mean", "full", "float32", (1 << 20, 64)), (64, 64)),
    Target(Case("gaussian_nll", "loss_and_grad", "mean", "full", "float32", (1 << 20, 64)),
           (64, 64)),
    Target(Case("nll", "forward", "mean", "plain", "float32", (1 << 20, 1000)), (256, 100)),
    Target(Case("cross_entropy", "forward", "mean", "plain", "float32", (4096, 32000)),
           (16, 320)),
    Target(Case("cross_entropy", "loss_and_grad", "mean", "plain", "float32", (4096, 32000)),
           (16, 320)),
    Target(Case("cross_entropy", "loss_and_grad", "mean", "in-place", "float32",
                (4096, 32000)), (16, 320), in_place=True),
    Target(Case("cross_entropy", "loss_and_grad", "mean", "in-place", "bfloat16",
                (8192, 128256)), (16, 1283), in_place=True),
]


# ------------------------------------------------------------------ records


class Records:
    """``check.jsonl``, appended one record at a time."""

    def __init__(self, out: Path, stage: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / RECORDS
        self.stage = stage

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        record = {"stage": self.stage, "kind": kind, "time": round(time.time(), 3), **fields}
        with self.path.open("a") as stream:
            stream.write(json.dumps(record, default=_json_default) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        print(f"[{self.stage}] {kind}: " + ", ".join(
            f"{k}={_short(v)}" for k, v in fields.items()), flush=True)
        return record


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return repr(value)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) < 80 else text[:77] + "..."


def read_records(out: Path) -> list[dict[str, Any]]:
    path = out / RECORDS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
            records.append(json.loads(line))
    return records


# ------------------------------------------------------------------ the platform


@dataclasses.dataclass
class Platform:
    """Where the stages run: the GPU, or the CPU stand-ins of a dry run."""

    dry_run: bool

    def synchronize(self) -> None:
        if not self.dry_run:
            import cupy
            import torch

            cupy.cuda.get_current_stream().synchronize()
            torch.cuda.synchronize()

    def inputs(self, case: Case) -> dict[str, Any]:
        if self.dry_run:
            return make_inputs(case, 0, np)
        import cupy

        return make_inputs(case, 0, cupy)

    def fused_arrays(self, case: Case, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs as arrayloss's fused backend takes them (CuPy arrays on a GPU)."""
        from .providers import FUSED, NUMPY, convert

        return convert(NUMPY if self.dry_run else FUSED, case, inputs)

    def torch_arrays(self, case: Case, inputs: dict[str, Any]) -> dict[str, Any]:
        from .providers import TORCH_CPU, TORCH_CUDA, convert

        return convert(TORCH_CPU if self.dry_run else TORCH_CUDA, case, inputs)

    def time(self, call: Call, library: str, budget_s: float) -> dict[str, Any]:
        """Per-call time (CUDA events on a GPU) and the peak extra memory of one call."""
        from .timing import time_cpu, time_gpu

        if self.dry_run:
            timing = time_cpu([call], 1, budget_s, 20, track_memory=library == "numpy")
            return timing.to_dict() | {"timer": "perf_counter"}
        timing = time_gpu([call], library, 2, budget_s, 50)
        return timing.to_dict() | {"timer": "cuda events",
                                   "peak_extra_bytes": peak_device_bytes(call)}

    def compile(self, function: Callable[..., Any]) -> Callable[..., Any]:
        import torch

        # inductor on the GPU; the eager backend in a dry run (inductor would compile C++).
        return torch.compile(function, backend="eager" if self.dry_run else "inductor")

    @contextlib.contextmanager
    def bridge(self) -> Iterator[dict[str, int]]:
        """Count the torch bridge's calls of the fused backend and of the generic code.

        On a GPU the bridge is the real one, with counting wrappers on the CuPy backends'
        entry points; in a dry run a stand-in device (NumPy through DLPack, every tensor
        counted as on the device) runs the generic code as its 'fused' backend.
        """
        import importlib

        from arrayloss import _dispatch, _torch_cuda

        counts = {"fused": 0, "generic": 0}
        losses = ("gaussian_nll", "nll", "cross_entropy")
        saved: list[tuple[Any, str, Any]] = []

        def count(owner: Any, name: str, key: str) -> None:
            original = getattr(owner, name)

            def counted(*args: Any, **kwargs: Any) -> Any:
                counts[key] += 1
                return original(*args, **kwargs)

            saved.append((owner, name, original))
            setattr(owner, name, counted)

        for loss in losses:
            generic = importlib.import_module(f"arrayloss._agnostic.{loss}")
            for method in METHODS:
                if hasattr(generic, method):
                    count(generic, method, "generic")
        if self.dry_run:
            from array_api_compat import array_namespace

            counted_modules = {}
            for loss in losses:
                generic = importlib.import_module(f"arrayloss._agnostic.{loss}")
                counted_modules[loss] = _CountingModule(generic, counts)
            device = _torch_cuda.Device(
                from_dlpack=np.from_dlpack, namespace=lambda: array_namespace(np.empty(0)),
                backend=counted_modules.__getitem__,
                stream=lambda index, pointer: contextlib.nullcontext(),
                current_stream=lambda device: 0)
            bridges = {loss: _torch_cuda.Bridge(loss, device, on_device=lambda tensor: True)
                       for loss in losses}
            # Every torch tensor reaches the bridges through _torch_bridge (CPU tensors too,
            # which stand in for CUDA ones here), and none takes the NumPy lane a CPU
            # tensor's call takes before validation.
            saved += [(_torch_cuda, "cupy_available", _torch_cuda.cupy_available),
                      (_dispatch, "_torch_bridge", _dispatch._torch_bridge),
                      (_torch_cpu, "_numpy_views", _torch_cpu._numpy_views)]
            _torch_cuda.cupy_available = lambda: True  # type: ignore[assignment]
            _dispatch._torch_bridge = bridges.__getitem__  # type: ignore[assignment]
            _torch_cpu._numpy_views = lambda *arguments: None  # type: ignore[assignment]
        else:
            for loss in losses:
                fused = importlib.import_module(f"arrayloss._cupy.{loss}")
                for method in METHODS:
                    if hasattr(fused, method):
                        count(fused, method, "fused")
        try:
            yield counts
        finally:
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)


class _CountingModule:
    """A loss's generic module whose entry points count as the fused backend's (dry run)."""

    def __init__(self, module: Any, counts: dict[str, int]) -> None:
        self._module, self._counts = module, counts

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._module, name)

        def counted(*args: Any) -> Any:
            self._counts["fused"] += 1
            self._counts["generic"] -= 1  # the generic call below is the stand-in's
            return method(*args)

        return counted


def peak_device_bytes(call: Call) -> int:
    """Peak extra GPU memory of one call: CuPy's pool and PyTorch's allocator together (the
    torch bridge allocates its small buffers from CuPy's pool)."""
    import cupy
    import torch

    torch.cuda.synchronize()
    torch_base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with tracked_cupy_pool() as cupy_peak:
        result = call()
        del result
        cupy.cuda.get_current_stream().synchronize()
        torch.cuda.synchronize()
    return cupy_peak() + (torch.cuda.max_memory_allocated() - torch_base)


# ------------------------------------------------------------------ calls


def fused_call(case: Case, arrays: dict[str, Any]) -> Call:
    from .providers import _arrayloss_call

    return _arrayloss_call(case, arrays)


def bridge_call(case: Case, tensors: dict[str, Any]) -> Call:
    """arrayloss on torch tensors: ``out=input`` explicitly, the rest through autograd."""
    from .providers import _arrayloss_autograd_call, _arrayloss_call

    if case.variant == "in-place":
        return _arrayloss_call(case, tensors)
    return _arrayloss_autograd_call(case, tensors)


def torch_function(case: Case) -> Callable[..., Any]:
    """PyTorch's loss of ``case`` as a function of its tensors (what torch.compile takes)."""
    import torch.nn.functional as F

    if case.loss == "gaussian_nll":
        return lambda x, t, var: F.gaussian_nll_loss(x, t, var, reduction=case.reduction)
    function = F.cross_entropy if case.loss == "cross_entropy" else F.nll_loss
    return lambda x, t: function(x, t, reduction=case.reduction)


def torch_call(case: Case, tensors: dict[str, Any], function: Callable[..., Any]) -> Call:
    """``function`` on the case's tensors, with ``backward()`` for loss-and-gradient."""
    arguments = ([tensors["input"], tensors["target"], tensors["var"]]
                 if case.loss == "gaussian_nll" else [tensors["input"], tensors["target"]])
    if case.op == "forward":
        return lambda: function(*arguments)
    leaves = [arguments[0].detach().requires_grad_()]
    if case.loss == "gaussian_nll":
        leaves.append(arguments[2].detach().requires_grad_())
        arguments = [leaves[0], arguments[1], leaves[1]]
    else:
        arguments = [leaves[0], arguments[1]]

    def forward_backward() -> Any:
        loss = function(*arguments)
        loss.backward()
        for leaf in leaves:
            leaf.grad = None
        return loss

    return forward_backward


# ------------------------------------------------------------------ stages


def stage_probe(platform: Platform, records: Records, args: argparse.Namespace) -> int:
    import importlib
    import platform as host

    versions = {"python": host.python_version()}
    for name in ("numpy", "cupy", "torch", "jax", "ml_dtypes", "array_api_compat",
                 "array_api_strict", "arrayloss"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as error:
            versions[name] = f"missing ({type(error).__name__}: {error})"
    records.write("versions", dry_run=platform.dry_run, versions=versions,
                  jax_platforms=os.environ.get("JAX_PLATFORMS"))
    import arrayloss as al

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 33)).astype(np.float32)
    labels = rng.integers(0, 33, 64)
    want = float(al.cross_entropy(logits, labels))
    if platform.dry_run:
        records.write("launch", ok=True, device="cpu (dry run)", cross_entropy=want)
        return 0
    try:
        import cupy

        kernel = cupy.ElementwiseKernel("T x", "T y", "y = x * 2 + 1", "arrayloss_probe")
        doubled = kernel(cupy.arange(1000, dtype=cupy.float32))
        launched = bool((doubled.get() == np.arange(1000) * 2 + 1).all())
        properties = cupy.cuda.runtime.getDeviceProperties(0)
        name = properties["name"]
        got = float(al.cross_entropy(cupy.asarray(logits), cupy.asarray(labels)))
        fused_ok = math.isclose(got, want, rel_tol=1e-5)
        from .ceilings import measure

        ceilings = measure()  # copy bandwidth, empty kernels' launch costs: seconds
    except Exception as error:
        records.write("launch", ok=False, error=f"{type(error).__name__}: {error}",
                      traceback=traceback.format_exc()[-2000:])
        return 2
    records.write("launch", ok=launched and fused_ok,
                  device=name.decode() if isinstance(name, bytes) else name,
                  runtime=cupy.cuda.runtime.runtimeGetVersion(),
                  driver=cupy.cuda.runtime.driverGetVersion(),
                  memory_bytes=int(properties["totalGlobalMem"]), kernel_ok=launched,
                  fused_cross_entropy=got, numpy_cross_entropy=want,
                  copy_gbps=ceilings["copy_gbps_1GiB"], ceilings=ceilings)
    return 0 if launched and fused_ok else 2


def stage_targets(platform: Platform, records: Records, args: argparse.Namespace) -> int:
    """Every target case: fused, bridge and eager first, torch.compile afterwards."""
    deadline = time.monotonic() + args.budget
    failures = 0
    later: list[Case] = []
    for target in TARGETS:
        case = target.sized(platform.dry_run)
        failures += _measure_target(platform, records, target, case, args)
        later.append(case)
        _free(platform)
    for case in later:  # the compile baselines, while the budget lasts
        if deadline - time.monotonic() < (1.0 if platform.dry_run else COMPILE_RESERVE_S):
            records.write("skipped", case=case.key, provider="torch compile",
                          reason="stage budget")
            continue
        failures += _measure(platform, records, case, "torch compile", "torch",
                             lambda case=case: torch_call(
                                 case, platform.torch_arrays(case, platform.inputs(case)),
                                 platform.compile(torch_function(case))), args) is None
        _free(platform)
    return 1 if failures else 0


def _measure_target(platform: Platform, records: Records, target: Target, case: Case,
                    args: argparse.Namespace) -> int:
    failures = 0
    inputs = platform.inputs(case)
    fused_library = "numpy" if platform.dry_run else "cupy"
    row = _measure(platform, records, case, "arrayloss fused", fused_library,
                   lambda: fused_call(case, platform.fused_arrays(case, inputs)), args,
                   in_place=target.in_place)
    failures += row is None
    with platform.bridge() as counts:
        before = dict(counts)
        row = _measure(platform, records, case, "arrayloss via torch", "torch",
                       lambda: bridge_call(case, platform.torch_arrays(case, inputs)), args,
                       in_place=target.in_place)
        fused = counts["fused"] - before["fused"]
        generic = counts["generic"] - before["generic"]
    bridged = row is not None and fused > 0 and generic == 0
    records.write("bridge", case=case.key, ok=bridged, fused_calls=fused,
                  generic_calls=generic)
    failures += not bridged
    failures += _measure(platform, records, case, "torch eager", "torch",
                         lambda: torch_call(case, platform.torch_arrays(case, inputs),
                                            torch_function(case)), args) is None
    return failures


def _measure(platform: Platform, records: Records, case: Case, provider: str, library: str,
             make: Callable[[], Call], args: argparse.Namespace,
             in_place: bool = False) -> dict[str, Any] | None:
    """Time one provider on one case and write its record (an error is recorded, not
    raised); None when it failed."""
    started = time.monotonic()
    try:
        call = make()
        timing = platform.time(call, library, args.case_budget)
    except Exception as error:
        records.write("error", case=case.key, provider=provider,
                      error=f"{type(error).__name__}: {error}"[:500],
                      traceback=traceback.format_exc()[-1500:])
        return None
    fields: dict[str, Any] = {"case": case.key, "provider": provider, **timing,
                              "model_bytes": model_bytes(case),
                              "gbps": model_bytes(case) / timing["median_s"] / 1e9,
                              "seconds_spent": time.monotonic() - started}
    if in_place and timing.get("peak_extra_bytes") is not None:
        logits_bytes = case.elements * (2 if case.dtype in ("bfloat16", "float16") else 4)
        fields["logits_bytes"] = logits_bytes
        fields["peak_share_of_logits"] = timing["peak_extra_bytes"] / logits_bytes
        if provider.startswith("arrayloss") and not platform.dry_run:
            # Judged on a GPU only: NumPy's blocks hold a whole tiny input at once.
            fields["in_place_memory_ok"] = (
                timing["peak_extra_bytes"] <= IN_PLACE_PEAK_SHARE * logits_bytes)
    return records.write("timing", **fields)


def _free(platform: Platform) -> None:
    if platform.dry_run:
        return
    import cupy
    import torch

    platform.synchronize()
    cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()


def stage_determinism(platform: Platform, records: Records, args: argparse.Namespace) -> int:
    """Each fused target case :data:`REPEATS` times on the same inputs: bitwise equal."""
    deadline = time.monotonic() + args.budget
    failures = 0
    for target in TARGETS:
        case = target.sized(platform.dry_run)
        if time.monotonic() > deadline:
            records.write("skipped", case=case.key, reason="stage budget")
            continue
        inputs = platform.inputs(case)
        if case.variant == "in-place":  # each repeat on a fresh copy of the same logits
            case = dataclasses.replace(case, variant="plain")
        try:
            digests = []
            for _ in range(REPEATS):
                result = fused_call(case, platform.fused_arrays(case, inputs))()
                digests.append(_digest(result))
                del result
            same = len(set(digests)) == 1
        except Exception as error:
            records.write("error", case=case.key, error=f"{type(error).__name__}: {error}")
            failures += 1
            continue
        records.write("determinism", case=case.key, repeats=REPEATS, ok=same,
                      distinct=len(set(digests)))
        failures += not same
        _free(platform)
    return 1 if failures else 0


def _digest(value: Any) -> str:
    import hashlib

    digest = hashlib.sha256()
    for part in value if isinstance(value, tuple) else (value,):
        for item in part if isinstance(part, tuple) else (part,):
            if item is None:
                continue
            array = item.get() if hasattr(item, "get") and not isinstance(item, np.ndarray) \
                else np.asarray(item)
            digest.update(np.ascontiguousarray(array).view(np.uint8).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ the summary


def summarize(out: Path) -> tuple[str, list[str]]:
    """The summary's Markdown and the reasons the check failed (none: it passed)."""
    records = read_records(out)
    problems: list[str] = []
    lines = ["# arrayloss GPU check", ""]
    versions = next((r for r in records if r["kind"] == "versions"), None)
    launch = next((r for r in records if r["kind"] == "launch"), None)
    if versions:
        lines.append(f"dry run: {versions['dry_run']}; " + ", ".join(
            f"{k} {v}" for k, v in versions["versions"].items()))
    if launch is None or not launch.get("ok"):
        problems.append("probe: no kernel launched" + (
            f" ({launch.get('error')})" if launch else ""))
    else:
        lines.append(f"device: {launch.get('device')}, copy "
                     f"{launch.get('copy_gbps', float('nan')):,.0f} GB/s")
    stages = [(r["stage"], r["kind"], r.get("seconds")) for r in records
              if r["kind"] in ("stage", "interrupted")]
    lines += ["", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {stage} | {kind if kind == 'interrupted' else 'done'} | "
              f"{seconds if seconds is not None else '-'} |" for stage, kind, seconds in stages]
    problems += [f"{stage}: interrupted by its budget" for stage, kind, _ in stages
                 if kind == "interrupted"]
    finished = {stage for stage, _, _ in stages}
    problems += [f"{stage}: no record of its end (killed?)" for stage in RECORDED_STAGES
                 if stage not in finished]
    timings = [r for r in records if r["kind"] == "timing"]
    lines += ["", "| case | provider | median ms | GB/s | peak extra MB |", "|---|---|---|---|---|"]
    for row in timings:
        peak = row.get("peak_extra_bytes")
        lines.append(f"| {row['case']} | {row['provider']} | {row['median_s'] * 1e3:.3f} | "
                     f"{row['gbps']:.1f} | {'-' if peak is None else f'{peak / 1e6:.1f}'} |")
    lines += _speedups(timings)
    lines += _against_proxy(timings)
    measured = {row["case"] for row in timings if row["provider"] == "arrayloss fused"}
    if not measured:
        problems.append("targets: no fused target case was measured")
    for record in records:
        if record["kind"] == "error":
            problems.append(f"{record['stage']}: {record.get('case')} "
                            f"{record.get('provider', '')}: {record['error'][:200]}")
        if record["kind"] in ("bridge", "determinism") and not record["ok"]:
            problems.append(f"{record['kind']}: {record['case']} failed")
        if record.get("in_place_memory_ok") is False:
            problems.append(f"memory: {record['case']} {record['provider']} peak "
                            f"{record['peak_share_of_logits']:.0%} of the logits")
    lines += _tests_summary(out, problems)
    lines += _script_stages(out, problems)
    sweep = out / "sweep.json"
    if sweep.exists():
        data = json.loads(sweep.read_text())
        lines += ["", f"sweep: {data['meta'].get('cases_run')} cases "
                      f"({data['meta'].get('cases_skipped_for_time')} skipped for time)"]
    files = [path for path in out.rglob("*") if path.is_file()]
    if len(files) + (not (out / SUMMARY).exists()) > MAX_FILES:
        problems.append(f"{len(files)} files under OUT: at most {MAX_FILES} come back")
    lines += ["", "## Verdict", ""]
    lines += [f"- FAILED: {problem}" for problem in problems] or ["- passed"]
    return "\n".join(lines) + "\n", problems


def _speedups(timings: list[dict[str, Any]]) -> list[str]:
    by_case: dict[str, dict[str, float]] = {}
    for row in timings:
        by_case.setdefault(row["case"], {})[row["provider"]] = row["median_s"]
    lines = ["", "| case | fused vs eager | fused vs compile | bridge vs eager |",
             "|---|---|---|---|"]
    for case, times in by_case.items():
        def ratio(base: str, ours: str, times: dict[str, float] = times) -> str:
            if base in times and ours in times and times[ours] > 0:
                return f"{times[base] / times[ours]:.2f}x"
            return "-"
        lines.append(f"| {case} | {ratio('torch eager', 'arrayloss fused')} | "
                     f"{ratio('torch compile', 'arrayloss fused')} | "
                     f"{ratio('torch eager', 'arrayloss via torch')} |")
    return lines


def _against_proxy(timings: list[dict[str, Any]]) -> list[str]:
    """The fused times against the CPU proxy's prediction (``benchmarks/results/proxy.json``:
    bytes / 4.3 TB/s + 4 us a launch), where the case is one of its."""
    path = Path(__file__).resolve().parent / "results" / "proxy.json"
    if not path.exists():
        return []
    predicted = {row["case"]: row for row in json.loads(path.read_text())}
    lines = ["", "| case | fused us | proxy's prediction us | measured / predicted | "
                 "roofline fraction |", "|---|---|---|---|---|"]
    rows = 0
    for row in timings:
        proxy = predicted.get(row["case"])
        if row["provider"] != "arrayloss fused" or proxy is None:
            continue
        measured_us = row["median_s"] * 1e6
        least_us = proxy["min_bytes"] / 4.3e12 * 1e6
        lines.append(f"| {row['case']} | {measured_us:,.1f} | {proxy['predicted_us']:,.1f} | "
                     f"{measured_us / proxy['predicted_us']:.2f} | "
                     f"{least_us / measured_us:.0%} |")
        rows += 1
    return lines if rows else []


def _script_stages(out: Path, problems: list[str]) -> list[str]:
    """Each stage's exit status and seconds as ``gpu_check.sh`` logged them; the test and
    sweep stages, which leave no records of their own, fail the check by their status."""
    log = out / "log.txt"
    if not log.exists():
        return []
    ended = re.findall(r"^== (\w+): exit (\d+) after (\d+)s", log.read_text(), re.M)
    for stage, status, _ in ended:
        if stage in ("tests", "sweep") and status != "0":
            problems.append(f"{stage}: exit {status}" + (
                " (its budget ran out)" if status in ("124", "130", "137", "2") else ""))
    return ["", "| stage (script) | exit | seconds |", "|---|---|---|",
            *(f"| {stage} | {status} | {seconds} |" for stage, status, seconds in ended)]


def _tests_summary(out: Path, problems: list[str]) -> list[str]:
    report = out / "tests.xml"
    if not report.exists():
        problems.append("tests: no report")
        return ["", "tests: no report"]
    try:
        root = ElementTree.parse(report).getroot()
    except ElementTree.ParseError as error:
        problems.append(f"tests: unreadable report ({error})")
        return []
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    passed = total - failed - skipped
    if failed:
        problems.append(f"tests: {failed} failed")
    if passed == 0:
        problems.append("tests: none passed (everything skipped?)")
    return ["", f"tests: {passed} passed, {failed} failed, {skipped} skipped"]


def stage_summary(platform: Platform, records: Records, args: argparse.Namespace) -> int:
    text, problems = summarize(args.out)
    (args.out / SUMMARY).write_text(text)
    print(text)
    return 1 if problems else 0


#: The stages whose end the summary requires.
RECORDED_STAGES = ("probe", "targets", "determinism")
STAGES = {"probe": stage_probe, "targets": stage_targets, "determinism": stage_determinism,
          "summary": stage_summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--budget", type=float, default=180.0,
                        help="the stage's seconds (its own deadline; timeout is the backstop)")
    parser.add_argument("--case-budget", type=float, default=0.5,
                        help="seconds of timed repeats per provider and case")
    args = parser.parse_args(argv)
    platform = Platform(dry_run=args.dry_run)
    records = Records(args.out, args.stage)
    started = time.monotonic()
    try:
        status = STAGES[args.stage](platform, records, args)
    except KeyboardInterrupt:  # timeout -s INT: the stage's budget ran out
        records.write("interrupted", seconds=round(time.monotonic() - started, 1))
        return 124
    except Exception as error:  # a stage that breaks says how, in the records
        records.write("error", error=f"{type(error).__name__}: {error}"[:500],
                      traceback=traceback.format_exc()[-2000:])
        status = 1
    if args.stage != "summary":
        records.write("stage", seconds=round(time.monotonic() - started, 1), status=status)
    return status


if __name__ == "__main__":
    sys.exit(main())
