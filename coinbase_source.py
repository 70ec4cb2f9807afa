"""Bytewax input from Coinbase level-2 WebSockets: one partition per product, several
products per connection.

Three layers, each testable alone:

* :class:`coinbase.session.Session` (sans-IO): one product's freshness rules (reset first,
  resets collapsed, pre-snapshot updates dropped, error policy) and typed stats; and
  :class:`coinbase.multiplex.ConnectionSession`, the rules of one connection carrying
  several products (which products a frame or a fault concerns);
* :class:`coinbase.connection.Connection` (asyncio): connect, pacing, backoff, watchdog;
* here, glue: a :class:`_Group` is one connection's handler and routes its events to the
  products' partitions; each partition queues its events; Bytewax drains the queues.

Which products share a connection, when it opens, and which faults reset one product or
every product of its connection: the grouping rules are stated once, in
:mod:`coinbase.multiplex` (the module that implements them).

Every connection of a source runs on ONE event loop (its ``runner``,
:class:`coinbase.runner.LoopRunner`) instead of a thread and loop each. By default that
is the process's shared loop thread (:data:`coinbase.runner.LOOP`). Measured with the
partitions built (``threading.active_count()``): 4 products 5 -> 2 threads, 50 products
51 -> 2 threads. The service passes an *inline* runner instead: the worker that polls
runs the loop's due work at the start of ``next_batch`` (sockets read without waiting,
frames decoded into the queues, timers), so the feed has no thread and no wake-ups of
its own (the process's CPU per message at 30,000 msg/s -20%: see
:mod:`coinbase.runner`). ``next_batch`` never blocks, and raises nothing but
``StopIteration`` at the end of a served replay; ``next_awake`` returns None while
items wait and a 1 ms poll otherwise, 8 ms once the product has been quiet for 16 ms
(Bytewax offers no cross-thread wake-up; see :data:`QUIET_POLL_INTERVAL`). Inline, one
partition's polls run the loop (the *pumper*, :meth:`coinbase.runner.LoopRunner.pump`):
it is polled again at once while the loop reads frames in bulk (:data:`BUSY_FRAMES`),
every 1 ms while it reads any, and every 8 ms once the whole loop has been quiet.

A poll hands the dataflow ONE item, ``(key, [events])``: everything the product queued
since the last poll, keyed already (the product id, or the routing key the dataflow gives
with :meth:`CoinbaseSource.key_by`, so that the flow needs no routing step). Bytewax
costs microseconds per item and per step it crosses; see :meth:`_CoinbasePartition.next_batch`
for what this buys, measured.

Said out loud: every resync with its reason; at most every 5 s per partition, how far
behind the dataflow is when it is (queue depth, age of the oldest queued event); and when
EVERY partition of the process has failed permanently (unknown products, refused
credentials, a feed that never delivered a book: see ``_Group.hopeless``) one line,
then the process exits with status 1 instead of idling forever.
That is per process (a process knows only its own partitions): under ``-p``/``-i`` a
process whose products all failed leaves, and its peers end with Bytewax's
communication error; a process with one working product keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from coinbase.audit import RATE_MAX, AuditScheduler, AuditTarget, shared_scheduler
from coinbase.auth import Credentials
from coinbase.connection import (
    GIVE_UP_AFTER,
    MAX_FRAME_BYTES,
    SNAPSHOT_GRACE_FACTOR,
    Connection,
)
from coinbase.errors import FeedError
from coinbase.feeds import FEEDS, LOCAL_FEEDS, PROTOCOLS, coinbase_feed
from coinbase.multiplex import (
    PRODUCTS_PER_CONNECTION,
    ConnectionSession,
    ConnectionStep,
)
from coinbase.pacing import Backoff
from coinbase.rest import ADVANCED_TRADE_MAX_LIMIT, REPLAY_NO_AUDITS, default_rest_url
from coinbase.runner import LOOP, LoopRunner
from coinbase.session import Action, Session, SessionStats
from common import validation
from common.logs import RateLimitedLog
from common.text import redact_url
from events import BookEvent
from resync import ResyncRequests

__all__ = ["CoinbaseSource", "PartitionProgress"]

log = logging.getLogger(__name__)

MAX_BACKLOG = 100_000
"""Events queued for the dataflow beyond which the partition drops them and resyncs."""
BEHIND_EVENTS = 10_000
BEHIND_SECONDS = 1.0
"""A partition is *behind* with this many events queued or an oldest event this old."""
BEHIND_LOG_SECONDS = 5.0
STATS_INTERVAL = 1.0
"""Seconds between two reports of a partition's counters to ``on_stats`` (metrics)."""
POLL_INTERVAL = timedelta(milliseconds=1)
"""How soon an empty partition is polled again while its product is busy."""
QUIET_POLLS = 16
QUIET_POLL_INTERVAL = timedelta(milliseconds=8)
"""After ``QUIET_POLLS`` empty polls in a row (16 ms without an event) a partition is
polled every 8 ms until its next event. Polls of quiet products were most of an idle
service's CPU, more so in a cluster, where Bytewax runs the worker on a thread of its
own and a poll costs about four times what it costs under plain ``-w 1``. Measured, 50
products at 4 batches a second each, cores used: ``-w 1`` 0.072 -> 0.042; one process
in cluster mode (``-i 0 -a``) 0.318 -> 0.128; two processes 0.43 -> 0.16. The first
event of a product after a quiet spell waits up to 8 ms more; a busy product (an event
every few ms) stays on the 1-ms poll: ``bench/bench_feed.py`` socket-to-sink p99 at
1,000 msg/s over 4 products 1.1 ms after, 1.4 ms before."""
BUSY_FRAMES = 8
"""Inline: when the loop's last run read this many frames, the partition that runs it
asks to be polled again at once instead of at the next millisecond: the worker does
not park while the sockets hold more. Measured, ``bench/bench_peer.py`` (full, three
repeats): the highest rate kept up with 47,500 / 50,000 / 50,000 msg/s at 0.86 of a
core -> 57,500 / 55,000 / 55,000 at 1.00, cryptofeed 55,000 in both runs; at 800 and
1,000 msg/s a run reads one or two frames and nothing changes (4 x 200 batches/s,
alternating: 130 to 147 µs a message before, 127 to 148 after)."""
IDLE_POLL_INTERVAL = timedelta(milliseconds=500)
POLLED_BY_OTHER_INTERVAL = timedelta(milliseconds=100)
"""With ``poll_together``, how often a partition whose queue another partition drains
is still polled itself (a fallback: it also drains its queue, and ends at the end of
the data)."""
UNREAD_NS = 1_000_000_000
"""Inline (see :mod:`coinbase.runner`), a running partition whose loop has not run for
this long reports its feed as waiting since the last run (``progress()``): the stall
watchdog's signal when nobody polls. Above the slowest poll of a running process (500
ms, a failed product's)."""
CLOSE_WAIT_SECONDS = 1.0
"""The closes of one shutdown wait this long *together* for their connections to say
goodbye, then leave them to the daemon loop. Before, each close() joined its thread for
up to 2 s in turn (a 1 s close handshake each): seconds per product on a Ctrl-C.
Measured, SIGINT to exit of a 2-product flow with both cores busy: 2.3 to 4.2 s before,
1.7 to 2.5 s after; close() itself now takes 1 to 16 ms, the rest is Bytewax's shutdown
(about 1 s) and interpreter teardown."""
GATHER_SECONDS = 0.05
"""A connection not yet full opens this long after the last product joined it."""
ALL_FAILED_GRACE_SECONDS = 2.0
"""With fewer partitions built than products (other processes own the rest, or a
worker is still building), wait this long before concluding that all have failed."""
MAX_WATCHDOG_SECONDS = 3600.0
"""An hour of silence: beyond it a watchdog watches nothing (and 1e300 s overflowed the
snapshot deadline's nanoseconds at start)."""

