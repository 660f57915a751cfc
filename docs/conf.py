"""Sphinx configuration for the arrayloss documentation."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sphinx.errors import ConfigError  # noqa: E402

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
templates_path = ["_templates"]
html_theme_options = {
    "navigation_with_keys": False,
    # The top bar's links fold into "More" past a few; the left sidebar lists every page.
    "header_links_before_dropdown": 5,
    "show_nav_level": 1,
    "navigation_depth": 2,
    "collapse_navigation": True,
}
# Every page's left sidebar shows the whole table of contents (sidebar-nav-all.html), not
# only the current top-level page's children: each page is a top-level page here, so the
# theme's default section navigation would be empty on most of them.
html_sidebars = {"**": ["sidebar-nav-all"]}
# _generated holds text pulled into pages with ``.. include::``, not pages of its own.
exclude_patterns = ["_build", "_generated", "_mathjax", "_elementwise_api.rst"]
default_role = "code"

# ------------------------------------------------------------------ MathJax, offline
# Formulas render from a local copy of MathJax 3, so that the pages need no network.  The
# documented step installs it beside this file (git-ignored):
#     npm install --prefix docs/_mathjax --no-save mathjax@3.2.2
# and the build copies the files the pages use into _static/mathjax.  ARRAYLOSS_MATHJAX may
# name another MathJax 3 ``es5`` folder, or ``cdn`` to load it from the web instead.

MATHJAX_INSTALL = "npm install --prefix docs/_mathjax --no-save mathjax@3.2.2"
MATHJAX_FILES = ["tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions"]


def _local_mathjax() -> str | None:
    """Copy MathJax into _static/mathjax; its path there, or None to use the CDN."""
    choice = os.environ.get("ARRAYLOSS_MATHJAX", "")
    if choice == "cdn":
        return None
    source = Path(choice) if choice else (
        Path(__file__).parent / "_mathjax" / "node_modules" / "mathjax" / "es5")
    if not (source / "tex-chtml.js").is_file():
        raise ConfigError(
            f"MathJax 3 is not installed at {source}: the formulas would need the network. "
            f"Run `{MATHJAX_INSTALL}` from the repository root (or set ARRAYLOSS_MATHJAX=cdn "
            "to load MathJax from the web)")
    target = Path(__file__).parent / "_static" / "mathjax"
    for name in MATHJAX_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, target / name)
    return "mathjax/tex-chtml.js"


_mathjax = _local_mathjax()
if _mathjax is not None:
    mathjax_path = _mathjax
    # Nothing fetched at run time: no menu (its accessibility extensions load lazily).
    mathjax3_config = {"options": {"enableMenu": False}}

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
    lines += ["A speedup is PyTorch's time over arrayloss's (above 1x: arrayloss is faster); "
              "a time ratio is a variant's time over plain Gaussian NLL's (below 1x: the "
              "variant is faster).  In brackets, the 20-80% range of the per-round figures; "
              "*noisy* marks a figure whose rounds disagree too much to be read alone.", "",
              ".. list-table:: Targets", "   :header-rows: 1", "   :widths: 55 30 15", "",
              "   * - target", "     - measured", "     - status"]
    for target in data["targets"]:
        unit = {"pct_of_copy": "%", "overhead_us": " us"}.get(target["metric"], "x")
        value = "-" if target["value"] is None else f"{target['value']:.2f}{unit}"
        if target["metric"] == "cases_over" and target["value"] is not None:
            value = f"{int(target['value'])} of {target['cases']} cases over"
        if target.get("spread"):  # the 20-80% range of the per-round figures
            value += f" ({target['spread'][0]:.2f}-{target['spread'][1]:.2f})"
        if target.get("noise"):
            value += f"; {target['noise']}"
        lines += [f"   * - {target['target']}", f"     - {value}", f"     - {target['status']}"]
    lines.append("")
    static = Path(__file__).parent / "_static" / "benchmarks" / folder.name
    static.mkdir(parents=True, exist_ok=True)
    for image in sorted(folder.glob("*.png")):
        shutil.copy(image, static / image.name)
        # One figure per row at the page's width; a click opens it at full size.
        lines += [f".. figure:: /_static/benchmarks/{folder.name}/{image.name}",
                  f"   :alt: {image.stem} on {meta['device_name']}",
                  "   :width: 100%",
                  f"   :target: ../_static/benchmarks/{folder.name}/{image.name}", "",
                  f"   {image.stem.replace('_', ' ')} on {meta['device_name']} (click for "
                  "full size)", ""]
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
