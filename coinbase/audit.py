"""The REST audit's fetch side: which product to ask next, when, and what goes into its
stream (issue 19; the comparison is the book step's).

ONE :class:`AuditScheduler` per process (:func:`shared_scheduler`), whatever the number of
sources and partitions: Coinbase counts public REST requests per IP (10 a second), so a
budget split per source or per product could not keep the process under it. It runs on
the feeds' event loop (:data:`coinbase.runner.LOOP`), so the events it puts into a
partition's queue are in stream order with that product's frames, and nothing it does
blocks the Bytewax worker.

The rules, each testable without a socket or a sleep (the clock is injectable):

* :class:`RoundRobin`: every registered product is due ``interval`` seconds after it
  registered, then ``interval`` seconds after its last request (a book just built from
  a snapshot proves nothing yet, and short runs make no request); the earliest due
  product whose book is live goes next, so when the budget cannot audit every product
  each interval (300 products at 3 requests a second: one round takes about 110 s)
  they are audited in turn. A product without a book yet (no snapshot since its last
  reset, a failed or closed partition) is passed over and keeps its place; a product
  has one audit under way at most.
* :class:`RequestBudget`: requests at least ``1/rate`` seconds apart AND at most
  ``floor(rate)`` (at least 1) in any window of ``1 + WINDOW_MARGIN`` seconds, counted
  from when each request really left, so no one-second window, as the server counts
  arrivals, ever sees more than ``rate``. A 429, a 5xx, a timeout or a failed
  connection pauses every request of the process for a jittered exponential backoff
  (1 s doubling to 60 s, :class:`coinbase.pacing.Backoff`); a good reply resets it.
* Each audit: :class:`events.AuditStarted` into the product's queue when the request
  leaves; when the reply is in (or the request failed) and :data:`AUDIT_SETTLE_SECONDS`
  more have passed, :class:`events.BookAudit` with the best ``levels`` a side parsed by
  :mod:`coinbase.rest`, or its ``failure`` (``HTTP 429``, ``timeout``, ``not JSON``...).
  Failures are counted per kind (:attr:`AuditScheduler.failures`) and logged at most
  once every :data:`FAILURE_LOG_SECONDS`; nothing they do reaches the feed's
  connections.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from coinbase.pacing import Backoff
from coinbase.rest import RestBook, book_url, parse_book
from coinbase.runner import LOOP, LoopRunner
from common.logs import RateLimitedLog
from common.text import redact_url, shown
from events import AuditStarted, BookAudit, BookEvent

if TYPE_CHECKING:
    import httpx

__all__ = [
    "AUDIT_SETTLE_SECONDS",
    "AuditScheduler",
    "AuditTarget",
    "RequestBudget",
    "RoundRobin",
    "shared_scheduler",
]

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)
"""httpx logs every request at INFO (three lines a second, each with its URL): the
audits say what matters themselves."""

AUDIT_SETTLE_SECONDS = 1.0
"""Wait this long after a reply before its :class:`~events.BookAudit` enters the
stream: ``level2_batch`` sends an update up to ~50 ms after the exchange made it, and a
REST book may be a few updates ahead of the socket; a second covers both with room for
a busy loop."""
REQUEST_TIMEOUT_SECONDS = 10.0
"""A request not answered in full within this is a ``timeout`` (backed off)."""
MAX_REPLY_BYTES = 32 * 2**20
"""A BTC-USD Exchange ``level=2`` book is about 5 MB; a bigger reply is refused."""
WINDOW_MARGIN = 0.1
"""Seconds added to the one-second window the budget counts in: a request leaves a
little after its turn was taken (the feeds' loop may be parsing a snapshot), and the
server counts arrivals. Costs a little pace: at 3 a second, 3 requests per 1.1 s."""
BACKOFF_INITIAL, BACKOFF_MAX = 1.0, 60.0
FAILURE_LOG_SECONDS = 10.0
IDLE_POLL_SECONDS = 0.25
"""How often the scheduler looks again when the due products have no book yet."""
RATE_MAX = 10.0
"""Coinbase's public REST limit, per IP."""


class AuditedPart(Protocol):
    """What the scheduler needs of a partition (``coinbase_source._CoinbasePartition``)."""

    product_id: str

    @property
    def auditable(self) -> bool:
        """Running, with a live book (a snapshot since its last reset)."""

    @property
    def feed(self) -> str: ...

    def put_audit(self, event: BookEvent) -> None:
        """Into the product's queue, on the loop thread (stream order)."""


@dataclass(frozen=True)
class AuditTarget:
    """Where and how often a source's products are audited."""

    base_url: str
    protocol: str
    levels: int
    interval: float


# -- the rules (no I/O) ------------------------------------------------------------------


class RequestBudget:
    """The process's REST pace: ``rate`` requests a second at most, backed off on
    failures. Call :meth:`wait` (0: go now), then :meth:`take` when a request leaves;
    :meth:`failed` / :meth:`succeeded` with its outcome."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self.clock = clock
        self.backoff = backoff or Backoff(BACKOFF_INITIAL, BACKOFF_MAX)
        self._paused_until = -math.inf
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        if not 0 < rate <= RATE_MAX:
            raise ValueError(f"rate must be in (0, {RATE_MAX:g}]; got {rate!r}")
        self.rate = rate
        self.interval = 1.0 / rate
        self.per_window = max(1, math.floor(rate))
        sent = getattr(self, "_sent", ())  # a lower rate keeps the requests just sent
        self._sent: deque[float] = deque(sent, maxlen=self.per_window)

    def wait(self) -> float:
        """Seconds before the next request may leave (0: now)."""
        now = self.clock()
        due = self._paused_until
        if self._sent:
            due = max(due, self._sent[-1] + self.interval)
        if len(self._sent) == self.per_window:
            due = max(due, self._sent[0] + 1.0 + WINDOW_MARGIN)
        return max(0.0, due - now)

    def take(self) -> float:
        """A request leaves now; returns its turn, for :meth:`left`."""
        now = self.clock()
        self._sent.append(now)
        return now

    def left(self, turn: float) -> None:
        """The request of ``turn`` actually left now (later than its turn, if the loop
        was busy): count it from now, so a late request and the next ones on time never
        fall into one window."""
        sent = self._sent
        for i in range(len(sent) - 1, -1, -1):
            if sent[i] == turn:
                sent[i] = max(turn, self.clock())
                return

    def failed(self) -> float:
        """A 429, 5xx or timeout: no request for a backoff delay (returned)."""
        delay = self.backoff.next_delay()
        self._paused_until = max(self._paused_until, self.clock() + delay)
        return delay

    def succeeded(self) -> None:
        self.backoff.reset()


@dataclass(eq=False)
class _Entry:
    part: AuditedPart
    target: AuditTarget
    url: str
    due: float
    busy: bool = False
    """Its audit is under way (until its BookAudit is in the stream): one at a time,
    since the book step follows one pending audit per product."""


class RoundRobin:
    """Registered products and when each is next due; earliest due and live goes first."""

    def __init__(self) -> None:
        self.entries: dict[int, _Entry] = {}

    def add(self, part: AuditedPart, target: AuditTarget, now: float) -> None:
        url = book_url(target.base_url, target.protocol, part.product_id, target.levels)
        self.entries[id(part)] = _Entry(part, target, url, now + target.interval)

    def remove(self, part: AuditedPart) -> bool:
        return self.entries.pop(id(part), None) is not None

    def has(self, part: AuditedPart) -> bool:
        return id(part) in self.entries

    def pick(self, now: float) -> _Entry | None:
        """The earliest due entry (due by ``now``) whose book is live, marked as sent."""
        best = None
        for entry in self.entries.values():
            if entry.due <= now and (best is None or entry.due < best.due):
                if not entry.busy and _auditable(entry.part):
                    best = entry
        if best is not None:
            best.due = now + best.target.interval
            best.busy = True
        return best

    def done(self, entry: _Entry) -> None:
        """Its audit is over: it may be picked again when due."""
        entry.busy = False

    def until_due(self, now: float) -> float:
        """Seconds until some entry not under audit is due (0: one is due now; inf:
        none)."""
        due = min(
            (e.due for e in self.entries.values() if not e.busy), default=math.inf
        )
        return max(0.0, due - now)


def _auditable(part: AuditedPart) -> bool:
    try:
        return bool(part.auditable)
    except Exception:  # pragma: no cover - a partition's bug must not stop the audits
        return False


def classify(status: int) -> tuple[str | None, bool]:
    """(failure or None, whether to back off) of an HTTP status."""
    if status == 200:
        return None, False
    return f"HTTP {status}", status == 429 or status >= 500


# -- the scheduler (the feeds' loop) -------------------------------------------------------


@dataclass
class AuditCounts:
    requests: int = 0
    books: int = 0
    failures: Counter = field(default_factory=Counter)
    """Failures per kind (``HTTP 429``, ``timeout``, ``not JSON``...)."""


class AuditScheduler:
    """The process's REST audits (see the module docstring). Partitions
    :meth:`register` and :meth:`unregister` from any thread; the work runs on
    :data:`coinbase.runner.LOOP` while at least one is registered, and when the last
    leaves the HTTP client is closed and :attr:`finished` is set."""

    def __init__(
        self,
        rate: float = 3.0,
        *,
        settle_seconds: float = AUDIT_SETTLE_SECONDS,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
        budget: RequestBudget | None = None,
        runner: LoopRunner | Any = LOOP,
    ) -> None:
        # Imported here, on the thread that builds the source, not at import: httpx
        # takes 0.25 to 0.5 s to import on a busy machine, which a run without audits
        # (or a replay) should not pay, nor the feeds' loop thread mid-stream.
        import httpx

        self._httpx = httpx
        self.budget = budget or RequestBudget(rate)
        self.runner = runner
        """Runs the scheduler's work (anything with ``call_soon(fn, *args)`` callable
        from any thread): the feeds' loop, or the recorder's (``python -m recording``
        records the audits on the loop that writes its frames, in their stream order)."""
        self.settle_seconds = settle_seconds
        self.timeout_seconds = timeout_seconds
        self.plan = RoundRobin()
        self.counts = AuditCounts()
        self.finished = threading.Event()
        self.finished.set()
        self._lock = threading.Lock()
        self._registered = 0
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._inflight: set[asyncio.Task] = set()
        self._failure_log = RateLimitedLog(log, FAILURE_LOG_SECONDS)

    @property
    def failures(self) -> Counter:
        return self.counts.failures

    # -- any thread ---------------------------------------------------------------------

    def register(self, part: AuditedPart, target: AuditTarget) -> None:
        with self._lock:
            self._registered += 1
            self.finished.clear()
        self.runner.call_soon(self._add, part, target)

    def unregister(self, part: AuditedPart) -> bool:
        """True when it was the last: the scheduler then stops and sets ``finished``."""
        with self._lock:
            self._registered -= 1
            last = self._registered == 0
        self.runner.call_soon(self._remove, part)
        return last

    # -- loop thread ----------------------------------------------------------------------

    def _add(self, part: AuditedPart, target: AuditTarget) -> None:
        try:
            self.plan.add(part, target, self.budget.clock())
        except ValueError as exc:  # pragma: no cover - the source checked its products
            log.error("%s: cannot audit: %s", shown(part.product_id), exc)
            return
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        else:
            self._wake.set()

    def _remove(self, part: AuditedPart) -> None:
        self.plan.remove(part)
        if self._wake is not None:
            self._wake.set()
        if self._task is None or self._task.done():  # never started: nothing to close
            with self._lock:
                if self._registered == 0:
                    self.finished.set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or less when a product registers or leaves."""
        wake = self._wake
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _run(self) -> None:
        httpx = self._httpx
        client = httpx.AsyncClient(
            timeout=self.timeout_seconds,
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            follow_redirects=False,
        )
        try:
            while self.plan.entries:
                try:
                    await self._step(client)
                except asyncio.CancelledError:
                    raise
                except Exception:  # pragma: no cover - never let a bug end the audits
                    log.exception("REST audit scheduler: unexpected error")
                    await self._sleep(1.0)
        finally:
            for task in self._inflight:
                task.cancel()
            try:
                await client.aclose()
            finally:
                if self.plan.entries:  # one registered while the client closed
                    self._task = asyncio.get_running_loop().create_task(self._run())
                with self._lock:
                    if self._registered == 0:
                        self.finished.set()

    async def _step(self, client: httpx.AsyncClient) -> None:
        wait = self.budget.wait()
        if wait > 0:
            await self._sleep(wait)
            return
        entry = self.plan.pick(self.budget.clock())
        if entry is None:
            until = self.plan.until_due(self.budget.clock())
            await self._sleep(min(max(until, 0.001), IDLE_POLL_SECONDS))
            return
        turn = self.budget.take()
        task = asyncio.get_running_loop().create_task(self._audit(client, entry, turn))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _audit(
        self, client: httpx.AsyncClient, entry: _Entry, turn: float
    ) -> None:
        try:
            await self._audit_once(client, entry, turn)
        finally:
            self.plan.done(entry)
            if self._wake is not None:
                self._wake.set()

    async def _audit_once(
        self, client: httpx.AsyncClient, entry: _Entry, turn: float
    ) -> None:
        part, target = entry.part, entry.target
        requested_ns = time.time_ns()
        part.put_audit(AuditStarted(part.product_id, part.feed, requested_ns))
        self.counts.requests += 1
        book = await self._fetch(client, entry, turn)
        replied_ns = time.time_ns()
        if isinstance(book, str):
            self.counts.failures[book] += 1
            self._failure_log.warning(
                "REST audit of %s failed: %s (%d failures so far, %s; from %s)",
                part.product_id,
                book,
                sum(self.counts.failures.values()),
                ", ".join(f"{k}: {v}" for k, v in self.counts.failures.most_common(4)),
                redact_url(target.base_url),
            )
        else:
            self.counts.books += 1
        await asyncio.sleep(self.settle_seconds)
        if not self.plan.has(part):  # left while we waited: nobody drains its queue
            return
        failure = book if isinstance(book, str) else None
        part.put_audit(
            BookAudit(
                part.product_id,
                part.feed,
                [] if failure else book.bids,
                [] if failure else book.asks,
                target.levels,
                requested_ns,
                replied_ns,
                failure,
                time.time_ns(),
            )
        )

    async def _fetch(
        self, client: httpx.AsyncClient, entry: _Entry, turn: float
    ) -> RestBook | str:
        """The parsed book, or a failure (backed off when the server is to blame)."""
        httpx = self._httpx
        backoff = True
        try:
            async with asyncio.timeout(self.timeout_seconds):
                self.budget.left(turn)
                async with client.stream("GET", entry.url) as reply:
                    failure, backoff = classify(reply.status_code)
                    if failure is None:
                        body = bytearray()
                        async for chunk in reply.aiter_bytes():
                            body += chunk
                            if len(body) > MAX_REPLY_BYTES:
                                failure = f"reply over {MAX_REPLY_BYTES:,} bytes"
                                break
        except (TimeoutError, httpx.TimeoutException):
            failure = "timeout"
        except httpx.HTTPError as exc:
            failure = f"request failed: {type(exc).__name__}"
        if failure is None:
            target = entry.target
            book = parse_book(
                bytes(body), target.protocol, entry.part.product_id, target.levels
            )
            self.budget.succeeded()
            return book
        if backoff:
            self.budget.failed()
        return failure


_shared: AuditScheduler | None = None
_shared_pid = 0
_shared_lock = threading.Lock()


def shared_scheduler(rate: float) -> AuditScheduler:
    """The process's scheduler, made on first use. Every source of the process shares
    it; when sources ask different rates, the lowest wins (the budget is the IP's)."""
    global _shared, _shared_pid
    with _shared_lock:
        if _shared is None or _shared_pid != os.getpid():
            _shared, _shared_pid = AuditScheduler(rate), os.getpid()
        elif rate < _shared.budget.rate:
            LOOP.call_soon(_shared.budget.set_rate, rate)
        return _shared
