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
        if case.loss == "cross_entropy" and case.op == "loss_and_grad":
            # Two reads of the logits (row statistics, then the gradient) and one write.
            assert abs(moved - (least + logits)) <= 0.001 * least
        else:  # one pass over every input: the minimum, plus O(rows) partial sums
            assert least <= moved <= (1 + proxy.BYTES_SLACK) * least
        assert row["registers"], "NVRTC gave no register counts"


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
                  if "arrayloss_cross_entropy_grad" in s)
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
        assert got["arrayloss_cross_entropy_grad"]["registers"] == want
