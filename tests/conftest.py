"""Suite-wide configuration: the ``slow`` marker and the budget of the fast subset.

``python3 -m pytest -m "not slow"`` runs the fast pure tests alone, in under 10 s. A test
that opens a socket, starts a thread or a process is marked ``slow``, one by one with
``@pytest.mark.slow`` or as a whole module with ``pytestmark``.

After a run that deselects the slow tests, the summary names every unmarked test that
took longer than :data:`FAST_TEST_SECONDS`, and says so if the fast subset overran
:data:`FAST_SUBSET_SECONDS`: a warning, not a failure, so that a loaded machine never
fails the suite, but a test that belongs in the slow set is named.
"""

from __future__ import annotations

import time

import pytest

FAST_TEST_SECONDS = 3.0
FAST_SUBSET_SECONDS = 10.0

_slow_unmarked: list[tuple[str, float]] = []
_started = time.monotonic()


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