_sources_lock = threading.Lock()
_close_deadline = 0.0


def _close_budget() -> float:
    """Seconds this close() may wait: what is left of the current shutdown's budget."""
    global _close_deadline
    now = time.monotonic()
    with _sources_lock:
        if _close_deadline < now - CLOSE_WAIT_SECONDS:  # a new shutdown
            _close_deadline = now + CLOSE_WAIT_SECONDS
        return max(0.0, _close_deadline - now)


_replay_said = False


def _say_replay_not_audited() -> None:
    """One line per process, the first time a served replay's product comes up."""
    global _replay_said
    if not _replay_said:
        _replay_said = True
        log.warning(REPLAY_NO_AUDITS)


def _drain(queue: deque) -> list:
    """Everything queued now; safe while the connection thread appends (or drains)."""
    items = []
    for _ in range(len(queue)):
        try:
            items.append(queue.popleft())
        except IndexError:
            break
    return items


def exit_process(message: str) -> None:
    """Log ``message`` as one line, flush, and end the process with status 1."""
    log.critical(message)
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe must not keep the process alive
            pass
    os._exit(1)


def _on_the_grid(interval: timedelta) -> datetime:
    """``interval`` from now, rounded down to a whole millisecond of the clock: the
    partitions polled in one step of the worker are due again at the same instant, and
    are polled in one step again, instead of each on its own phase (a wake-up of the
    worker each). Measured, the service inline, 50 products on 4 connections at 20
    batches/s each: the worker's wake-ups 1,344 -> 1,003 a second (threaded, before
    the grid: 978). Costs 0.5 µs a call instead of 0.2."""
    ms = time.time_ns() // 1_000_000 + interval // _MS
    return datetime.fromtimestamp(ms / 1000, UTC)


