"""Is the dataflow advancing, and is every book of this member live? The stall watchdog
(``ORDERBOOK_STALL_SECONDS``) and the health endpoint (``ORDERBOOK_HEALTH``: ``/livez``,
``/readyz``) for orchestrators.

Why: Bytewax's model is that a cluster fails as a whole and an orchestrator restarts it.
A peer that dies resets its connections and the others fail at once; a network
partition resets nothing: Timely's progress messages stop, every worker waits for the
frontier of its epoch forever, and the process runs on with its output frozen while the
feed thread keeps receiving (the partitions' queues grow, logging "the dataflow is
behind this feed" every 5 s). Nothing restarts such a member unless it says so.

The progress signal costs the hot path nothing new per event: each partition of the
live source (``coinbase_source.py``) counts the events its feed put in its queue
(``delivered``, one addition per frame) and the events the dataflow took
(``drained``, one addition per non-empty ``next_batch``); :class:`StallWatch` samples
them from a thread of its own, four times per window (every
``min(1 s, ORDERBOOK_STALL_SECONDS / 4)``):

* a partition whose ``drained`` moved since the last tick, or whose queue is empty, is
  progressing (a quiet feed, no events, is not a stall: there is nothing to take);
* one whose queue holds events while ``drained`` stands still is *behind*; behind for
  half the window, ``/livez`` answers 503 and a warning says so; for the whole window,
  the process says so in one line and exits with status 1 (:meth:`Shutdown.stalled`).

Why draining is the signal: Bytewax calls ``next_batch`` only while the outputs have
finished the previous epoch (``probe.less_than(epoch)`` in its input operator), so a
blocked output, a blocked step, or a peer that cannot confirm an epoch all stop the
draining; within the current epoch (Bytewax's default epoch is 10 s, ``-s`` sets it;
under ``-r`` it is the snapshot interval) a partitioned member still drains locally.

Detection bound: a partition is behind since its oldest waiting event arrived (a
``next_batch`` takes everything, so nothing was taken after it came), and the stall is
declared at the first tick at least ``ORDERBOOK_STALL_SECONDS`` after that: between the
window and the window plus one tick; under a partition add up to one epoch. Measured
(a member whose output pipe nobody reads, 2 products, tick 1 s): window 4 s, 5 runs,
the line said 4.8 to 4.9 s; window 30 s, 2 runs, 30.9 s; the process ended 2 to 14 ms
after its line. A peer stopped (SIGSTOP: nothing resets its sockets, as in a partition),
window 3 s, tick 0.75 s: the other member ended 3.4 to 4.8 s later with ``-s 1`` (4
runs), 7.9 to 8.6 s with the default 10-s epoch (4 runs, all stopped at the same phase
of the epoch).

Only a source that reports its partitions' counters (``progress()``: the live feeds,
``sim`` and a replay served by the local exchange) is watched. A replay of files
(``ORDERBOOK_REPLAY``) reads only when the dataflow asks: a replay paused by the
dataflow has nothing waiting, so there is no stall to see; ``/livez`` says it is not
watched.

``/readyz`` answers 200 once every partition of this member has a live book: the
dataflow took the product's snapshot and no reset came after it (the partition tracks
it in the same counters). A product that failed for good, or one resyncing, makes the
member not ready until its next snapshot.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from common.text import shown
from common.validation import refuse

log = logging.getLogger(__name__)

TICK_MAX_SECONDS = 1.0
"""The watchdog samples at least once a second, four times per window."""
LIVEZ_FRACTION = 0.5
"""Behind for this fraction of the window: ``/livez`` answers 503 and a warning is
logged, so that a probe or a person sees the stall before the exit."""
STALL_CAUSES = "an output blocked, or a cluster peer unreachable?"
"""What stops a dataflow that has events waiting, as far as it can tell."""
NAMES_SHOWN = 5
"""Products named in one line; the rest are counted."""


class Progress(Protocol):
    """What the watchdog reads of one partition (``coinbase_source.PartitionProgress``)."""

    product_id: str
    delivered: int
    drained: int
    pending: int
    waiting_since_ns: int
    ready: bool
    state: str
    closed: bool


def _names(products: Sequence[str]) -> str:
    shown_names = ", ".join(shown(p, 40) for p in products[:NAMES_SHOWN])
    more = len(products) - NAMES_SHOWN
    return shown_names + (f" and {more} more" if more > 0 else "")


@dataclass
class Verdict:
    """The watchdog's latest judgement of the dataflow."""

    state: str = "starting"
    """starting (no partition yet), flowing, quiet (nothing delivered, nothing
    waiting), behind (events waiting, none taken lately), stalled, closed, or not
    watched."""
    behind_seconds: float = 0.0
    """How long the worst partition has had events waiting with none taken."""
    products: tuple[str, ...] = ()
    """The partitions behind (or stalled)."""
    delivered: int = 0
    """Events their feeds delivered meanwhile."""
    pending: int = 0
    """Events waiting in their queues now."""

    def line(self) -> str:
        return (
            f"the dataflow made no progress for {self.behind_seconds:.1f} s while "
            f"{_names(self.products)} delivered {self.delivered:,} events, "
            f"{self.pending:,} waiting"
        )


