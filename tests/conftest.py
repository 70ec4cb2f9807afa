"""Suite-wide configuration: the ``slow`` marker and the budget of the fast subset.

``python3 -m pytest -m "not slow"`` runs the fast pure tests alone, in under 10 s. A test
that opens a socket, starts a thread or a process is marked ``slow``, one by one with
``@pytest.mark.slow`` or as a whole module with ``pytestmark``.

After a run that deselects the slow tests, the summary names every unmarked test that
took longer than :data:`FAST_TEST_SECONDS`, and says so if the fast subset overran
:data:`FAST_SUBSET_SECONDS`: a warning, not a failure, so that a loaded machine never
fails the suite, but a test that belongs in the slow set is named.

Background runs: a test that uses the ``audit_run`` fixture (issue 19's two-minute run
of the REST audit, tests/test_audit_e2e.py) is collected last, and its run starts with
the session, in a process of its own, so that it overlaps every other test instead of
adding its two minutes to the suite. Nothing starts when no such test is selected.
"""

from __future__ import annotations

import time
from pathlib import Path

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


_AUDIT_RUN = pytest.StashKey[bool]()
AUDIT_RUN_TIMEOUT = 420.0
"""Seconds the asserting test waits for the run at most (it takes about 150 s alone)."""


def _uses_audit_run(item) -> bool:
    return "audit_run" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    late = [i for i in items if _uses_audit_run(i)]
    if late:
        items[:] = [i for i in items if not _uses_audit_run(i)] + late


def pytest_collection_finish(session: pytest.Session) -> None:
    # after every deselection (-m "not slow", -k, --deselect): wanted only if selected
    session.config.stash[_AUDIT_RUN] = any(map(_uses_audit_run, session.items))


@pytest.fixture(scope="session", autouse=True)
def _background_audit_run(request, tmp_path_factory):
    """Starts with the first test of the session when the audit run is wanted."""
    if not request.config.stash.get(_AUDIT_RUN, False):
        yield None
        return
    from tests.support.audit_run import start_background, stop_background

    workdir: Path = tmp_path_factory.mktemp("audit_run")
    proc = start_background(workdir)
    try:
        yield proc, workdir
    finally:
        stop_background(proc)


@pytest.fixture(scope="session")
def audit_run(_background_audit_run) -> dict:
    """The report of the background audit run (tests/support/audit_run.py)."""
    from tests.support.audit_run import report_of

    proc, workdir = _background_audit_run
    return report_of(proc, workdir, AUDIT_RUN_TIMEOUT)
