"""service.runtime's Shutdown: the one way the process ends early (one line, every
closer, a status), driven in a process of its own since it ends it."""

from __future__ import annotations

import pytest

from tests.support.flow import run_script

_SCRIPT = """
import sys
from service.runtime import Shutdown

shutdown = Shutdown()
shutdown.add_closer(lambda: sys.stderr.write("first closer\\n"))

def broken():
    raise OSError("disk gone")

shutdown.add_closer(broken)
shutdown.add_closer(lambda: sys.stderr.write("last closer\\n"))
removed = lambda: sys.stderr.write("removed closer\\n")
shutdown.add_closer(removed)
shutdown.remove_closer(removed)
getattr(shutdown, sys.argv[1])(*sys.argv[2:])
print("not ended")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, status, lines",
    [
        (
            ["failed", "output jsonl:F failed, stopping: [Errno 28] No space"],
            1,
            [
                "orderbook: output jsonl:F failed, stopping: [Errno 28] No space",
                "last closer",
                "first closer",  # the failed output failing again is not repeated
            ],
        ),
        (
            ["reader_gone"],
            0,
            [
                "orderbook: output closed by its reader, stopping",
                "last closer",
                "orderbook: closing an output failed: disk gone",
                "first closer",
            ],
        ),
    ],
    ids=["failed", "reader_gone"],
)
def test_one_line_then_every_closer_most_recent_first_then_the_status(
    how, status, lines
):
    proc = run_script(_SCRIPT, *how, timeout=60)
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.splitlines() == lines
    assert proc.stdout == ""
