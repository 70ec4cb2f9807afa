"""Suite-wide configuration: the ``slow`` marker and the budget of the fast subset.

``python3 -m pytest -m "not slow"`` runs the fast pure tests alone, in under 10 s. A test
that opens a socket, starts a thread or a process is marked ``slow``: one by one with
``@pytest.mark.slow`` / ``pytestmark``, or, for the modules listed in
:data:`SLOW_MODULES` (socket-heavy modules whose tests are not marked one by one yet),
as a whole by :func:`pytest_collection_modifyitems`.

After a run that deselects the slow tests, the summary names every unmarked test that
took longer than :data:`FAST_TEST_SECONDS`, and says so if the fast subset overran
:data:`FAST_SUBSET_SECONDS`: a warning, not a failure, so that a loaded machine never
fails the suite, but a test that belongs in the slow set is named.
"""

from __future__ import annotations

import time

import pytest

SLOW_MODULES = frozenset(
    {
        # recordings, subprocesses, clusters; its tests are being marked one by one (then
        # this entry, and the whole mechanism with it, goes)
        "test_replay_and_scale",
    }
)
"""Modules marked slow as a whole; remove one once its tests are marked one by one
(every other module marks itself: ``pytestmark`` or ``@pytest.mark.slow``)."""

FAST_TEST_SECONDS = 3.0
FAST_SUBSET_SECONDS = 10.0

_slow_unmarked: list[tuple[str, float]] = []
_started = time.monotonic()


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module in SLOW_MODULES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


def _fast_subset(config: pytest.Config) -> bool:
    return "not slow" in (config.getoption("markexpr", "") or "")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.duration > FAST_TEST_SECONDS:
        if "slow" not in report.keywords:
            _slow_unmarked.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _fast_subset(config):
        return
    elapsed = time.monotonic() - _started
    for nodeid, seconds in _slow_unmarked:
        terminalreporter.write_line(
            f"WARNING: {nodeid} took {seconds:.1f} s but is not marked slow",
            yellow=True,
        )
    if elapsed > FAST_SUBSET_SECONDS:
        terminalreporter.write_line(
            f"WARNING: the fast subset took {elapsed:.1f} s "
            f"(budget {FAST_SUBSET_SECONDS:.0f} s): mark what opens sockets, threads "
            "or processes slow",
            yellow=True,
        )
