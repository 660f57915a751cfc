"""The house rules that keep arrayloss's layers apart: no import circles between its modules,
and no import from the generic math (``_agnostic``) back up to its callers."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "arrayloss"

#: The modules that call the generic math: ``_agnostic`` importing one would be an arrow back
#: up the floors.
CALLERS = ("arrayloss._dispatch", "arrayloss._gaussian_nll", "arrayloss._nll",
           "arrayloss._cross_entropy", "arrayloss._modules", "arrayloss._autograd",
           "arrayloss._dask", "arrayloss._torch_cuda", "arrayloss.losses",
           "arrayloss._elementwise", "arrayloss._cupy", "arrayloss._registry",
           "arrayloss._linear_cross_entropy", "arrayloss._dask_linear")


def _module_name(path: Path) -> str:
    parts = ["arrayloss", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The arrayloss modules ``path`` imports at module level (``TYPE_CHECKING`` blocks
    included: a circle there is still a circle), resolved to module names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        nodes = [node]
        if isinstance(node, ast.If):  # if TYPE_CHECKING: ...
            nodes = list(node.body)
        for statement in nodes:
            if isinstance(statement, ast.ImportFrom):
                if statement.level:
                    base = package.split(".")
                    base = base[:len(base) - statement.level + 1]
                    module = ".".join(base + ([statement.module] if statement.module else []))
                else:
                    module = statement.module or ""
                if module.startswith("arrayloss"):
                    found.add(module)
                    for alias in statement.names:  # from . import _dask
                        found.add(f"{module}.{alias.name}")
            elif isinstance(statement, ast.Import):
                found |= {a.name for a in statement.names if a.name.startswith("arrayloss")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_import_circles() -> None:
    graph = _graph()
    # A package imports its own modules; a module importing its package is no edge back.
    edges = {name: {m for m in targets if not name.startswith(m + ".")}
             for name, targets in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                circle = [*path[path.index(target):], target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_generic_math_never_imports_its_callers() -> None:
    for name, targets in _graph().items():
        if not name.startswith("arrayloss._agnostic"):
            continue
        upward = sorted(t for t in targets if t.startswith(CALLERS))
        assert not upward, f"{name} imports {upward}"
