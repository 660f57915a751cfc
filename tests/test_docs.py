"""Every code example in the docstrings and in the documentation pages runs as a doctest."""

from __future__ import annotations

import doctest
import importlib
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


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_examples(page: Path) -> None:
    text = page.read_text()
    if "array_api_strict" in text:
        pytest.importorskip("array_api_strict")
    if ">>> import dask" in text:
        pytest.importorskip("dask.array", reason="Dask is not installed (pip install '.[dask]')")
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
