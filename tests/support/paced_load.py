"""Paced live loads for the benches: processes in groups of their own, an output file read
as it grows, and the lag of the lines it shows.

A live bench writes its load as a recording paced evenly (update ``i`` at
:func:`update_ns`, ``RECORDED_RATE`` a second from ``T0_NS``), has the local exchange
serve it ``speed`` times faster (:func:`replay_exchange`), starts a consumer as a process
(``start``, with :func:`jsonl_service_env` for the service; ``stop`` ends each whole
process group, SIGTERM then SIGKILL), reads the consumer's output file while it grows
(:func:`tail`: each block of new lines with the moment it was seen), and measures how
late each line appeared against the pace the load was served at (:func:`product_lags`,
summed up by :func:`lag_stats`). The lag of a line is ``seen - due``, where ``due = (t - T0) / speed``
is when the line's event was served, minus the least such difference of its product:
the least rather than the first line is the zero, so that a slow first line (a
snapshot, a connection opened late) cannot hide the others' lag. A consumer that keeps
up shows a small, flat lag; one falling behind shows it grow through the load.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.flow import flow_env

REPO = Path(__file__).resolve().parent.parent.parent

STOP_SECONDS = 10.0
"""A process group gets this long after SIGTERM before SIGKILL."""

RECORDED_RATE = 1_000
"""Messages a second over all products at a load recording's own pace (speed 1)."""
T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z, a load recording's start


