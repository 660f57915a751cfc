"""Sphinx configuration for the arrayloss documentation."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import arrayloss  # noqa: E402
import arrayloss._elementwise.docs  # noqa: E402

project = "arrayloss"
author = "the arrayloss developers"
copyright = "2026, the arrayloss developers"
release = version = arrayloss.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
]
# The pages with autosummary tables, and the generated one that api.rst includes (an include
# is not followed when stub pages are made).
autosummary_generate = ["api.rst", "_elementwise_api.rst"]
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
intersphinx_mapping = {}
html_theme = "pydata_sphinx_theme"
html_title = "arrayloss"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": False}
# _generated holds text pulled into pages with ``.. include::``, not pages of its own.
exclude_patterns = ["_build", "_generated", "_elementwise_api.rst"]
default_role = "code"

# ------------------------------------------------------------------ the benchmark page
# The results published under benchmarks/results/ become an rst include at build time, so
# the page shows whatever was last measured and builds (saying so) when nothing was.

GENERATED = Path(__file__).parent / "_generated"

# The elementwise losses' API sections, from their declarations: written before autosummary
# reads the pages (so their stub pages are made), beside api.rst (which includes it), since
# a table's toctree path is taken relative to the file it is read from.
(Path(__file__).parent / "_elementwise_api.rst").write_text(
    arrayloss._elementwise.docs.api_rst(arrayloss.losses.SPECS))


def _benchmark_section(folder: Path) -> str:
    data = json.loads((folder / "results.json").read_text())
    meta = data["meta"]
    title = f"{meta['device_name']} ({meta['device_kind'].upper()})"
    lines = [title, "-" * len(title), "",
             f"Measured {meta['date']} with ``{meta['command']}``; {meta['versions']}.", ""]
    if meta.get("copy_gbps"):
        lines += [f"Device-to-device copy bandwidth: {meta['copy_gbps']:,.0f} GB/s.", ""]
    lines += [".. list-table:: Targets", "   :header-rows: 1", "",
              "   * - target", "     - measured", "     - status"]
    for target in data["targets"]:
        unit = {"pct_of_copy": "%", "overhead_us": " us"}.get(target["metric"], "x")
        value = "-" if target["value"] is None else f"{target['value']:.2f}{unit}"
        if target["metric"] == "cases_over" and target["value"] is not None:
            value = f"{int(target['value'])} of {target['cases']} cases over"
        lines += [f"   * - {target['target']}", f"     - {value}", f"     - {target['status']}"]
    lines.append("")
    static = Path(__file__).parent / "_static" / "benchmarks" / folder.name
    static.mkdir(parents=True, exist_ok=True)
    for image in sorted(folder.glob("*.png")):
        shutil.copy(image, static / image.name)
        lines += [f".. image:: /_static/benchmarks/{folder.name}/{image.name}",
                  f"   :alt: {image.stem} on {meta['device_name']}", ""]
    lines += [f"Full tables: ``benchmarks/results/{folder.name}/results.md``.", ""]
    return "\n".join(lines)


def _write_benchmark_include(_app: object) -> None:
    GENERATED.mkdir(exist_ok=True)
    folders = sorted(p.parent for p in (ROOT / "benchmarks" / "results").glob("*/results.json"))
    # GPU results first: they are what the targets are about.
    folders.sort(key=lambda p: not p.name.startswith("gpu"))
    text = "\n".join(_benchmark_section(folder) for folder in folders) if folders else (
        "No benchmark results have been published yet: run ``python -m benchmarks``.\n")
    (GENERATED / "benchmark_results.rst").write_text(text)


def setup(app: object) -> None:
    app.connect("builder-inited", _write_benchmark_include)  # type: ignore[attr-defined]