_MS = timedelta(milliseconds=1)


class PartitionProgress(NamedTuple):
    """One partition's counters, read by the service's stall watchdog and health
    endpoint (:meth:`CoinbaseSource.progress`) from a thread of their own."""

    product_id: str
    delivered: int
    """Events the feed put in this partition's queue, ever."""
    drained: int
    """Events the dataflow took from the queue (``next_batch``), ever."""
    pending: int
    """Events queued now, waiting for the dataflow."""
    waiting_since_ns: int
    """When the oldest waiting event came off the socket (``time.time_ns()``); 0 when
    nothing waits (or its time is unknown)."""
    ready: bool
    """The dataflow has taken a snapshot of this product and no reset since: its book
    is live."""
    state: str
    """The session's state (:attr:`coinbase.session.SessionStats.state`)."""
    closed: bool


class _CoinbasePartition(StatefulSourcePartition[tuple[str, list[BookEvent]], str]):
    """One product: its Session (rules, stats) and the queue Bytewax drains.

    The connection that carries it is its :class:`_Group`'s, shared with up to
    ``PRODUCTS_PER_CONNECTION`` other products of the same source in this process.
    """

    def __init__(
        self, source: CoinbaseSource, product_id: str, resumed: bool, group: _Group
    ) -> None:
        self.product_id = product_id
        self._source = source
        self._group = group
        self.session = Session(
            product_id,
            source.feed,
            protocol=source.protocol,
            resumed=resumed,
        )
        self._resync_requests = source.resync_requests
        self.key = source.keys.get(product_id, product_id)
        """What this partition's items are keyed by (see :meth:`CoinbaseSource.key_by`)."""
        self._queue: deque[BookEvent] = deque(self.session.start())
        self._poller = self
        """The partition whose polls drain this one's queue (this one by default)."""
        self._polled: list[_CoinbasePartition] = [self]
        """The partitions this one drains at each poll (more with ``poll_together``)."""
        # Progress counters, each written by one thread only (ints: a reader on another
        # thread sees the old value or the new one): `delivered`, `dropped` and
        # `_book_at` by the loop thread, `drained` by the worker. Their cost, timeit
        # medians of 15 in one run: put() of one event 543 -> 580 ns; next_batch one
        # addition per non-empty batch.
        self.delivered = len(self._queue)
        self.drained = 0
        self.dropped = 0
        self._book_at: int | None = None
        """``delivered`` once the queue held the snapshot of the live book; None while
        the product awaits one."""
        self._book_resets = 0
        self._empty_polls = 0
        self._ended = False
        self._closed = False
        self._behind_log = RateLimitedLog(log, BEHIND_LOG_SECONDS)
        self._next_behind_check = 0.0
        self._next_stats = 0.0
        group.join(self)
        if source.audits is not None:
            source.audits.register(self, source.audit_target)

    @property
    def stats(self) -> SessionStats:
        return self.session.stats

    @property
    def error(self) -> FeedError | None:
        """The permanent error that stopped this partition, if any."""
        return self.session.error

    @property
    def running(self) -> bool:
        """Whether this product is still read (its connection task alive, not stopped)."""
        return self._group.running and not self.session.done and not self._closed

    @property
    def auditable(self) -> bool:
        """Running with a live book (a snapshot since the last reset): worth a REST
        audit (:mod:`coinbase.audit`). Not a replay served by the local exchange: a
        recording has no REST book to ask (it answers 501)."""
        if self.session.local_exchange == "replay":
            _say_replay_not_audited()
            return False
        return self.session.settled and self.running

    @property
    def feed(self) -> str:
        return self.session.feed

    # -- Bytewax side (worker thread) -----------------------------------------------------

    def next_batch(self) -> list[tuple[str, list[BookEvent]]]:
        """Everything queued, as ONE item ``(key, [events])`` per product (none when
        nothing is): this product's, and, for the partition that polls for its
        connection on this worker, those of the connection's other products here too
        (``CoinbaseSource(poll_together=True)``).

        One item per poll instead of one per event: Bytewax's own work per item and per
        step it crosses (4 to 6 µs per event at 12,000 msg/s over 4 products, 9.5 µs
        at one item per poll, 1.8 at sixteen) is paid per poll, shared by every event
        of the poll, and the events need no ``(product_id, event)`` tuple each.
        """
        self._source.runner.pump(self)
        batch = []
        for part in self._polled:
            events = part._take()
            if events:
                batch.append((part.key, events))
        if batch:
            self._empty_polls = 0
        elif self._ended:
            raise StopIteration  # the end of a served replay: the data is over
        else:
            self._empty_polls += 1
        return batch

    def _take(self) -> list[BookEvent]:
        """This product's queued events; passes on a resync request for it and reports
        its stats when due."""
        try:
            events = _drain(self._queue)
        except Exception:  # never let one partition kill the dataflow
            log.exception("%s: unexpected error draining the queue", self.product_id)
            events = []
        self.drained += len(events)  # per member: a poll_together poller drains others
        try:
            reason = self._resync_requests.take(self.product_id)  # a dict check if none
        except Exception:  # pragma: no cover - a channel bug must not stop the flow
            log.exception("%s: cannot read resync requests", self.product_id)
            reason = None
        if reason is not None:  # this product alone is resubscribed, on the loop
            self._source.runner.call_soon(
                self._group.request_resync, self.product_id, reason
            )
        if self._source.on_stats is not None:
            self._report_stats()
        return events

    def _report_stats(self) -> None:
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + STATS_INTERVAL
        try:
            self._source.on_stats(self.product_id, self.session.feed, self.stats)
        except Exception:  # an observer's bug must not stop the flow
            log.exception("%s: cannot report stats", self.product_id)

    def next_awake(self) -> datetime | None:
        if self._ended:
            return None
        if self._poller is not self and not self._poller._closed:
            # another partition polls this one's queue (poll_together): this one is
            # polled only as a fallback, at a leisurely pace
            return datetime.now(UTC) + POLLED_BY_OTHER_INTERVAL
        polled = self._polled
        if any(part._queue for part in polled):
            return None
        runner = self._source.runner
        if runner.last_frames >= BUSY_FRAMES and runner.pumps_for(self):
            return None  # the loop is busy: run it again at the next step
        if not any(part.running for part in polled):
            interval = IDLE_POLL_INTERVAL
        elif self._empty_polls < QUIET_POLLS or self._pumps_busy_loop():
            interval = POLL_INTERVAL
        else:
            interval = QUIET_POLL_INTERVAL
        return _on_the_grid(interval)

    def _pumps_busy_loop(self) -> bool:
        """Inline: whether this partition runs the loop (see :mod:`coinbase.runner`)
        and the loop read a frame in its last ``QUIET_POLLS`` runs. The pumper keeps
        the 1-ms poll for every product of the loop, not only its own; once the whole
        loop is quiet it polls like a quiet product, and the first frame after a quiet
        spell waits up to 8 ms more, as a quiet product's does. Measured, the service
        with 50 products nearly quiet (0.2 batches/s each), two runs each: 0.047 and
        0.051 of a core with the pumper always on the 1-ms poll, 0.032 and 0.036 with
        this rule (the loop on its own thread: 0.029 and 0.030)."""
        runner = self._source.runner
        return runner.pumps_for(self) and runner.idle_pumps < QUIET_POLLS

    def snapshot(self) -> str:
        """Resume state: just the product; a resumed partition starts with a reset."""
        return self.product_id

    def close(self) -> None:
        """Leave the connection; the last product out closes it, waiting for it within
        the shutdown's shared budget."""
        if self._closed:
            return
        self._closed = True
        runner = self._source.runner
        on_loop = runner.on_loop()
        if self._group.leave() and not on_loop:
            runner.wait(self._group.finished, _close_budget())
        audits = self._source.audits
        if audits is not None and audits.unregister(self) and not on_loop:
            runner.wait(audits.finished, _close_budget())  # its HTTP client closed
        self.session.close()
        if runner.inline and not on_loop and self._source._all_closed():
            runner.close()

    # -- connection side (the loop: its thread, or the worker's pumps inline) --------------

    def put(self, events: list[BookEvent]) -> None:
        self._queue.extend(events)
        self.delivered += len(events)
        session = self.session
        if session.settled:  # the batch holds the snapshot, or the book was live
            if self._book_at is None or session.stats.resets != self._book_resets:
                self._book_at = self.delivered
                self._book_resets = session.stats.resets
        else:
            self._book_at = None

    def progress(self) -> PartitionProgress:
        """This partition's counters (any thread; a few attribute reads)."""
        book_at = self._book_at
        queue = self._queue
        try:
            oldest = queue[0].received_ns
        except IndexError:  # empty, or emptied meanwhile
            oldest = 0
        pending = len(queue)
        runner = self._source.runner
        if runner.inline and not pending and self.running:
            pumped_ns = runner.pumped_ns
            if time.time_ns() - pumped_ns > UNREAD_NS:
                # Inline, the feed is read only while the dataflow polls: a socket
                # unread this long is the stalled dataflow's queue (at least one event)
                pending, oldest = 1, pumped_ns
        return PartitionProgress(
            self.product_id,
            self.delivered,
            self.drained,
            pending,
            oldest,
            book_at is not None and self.drained + self.dropped >= book_at,
            self.session.stats.state,
            self._closed,
        )

    def put_audit(self, event: BookEvent) -> None:
        """An audit event, in stream order (loop thread); dropped once closed."""
        if not self._closed:
            self._queue.append(event)

    def check_backlog(self) -> int:
        """Events dropped because the dataflow fell too far behind (0: none)."""
        queue = self._queue
        now = time.monotonic()
        if now >= self._next_behind_check:
            self._next_behind_check = now + 1.0
            self._say_if_behind()
        if len(queue) > MAX_BACKLOG:
            # The dataflow cannot keep up: a backlog only grows staler. Drop it and
            # start again from a fresh snapshot (Coinbase would disconnect a slow
            # consumer anyway, ErrSlowConsume).
            dropped = len(_drain(queue))
            self.dropped += dropped
            return dropped
        return 0

    def _say_if_behind(self) -> None:
        depth = len(self._queue)
        try:
            oldest = self._queue[0].received_ns
        except IndexError:
            return
        age = (time.time_ns() - oldest) / 1e9 if oldest else 0.0
        if depth >= BEHIND_EVENTS or age >= BEHIND_SECONDS:
            self._behind_log.warning(
                f"{self.product_id}: the dataflow is behind this feed: {depth:,} events "
                f"queued, the oldest {age:.1f} s old (resync beyond {MAX_BACKLOG:,})"
            )


