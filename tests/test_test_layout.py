"""Where test code lives: every helper in ``tests/support/``, one way between tests and bench.

* a module at the top of ``tests/`` is a test file (``test_*.py``), ``conftest.py`` or
  ``__init__.py``: a helper shared by test files lives in ``tests/support/``;
* no module under ``tests/`` imports ``bench/`` or another test file (a helper two test
  files share moves into ``tests/support/``, so running or renaming one test file never
  changes another);
* outside ``tests/`` (``bench/``, ``docs/make_screenshots.py``, the project) ``tests`` is
  imported only as ``tests.support``, and a bench script never imports another one.

The walk reads every file with :mod:`ast`, imports inside functions included. Pure file
reading: no sockets, well under a second.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
BENCH = REPO / "bench"
SKIP = {".venv", "venv", ".git", "__pycache__", "node_modules"}
BENCH_MODULES = {p.stem for p in BENCH.glob("*.py")}


def imported(source: str, package: str = "") -> set[str]:
    """Dotted names every import statement of ``source`` names: ``import a.b`` gives
    ``a.b``, ``from a import b`` gives ``a.b`` (``b`` may be a module), a relative import
    is resolved against ``package``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _package(path: Path) -> str:
    return ".".join(path.parent.relative_to(REPO).parts)


def _files(root: Path) -> list[Path]:
    """Every ``.py`` under ``root``, hidden and virtualenv folders not entered."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.startswith(".")]
        found += [Path(folder, n) for n in names if n.endswith(".py")]
    return sorted(found)


def forbidden_in_tests(source: str, package: str = "tests") -> list[str]:
    """What a module under ``tests/`` may not import: ``bench`` or a bench module (a bench
    script puts ``bench/`` on ``sys.path``), or a test file."""
    bad = []
    for name in imported(source, package):
        top, _, rest = name.partition(".")
        if top == "bench" or top in BENCH_MODULES:
            bad.append(name)
        elif top.startswith("test_") or (top == "tests" and rest.startswith("test_")):
            bad.append(name)
    return sorted(bad)


def forbidden_outside(source: str, in_bench: bool) -> list[str]:
    """What a module outside ``tests/`` may not import: ``tests`` other than
    ``tests.support``; from a bench script, another bench script."""
    bad = []
    for name in imported(source):
        top, _, rest = name.partition(".")
        if top == "tests" and not (rest == "support" or rest.startswith("support.")):
            bad.append(name)
        elif in_bench and (top.startswith("bench_") or rest.startswith("bench_")):
            bad.append(name)
    return sorted(bad)


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        (
            "from bench.bench_flow import run_dataflow",
            ["bench.bench_flow.run_dataflow"],
        ),
        ("def f():\n    import bench_flow", ["bench_flow"]),
        (
            "from tests.test_recording_replay import replay",
            ["tests.test_recording_replay.replay"],
        ),
        ("from tests import test_docs", ["tests.test_docs"]),
        ("from tests.support.flow import wait_until\nimport orderbook", []),
        ("from ..test_docs import slug", ["tests.test_docs.slug"]),
    ],
)
def test_the_checker_finds_what_tests_may_not_import(source, bad):
    assert forbidden_in_tests(source, "tests.support") == bad


@pytest.mark.parametrize(
    ("source", "in_bench", "bad"),
    [
        (
            "from tests.shared_helpers import canonical",
            False,
            ["tests.shared_helpers.canonical"],
        ),
        ("from tests import conftest", True, ["tests.conftest"]),
        ("from bench_flow import run_dataflow", True, ["bench_flow.run_dataflow"]),
        ("from tests.support.recordings import write_session", True, []),
        ("from tests import support", False, []),
        ("from process_stats import rss_mib", True, []),
    ],
)
def test_the_checker_finds_what_bench_may_not_import(source, in_bench, bad):
    assert forbidden_outside(source, in_bench) == bad


def test_the_top_of_tests_holds_only_test_files():
    helpers = [
        p.name
        for p in sorted(TESTS.glob("*.py"))
        if not p.name.startswith("test_")
        and p.name not in {"conftest.py", "__init__.py"}
    ]
    assert helpers == [], f"move these helpers into tests/support/: {helpers}"


def test_tests_never_import_bench_nor_another_test_file():
    found = {
        str(p.relative_to(REPO)): bad
        for p in _files(TESTS)
        if (bad := forbidden_in_tests(p.read_text(encoding="utf-8"), _package(p)))
    }
    assert found == {}, (
        "a helper shared by tests or with bench belongs in tests/support/"
    )


def test_outside_tests_only_tests_support_is_imported_and_bench_scripts_stand_alone():
    found = {}
    for path in _files(REPO):
        rel = path.relative_to(REPO)
        if rel.parts[0] == "tests":
            continue
        source = path.read_text(encoding="utf-8")
        if bad := forbidden_outside(source, in_bench=rel.parts[0] == "bench"):
            found[str(rel)] = bad
    assert found == {}, "bench and tools import helpers from tests/support/ only"
