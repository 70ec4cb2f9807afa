"""Dependencies point one way: ``common`` at the bottom, the domain at the root, the edges
above it, ``service`` on top, and only ``dataflow.py`` above ``service``.

The walk reads every project module with :mod:`ast`, imports inside functions included
(an import deferred into a function still ties the two modules together; it only hides
the tie until that line runs), ``if TYPE_CHECKING:`` blocks excluded (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOT_PROJECT = {"tests", "bench", "docs", "deploy", "samples", ".venv", ".git"}
COMMON = "common"
EDGES = (
    "coinbase",
    "coinbase_source",
    "recording",
    "local_exchange",
    "views",
    "importers",
)
DOMAIN = ("events", "orderbook", "records", "book_step", "resync")


def _project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project (not tests/bench)."""
    modules = {}
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in NOT_PROJECT or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts and parts[-1] != "__main__":
            modules[".".join(parts)] = path
    return modules


MODULES = _project_modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """The project modules the import statements of ``tree`` name, TYPE_CHECKING
    excluded: ``from pkg import sub`` names ``pkg.sub`` when that is a module, else
    ``pkg``; ``import a.b`` names ``a.b``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in MODULES and name != module}


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    return {
        name: _imports(
            ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py"
        )
        for name, path in MODULES.items()
    }


GRAPH = _graph()


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def test_the_walk_sees_the_project():
    assert {
        "dataflow",
        "service.settings",
        "common.validation",
        "coinbase.session",
    } <= set(MODULES)
    assert "service.settings" in GRAPH["dataflow"]
    assert "common.logs" in GRAPH["coinbase.session"]


def test_only_service_and_dataflow_import_service():
    offenders = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if _top(target) == "service" and _top(name) not in ("service", "dataflow")
    )
    assert not offenders, "imports of service/ from below it:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    ("layer", "may_import"),
    [
        ((COMMON,), {COMMON}),
        (DOMAIN, {COMMON, *DOMAIN}),
        (EDGES, {COMMON, *DOMAIN, *EDGES}),
    ],
    ids=["common", "domain", "edges"],
)
def test_each_layer_imports_only_itself_and_below(layer, may_import):
    offenders = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _top(name) in layer
        for target in targets
        if _top(target) not in may_import
    )
    assert not offenders, "imports up the layers:\n" + "\n".join(offenders)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of more than one module that each reach all the others (a hundred modules:
    the plain quadratic walk is instant)."""
    reach = {node: _reachable(graph, node) for node in graph}
    groups = {
        frozenset({node} | {o for o in reach[node] if node in reach[o]})
        for node in graph
    }
    return sorted(sorted(g) for g in groups if len(g) > 1)


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"]
    ]
    assert _cycles({"a": {"b"}, "b": set()}) == []
