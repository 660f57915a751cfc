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
           "arrayloss._modules", "arrayloss._dispatch"]
PAGES = sorted(DOCS.glob("*.rst"))


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=OPTIONS)
    assert result.attempted > 0, f"{module} has no examples"
    assert result.failed == 0


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

    api = (DOCS / "api.rst").read_text()
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
