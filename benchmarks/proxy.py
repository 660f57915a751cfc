"""``python -m benchmarks.proxy``: the performance proxy of the GPU target cases, with no GPU.

Each target case of ``gpu_check`` (at its full size) runs once through the real CuPy backend
on the host harness (``tests/hostcuda``) in recording mode: every launch is recorded with the
bytes its array arguments span, read and written, but nothing is computed, and the inputs
are never touched (so 2^26 elements cost no memory).  Every launched source is compiled by
NVRTC to machine code for sm_80 and sm_90, and each kernel's registers per thread and stack
frame are read from the cubins.  Per case:

* launches per call (the arrayloss kernels and CuPy's own operations: fills, copies, casts);
* bytes read and written, against the least the call must move (``cases.model_bytes``);
* the registers of each kernel;
* the predicted time on an H200, ``bytes / 4.3 TB/s + 4 us x launches``, and the roofline
  fraction it gives: the least bytes' time over the predicted one.

What it cannot see: how well a kernel's loads are pipelined or coalesced (a kernel at its
minimum bytes can still be latency-bound), occupancy beyond the register count, caches, with
one exception, stated as a model: the fused cross-entropy kernel reads each row twice, and the
second read is counted as L2 traffic (not in the bytes) only where its grid's rows fit in
half the H200's L2 (``arrayloss._cupy.cross_entropy_fused.rereads_from_l2``); otherwise it is
counted as DRAM bytes.
``--write`` stores ``benchmarks/results/proxy.{json,md}``, the baseline that
``tests/test_proxy.py`` holds the kernels to.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .cases import Case, itemsize, model_bytes
from .gpu_check import TARGETS, fused_call

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: The H200's device-to-device copy as measured on the lent machines, and a launch's cost.
BANDWIDTH = 4.3e12
LAUNCH_S = 4e-6
ARCHITECTURE = "90"


#: The raw arguments a kernel reads one element of per loop index (a gather by target), not
#: whole: the footprint of the array would count a pass that never happens.
GATHERED = {
    "arrayloss_nll_forward": {"x", "w"},
    "arrayloss_nll_forward_partials": {"x", "w"},
    "arrayloss_nll_backward": {"w"},
    "arrayloss_cross_entropy_rows": {"x", "w"},
    "arrayloss_cross_entropy_rows_partials": {"x", "w"},
    "arrayloss_cross_entropy_targets": {"w"},
}

#: The kernel that reads each of its rows twice, the second time from L2 if they fit.
REREAD_KERNEL = "arrayloss_cross_entropy_fused"


def reread_bytes(launch: dict[str, Any], case: Case) -> tuple[int, bool]:
    """(bytes of the second read of the rows by ``REREAD_KERNEL``, whether L2 serves them):
    its grid's rows (a row per block, or a lane group's row per group), each the logits row,
    the probability row if read, and the gradient row if it is a separate buffer, must fit in
    ``L2_SHARE`` of the H200's L2."""
    from arrayloss._cupy import cross_entropy_fused

    if launch["name"] != REREAD_KERNEL:
        return 0, False
    spans = {argument["param"]: argument for argument in launch["arguments"]}
    logits, probabilities, grad = spans["x"], spans["q"], spans["grad"]
    separate_q = probabilities["start"] != logits["start"]
    footprint = cross_entropy_fused.row_footprint(
        case.shape[1], logits["itemsize"], grad["start"] == logits["start"], separate_q)
    again = logits["bytes"] + (probabilities["bytes"] if separate_q else 0)
    in_flight = launch["grid"] * cross_entropy_fused.rows_per_block(
        launch["block"], cross_entropy_fused.lane_group(case.shape[1]))
    return again, cross_entropy_fused.rereads_from_l2(
        in_flight, footprint, cross_entropy_fused.H200_L2_BYTES)


def launch_bytes(launch: dict[str, Any]) -> tuple[int, int]:
    """(read, written) bytes of one recorded launch: each distinct span of memory once, a
    gathered argument as one element per loop index (unless the launch reads it whole)."""
    gathered = GATHERED.get(launch["name"], set())
    whole: dict[str, set[tuple[int, int]]] = {"read": set(), "write": set()}
    gathers: dict[tuple[int, int], int] = {}
    for argument in launch["arguments"]:
        span = (argument["start"], argument["bytes"])
        if argument["role"] == "read" and argument["param"] in gathered:
            gathers[span] = min(argument["bytes"], launch["size"] * argument["itemsize"])
        else:
            whole[argument["role"]].add(span)
    read = sum(size for _, size in whole["read"])
    read += sum(size for span, size in gathers.items() if span not in whole["read"])
    return read, sum(size for _, size in whole["write"])