def update_ns(i: int) -> int:
    """Recorded receive time of a load's update ``i`` (also its exchange time)."""
    return T0_NS + (i + 1) * 1_000_000_000 // RECORDED_RATE


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free now (all bound at once: none is given twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(
    command: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> subprocess.Popen:
    """``command`` in a process group of its own, stdout and stderr to ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(procs: Iterable[subprocess.Popen], grace: float = STOP_SECONDS) -> None:
    """SIGTERM every group, wait up to ``grace`` s, then SIGKILL what is left of it."""
    procs = list(procs)
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)  # stragglers, a child that outlived it
        proc.wait()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def exited(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` has ended, leaving it unreaped: a zombie's CPU times can still be
    read (``Popen.poll`` would reap it)."""
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    return os.waitid(os.P_PID, proc.pid, flags) is not None


def wait_for_port(port: int, server: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until something listens on ``127.0.0.1:port``; raises if ``server`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited(server):
            raise RuntimeError("the server exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:g} s")


def replay_exchange(
    recording: Path, speed: float, log: Path
) -> tuple[subprocess.Popen, int]:
    """``python -m local_exchange --replay recording --speed speed`` on a free port, in
    a process group of its own, once it listens: the process and its port. Raises
    RuntimeError (the process stopped) if it exits or does not listen first."""
    (port,) = free_ports(1)
    exchange = start(
        [sys.executable, "-m", "local_exchange", "--port", str(port)]
        + ["--replay", str(recording), "--speed", repr(speed)],
        log,
    )
    try:
        wait_for_port(port, exchange)
    except RuntimeError as exc:
        stop([exchange])
        raise RuntimeError(
            f"the local exchange: {exc}\n{log.read_text()[-2000:]}"
        ) from None
    except BaseException:
        stop([exchange])
        raise
    return exchange, port


def jsonl_service_env(
    url: str, products: Iterable[str], out: Path, **settings: str
) -> dict[str, str]:
    """The service's environment for a live load: ``products`` from the feed at
    ``url``, every top-of-book change (threshold 0) written to ``out`` as jsonl; more
    ``ORDERBOOK_*`` settings as keywords."""
    return flow_env(
        **settings,
        ORDERBOOK_WS_URL=url,
        ORDERBOOK_PRODUCTS=",".join(products),
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_OUTPUT=f"jsonl:{out}",
    )


@dataclass
class Tail:
    """What :func:`tail` saw: blocks of complete lines with the moment (monotonic s)
    each was seen, and when the first and last were."""

    blocks: list[tuple[float, str]]
    first: float
    last: float

    @property
    def lines(self) -> int:
        return sum(block.count("\n") + 1 for _, block in self.blocks)

    def records(self, parse: Callable[[str], object]) -> list[tuple[float, object]]:
        """``(seen, parse(line))`` for every line, in order."""
        return [
            (seen, parse(line))
            for seen, block in self.blocks
            for line in block.split("\n")
        ]


def tail(
    path: Path,
    *,
    expected: int,
    running: Callable[[], bool],
    start_timeout: float,
    after_first: float,
    poll: float = 0.002,
    on_first: Callable[[], None] | None = None,
) -> Tail:
    """Read ``path`` as it grows until ``expected`` lines are in, ``after_first`` s have
    passed since the first line, or ``running()`` says the writer has ended. ``on_first``
    is called when the first line is seen (to start a CPU count, say). Raises
    RuntimeError when no line comes within ``start_timeout`` s."""
    end = time.monotonic() + start_timeout
    while not path.exists() or not path.stat().st_size:
        if time.monotonic() > end or not running():
            raise RuntimeError(f"nothing was written to {path.name}")
        time.sleep(poll)
    blocks: list[tuple[float, str]] = []
    seen = 0
    pending = ""
    first = 0.0
    with path.open() as f:
        while seen < expected:
            # decided before reading, so that the lines written just before the writer
            # ended are still read
            done = time.monotonic() > end or not running()
            chunk = f.read()
            now = time.monotonic()
            if chunk:
                lines, newline, pending = (pending + chunk).rpartition("\n")
                if newline:
                    if not blocks:
                        first = now
                        end = now + after_first
                        if on_first is not None:
                            on_first()
                    blocks.append((now, lines))
                    seen += lines.count("\n") + 1
            elif done:
                break
            else:
                time.sleep(poll)
    return Tail(blocks, first, time.monotonic())


@dataclass
class LagStats:
    """Lags in seconds: p50 and p99 over the load, and the medians of its first and
    last thirds (by due time), which show a lag that grows."""

    p50: float
    p99: float
    first_third_p50: float
    last_third_p50: float

    @property
    def growth(self) -> float:
        return self.last_third_p50 - self.first_third_p50


def product_lags(
    seen: Iterable[tuple[float, str, float]], speed: float
) -> dict[str, list[tuple[float, float]]]:
    """``(due, lag)`` of every line, per product in the order the lines were seen.
    ``seen``: ``(when seen, product, event time in s since the load's T0)`` per line;
    the load was served ``speed`` times faster than its event times, so a line is due
    ``t / speed`` s into the load (on its clock, whose zero each product's least
    ``when - due`` sets: see the module docstring)."""
    by_product: dict[str, list[tuple[float, float]]] = {}
    for when, product, t in seen:
        by_product.setdefault(product, []).append((t / speed, when))
    lags: dict[str, list[tuple[float, float]]] = {}
    for product, rows in by_product.items():
        offsets = [(due, when - due) for due, when in rows]
        least = min(o for _, o in offsets)
        lags[product] = [(due, o - least) for due, o in offsets]
    return lags


def lag_stats(
    lags: Mapping[str, list[tuple[float, float]]], settle: float = 0.0
) -> LagStats:
    """The figures of :func:`product_lags`' ``lags``. Lines due in the first ``settle``
    s of the load are left out (a start-up transient), unless that leaves none."""
    rows = [row for product in lags.values() for row in product]
    if not rows:
        return LagStats(0.0, 0.0, 0.0, 0.0)
    start = min(d for d, _ in rows)
    rows = [(d, lag) for d, lag in rows if d - start >= settle] or rows
    start = min(d for d, _ in rows)
    values = [lag for _, lag in rows]
    q = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
    span = max(d for d, _ in rows) - start
    first = [lag for d, lag in rows if d - start <= span / 3] or values
    last = [lag for d, lag in rows if d - start >= 2 * span / 3] or values
    return LagStats(q[49], q[98], statistics.median(first), statistics.median(last))