@dataclass
class _Seen:
    drained: int
    since: float
    delivered: int


@dataclass
class StallWatch:
    """The stall rule over successive samples of the partitions' counters; pure (the
    clock is passed in), so that the rule is tested without threads."""

    stall_seconds: float
    tick: float = TICK_MAX_SECONDS
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def observe(
        self, parts: Sequence[Progress], now: float, wall_ns: int = 0
    ) -> Verdict:
        """Judge one sample taken at ``now`` (monotonic seconds) and ``wall_ns``
        (``time.time_ns()``; 0: unknown).

        A partition behind is behind since its oldest waiting event came off the
        socket (nothing was taken after it arrived: a ``next_batch`` takes all), so a
        stall is declared between ``stall_seconds`` and one tick after that. Without
        that time, since the last tick that saw it progress (up to a tick early or
        late). The wall clock's age is capped by the ticks' (at most one tick more),
        so that a clock set forward cannot fake a stall."""
        live = [p for p in parts if not p.closed]
        if not parts:
            return Verdict("starting")
        if not live:
            return Verdict("closed")
        behind: list[tuple[Progress, _Seen]] = []
        flowing = False
        for part in live:
            seen = self._seen.get(part.product_id)
            if seen is None or part.drained != seen.drained or part.pending == 0:
                if seen is not None and part.drained != seen.drained:
                    flowing = True
                self._seen[part.product_id] = _Seen(part.drained, now, part.delivered)
            else:
                behind.append((part, seen))
        if not behind:
            return Verdict("flowing" if flowing else "quiet")
        worst = max(self._behind(part, seen, now, wall_ns) for part, seen in behind)
        stalled = worst >= self.stall_seconds
        return Verdict(
            "stalled" if stalled else "behind",
            worst,
            tuple(part.product_id for part, _ in behind),
            sum(part.delivered - seen.delivered for part, seen in behind),
            sum(part.pending for part, _ in behind),
        )

    def _behind(self, part: Progress, seen: _Seen, now: float, wall_ns: int) -> float:
        by_ticks = now - seen.since
        if not (wall_ns and part.waiting_since_ns):
            return by_ticks
        age = (wall_ns - part.waiting_since_ns) / 1e9
        return max(0.0, min(age, by_ticks + self.tick))


class FlowHealth:
    """One flow's stall watchdog and readiness, for the health endpoint.

    ``source`` is the flow's input; only one with a ``progress()`` method (the live
    source) is watched. ``on_stall`` gets the one line when the dataflow stalled (the
    service passes :meth:`service.runtime.Shutdown.stalled`, which ends the process);
    ``stall_seconds`` 0 watches nothing. The watchdog thread starts with
    :meth:`start`, called when the flow builds its first partition (the flow runs:
    building a flow starts nothing), and ends when every partition closed.
    """

    def __init__(
        self,
        source: object,
        stall_seconds: float,
        on_stall: Callable[[str], Any],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        progress = getattr(source, "progress", None)
        self._progress: Callable[[], Sequence[Progress]] | None = (
            progress if callable(progress) else None
        )
        self.stall_seconds = float(stall_seconds)
        self.tick = min(TICK_MAX_SECONDS, self.stall_seconds / 4) or TICK_MAX_SECONDS
        self._on_stall = on_stall
        self._clock = clock
        self._wall_clock = wall_clock
        self._watch = StallWatch(self.stall_seconds, self.tick)
        self.verdict = Verdict("starting" if self.watched else "not watched")
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._warned = False
        self._stall_said = False
        self._state_since = clock()

    @property
    def watched(self) -> bool:
        return self._progress is not None and self.stall_seconds > 0

    def start(self) -> None:
        """Start the watchdog thread (once; nothing when not watched)."""
        if not self.watched:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="stall-watchdog", daemon=True
            )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                verdict = self.check()
            except Exception:  # a bug here must neither kill nor stall the flow
                log.exception("stall watchdog: cannot read the partitions' progress")
                continue
            if verdict.state == "closed":
                return

    def check(self) -> Verdict:
        """One tick: sample, judge, warn or end the process."""
        now = self._clock()
        verdict = self._watch.observe(self._progress(), now, self._wall_clock())
        previous, self.verdict = self.verdict, verdict
        if verdict.state != previous.state:
            self._state_since = now
        if verdict.state == "stalled":
            if self._stall_said:
                return verdict
            self._stall_said = True
            self._on_stall(f"{verdict.line()} ({STALL_CAUSES}), exiting")
        elif verdict.state == "behind":
            if not self._warned and verdict.behind_seconds >= self.livez_seconds:
                self._warned = True
                log.warning(
                    "%s; exiting at %g s unless it recovers",
                    verdict.line(),
                    self.stall_seconds,
                )
        elif self._warned:
            self._warned = False
            log.warning(
                "the dataflow progresses again (it was behind for %.0f s)",
                previous.behind_seconds,
            )
        return verdict

    @property
    def livez_seconds(self) -> float:
        return self.stall_seconds * LIVEZ_FRACTION

    # -- what the endpoint answers ----------------------------------------------------------

    def liveness(self) -> tuple[bool, dict]:
        """(alive, body): unhealthy once behind for half the window."""
        verdict = self.verdict
        body: dict[str, Any] = {
            "dataflow": verdict.state,
            "for_seconds": round(max(0.0, self._clock() - self._state_since), 1),
        }
        if verdict.state in ("behind", "stalled"):
            body["behind_seconds"] = round(verdict.behind_seconds, 1)
            if verdict.behind_seconds >= self.livez_seconds:
                body["reason"] = verdict.line()
                return False, body
        return True, body

    def readiness(self) -> tuple[bool, dict]:
        """(ready, body): every partition of this member has a live book, and the
        dataflow is not stalled (a book it no longer updates is stale)."""
        if self._progress is None:
            return True, {"books": "not tracked for this input"}
        alive, life = self.liveness()
        if not alive:
            return False, {"reason": life["reason"]}
        parts = [p for p in self._progress() if not p.closed]
        if not parts:
            return False, {"reason": "no partition of the feed on this member yet"}
        waiting = [p.product_id for p in parts if not p.ready and p.state != "failed"]
        failed = [p.product_id for p in parts if p.state == "failed"]
        if not waiting and not failed:
            return True, {"books": len(parts)}
        why = []
        if waiting:
            why.append(f"awaiting a snapshot: {_names(waiting)}")
        if failed:
            why.append(f"failed for good: {_names(failed)}")
        return False, {
            "books": len(parts) - len(waiting) - len(failed),
            "of": len(parts),
            "reason": "; ".join(why),
        }


