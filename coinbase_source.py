"""Bytewax input from Coinbase level-2 WebSockets: one partition and connection per product.

Each partition runs its own daemon thread with an asyncio loop that connects, subscribes,
reads and *parses* frames (so a 5 MB snapshot never stalls the Bytewax worker), and
appends ``(product_id, event)`` to a deque. ``next_batch`` only drains that deque, so it
never blocks and never raises; ``next_awake`` returns None while items wait and a 1 ms
poll otherwise (Bytewax offers no cross-thread wake-up; 1 ms keeps socket-to-sink latency
low at a measured small CPU cost, see bench/bench_feed.py).

Freshness rules:

* A :class:`~events.BookReset` comes first from every partition (fresh or resumed), and
  again whenever the connection ends (close, error, silence, sequence gap, malformed book
  frame), before anything else of that product; consecutive resets are collapsed.
* Updates before the snapshot that follows a reset are dropped and counted.
* Resync is always by reconnecting: Exchange level2 frames carry no sequence, so a fresh
  subscription (new snapshot) is the only way back to a correct book.
* Reconnects use jittered exponential backoff (reset after a connection that delivered a
  snapshot) and the process-wide :data:`backoff.CONNECTION_PACER`.
* Error replies: unknown product and credential errors are permanent (the partition logs
  once and goes idle; others keep running); other errors reconnect with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import websockets
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from coinbase.auth import Credentials
from coinbase.decode import (
    AuthError,
    FeedError,
    FrameDecoder,
    MalformedFrame,
    SequenceGap,
    UnknownProduct,
)
from coinbase.feeds import (
    FEEDS,
    FeedSpec,
    _check_feed,
    _check_product,
    subscribe_messages,
)
from coinbase.pacing import CONNECTION_PACER, MESSAGE_PACER, Backoff, ConnectionPacer
from events import BookChanges, BookEvent, BookReset, BookSnapshot
from service.logs import RateLimitedLog

__all__ = [
    "FEEDS",
    "CoinbasePartition",
    "CoinbaseSource",
    "FeedSpec",
    "subscribe_messages",
]

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 2**20
"""Live full-depth snapshots are 5+ MB; websockets' 1 MiB default would drop them."""
SNAPSHOT_GRACE_FACTOR = 3.0
"""A connection must deliver its snapshot within this many watchdog periods of
connecting (a multi-MB snapshot takes a while on a slow link, and heartbeats alone must
not keep a book-less connection alive); after it, any frame feeds the watchdog."""
MAX_BACKLOG = 100_000
"""Events queued for the dataflow beyond which the partition drops them and resyncs."""
POLL_INTERVAL = timedelta(milliseconds=1)
IDLE_POLL_INTERVAL = timedelta(milliseconds=500)


def _drain(queue: deque) -> list:
    """Everything queued now; safe while the connection thread appends (or drains)."""
    items = []
    for _ in range(len(queue)):
        try:
            items.append(queue.popleft())
        except IndexError:
            break
    return items


class _Resync(Exception):
    """End this connection and start over with a fresh snapshot."""


class _Permanent(Exception):
    """Stop for good: retrying cannot help."""


