"""The performance proxy (``benchmarks/proxy.py``) holds the GPU target cases to their record.

Without a GPU, the host harness records each target case's launches and the bytes they move
(at the full target sizes, computing nothing), and NVRTC's cubins give each kernel's registers.
A new launch, a new pass over memory or more registers fails here; an intended change updates
the record with ``python -m benchmarks.proxy --write`` (``benchmarks/results/proxy.json``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cupy", reason="CuPy is not installed (pip install '.[kernels]')")
pytest.importorskip("ml_dtypes")

from benchmarks import proxy
from benchmarks.cases import model_bytes
from benchmarks.gpu_check import TARGETS

pytestmark = pytest.mark.hostcuda

BASELINE = json.loads((proxy.RESULTS / "proxy.json").read_text())


@pytest.fixture(scope="module")
def measured() -> list[dict[str, Any]]:
    hostcuda = proxy._hostcuda()
    if hostcuda.unavailable():
        pytest.skip(hostcuda.unavailable())
    return proxy.measure()


def test_no_target_case_regressed(measured: list[dict[str, Any]]) -> None:
    assert proxy.regressions(BASELINE, measured) == []


def test_the_bytes_are_those_of_the_kernels_passes(measured: list[dict[str, Any]]) -> None:
    # Independent of the record: what each kernel design must move, from the shapes alone.
    rows = {row["case"]: row for row in measured}
    for target in TARGETS:
        case, row = target.case, rows[target.case.key]
        least = model_bytes(case)
        assert row["min_bytes"] == least
        moved = row["read_bytes"] + row["write_bytes"]
        logits = case.elements * (2 if case.dtype == "bfloat16" else 4)
        # One pass over every input: the minimum, plus O(rows) targets and partial sums.
        assert least <= moved <= (1 + proxy.BYTES_SLACK) * least
        assert row["launch_count"] <= 3  # the bar
        if case.loss == "cross_entropy" and case.op == "loss_and_grad":
            # The fused kernel's second read of its rows, from L2: all the logits once.
            assert row["l2_reread_bytes"] == logits
            assert "arrayloss_cross_entropy_fused" in row["launches"]
        else:
            assert row.get("l2_reread_bytes", 0) == 0
        assert row["registers"], "NVRTC gave no register counts"


def _fused_launch(grid: int, logits_bytes: int, in_place: bool) -> dict[str, Any]:
    logits = {"param": "x", "role": "read", "start": 4096, "bytes": logits_bytes,
              "itemsize": 4}
    grad = {**logits, "param": "grad", "role": "write",
            "start": 4096 if in_place else 2**40}
    return {"name": proxy.REREAD_KERNEL, "grid": grid, "block": 1024,
            "arguments": [logits, {**logits, "param": "q"}, grad]}


def test_a_reread_beyond_the_l2_model_counts_as_dram() -> None:
    # Rows of 1 MB (250,000 float32 classes): 26 blocks' rows fit in 25 MiB in place, 27 do
    # not; with a separate gradient each row holds 2 MB, and 14 blocks do not fit.
    from benchmarks.cases import Case

    case = Case("cross_entropy", "loss_and_grad", "mean", "in-place", "float32", (64, 250_000))
    assert proxy.reread_bytes(_fused_launch(26, 64_000_000, True), case) == (64_000_000, True)
    assert proxy.reread_bytes(_fused_launch(27, 64_000_000, True), case) == (64_000_000, False)
    assert proxy.reread_bytes(_fused_launch(14, 64_000_000, False), case)[1] is False
    assert proxy.reread_bytes({"name": "arrayloss_cross_entropy_grad", "arguments": []},
                              case) == (0, False)


def test_the_fused_plan_keeps_the_grids_rows_in_l2() -> None:
    from arrayloss._cupy import cross_entropy_fused as fused

    budget = fused.L2_SHARE * fused.H200_L2_BYTES
    for rows, classes, itemsize, in_place in [(4096, 32000, 4, False), (4096, 32000, 4, True),
                                              (8192, 128256, 2, True)]:
        footprint = fused.row_footprint(classes, itemsize, in_place, probabilities=False)
        assert footprint == classes * itemsize * (1 if in_place else 2)
        plan = fused.plan(rows, classes, footprint, fused.H200_L2_BYTES, fused.H200_SMS)
        assert plan.threads == 1024
        assert plan.rereads_from_l2 and plan.resident_bytes <= budget
        assert (plan.grid + 1) * footprint > budget or plan.grid == fused.H200_SMS * 2
    # A row longer than the budget: one block, and the model says DRAM.
    huge = fused.plan(4, 2**23, 2**25, fused.H200_L2_BYTES, fused.H200_SMS)
    assert huge.grid == 1 and not huge.rereads_from_l2
    # Small rows: as many blocks as rows, up to what the GPU holds at once.
    # Small rows: lane groups (10 classes: 4 lanes of up to 3 columns), 64 rows to a block of
    # 256, as many blocks as the GPU holds at once.
    small = fused.plan(10**6, 10, 40, fused.H200_L2_BYTES, fused.H200_SMS)
    assert (small.threads, small.group, small.grid) == (256, 4, fused.H200_SMS * 8)
    assert small.rows_in_flight == small.grid * 64 and small.rereads_from_l2
    assert [fused.lane_group(c) for c in (1, 4, 5, 33, 128, 129)] == [1, 1, 2, 16, 32, 0]


def test_regressions_are_caught() -> None:
    measured = copy.deepcopy(BASELINE)
    assert proxy.regressions(BASELINE, measured) == []
    row = measured[0]
    row["launches"].append("arrayloss_extra_pass")
    row["launch_count"] += 1
    row["read_bytes"] += row["min_bytes"] // 2  # half a pass more
    kernel = next(iter(row["registers"]))
    row["registers"][kernel]["sm_90"] = proxy.REGISTER_BOUND + 1
    problems = proxy.regressions(BASELINE, measured)
    assert len(problems) == 4, problems
    assert "arrayloss_extra_pass" in problems[0]
    assert "minimum bytes" in problems[1]


def _ptxas() -> str | None:
    return os.environ.get("ARRAYLOSS_PTXAS") or shutil.which("ptxas")


@pytest.mark.nvrtc
@pytest.mark.skipif(_ptxas() is None, reason="no ptxas (ARRAYLOSS_PTXAS or on PATH; the "
                    "nvidia-cuda-nvcc-cu12 wheel has one)")
def test_register_counts_are_ptxas_counts(measured: list[dict[str, Any]],
                                          tmp_path: Path) -> None:
    # The cubin's counts (read from its ELF) against ptxas -v on NVRTC's PTX of the source.
    from cupy._core import core
    from cupy.cuda import compiler
    from hostcuda import _cubin

    hostcuda = proxy._hostcuda()
    source = next(s for s in hostcuda.COUNTERS.sources.values()
                  if "arrayloss_cross_entropy_fused" in s)
    text = "".join(f"#include <{h}>\n" for h in core._cupy_header_list) + source
    options = (*core.assemble_cupy_compiler_options(("-ftz=true",)),
               "--device-as-default-execution-space", "--std=c++17")
    for arch in ("80", "90"):
        ptx, _ = compiler._NVRTCProgram(text, "k.cu", method="ptx").compile(
            (*options, f"-arch=sm_{arch}"))
        (tmp_path / "k.ptx").write_bytes(ptx if isinstance(ptx, bytes) else ptx.encode())
        done = subprocess.run([_ptxas(), f"-arch=sm_{arch}", "-v", str(tmp_path / "k.ptx"),
                               "-o", str(tmp_path / "k.cubin")], capture_output=True,
                              text=True, check=True)
        want = int(re.search(r"Used (\d+) registers", done.stderr + done.stdout).group(1))
        got = _cubin.resources((tmp_path / "k.cubin").read_bytes())
        assert got["arrayloss_cross_entropy_fused"]["registers"] == want