# -- the endpoint ---------------------------------------------------------------------------

REQUEST_TIMEOUT_SECONDS = 5.0
"""A client that sends no complete request within this long is dropped."""


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer
    timeout = REQUEST_TIMEOUT_SECONDS

    def version_string(self) -> str:
        return "orderbook-health"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        health = self.server.health
        if path == "/livez":
            ok, payload = health.liveness() if health else (True, {})
        elif path == "/readyz":
            ok, payload = health.readiness() if health else (False, {})
        else:
            self._send(HTTPStatus.NOT_FOUND, {"status": "not found"}, body)
            return
        payload = {"status": "ok" if ok else "unhealthy", **payload}
        status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        self._send(status, payload, body)

    def _send(self, status: HTTPStatus, payload: dict, body: bool) -> None:
        data = (json.dumps(payload, ensure_ascii=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain=None) -> None:
        # never echo the request (a hostile path or method) back, in a body or a log
        self.close_connection = True
        try:
            self._send(HTTPStatus(code), {"status": HTTPStatus(code).phrase}, True)
        except (OSError, ValueError):
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would flood the log; nothing to say


class HealthServer(ThreadingHTTPServer):
    """``/livez`` and ``/readyz`` on a daemon thread; :attr:`health` is the flow's
    :class:`FlowHealth` (the latest flow built in this process)."""

    daemon_threads = True
    allow_reuse_address = True  # a restarted member rebinds its port at once

    def __init__(self, host: str, port: int) -> None:
        self.health: FlowHealth | None = None
        if ":" in host:  # an IPv6 address
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)
        self.thread = threading.Thread(
            target=self.serve_forever, name="health-endpoint", daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


_servers: dict[tuple[str, int], HealthServer] = {}
"""This process's endpoints by the address asked for: a port is process-wide by nature,
and a second flow built in the same process (tests) takes the endpoint over."""
_servers_lock = threading.Lock()


def serve_health(address: tuple[str, int], health: FlowHealth) -> HealthServer:
    """The endpoint at ``address`` answering for ``health``, started now, while the
    flow is built: an address it cannot listen on (a port in use, a name that does not
    resolve) is a one-line :class:`~common.validation.ConfigError`."""
    host, port = address
    with _servers_lock:
        server = _servers.get(address)
        if server is None:
            try:
                server = HealthServer(host, port)
            except (OSError, OverflowError) as exc:
                shown_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise refuse(
                    "ORDERBOOK_HEALTH",
                    shown_address,
                    "HOST:PORT of this machine with a free port",
                    f"cannot listen on {shown(shown_address)}: {shown(exc, 200)}",
                ) from None
            _servers[address] = server
            log.info(
                "health endpoint at http://%s:%d/livez and /readyz (ORDERBOOK_HEALTH)",
                host if ":" not in host else f"[{host}]",
                server.port,
            )
        server.health = health
    return server
