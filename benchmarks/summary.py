"""``python -m benchmarks.summary OUT``: the short table the GPU check prints last.

Reads what ``gpu_check.sh`` wrote under OUT: the test report (JUnit XML), the ceilings and
the benchmark results with their targets.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path


def summarize(out: Path) -> str:
    lines = ["", "== arrayloss GPU check =="]
    versions = out / "versions.txt"
    if versions.exists():
        lines += [line for line in versions.read_text().splitlines() if line.strip()]
    report = out / "tests.xml"
    if report.exists():
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        if suite is not None:
            total = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            lines.append(f"tests: {total - failed - skipped} passed, {failed} failed, "
                         f"{skipped} skipped")
    else:
        lines.append("tests: no report (the test run did not finish)")
    ceilings = out / "ceilings.json"
    if ceilings.exists():
        data = json.loads(ceilings.read_text())
        lines.append(f"copy bandwidth: {data['copy_gbps_1GiB']:,.0f} GB/s (1 GiB)")
        for name, cost in data["launch_overhead"].items():
            lines.append(f"launch {name}: {cost['cpu_us']:.1f} us CPU, "
                         f"{cost['gpu_us']:.1f} us GPU")
    results = out / "bench" / "results.json"
    if results.exists():
        data = json.loads(results.read_text())
        meta = data["meta"]
        lines.append(f"benchmarks: {meta['device_name']}, {meta.get('cases_run')} cases "
                     f"({meta.get('cases_skipped_for_time')} skipped for time)")
        width = max((len(t["target"]) for t in data["targets"]), default=10)
        lines.append(f"{'target'.ljust(width)}  measured  status")
        for target in data["targets"]:
            unit = "%" if target["metric"] == "pct_of_copy" else "x"
            value = "-" if target["value"] is None else f"{target['value']:.2f}{unit}"
            lines.append(f"{target['target'].ljust(width)}  {value:>8}  {target['status']}")
    else:
        lines.append("benchmarks: no results")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    print(summarize(Path(argv[0] if argv else ".")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