class CoinbasePartition(StatefulSourcePartition[tuple[str, BookEvent], str]):
    """One product's connection; thread-side code writes the deque and ``stats``."""

    def __init__(
        self,
        product_id: str,
        *,
        feed: str,
        url: str,
        credentials: Credentials | None,
        feed_label: str,
        watchdog_seconds: float,
        backoff_initial: float,
        backoff_max: float,
        resumed: bool = False,
        pacer: ConnectionPacer = CONNECTION_PACER,
    ) -> None:
        self.product_id = product_id
        self.feed = feed
        self.url = url
        self.feed_label = feed_label
        self._spec = FEEDS[feed]
        self._credentials = credentials
        self._watchdog = watchdog_seconds
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._pacer = pacer
        self._queue: deque[tuple[str, BookEvent]] = deque()
        self._malformed_log = RateLimitedLog(log)
        self._last_was_reset = False
        self._awaiting_snapshot = True
        self._bad_times_before = 0
        self.error: FeedError | None = None
        """The permanent error that idled this partition, if any."""
        self.stats: dict[str, Any] = {
            "state": "starting",
            "frames": 0,
            "events": 0,
            "snapshots": 0,
            "malformed": 0,
            "bad_times": 0,
            "dropped_before_snapshot": 0,
            "foreign": 0,
            "resets": 0,
            "resyncs": 0,
            "connections": 0,
            "reconnects": 0,
            "sequence_gaps": 0,
            "overflows": 0,
            "errors": 0,
            "last_error": None,
            "last_disconnect": None,
        }
        self._emit_reset("resume" if resumed else "start")
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(
            target=self._thread_main, name=f"coinbase-{feed}-{product_id}", daemon=True
        )
        self._thread.start()

    # -- Bytewax side (worker thread) -----------------------------------------------------

    def next_batch(self) -> list[tuple[str, BookEvent]]:
        try:
            return _drain(self._queue)
        except Exception:  # never let one partition kill the dataflow
            log.exception("%s: unexpected error draining the queue", self.product_id)
            return []

    def next_awake(self) -> datetime | None:
        if self._queue:
            return None
        interval = IDLE_POLL_INTERVAL if self._stopping.is_set() else POLL_INTERVAL
        if self.stats["state"] == "idle":
            interval = IDLE_POLL_INTERVAL
        return datetime.now(UTC) + interval

    def snapshot(self) -> str:
        """Resume state: just the product; a resumed partition starts with a reset."""
        return self.product_id

    def close(self) -> None:
        """Stop the connection thread (waits at most ~2 s)."""
        with self._lock:
            self._stopping.set()
            loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # loop closed meanwhile
                pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        if self.stats["state"] != "idle":
            self.stats["state"] = "closed"

    @property
    def running(self) -> bool:
        """Whether the connection thread is alive."""
        return self._thread.is_alive()

    # -- connection side (own thread, own event loop) -------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            with self._lock:
                if self._stopping.is_set():
                    return
                self._loop = loop
                self._task = loop.create_task(self._run())
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException:  # pragma: no cover - _run catches everything it can
            log.exception("%s: connection thread crashed", self.product_id)
        finally:
            self._task = None
            loop.close()

    async def _run(self) -> None:
        first = True
        while not self._stopping.is_set():
            if not first:
                self.stats["reconnects"] += 1
                await asyncio.sleep(self._backoff.next_delay())
            first = False
            await asyncio.sleep(self._pacer.reserve())
            if self._stopping.is_set():
                return
            try:
                await self._connect_once()
            except _Permanent:
                self.stats["state"] = "idle"
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the partition's life
                self.stats["errors"] += 1
                text = f"unexpected {type(exc).__name__}: {exc}"
                self.stats["last_error"] = text[:300]
                log.exception(
                    "%s: unexpected error in the connection loop", self.product_id
                )

    async def _connect_once(self) -> None:
        """One connection's life; returns or raises _Permanent when it is over."""
        self.stats["state"] = "connecting"
        decoder = FrameDecoder(self._spec.protocol, self.feed_label)
        try:
            ws = await websockets.connect(
                self.url,
                max_size=MAX_FRAME_BYTES,
                open_timeout=max(10.0, self._watchdog),
                close_timeout=1.0,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            text = f"connect failed: {type(exc).__name__}: {exc}"
            self.stats["last_error"] = text[:300]
            log.warning("%s: cannot connect to %s: %s", self.product_id, self.url, exc)
            return
        self.stats["connections"] += 1
        self.stats["state"] = "connected"
        reason = "connection closed"
        permanent = False
        try:
            messages = subscribe_messages(
                self.feed, self.product_id, self._credentials, time.time()
            )
            for message in messages:
                await asyncio.sleep(MESSAGE_PACER.reserve())
                await ws.send(json.dumps(message))
            reason = await self._read(ws, decoder)
        except _Resync as exc:
            reason = str(exc)
            self.stats["resyncs"] += 1
        except FeedError as exc:
            reason, permanent = self._on_feed_error(exc)
        except websockets.ConnectionClosed as exc:
            reason = f"connection closed ({exc})"
        except TimeoutError:
            if self._awaiting_snapshot:
                grace = self._watchdog * SNAPSHOT_GRACE_FACTOR
                reason = f"watchdog: no snapshot within {grace:g} s of connecting"
            else:
                reason = f"watchdog: no message for {self._watchdog:g} s"
        except OSError as exc:
            reason = f"network error ({exc})"
        finally:
            self._bad_times_before += decoder.bad_times
            self._emit_reset(reason)
            self.stats["last_disconnect"] = reason
            log.info("%s: disconnected: %s", self.product_id, reason)
            await ws.close()
        if permanent:
            raise _Permanent(reason)

    async def _read(self, ws: Any, decoder: FrameDecoder) -> str:
        loop = asyncio.get_running_loop()
        normal = self._watchdog
        grace = normal * SNAPSHOT_GRACE_FACTOR
        stats = self.stats
        async with asyncio.timeout(grace) as deadline:
            async for frame in ws:
                received_ns = time.time_ns()
                if not self._awaiting_snapshot:  # before it, only the grace deadline
                    deadline.reschedule(loop.time() + normal)
                stats["frames"] += 1
                try:
                    events = decoder.decode(frame, received_ns)
                except MalformedFrame as exc:
                    stats["malformed"] += 1
                    self._malformed_log.warning(
                        f"{self.product_id}: skipped malformed frame: {exc}"
                    )
                    if exc.resync:
                        raise _Resync(f"malformed book frame ({exc.reason})") from None
                    continue
                except SequenceGap as exc:
                    stats["sequence_gaps"] += 1
                    raise _Resync(str(exc)) from None
                finally:
                    stats["bad_times"] = self._bad_times_before + decoder.bad_times
                for event in events:
                    self._offer(event)
                if len(self._queue) > MAX_BACKLOG:
                    # The dataflow cannot keep up: a backlog only grows staler. Drop it
                    # and start again from a fresh snapshot (Coinbase would disconnect
                    # a slow consumer anyway, ErrSlowConsume).
                    stats["overflows"] += 1
                    dropped = len(_drain(self._queue))
                    raise _Resync(f"the dataflow fell {dropped} events behind")
                if events and not self._awaiting_snapshot:
                    deadline.reschedule(loop.time() + normal)
        return "server closed the connection"

    def _offer(self, event: BookEvent) -> None:
        if event.product_id != self.product_id:
            self.stats["foreign"] += 1
            return
        if isinstance(event, BookSnapshot):
            self._awaiting_snapshot = False
            self._backoff.reset()  # this connection proved healthy
            self.stats["snapshots"] += 1
        elif self._awaiting_snapshot and isinstance(event, BookChanges):
            self.stats["dropped_before_snapshot"] += 1
            return
        self._last_was_reset = False
        self.stats["events"] += 1
        self._queue.append((self.product_id, event))

    def _emit_reset(self, reason: str) -> None:
        self._awaiting_snapshot = True
        if self._last_was_reset:
            return
        self._last_was_reset = True
        self.stats["resets"] += 1
        reset = BookReset(self.product_id, reason, self.feed_label, time.time_ns())
        self._queue.append((self.product_id, reset))

    def _on_feed_error(self, exc: FeedError) -> tuple[str, bool]:
        """Log an error reply; returns (reason, permanent)."""
        self.stats["errors"] += 1
        if isinstance(exc, UnknownProduct):
            message = (
                f"Coinbase does not know product {self.product_id} on feed {self.feed} "
                f"({self.url}): {exc}; this partition stays idle"
            )
        elif isinstance(exc, AuthError):
            message = (
                f"{self.product_id}: authentication failed on feed {self.feed}: {exc}"
            )
        else:
            message = f"{self.product_id}: {exc}"
        self.stats["last_error"] = message
        if exc.permanent:
            self.error = exc
            log.error(message)
        else:
            log.warning("%s; reconnecting", message)
        return message, exc.permanent


class CoinbaseSource(FixedPartitionedSource[tuple[str, BookEvent], str]):
    """Level-2 events of ``products`` from one Coinbase feed, one partition per product."""

    def __init__(
        self,
        products: Sequence[str],
        *,
        feed: str = "exchange",
        url: str | None = None,
        credentials: Credentials | None = None,
        feed_label: str | None = None,
        watchdog_seconds: float = 5.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
    ) -> None:
        spec = _check_feed(feed)
        if isinstance(products, str) or not isinstance(products, Sequence):
            raise TypeError(
                f"products must be a list of product ids such as ['BTC-USD']; got {products!r}"
            )
        if not products:
            raise ValueError(
                "products is empty: give at least one product id such as 'BTC-USD'"
            )
        for product_id in products:
            _check_product(product_id)
        duplicates = sorted({p for p in products if list(products).count(p) > 1})
        if duplicates:
            raise ValueError(f"duplicate product ids: {', '.join(duplicates)}")
        if url is not None and (
            not isinstance(url, str) or not url.startswith(("ws://", "wss://"))
        ):
            raise ValueError(f"url must start with ws:// or wss://; got {url!r}")
        if feed == "exchange-auth":
            if not isinstance(credentials, Credentials):
                raise ValueError(
                    "feed 'exchange-auth' needs credentials: pass Credentials.from_env() "
                    "(COINBASE_API_KEY, COINBASE_API_SECRET, COINBASE_API_PASSPHRASE)"
                )
        elif credentials is not None:
            log.warning("feed %r does not use credentials; ignoring them", feed)
            credentials = None
        if feed_label is not None and (
            not isinstance(feed_label, str) or not feed_label
        ):
            raise ValueError(
                f"feed_label must be a non-empty string; got {feed_label!r}"
            )
        if not (
            isinstance(watchdog_seconds, (int, float))
            and 0 < watchdog_seconds < math.inf
        ):
            raise ValueError(f"watchdog_seconds must be > 0; got {watchdog_seconds!r}")
        Backoff(backoff_initial, backoff_max)  # validates both, naming the setting
        self.products = list(products)
        self.feed = feed
        self.url = url or spec.url
        self.credentials = credentials
        self.feed_label = feed_label or feed
        self.watchdog_seconds = float(watchdog_seconds)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)

    def list_parts(self) -> list[str]:
        return list(self.products)

    def build_part(
        self, step_id: str, for_part: str, resume_state: str | None
    ) -> CoinbasePartition:
        if for_part not in self.products:
            raise ValueError(
                f"unknown partition {for_part!r}; products: {self.products}"
            )
        return CoinbasePartition(
            for_part,
            feed=self.feed,
            url=self.url,
            credentials=self.credentials,
            feed_label=self.feed_label,
            watchdog_seconds=self.watchdog_seconds,
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max,
            resumed=resume_state is not None,
        )
