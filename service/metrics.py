"""Feed-health metrics, served on Bytewax's own ``/metrics`` endpoint.

Bytewax serves the process's default ``prometheus_client`` registry when
``BYTEWAX_DATAFLOW_API_ENABLED=true`` (port ``BYTEWAX_DATAFLOW_API_PORT``, 3030 by
default), so the metrics below appear beside Bytewax's per-step ones. Every metric is
labelled by ``product_id`` and ``feed``, except the audit's two (``product_id`` and
``result``; ``product_id``).

Who counts what:

* the book step (:class:`BookMetrics`, called by ``book_step.BookStep``): messages,
  changes, snapshots, resets by reason, book levels per side, age of the last update;
* the dataflow's sink (:func:`sink_observer`): summaries delivered, spread in bps, and
  the latency from a frame's receive time on the socket to its records being written;
  audits by result and drifted levels, from the audit records written (docs/audit.md);
* the source partitions (:func:`observe_partition_stats`): reconnects, sequence gaps,
  malformed frames, backlog drops.

When the API is off (``Settings.metrics_enabled`` False) none of this runs: the book step
and the sink take their plain paths.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from events import BookReset, BookSnapshot
from records import AuditRecord

LABELS = ("product_id", "feed")

MESSAGES = Counter(
    "orderbook_messages", "Book events (snapshots and change messages) received", LABELS
)
CHANGES = Counter("orderbook_changes", "Level changes received", LABELS)
SNAPSHOTS = Counter("orderbook_snapshots", "Snapshots received", LABELS)
RESETS = Counter(
    "orderbook_resets", "Book resets (reconnect, gap, resume...)", (*LABELS, "reason")
)
RECONNECTS = Counter("orderbook_reconnects", "Reconnections of the feed", LABELS)
SEQUENCE_GAPS = Counter("orderbook_sequence_gaps", "Sequence gaps detected", LABELS)
MALFORMED_FRAMES = Counter(
    "orderbook_malformed_frames", "Malformed frames skipped by the source", LABELS
)
BACKLOG_DROPS = Counter(
    "orderbook_backlog_drops", "Backlogs dropped by the source to resync", LABELS
)
SUMMARIES = Counter(
    "orderbook_summaries", "Summary records written to the outputs", LABELS
)
BOOK_LEVELS = Gauge(
    "orderbook_book_levels", "Price levels in the book", (*LABELS, "side")
)
LAST_UPDATE_AGE = Gauge(
    "orderbook_last_update_age_seconds",
    "Seconds since the book last received an event",
    LABELS,
)
SPREAD_BPS = Gauge(
    "orderbook_spread_bps", "Spread of the last summary written, in bps of mid", LABELS
)
LATENCY = Histogram(
    "orderbook_latency_seconds",
    "From a frame's receive time on the socket to its records written to the outputs",
    LABELS,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

AUDITS = Counter(
    "orderbook_audits",
    "Audits of the book against the exchange's REST book, by result "
    "(match, drift, skipped, failed)",
    ("product_id", "result"),
)
AUDIT_DRIFT_LEVELS = Counter(
    "orderbook_audit_drift_levels",
    "Levels an audit found different from the REST book and untouched by the stream",
    ("product_id",),
)

_LEVELS_EVERY = 32
"""Book-level gauges are set every this many events (and at every snapshot)."""


class _Product:
    """One product's labelled children, looked up once (``labels()`` costs ~1 µs)."""

    __slots__ = (
        "asks",
        "bids",
        "changes",
        "events",
        "last_ns",
        "messages",
        "snapshots",
    )

    def __init__(self, product_id: str, feed: str) -> None:
        self.messages = MESSAGES.labels(product_id, feed)
        self.changes = CHANGES.labels(product_id, feed)
        self.snapshots = SNAPSHOTS.labels(product_id, feed)
        self.bids = BOOK_LEVELS.labels(product_id, feed, "bid")
        self.asks = BOOK_LEVELS.labels(product_id, feed, "ask")
        self.events = 0
        self.last_ns = time.time_ns()
        LAST_UPDATE_AGE.labels(product_id, feed).set_function(self.age)

    def age(self) -> float:
        return (time.time_ns() - self.last_ns) / 1e9