class _Group:
    """The products of ONE connection and the Connection's handler (loop thread): runs
    a :class:`~coinbase.multiplex.ConnectionSession` by the grouping rules of
    :mod:`coinbase.multiplex`."""

    def __init__(self, source: CoinbaseSource, index: int) -> None:
        self.source = source
        self.runner = source.runner
        self.capacity = PRODUCTS_PER_CONNECTION[source.protocol]
        self.name = f"{source.feed} connection {index}"
        grace = source.watchdog_seconds * SNAPSHOT_GRACE_FACTOR
        self.session = ConnectionSession(
            source.feed,
            protocol=source.protocol,
            credentials=source.credentials,
            name=self.name,
            snapshot_grace_ns=int(grace * 1e9),
        )
        self.connection = Connection(
            source.url,
            name=self.name,
            watchdog_seconds=source.watchdog_seconds,
            backoff=Backoff(source.backoff_initial, source.backoff_max),
            max_size=source.max_message_bytes,
            give_up_after=source.give_up_after,
        )
        self.parts: dict[str, _CoinbasePartition] = {}
        self.pollers: dict[int, _CoinbasePartition] = {}
        """With ``poll_together``: per worker thread, the partition that polls for
        this connection's partitions on that worker."""
        self.assigned = 0
        """Products assigned (under the source's lock, on Bytewax's threads)."""
        self.open_parts = 0
        self.running = False
        self.finished = threading.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._last_add = 0.0
        self._resync = ""
        """A whole-connection resync decided outside a frame, acted on with the next."""

    # -- membership (any thread) ----------------------------------------------------------

    def join(self, part: _CoinbasePartition) -> None:
        with _sources_lock:
            self.open_parts += 1
            self.running = True
            if self.source.poll_together:
                # Bytewax builds and polls a partition on its worker's thread
                poller = self.pollers.setdefault(threading.get_ident(), part)
                if poller is not part:
                    part._poller = poller
                    poller._polled = [*poller._polled, part]  # a new list: no lock
        self.runner.call_soon(self._add, part)

    def leave(self) -> bool:
        """A partition closed; True if it was the last (the connection is cancelled)."""
        with _sources_lock:
            self.open_parts -= 1
            last = self.open_parts == 0
        if last:
            self.runner.call_soon(self._cancel)
        return last

    # -- loop thread ----------------------------------------------------------------------

    def _add(self, part: _CoinbasePartition) -> None:
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        self.parts[part.product_id] = part
        self._last_add = loop.time()
        if self.session.add(part.session):
            self.connection.wake()
        if self._task is None or self._task.done():
            self.running = True
            self.finished.clear()
            self._task = loop.create_task(self._main())

    def _cancel(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        else:
            self.running = False
            self.finished.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while len(self.parts) < self.capacity:
                wait = self._last_add + GATHER_SECONDS - loop.time()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            await self.connection.run(self)
        except asyncio.CancelledError:
            pass
        except BaseException:  # pragma: no cover - run() catches what it can
            log.exception("%s: connection task crashed", self.name)
        finally:
            self.running = False
            self.finished.set()

    def request_resync(self, product_id: str, reason: str) -> None:
        self._apply(self.session.request_resync(product_id, reason))

    def _apply(self, step: ConnectionStep) -> None:
        if step.action is Action.RESYNC and not self._resync:
            # decided outside received(): acted on with the next frame
            self._resync = step.reason
        parts = self.parts
        for product_id, events in step.events:
            part = parts.get(product_id)
            if part is None or part._closed:  # closed at shutdown: nobody drains it
                continue
            part.put(events)
            dropped = part.check_backlog()
            if dropped:
                self._apply(self.session.overflow(product_id, dropped))
        if step.send:
            self.connection.wake()
        if step.stopped:
            self.source._partition_failed()

    # -- the Connection's handler ---------------------------------------------------------

    @property
    def settled(self) -> bool:
        return self.session.settled

    def opened(self) -> list[dict]:
        self._resync = ""
        return self.session.connect()

    def outgoing(self) -> list[dict]:
        return self.session.outgoing()

    def received(self, frame: str | bytes, received_ns: int) -> str | None:
        self.runner.frames += 1
        step = self.session.receive(frame, received_ns)
        if step.events or step.send or step.stopped:
            self._apply(step)
        if step.action is not Action.CONTINUE:
            self._resync = ""
            return step.reason
        if self._resync:  # a resync decided outside a frame (overflow, request)
            reason, self._resync = self._resync, ""
            return reason
        return None

    def closed(self, reason: str, close_code: int | None) -> bool:
        step = self.session.disconnect(reason, close_code)
        self._apply(step)
        if step.action is Action.END:
            for part in self.parts.values():
                part._ended = True
        return step.action is Action.CONTINUE

    def connect_failed(self, reason: str) -> None:
        self.session.connect_failed(reason)

    def hopeless(self, reason: str) -> bool:
        """The connection never settled and asks whether to stop (see
        ``Connection._hopeless``). Yes, unless some product of this source in this
        process ever got a snapshot: then the feed works and this is an outage, retried.
        Stopping fails every product of the connection with ``reason`` (the path of an
        unknown product): when every partition of the process has failed, the source
        says so in one line and the process ends with status 1."""
        if self.source._delivered_any():
            return False
        error = FeedError(reason, permanent=True)
        step = ConnectionStep()
        for session in self.session.active:
            events = session.fail(error)
            if events:
                step.events.append((session.product_id, events))
            step.stopped.append(session.product_id)
        self._apply(step)
        return True

    def retrying(self) -> None:
        self.session.retrying()


class CoinbaseSource(FixedPartitionedSource[tuple[str, list[BookEvent]], str]):
    """Level-2 events of ``products`` from one Coinbase feed, one partition per product,
    as ``(product_id, [events])`` items: one per product per poll (:meth:`key_by`
    changes the key).

    ``feed`` is a Coinbase feed (its default URL is used unless ``url`` is given) or a
    feed of the local exchange, ``sim`` or ``replay`` (``url`` required; it speaks
    ``protocol``, default ``exchange``). Every event carries its feed; the local
    exchange's marker overrides it with the feed it says it serves (:mod:`coinbase.feeds`).
    ``on_all_failed`` is called with one line
    when every partition of the process has failed permanently; by default it logs the
    line and exits the process with status 1. ``on_stats``, if given, is called with
    ``(product_id, feed, stats)`` at most every :data:`STATS_INTERVAL` seconds per
    partition, from the worker thread (the service publishes them as metrics).
    ``max_message_bytes`` bounds one received message (a connection that gets a bigger
    one is dropped; see :data:`coinbase.connection.MAX_FRAME_BYTES`);
    ``give_up_after`` connections in a row without a book, before any product of the
    process ever got one, end the source like permanent failures do
    (:data:`coinbase.connection.GIVE_UP_AFTER`). ``resync_requests`` is the flow's
    resync channel (:mod:`resync`; a new one by default): the book step asks it for a
    product's fresh snapshot, that product's partition takes the request.

    REST audits (:mod:`coinbase.audit`, issue 19): with ``audit_interval`` > 0 each
    product's book is asked of ``rest_url`` (default: :func:`coinbase.rest.
    default_rest_url` of ``url``) about every ``audit_interval`` seconds, its best
    ``audit_levels`` a side compared by the book step; the process's scheduler
    (``audit_scheduler``, :func:`coinbase.audit.shared_scheduler` by default) keeps every
    source of the process under ``audit_rate`` requests a second.

    ``poll_together``: the partitions of one connection on one Bytewax worker are
    polled as one: the first built drains the queues of all of them at each poll
    (one ``(key, [events])`` item per product still), the others are polled only
    every :data:`POLLED_BY_OTHER_INTERVAL`. Measured with empty partitions polled
    every millisecond, one worker: 4 partitions 0.039 of a core, 50 partitions 0.078
    (about 2 µs a partition poll, beyond Bytewax's 0.03 to 0.04 for waking up every
    millisecond at all); the service at 50 products x 20 batches/s (4 connections):
    the worker's CPU per message 103 and 106 µs -> 78 and 85, the process's 135 ->
    108 and 118 (two alternating pairs). At 4 products on one connection it changes
    nothing measurable. Off by default, so that a partition driven alone yields its
    own events only; the service turns it on (``service.inputs``).

    ``runner``: the event loop the connections (and the REST audits) run on. By
    default the process's loop thread (:data:`coinbase.runner.LOOP`); the service
    gives each flow an inline one (``LoopRunner(inline=True)``), run by the worker's
    polls: see :mod:`coinbase.runner` for what that buys, measured. Inline, the
    partitions must be polled for anything to happen, as Bytewax does.
    """

    def __init__(
        self,
        products: Sequence[str],
        *,
        feed: str = "exchange",
        url: str | None = None,
        credentials: Credentials | None = None,
        protocol: str | None = None,
        watchdog_seconds: float = 5.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
        on_all_failed: Callable[[str], None] = exit_process,
        on_stats: Callable[[str, str, SessionStats], None] | None = None,
        max_message_bytes: int = MAX_FRAME_BYTES,
        give_up_after: int = GIVE_UP_AFTER,
        resync_requests: ResyncRequests | None = None,
        audit_interval: float = 0.0,
        audit_levels: int = 50,
        rest_url: str | None = None,
        audit_rate: float = 3.0,
        audit_scheduler: AuditScheduler | None = None,
        poll_together: bool = False,
        runner: LoopRunner = LOOP,
    ) -> None:
        if isinstance(products, str):
            raise validation.refuse(
                "products", products, "a list of product ids such as ['BTC-USD']"
            )
        self.products = list(validation.products("products", products))
        self.feed = validation.choice("feed", feed, (*FEEDS, *LOCAL_FEEDS))
        if protocol is not None:
            protocol = validation.choice("protocol", protocol, PROTOCOLS)
            spoken = FEEDS[self.feed].protocol if self.feed in FEEDS else protocol
            if protocol != spoken:
                raise validation.refuse(
                    "protocol",
                    protocol,
                    f"{spoken}, the protocol of feed {self.feed!r}",
                )
        self.protocol = FEEDS[coinbase_feed(self.feed, protocol)].protocol
        self.url = validation.ws_url("url", url)
        if self.url is None:
            if self.feed in LOCAL_FEEDS:
                raise validation.refuse(
                    "url", url, f"the local exchange's URL for feed {self.feed!r}"
                )
            self.url = FEEDS[self.feed].url
        if self.feed == "exchange-auth" and not isinstance(credentials, Credentials):
            raise validation.refuse(
                "credentials",
                "<redacted>" if credentials is not None else None,
                "Credentials.from_env() (COINBASE_API_KEY, COINBASE_API_SECRET, "
                "COINBASE_API_PASSPHRASE) for feed 'exchange-auth'",
            )
        if self.feed != "exchange-auth" and credentials is not None:
            log.warning("feed %r does not use credentials; ignoring them", feed)
            credentials = None
        self.credentials = credentials
        self.watchdog_seconds = validation.number(
            "watchdog_seconds", watchdog_seconds, high=MAX_WATCHDOG_SECONDS
        )
        self.backoff_initial = validation.number("backoff_initial", backoff_initial)
        self.backoff_max = validation.number(
            "backoff_max", backoff_max, low=self.backoff_initial, low_open=False
        )
        self.max_message_bytes = validation.integer(
            "max_message_bytes", max_message_bytes, 1, 2**31
        )
        self.give_up_after = validation.integer(
            "give_up_after", give_up_after, 1, 1_000_000
        )
        self.resync_requests = resync_requests or ResyncRequests()
        self.runner = runner
        self.audit_target, self.audits = self._audits(
            audit_interval, audit_levels, rest_url, audit_rate, audit_scheduler
        )
        self.poll_together = bool(poll_together)
        self.keys: dict[str, str] = {}
        self._on_all_failed = on_all_failed
        self.on_stats = on_stats
        self._parts: list[_CoinbasePartition] = []
        self._groups: list[_Group] = []
        self._all_failed_said = False

    def _audits(
        self,
        interval: float,
        levels: int,
        rest_url: str | None,
        rate: float,
        scheduler: AuditScheduler | None,
    ) -> tuple[AuditTarget | None, AuditScheduler | None]:
        interval = validation.number(
            "audit_interval", interval, low=0.0, low_open=False, high=86_400.0
        )
        levels = validation.integer("audit_levels", levels, 1, ADVANCED_TRADE_MAX_LIMIT)
        rate = validation.number("audit_rate", rate, high=RATE_MAX)
        rest_url = validation.http_url("rest_url", rest_url)
        if not interval:
            return None, None
        base = rest_url or default_rest_url(self.feed, self.url, self.protocol)
        target = AuditTarget(base, self.protocol, levels, interval)
        log.info(
            "REST audits of %d products from %s: each about every %g s, best %d "
            "levels a side, at most %g requests a second per process",
            len(self.products),
            redact_url(base),
            interval,
            levels,
            rate,
        )
        if scheduler is None:
            # The process's scheduler serves the process's loop thread; an audit's
            # events must go into the queues on the loop of their connections
            shared = self.runner is LOOP
            scheduler = (
                shared_scheduler(rate)
                if shared
                else AuditScheduler(rate, runner=self.runner)
            )
        return target, scheduler

    def key_by(self, keys: dict[str, str]) -> None:
        """Key each product's items by ``keys[product]`` (a product missing from
        ``keys``: by its id) instead of the product id, for partitions built after
        this call. The dataflow gives its routing keys (``service.placement``) here,
        so that items arrive keyed for the book step and the flow needs no routing
        step of its own: one Bytewax step less per item."""
        self.keys = dict(keys)

    def list_parts(self) -> list[str]:
        return list(self.products)

    def build_part(
        self, step_id: str, for_part: str, resume_state: str | None
    ) -> _CoinbasePartition:
        if for_part not in self.products:
            raise ValueError(
                f"unknown partition {for_part!r}; products: {self.products}"
            )
        with _sources_lock:
            group = self._groups[-1] if self._groups else None
            if group is None or group.assigned >= group.capacity:
                group = _Group(self, len(self._groups))
                self._groups.append(group)
            group.assigned += 1
        part = _CoinbasePartition(
            self, for_part, resumed=resume_state is not None, group=group
        )
        with _sources_lock:
            self._parts.append(part)
        return part

    def progress(self) -> list[PartitionProgress]:
        """The counters of every partition built in this process, for the service's
        stall watchdog and health endpoint (``service/health.py``); any thread."""
        with _sources_lock:
            parts = list(self._parts)
        return [part.progress() for part in parts]

    # -- every partition failed: say so and stop -------------------------------------------

    def _all_closed(self) -> bool:
        with _sources_lock:
            return all(part._closed for part in self._parts)

    def _delivered_any(self) -> bool:
        """Whether any partition of this source in this process ever got a snapshot."""
        with _sources_lock:
            parts = list(self._parts)
        return any(p.stats.snapshots for p in parts)

    def _partition_failed(self, *, recheck: bool = False) -> None:
        """On the loop thread, when a partition stops for good."""
        with _sources_lock:
            parts = list(self._parts)
        if not parts or not all(p.stats.state == "failed" for p in parts):
            return
        if len(parts) < len(self.products) and not recheck:
            self.runner.loop().call_later(
                ALL_FAILED_GRACE_SECONDS, lambda: self._partition_failed(recheck=True)
            )
            return
        with _sources_lock:
            if self._all_failed_said:
                return
            self._all_failed_said = True
        self._on_all_failed(
            f"every Coinbase product of this process failed permanently, stopping "
            f"({len(parts)} of {len(self.products)}): {_failures(parts)}"
        )


def _failures(parts: list[_CoinbasePartition]) -> str:
    """``A: error; B: other error; and N more``, or, when they failed for one reason
    (a connection's products), ``A, B, C and N more: error`` once."""
    errors = {str(p.error) for p in parts}
    if len(errors) == 1 and len(parts) > 1:
        names = ", ".join(p.product_id for p in parts[:3])
        more = f" and {len(parts) - 3} more" if len(parts) > 3 else ""
        return f"{names}{more}: {errors.pop()}"
    shown = "; ".join(f"{p.product_id}: {p.error}" for p in parts[:3])
    return shown + (f"; and {len(parts) - 3} more" if len(parts) > 3 else "")
