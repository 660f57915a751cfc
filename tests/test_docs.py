"""Every code example in the docstrings and in the documentation pages runs as a doctest."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
MODULES = ["arrayloss._gaussian_nll", "arrayloss._nll", "arrayloss._cross_entropy",
           "arrayloss._modules", "arrayloss._dispatch", "arrayloss._linear_cross_entropy"]
PAGES = sorted(DOCS.glob("*.rst"))


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=OPTIONS)
    assert result.attempted > 0, f"{module} has no examples"
    assert result.failed == 0


@pytest.mark.parametrize("name", sorted(n for n in __import__("arrayloss").losses.__all__
                                         if not n.endswith(("_backward", "_and_grad"))))
def test_elementwise_loss_examples(name: str) -> None:
    """The elementwise losses' functions are made by arrayloss._elementwise, so testmod of
    their modules does not find them: their docstrings are run one by one."""
    import arrayloss

    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    tests = doctest.DocTestFinder(recurse=False).find(getattr(arrayloss, name), name,
                                                       globs={})
    for test in tests:
        runner.run(test)
    if not name[0].isupper():
        assert runner.tries > 0, f"{name} has no examples"
    assert runner.failures == 0


#: The optional libraries a page's examples may import, and how to install each: a page
#: that imports one that is missing is skipped with that reason (the README's test install
#: has neither PyTorch nor JAX).
OPTIONAL = {
    "torch": "PyTorch is not installed (pip install torch==2.13.0)",
    "jax": "JAX is not installed (pip install jax)",
    "dask": "Dask is not installed (pip install '.[dask]')",
    "array_api_strict": "array-api-strict is not installed (pip install '.[test]')",
}


def imported_libraries(text: str) -> list[str]:
    """The top-level modules that the examples of ``text`` import."""
    found = re.findall(r"^\s*(?:>>>|\.\.\.) +(?:import|from) +([A-Za-z_]\w*)", text, re.M)
    return sorted(set(found))


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_examples(page: Path) -> None:
    text = page.read_text()
    missing = [OPTIONAL[library] for library in imported_libraries(text)
               if library in OPTIONAL and importlib.util.find_spec(library) is None]
    if missing:
        pytest.skip(f"{page.name} needs libraries that are missing: {'; '.join(missing)}")
    result = doctest.testfile(str(page), module_relative=False, optionflags=OPTIONS)
    assert result.failed == 0


def test_readme_example() -> None:
    readme = DOCS.parent / "README.md"
    result = doctest.testfile(str(readme), module_relative=False, optionflags=OPTIONS)
    assert result.attempted >= 10 and result.failed == 0


def test_every_public_name_is_documented() -> None:
    import arrayloss

    api = ((DOCS / "api.rst").read_text()
           + arrayloss._elementwise.docs.api_rst(arrayloss.losses.SPECS))
    for name in arrayloss.__all__:
        if name != "__version__":
            assert f"   {name}\n" in api, f"{name} is missing from docs/api.rst"
            assert getattr(arrayloss, name).__doc__, f"{name} has no docstring"


def test_every_optional_import_of_a_page_is_known() -> None:
    # A page importing a library outside the required ones and OPTIONAL would fail, instead
    # of skipping, on an install without it.
    required = {"arrayloss", "numpy", "math"}
    for page in PAGES:
        unknown = set(imported_libraries(page.read_text())) - required - set(OPTIONAL)
        assert not unknown, f"{page.name} imports {sorted(unknown)}: add them to OPTIONAL"
    assert imported_libraries(">>> import torch\n... from jax import numpy\n") == ["jax",
                                                                                    "torch"]


#: The longest code line that the docs' theme shows whole at its page width (about 81
#: characters of its monospace font at 1400 pixels); longer lines are cut off.
CODE_WIDTH = 80


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line in the literal and code blocks of an rst page (not
    in math blocks), without the block's indentation."""
    found, indent, in_code = [], 0, False
    for number, line in enumerate(text.splitlines(), 1):
        depth = len(line) - len(line.lstrip())
        if in_code and line.strip() and depth < indent:
            in_code = False
        if in_code and line.strip():
            found.append((number, line[indent:]))
        stripped = line.strip()
        starts = stripped.startswith((".. code-block::", ".. code::")) or (
            stripped.endswith("::") and not stripped.startswith(".."))
        if not in_code and starts:
            in_code, indent = True, depth + 4
    return found


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_code_lines_fit_the_page(page: Path) -> None:
    long = [f"line {number}: {len(line)} characters" for number, line in
            code_lines(page.read_text()) if len(line) > CODE_WIDTH]
    assert not long, f"{page.name}: code lines wider than {CODE_WIDTH} are cut off: {long}"


def test_code_lines_are_those_of_code_blocks() -> None:
    text = ("Text::\n\n    pip install .\n\nMore text.\n\n.. math::\n\n    \\ell = x\n\n"
            ".. code-block:: python\n\n    >>> 1 + 1\n    2\n\nEnd.\n")
    assert code_lines(text) == [(3, "pip install ."), (13, ">>> 1 + 1"), (14, "2")]
