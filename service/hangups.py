"""When each of a cluster member's peer connections ended, timed in a process of its own.

Why a process: the member's watcher thread (:class:`service.cluster.PeerWatch`) needs
the interpreter lock to look at the clock once ``poll()`` wakes it, and the Bytewax
worker holds that lock. On a busy member it woke 50 ms after the killed peer's
connection closed; by then the surviving peer had ended too (14 to 30 ms after the
kill, because of it), and the two ends could no longer be ordered: the member named
the survivor in 4 of 64 runs of ``tests/test_cluster_netns.py``'s member-loss test
(measured before this process existed). This process has no other thread, so the time
it notes is the time the end arrived, to the scheduler's wake-up.

Run as ``python -I -S hangups.py FD...`` with duplicates of the connections' file
descriptors (``pass_fds``): it never reads a byte of them, blocks in ``poll()`` for a
hang-up, reset or error only, says ``ready`` once it does, and writes one line
``FD MONOTONIC_NS`` per connection as it ends. It exits when its standard input closes
(the member ended or is done with it) or every connection has ended. Only the standard
library: it imports nothing of the project.
"""

from __future__ import annotations

import os
import select
import sys
import time

LOST = select.POLLRDHUP | select.POLLHUP | select.POLLERR
"""The connection closed (FIN), reset (RST) or failed (a timeout)."""


def main(fds: list[int]) -> None:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, LOST)
    poller.register(sys.stdin.fileno(), select.POLLHUP | select.POLLIN)
    os.write(sys.stdout.fileno(), b"ready\n")
    watched = set(fds)
    while watched:
        events = poller.poll()
        now = time.monotonic_ns()
        for fd, _ in events:
            if fd not in watched:  # standard input: the member is done or gone
                return
            os.write(sys.stdout.fileno(), f"{fd} {now}\n".encode())
            poller.unregister(fd)
            os.close(fd)
            watched.discard(fd)


if __name__ == "__main__":
    try:
        main([int(arg) for arg in sys.argv[1:]])
    except (OSError, ValueError, KeyboardInterrupt):
        sys.exit(1)
