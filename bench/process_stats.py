"""What /proc says of a process (Linux): the benches' one reader of it."""

from __future__ import annotations

import os
from pathlib import Path


def proc_status(pid: int, key: str) -> int:
    """A number from ``/proc/PID/status``: ``Threads``, or ``VmRSS`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    return proc_status(pid, "VmRSS") / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, also of an exited child not yet reaped
    (``/proc/PID/stat``: fields 14 and 15, after the parenthesised command name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