class BookMetrics:
    """Counts what the book step sees; one instance per dataflow (shared by workers)."""

    def __init__(self) -> None:
        self._products: dict[tuple[str, str], _Product] = {}
        self._lock = threading.Lock()

    def _product(self, product_id: str, feed: str) -> _Product:
        key = (product_id, feed)
        product = self._products.get(key)
        if product is None:
            with self._lock:
                product = self._products.get(key)
                if product is None:
                    product = self._products[key] = _Product(product_id, feed)
        return product

    def observe(self, state: Any, event: Any) -> None:
        """After the book step applied ``event`` to ``state`` (a ``BookState``)."""
        p = self._product(event.product_id, event.feed)
        changes = getattr(event, "changes", None)
        if changes is not None:
            p.messages.inc()
            p.changes.inc(len(changes))
        elif type(event) is BookSnapshot:
            p.messages.inc()
            p.snapshots.inc()
            p.events = 0
        elif type(event) is BookReset:
            RESETS.labels(event.product_id, event.feed, _reason(event.reason)).inc()
            p.events = 0
        else:  # an audit's event, no market data: counted from its record
            return
        p.last_ns = event.received_ns or time.time_ns()
        if p.events % _LEVELS_EVERY == 0:
            book = state.book
            p.bids.set(len(book._bids) if book is not None else 0)
            p.asks.set(len(book._asks) if book is not None else 0)
        p.events += 1


def _reason(reason: str) -> str:
    """A reset reason as a label of few values: up to three words before any ':',
    none with a digit (no ids, codes or counts)."""
    words = []
    for word in str(reason).lower().split(":", 1)[0].split():
        if any(c.isdigit() for c in word) or len(words) == 3:
            break
        words.append(word.strip(".,;()"))
    return "_".join(words) or "unknown"


def sink_observer() -> Callable[[list[tuple[int, Any]]], None]:
    """For the sink: counts ``(received_ns, record)`` pairs once they are written."""
    summaries: dict[tuple[str, str], tuple] = {}

    def children(record) -> tuple:
        key = (record.product_id, record.feed)
        found = summaries.get(key)
        if found is None:
            found = summaries[key] = (
                SUMMARIES.labels(*key),
                SPREAD_BPS.labels(*key),
                LATENCY.labels(*key),
            )
        return found

    def observe(items: list[tuple[int, Any]]) -> None:
        now = time.time_ns()
        for received_ns, record in items:
            if type(record) is AuditRecord:
                observe_audit(record)
                continue
            count, spread, latency = children(record)
            if received_ns:
                latency.observe((now - received_ns) / 1e9)
            if hasattr(record, "spread_pct"):
                count.inc()
                if record.mid:
                    spread.set(float(record.spread / record.mid) * 10_000)

    return observe


def observe_audit(record: AuditRecord) -> None:
    """Count one audit record: its result, and its drifted levels."""
    AUDITS.labels(record.product_id, record.result).inc()
    if record.mismatches:
        AUDIT_DRIFT_LEVELS.labels(record.product_id).inc(len(record.mismatches))


_PARTITION_COUNTERS = {
    "reconnects": RECONNECTS,
    "sequence_gaps": SEQUENCE_GAPS,
    "malformed_frames": MALFORMED_FRAMES,
    "backlog_drops": BACKLOG_DROPS,
}
_partition_seen: dict[tuple[str, str, str], float] = {}
_partition_lock = threading.Lock()


def observe_partition_stats(product_id: str, feed: str, stats: Any) -> None:
    """Publish a source partition's connection counters.

    ``stats`` holds CUMULATIVE counts since the partition started, as attributes or
    mapping keys: ``reconnects``, ``sequence_gaps``, ``malformed_frames``,
    ``backlog_drops`` (the metrics' names): ``coinbase.session.SessionStats`` as it is;
    a missing one is skipped. ``feed`` must be the label the partition's
    events carry (their ``feed``), so that the counters line up with the book step's.
    ``service/inputs.py`` passes it to ``CoinbaseSource(on_stats=...)``, which calls it
    about once a second per partition. Call it whenever convenient (each
    ``next_batch``, or each time a count changes): only the increase since the last
    call is added to the counters, so calling it often costs little and never counts
    twice. A count that goes down (a new partition object after a restart) starts over
    from it. Thread-safe.
    """
    mapping = isinstance(stats, Mapping)
    for name, counter in _PARTITION_COUNTERS.items():
        value = stats.get(name) if mapping else getattr(stats, name, None)
        if value is None:
            continue
        key = (product_id, feed, name)
        with _partition_lock:
            seen = _partition_seen.get(key, 0)
            _partition_seen[key] = value
        delta = value - seen if value >= seen else value
        if delta:
            counter.labels(product_id, feed).inc(delta)