def _hostcuda() -> Any:
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import hostcuda

    return hostcuda


def _untouched(shape: tuple[int, ...], dtype: Any) -> Any:
    """A device array whose memory is never touched (recording mode reads nothing)."""
    from hostcuda._arrays import HostArray

    return HostArray.allocate(np.empty(shape, dtype=dtype), written=True)


def _arrays(case: Case) -> dict[str, Any]:
    from hostcuda._arrays import HostArray

    if case.dtype == "bfloat16":
        import ml_dtypes

        dtype: Any = ml_dtypes.bfloat16
    else:
        dtype = np.dtype(case.dtype)
    if case.loss == "gaussian_nll":
        var_shape = case.shape if case.variant == "full" else (case.shape[0], 1)
        return {"input": _untouched(case.shape, dtype), "target": _untouched(case.shape, dtype),
                "var": _untouched(var_shape, dtype)}
    targets = HostArray.allocate(np.zeros(case.shape[0], dtype=np.int64), written=True)
    return {"input": _untouched(case.shape, dtype), "target": targets, "weight": None,
            "ignore_index": -100}


def measure_case(case: Case) -> dict[str, Any]:
    """One call of ``case`` on the fused backend, recorded (see the module docstring)."""
    hostcuda = _hostcuda()
    from hostcuda import _nvrtc

    counters = hostcuda.COUNTERS
    with hostcuda.activated(), hostcuda.recording_only():
        call = fused_call(case, _arrays(case))
        start = len(counters.trace)
        call()
        launches = counters.trace[start:]
    registers: dict[str, dict[str, int]] = {}
    for launch in launches:
        if launch["digest"] is None:
            continue
        source = counters.sources[launch["digest"]]
        # The cubins are built here, for the kernels the proxy reads (the rest get PTX).
        found = _nvrtc.machine_resources(source) if _nvrtc.unavailable() is None else {}
        for arch, kernels in found.items():
            usage = kernels.get(launch["name"])
            if usage:
                entry = registers.setdefault(launch["name"], {})
                entry[f"sm_{arch}"] = usage.get("registers", 0)
                entry["frame_bytes"] = max(entry.get("frame_bytes", 0),
                                           usage.get("frame_bytes", 0))
    traffic = [launch_bytes(launch) for launch in launches]
    rereads = [reread_bytes(launch, case) for launch in launches]
    from_l2 = sum(again for again, in_l2 in rereads if in_l2)
    traffic.append((sum(again for again, in_l2 in rereads if not in_l2), 0))  # DRAM re-reads
    moved = sum(read + written for read, written in traffic)
    least = model_bytes(case)
    predicted = moved / BANDWIDTH + LAUNCH_S * len(launches)
    return {
        "case": case.key,
        "launches": [launch["name"] for launch in launches],
        "launch_count": len(launches),
        "read_bytes": sum(read for read, _ in traffic),
        "write_bytes": sum(written for _, written in traffic),
        "min_bytes": least,
        "l2_reread_bytes": from_l2,
        "bytes_over_min": moved / least,
        "registers": registers,
        "predicted_us": predicted * 1e6,
        "predicted_roofline_fraction": (least / BANDWIDTH) / predicted,
        "elements": case.elements,
        "itemsize": itemsize(case.dtype),
    }


def measure() -> list[dict[str, Any]]:
    return [measure_case(target.case) for target in TARGETS]


#: Registers per thread above which a kernel fails the proxy on sm_90: 64 keeps at least
#: 1024 resident threads per SM (65,536 registers), half of the most, which a memory-bound
#: kernel needs to keep enough loads in flight.
REGISTER_BOUND = 64
#: A case may move this share of its minimum bytes more than its baseline (partial sums,
#: row statistics) before it counts as a new pass over memory.
BYTES_SLACK = 0.01


