"""``benchmarks/gpu_check.sh`` end to end on the CPU (``--dry-run``: tiny sizes, stand-ins).

What one lent GPU call depends on: every stage leaves its records, the bridge is proven to
have run its device backend, the determinism check ran, at most 8 files come back, a stage
stopped by its budget (SIGINT) keeps what it measured, and the verdict fails when something
is missing or everything skipped.  No time is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _environment(out: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "OUT": str(out), "PYTHON": sys.executable,
            "PYTHONPATH": str(ROOT), "CASE_BUDGET_S": "0.02", **extra}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / gpu_check.RECORDS).read_text().splitlines()]


def test_dry_run_records_every_stage_within_the_file_limit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # The test and sweep stages are left out (each runs for seconds): so the verdict must
    # fail, naming the missing test report and nothing else.
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600,
                          env=_environment(out, STAGES="probe targets determinism summary"))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    records = _records(out)
    ended = {r["stage"] for r in records if r["kind"] == "stage"}
    assert ended == {"probe", "targets", "determinism"}
    assert all(r["status"] == 0 for r in records if r["kind"] == "stage")
    assert not [r for r in records if r["kind"] == "error"]
    cases = {target.sized(True).key for target in gpu_check.TARGETS}
    timed = {(r["case"], r["provider"]) for r in records if r["kind"] == "timing"}
    for case in cases:
        for provider in ("arrayloss fused", "arrayloss via torch", "torch eager"):
            assert (case, provider) in timed
    compiled = {r["case"] for r in records if r.get("provider") == "torch compile"}
    assert compiled == cases  # measured, or recorded as skipped for the stage's budget
    bridge = [r for r in records if r["kind"] == "bridge"]
    assert {r["case"] for r in bridge} == cases
    assert all(r["ok"] and r["fused_calls"] > 0 and r["generic_calls"] == 0 for r in bridge)
    determinism = [r for r in records if r["kind"] == "determinism"]
    assert {r["case"] for r in determinism} == {
        key.replace("/in-place/", "/plain/") for key in cases}
    assert all(r["ok"] and r["repeats"] == gpu_check.REPEATS for r in determinism)
    for row in (r for r in records if r["kind"] == "timing"):
        assert row["median_s"] > 0 and row["model_bytes"] > 0
    files = [path for path in out.rglob("*") if path.is_file()]
    assert len(files) <= gpu_check.MAX_FILES
    assert {path.name for path in files} >= {"check.jsonl", "log.txt", "summary.md"}
    summary = (out / gpu_check.SUMMARY).read_text()
    assert summary.splitlines()[-1] == "- FAILED: tests: no report"
    assert "| cross_entropy/loss_and_grad/mean/in-place/bfloat16/16x1283 |" in summary


def test_a_stage_stopped_by_sigint_keeps_what_it_measured(tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.gpu_check", "targets", "--dry-run", "--out",
         str(out), "--case-budget", "0.2"], cwd=ROOT, env=_environment(out),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            path = out / gpu_check.RECORDS
            if path.exists() and '"timing"' in path.read_text():
                break
            time.sleep(0.02)
        # Stopped at once, the stage is still mid-way when the signal comes (on a busy machine
        # the rest of the stage could otherwise end before it does); it takes it on resuming.
        process.send_signal(signal.SIGSTOP)
        assert '"kind": "stage"' not in path.read_text(), "the stage ended before its stop"
        process.send_signal(signal.SIGINT)  # what `timeout -s INT` sends
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=120) == 124
    finally:
        if process.poll() is None:
            process.kill()
    records = _records(out)
    assert any(r["kind"] == "timing" for r in records)
    assert records[-1]["kind"] == "interrupted"
    _, problems = gpu_check.summarize(out)
    assert "targets: interrupted by its budget" in problems


def _junit(out: Path, tests: int, failures: int, skipped: int) -> None:
    (out / "tests.xml").write_text(
        f'<testsuites><testsuite name="pytest" tests="{tests}" failures="{failures}" '
        f'errors="0" skipped="{skipped}"/></testsuites>')


def test_the_verdict_fails_when_everything_skipped(tmp_path: Path) -> None:
    for stage in gpu_check.RECORDED_STAGES:
        records = gpu_check.Records(tmp_path, stage)
        if stage == "probe":
            records.write("launch", ok=True, device="stand-in", copy_gbps=1.0)
        records.write("stage", seconds=1.0, status=0)
    _junit(tmp_path, 5, 0, 5)
    _, problems = gpu_check.summarize(tmp_path)
    assert problems == ["targets: no fused target case was measured",
                        "tests: none passed (everything skipped?)"]
    records = gpu_check.Records(tmp_path, "targets")
    records.write("timing", case="c", provider="arrayloss fused", median_s=1e-3, gbps=1.0)
    _junit(tmp_path, 5, 0, 1)
    assert gpu_check.summarize(tmp_path)[1] == []
    (tmp_path / "log.txt").write_text("== tests: exit 2 after 120s\n== sweep: exit 0 after 9s\n")
    assert gpu_check.summarize(tmp_path)[1] == ["tests: exit 2 (its budget ran out)"]
    records.write("bridge", case="c", ok=False, fused_calls=0, generic_calls=1)
    for name in "abcdefgh":  # more files than come back
        (tmp_path / name).write_text("")
    problems = gpu_check.summarize(tmp_path)[1]
    assert "bridge: c failed" in problems
    assert any("at most 8 come back" in problem for problem in problems)


def test_a_failed_probe_stops_the_check(tmp_path: Path) -> None:
    out = tmp_path / "out"
    failing = tmp_path / "python"  # a 'python' whose every stage fails
    failing.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.exit(3)'\n")
    failing.chmod(0o755)
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={**_environment(out), "PYTHON": str(failing)})
    assert done.returncode == 2
    log = (out / "log.txt").read_text()
    assert "the probe failed" in log and "== targets" not in log


def test_on_a_gpu_every_entry_point_of_the_fused_backends_is_counted() -> None:
    pytest.importorskip("cupy")
    import importlib

    modules = [importlib.import_module(f"arrayloss._cupy.{loss}")
               for loss in ("gaussian_nll", "nll", "cross_entropy")]
    entry_points = {(module, name) for module in modules for name in gpu_check.METHODS
                    if hasattr(module, name)}
    assert (modules[2], "backward_saved") in entry_points  # the autograd pair
    before = {key: getattr(*key) for key in entry_points}
    with gpu_check.Platform(dry_run=False).bridge():
        assert all(getattr(*key) is not before[key] for key in entry_points)
    assert all(getattr(*key) is before[key] for key in entry_points)