def regressions(baseline: list[dict[str, Any]], measured: list[dict[str, Any]]) -> list[str]:
    """What got worse from ``baseline`` to ``measured``: a new launch, more bytes than the
    slack allows, registers above :data:`REGISTER_BOUND` or the baseline's, a stack frame."""
    before = {row["case"]: row for row in baseline}
    problems = []
    for row in measured:
        old = before.get(row["case"])
        if old is None:
            problems.append(f"{row['case']}: not in the baseline (run --write)")
            continue
        new_kernels = sorted(set(row["launches"]) - set(old["launches"]))
        if row["launch_count"] > old["launch_count"] or new_kernels:
            problems.append(f"{row['case']}: {row['launch_count']} launches (baseline "
                            f"{old['launch_count']}), new: {new_kernels}")
        moved = row["read_bytes"] + row["write_bytes"]
        allowed = old["read_bytes"] + old["write_bytes"] + BYTES_SLACK * old["min_bytes"]
        if moved > allowed:
            problems.append(f"{row['case']}: moves {moved / row['min_bytes']:.3f}x its minimum "
                            f"bytes (baseline {old['bytes_over_min']:.3f}x)")
        for kernel, usage in row["registers"].items():
            was = old["registers"].get(kernel, {})
            for arch in ("sm_80", "sm_90"):
                if arch in usage and usage[arch] > was.get(arch, REGISTER_BOUND):
                    problems.append(f"{kernel}: {usage[arch]} registers on {arch} (baseline "
                                    f"{was.get(arch)})")
            if usage.get(f"sm_{ARCHITECTURE}", 0) > REGISTER_BOUND:
                problems.append(f"{kernel}: {usage[f'sm_{ARCHITECTURE}']} registers on "
                                f"sm_{ARCHITECTURE}, above {REGISTER_BOUND}")
            if usage.get("frame_bytes", 0):
                problems.append(f"{kernel}: a {usage['frame_bytes']}-byte stack frame (spills)")
    return problems


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Performance proxy of the GPU target cases (no GPU)",
        "",
        "`python -m benchmarks.proxy --write`: each case's launches, bytes and registers as",
        "the host harness records them (`tests/hostcuda`, recording mode, NVRTC cubins for",
        f"sm_{ARCHITECTURE}), and the time they predict on an H200: bytes / 4.3 TB/s + 4 us per",
        "launch.  `tests/test_proxy.py` fails on a new launch, more bytes or more registers.",
        "Minimum bytes: every input read once, every output written once (`cases.model_bytes`).",
        "",
        "The issue's bar: every case at its minimum bytes with at most 3 launches per call.",
        "",
        "The L2 model (the one cache the proxy counts): the fused cross-entropy kernel",
        "(`arrayloss_cross_entropy_fused`) reads each row twice in one block, and the second",
        "read is counted as L2 traffic (its own column, not in the bytes) only where the grid's",
        "rows fit in half of the H200's 50 MiB L2: grid x (logits row + gradient row if not",
        "`out=input` + probability row if read) <= 25 MiB, the grid capped to that by",
        "`arrayloss._cupy.cross_entropy_fused.plan`.  A case beyond it counts the re-read as",
        "DRAM bytes.",
        "",
        "| case | launches | read MB | written MB | minimum MB | bytes / minimum | "
        "L2 re-read MB | max registers | predicted us | predicted roofline | at the bar |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        top = max((usage.get(f"sm_{ARCHITECTURE}", 0) for usage in row["registers"].values()),
                  default=0)
        lines.append(
            f"| {row['case']} | {row['launch_count']} | {row['read_bytes'] / 1e6:,.1f} | "
            f"{row['write_bytes'] / 1e6:,.1f} | {row['min_bytes'] / 1e6:,.1f} | "
            f"{row['bytes_over_min']:.3f} | {row.get('l2_reread_bytes', 0) / 1e6:,.1f} | "
            f"{top} | {row['predicted_us']:,.1f} | "
            f"{row['predicted_roofline_fraction']:.0%} | {_at_bar(row)} |")
    lines += ["", "## Launches and registers (sm_80 / sm_90, stack frame bytes)", ""]
    for row in rows:
        lines.append(f"- `{row['case']}`: " + ", ".join(
            f"{name}" + (f" ({row['registers'][name].get('sm_80', '?')}/"
                         f"{row['registers'][name].get('sm_90', '?')} regs, "
                         f"{row['registers'][name].get('frame_bytes', 0)} B frame)"
                         if name in row["registers"] else "")
            for name in row["launches"]))
    return "\n".join(lines) + "\n"


def _at_bar(row: dict[str, Any]) -> str:
    misses = []
    if row["bytes_over_min"] > 1 + BYTES_SLACK:
        misses.append(f"{row['bytes_over_min']:.2f}x bytes")
    if row["launch_count"] > 3:
        misses.append(f"{row['launch_count']} launches")
    return "yes" if not misses else "no: " + ", ".join(misses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true",
                        help="store benchmarks/results/proxy.json and proxy.md")
    args = parser.parse_args(argv)
    rows = measure()
    text = markdown(rows)
    if args.write:
        (RESULTS / "proxy.json").write_text(json.dumps(rows, indent=1) + "\n")
        (RESULTS / "proxy.md").write_text(text)
    print(text)
    return 0 if all(math.isfinite(row["predicted_us"]) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
