"""The book step: applies one product's events to its `OrderBook`, emits summaries.

This is the logic behind the dataflow's ``stateful_map``; it knows nothing of Bytewax so
that it can be tested and benchmarked on its own. Rules, each a way a book goes stale:

* a reset drops the book; changes are then ignored until the next snapshot;
* a snapshot replaces the book (never merges);
* a message that cannot be applied drops the book too: a book that missed a message is
  wrong in a way nobody can see, so it asks its source partition for a fresh snapshot
  (``resync``) and waits for it. Everything the step does for one event (applying it,
  the summary, the depth record, the metrics) runs under one guard: any exception
  becomes that, logged in one line at most once a second, and never leaves the step;
* a summary is emitted only when the top of book changed, and never for an empty-sided,
  locked or crossed book;
* a book crossed or locked for ``RESYNC_AFTER_SECONDS`` of feed time asks its source
  partition for a fresh snapshot (``resync``): the feed will not repair it;
* an audit (issue 19, docs/audit.md): :class:`events.AuditStarted` starts noting the
  prices the stream touches; :class:`events.BookAudit` compares the REST book with the
  book over the REST levels' price range, leaving the touched prices out, and emits an
  :class:`records.AuditRecord`; untouched levels that differ are drift, and the product
  asks for a fresh snapshot (``resync``) like a crossed book does.

The requests go to the flow's :class:`resync.ResyncRequests`, the channel the flow's
source owns: ``dataflow.get_flow`` gives it to :class:`UpdateBook` or :class:`BookStep`
(without one, :func:`update_book` asks nobody).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import itemgetter

from common.decimals import CTX, plain
from common.logs import RateLimitedLog
from common.text import shown
from events import (
    ASK,
    BID,
    AuditStarted,
    BookAudit,
    BookChanges,
    BookEvent,
    BookReset,
    BookSnapshot,
)
from orderbook import BookCondition, OrderBook
from records import AuditRecord, OrderBookDepth, OrderBookSummary
from resync import ResyncRequests

log = logging.getLogger(__name__)
_bad_book_log = RateLimitedLog(log, interval_seconds=1.0)
_failure_log = RateLimitedLog(log, interval_seconds=1.0)
"""Failed events of every product: at most one line a second, with a count of the rest."""
_drift_log = RateLimitedLog(log, interval_seconds=1.0)
"""Audits that found drift, every product: at most one warning a second."""
STATUS_INTERVAL = 10.0
RESYNC_AFTER_SECONDS = 3.0
"""Feed time a book may stay crossed or locked before it asks for a fresh snapshot."""
MAX_NOTED = 100_000
"""Prices a pending audit notes at most (a REST book that never comes)."""


@dataclass
class BookState:
    """One product's book plus what is needed to emit only real changes.

    A restored state (from a Bytewax snapshot) carries no book: a book saved to disk is
    stale by the time anyone resumes it, so saving it would only cost time. That also
    makes Bytewax's per-epoch ``deepcopy`` of every touched state O(1).
    """

    product_id: str
    feed: str = ""
    book: OrderBook | None = None
    last_top: tuple | None = None
    condition: BookCondition = BookCondition.AWAITING_SNAPSHOT
    updates: int = 0
    next_status_at: float = 0.0
    invalid_since_ns: int | None = None
    """Feed time (ns) since which the book has been crossed or locked, else None."""
    resync_requested: bool = False
    next_depth_at: datetime | None = None
    """Feed time from which the next depth record is due (``BookStep``)."""
    quiet: bool = False
    """Log nothing for this book: a replay rebuilding it before its resume point (a
    flag of this product's state, so no other product or worker is silenced)."""
    audit: PendingAudit | None = None
    """The audit whose REST book is awaited (None: none, and the hot path pays one
    ``is None`` check per change message for the whole feature)."""
    snapshot_ns: int = 0
    """Feed time (ns) of the book's snapshot: bounds the age of a drifted level."""
    drifted: bool = False
    """An audit found drift and the fresh snapshot has not come yet: later audits are
    skipped, so that one drift is counted once."""

    def __getstate__(self) -> dict:
        return {"product_id": self.product_id, "feed": self.feed}

    def __setstate__(self, state: dict) -> None:
        # a fresh state with every field at its default: the list is the dataclass's
        self.__init__(state["product_id"], state["feed"])

    def __deepcopy__(self, memo: dict) -> BookState:
        return BookState(self.product_id, self.feed)


class PendingAudit:
    """An audit between its :class:`events.AuditStarted` and its
    :class:`events.BookAudit`: the prices the stream touched meanwhile.

    A price touched on either side counts as touched on both (a level that crossed
    the spread meanwhile): never less fair, and no tuple per change. Noting them costs
    one ``set.add`` a change, ~30 ns (the prices are the decoder's cached Decimals,
    their hashes computed once); a set of (side, price) tuples, or keeping the change
    lists to build the set later (they outlive the message, so memory is no longer
    reused at once), cost about twice as much with audits every second
    (bench/bench_audit.py). A pending audit whose REST book never comes stops noting
    after :data:`MAX_NOTED` prices (checked with the status line, every
    ``STATUS_INTERVAL``) and is skipped."""

    __slots__ = ("cancelled", "requested_ns", "touched")

    def __init__(self, requested_ns: int) -> None:
        self.requested_ns = requested_ns
        self.touched: set[Decimal] = set()
        self.cancelled: str | None = None
        """Why the comparison cannot be fair any more (a snapshot, a reset)."""

    def bound(self) -> None:
        if len(self.touched) > MAX_NOTED:  # the comparison is off anyway
            self.cancelled = (
                f"more than {MAX_NOTED} prices touched before the REST book"
            )
            self.touched.clear()


def update_book(
    state: BookState | None,
    event: BookEvent,
    resync_requests: ResyncRequests | None = None,
) -> tuple[BookState | None, OrderBookSummary | AuditRecord | None]:
    """Apply one event; return the new state and a summary if the top of book changed
    (for a :class:`events.BookAudit`: its :class:`records.AuditRecord`).

    Never raises: whatever goes wrong with one event (a change the book refuses, a
    value outside the number domain that a source let through, a bug) drops that
    product's book, asks its source for a fresh snapshot (through ``resync_requests``)
    and logs one line (at most one a second over all products), so that one product's
    bad data can neither stop the dataflow nor lose the records other events produced
    before it.
    """
    try:
        if state is None:
            state = BookState(event.product_id, event.feed)
        return _update_book(state, event, resync_requests)
    except Exception as exc:
        return _failed(state, exc, "unappliable event", resync_requests), None


class UpdateBook:
    """:func:`update_book` for the dataflow's plain path, with the flow's resync
    channel: the summary as a ``(received_ns, summary)`` pair, the one shape every sink
    and view gets (an audit record travels the same way, in the summary's place).

    One call more per event than the bare function, 70 to 100 ns on a 1.8 µs change
    (timeit); bench/bench_flow.py's plain fast path, best of 18 runs each before and
    after (messages per CPU second): 50,504 -> 50,992 at 5 changes a message, 62,355 ->
    63,079 at 3, within the noise.
    """

    __slots__ = ("resync_requests",)

    def __init__(self, resync_requests: ResyncRequests | None = None) -> None:
        self.resync_requests = resync_requests

    def __call__(
        self, state: BookState | None, event: BookEvent
    ) -> tuple[BookState | None, tuple[int, OrderBookSummary] | None]:
        state, summary = update_book(state, event, self.resync_requests)
        if summary is None:
            return state, None
        return state, (event.received_ns, summary)

    def each(
        self, state: BookState | None, events: list[BookEvent]
    ) -> tuple[BookState | None, list[tuple[int, OrderBookSummary]]]:
        """:meth:`__call__` over a list of events (what :class:`EachEvent` runs): the
        same guard per event (one failing event costs its book, never the outputs of
        the others), the same outputs in order, two Python calls fewer per event
        (``__call__`` and :func:`update_book`): about 0.15 µs an event of 5 (in process,
        80,000 events of the benches' recording, a busy machine)."""
        resync_requests = self.resync_requests
        outs = []
        for event in events:
            try:
                if state is None:
                    state = BookState(event.product_id, event.feed)
                state, summary = _update_book(state, event, resync_requests)
            except Exception as exc:
                state = _failed(state, exc, "unappliable event", resync_requests)
                continue
            if summary is not None:
                outs.append((event.received_ns, summary))
        return state, outs


def _update_book(
    state: BookState, event: BookEvent, resync_requests: ResyncRequests | None
) -> tuple[BookState, OrderBookSummary | None]:
    state.feed = event.feed
    if isinstance(event, BookChanges):
        if state.book is None:
            return state, None
        if state.audit is not None:  # the audit's whole cost when none is pending
            note = state.audit.touched.add
            for change in event.changes:
                note(change[1])
        state.book.apply_changes(event.changes)
    elif isinstance(event, BookSnapshot):
        book = OrderBook(event.product_id)
        book.apply_snapshot(event.bids, event.asks)
        state.book = book
        state.last_top = None
        state.snapshot_ns = feed_time_ns(event)
        state.drifted = False
        if state.audit is not None and state.audit.cancelled is None:
            state.audit.cancelled = "a snapshot in between"
    elif isinstance(event, BookReset):
        if event.reason == "resume" and not state.quiet:
            log.info(
                "%s: book reset (resume): waiting for a fresh snapshot",
                state.product_id,
            )
        _drop(state, f"reset: {event.reason}")
        return state, None
    elif type(event) in _AUDIT_EVENTS:
        return state, _audit(state, event, resync_requests)
    else:
        if not state.quiet:
            _failure_log.error(
                "%s: ignoring an event of unknown type %s",
                state.product_id,
                shown(type(event).__name__),
            )
        return state, None
    state.updates += 1
    summary = _summary_if_changed(state, event, resync_requests)
    if time.monotonic() >= state.next_status_at:
        _log_status(state)
    return state, summary


def _failed(
    state: BookState | None,
    exc: Exception,
    what: str,
    resync_requests: ResyncRequests | None,
) -> BookState | None:
    """One product's step failed: drop its book, ask for a fresh snapshot, say so once.

    Guarded itself: a state or an error that cannot even be logged costs the book,
    never the dataflow."""
    try:
        reason = f"{what}: {type(exc).__name__}: {shown(exc, 200)}"
        if state is None:
            _failure_log.error("book step: %s", reason)
            return None
        _drop(state, reason)
        if (
            resync_requests is not None
            and isinstance(state.product_id, str)
            and state.product_id
        ):
            resync_requests.request(state.product_id, reason)
        if state.quiet:
            return state
        _failure_log.error(
            "%s: book dropped, asking for a fresh snapshot (%s)",
            shown(state.product_id),
            reason,
        )
    except Exception:  # pragma: no cover - the last line of defence
        log.debug("book step: cannot report a failure", exc_info=True)
    return state


def _log_status(state: BookState) -> None:
    """Every STATUS_INTERVAL: a sign of life even when the spread filter passes nothing."""
    if state.audit is not None:
        state.audit.bound()
    if state.quiet:
        state.next_status_at = time.monotonic() + STATUS_INTERVAL
        return
    book = state.book
    top = book.top() if book is not None else None
    if top is not None and state.condition is BookCondition.OK:
        spread_pct = CTX.divide(CTX.multiply(CTX.subtract(top[2], top[0]), 100), top[2])
        detail = f"bid {plain(top[0])} ask {plain(top[2])} spread {spread_pct:.6f}%"
    else:
        detail = state.condition
    levels = len(book) if book is not None else 0
    log.info(
        "%s [%s]: %d levels, %d updates applied, %s",
        state.product_id,
        state.feed,
        levels,
        state.updates,
        detail,
    )
    state.next_status_at = time.monotonic() + STATUS_INTERVAL


def _drop(state: BookState, why: str) -> None:
    state.book = None
    state.last_top = None
    state.condition = BookCondition.AWAITING_SNAPSHOT
    state.invalid_since_ns = None
    state.resync_requested = False
    if state.audit is not None and state.audit.cancelled is None:
        state.audit.cancelled = "the book was dropped in between"
    if not state.quiet:
        log.debug("%s: book dropped (%s)", state.product_id, shown(why, 400))


def _audit(
    state: BookState,
    event: AuditStarted | BookAudit,
    resync_requests: ResyncRequests | None,
) -> AuditRecord | None:
    """Start noting touched prices (``AuditStarted``), or compare the REST book of a
    ``BookAudit`` with the book: its audit record.

    The fair-comparison rule (docs/audit.md): per side, the levels compared are the REST
    book's and the book's over the REST levels' price range: from the best price to the
    REST side's worst level when it gave all the levels asked (beyond it, REST shows
    nothing to compare), the whole side when it gave fewer (its whole side). A price
    counts when it is in one and not the other or has another size there, and is left
    out when the stream touched it between the request and this event (the settle
    window after the reply lets late stream updates arrive first). Untouched
    differences are drift: the product asks for a fresh snapshot and one warning (at
    most one a second over all products) names them.
    """
    if type(event) is AuditStarted:
        state.audit = PendingAudit(event.received_ns)
        return None
    pending, state.audit = state.audit, None
    received_ns = event.received_ns or time.time_ns()
    record = {
        "time": _utc(received_ns),
        "levels": event.levels,
        "requested": _utc(event.requested_ns),
        "replied": _utc(event.replied_ns),
        "feed": event.feed,
    }
    if event.failure is not None:
        return AuditRecord(
            state.product_id, result="failed", reason=str(event.failure), **record
        )
    skipped = None
    if pending is None or pending.requested_ns != event.requested_ns:
        skipped = "no pending request"
    elif pending.cancelled is not None:
        skipped = pending.cancelled
    elif state.book is None:
        skipped = "no book"
    elif state.drifted:
        skipped = "drift found, awaiting the fresh snapshot"
    if skipped is not None:
        return AuditRecord(state.product_id, result="skipped", reason=skipped, **record)
    mismatches, compared, left_out = _compare(state.book, event, pending.touched)
    result = "drift" if mismatches else "match"
    audit = AuditRecord(
        state.product_id,
        result=result,
        compared=compared,
        touched=left_out,
        mismatches=tuple(mismatches),
        **record,
    )
    if mismatches:
        state.drifted = True
        reason = f"audit: {len(mismatches)} levels differ from the REST book"
        if resync_requests is not None:
            resync_requests.request(state.product_id, reason)
        if not state.quiet:
            _warn_drift(state, audit, event, received_ns)
    return audit


_ZERO = Decimal(0)


def _compare(book: OrderBook, event: BookAudit, touched: set) -> tuple[list, int, int]:
    """(mismatches best first, bids then asks; prices compared; prices left out).

    No sort of the compared prices (Decimal comparisons: half the cost of an audit):
    only the mismatches, usually none, are sorted."""
    mismatches = []
    compared = left_out = 0
    for side, rest_levels in ((BID, event.bids), (ASK, event.asks)):
        # all the levels asked: compare down to the worst; fewer: REST's whole side
        bound = rest_levels[-1][0] if len(rest_levels) >= event.levels > 0 else None
        ours = {}
        for price, size in book.levels(side):
            if bound is not None and (price < bound if side is BID else price > bound):
                break
            ours[price] = size
        found = []
        for price, theirs in rest_levels:
            mine = ours.pop(price, _ZERO)
            if price in touched:
                left_out += 1
            elif mine != theirs:
                found.append((str(side), price, mine, theirs))
        for price, mine in ours.items():  # levels REST does not have
            if price in touched:
                left_out += 1
            else:
                found.append((str(side), price, mine, _ZERO))
        compared += len(rest_levels) + len(ours)
        found.sort(key=itemgetter(1), reverse=side is BID)
        mismatches += found
    return mismatches, compared - left_out, left_out


def _warn_drift(
    state: BookState, audit: AuditRecord, event: BookAudit, now_ns: int
) -> None:
    """One line: product, levels with both sizes, and the age of their last change."""
    untouched = (now_ns - event.requested_ns) / 1e9
    since = ""
    if state.snapshot_ns:
        since = f", book snapshot {(now_ns - state.snapshot_ns) / 1e9:.1f} s ago"
    levels = "; ".join(
        f"{side} {plain(p)}: ours {plain(o)}, REST {plain(r)}"
        for side, p, o, r in audit.mismatches[:5]
    )
    if len(audit.mismatches) > 5:
        levels += f" (+{len(audit.mismatches) - 5} more)"
    _drift_log.warning(
        "%s [%s]: audit found drift, %d of %d levels differ from the REST book (%s); "
        "unchanged for at least %.1f s%s; asking for a fresh snapshot",
        shown(state.product_id),
        state.feed,
        len(audit.mismatches),
        audit.compared,
        levels,
        untouched,
        since,
    )


def _utc(ns: int) -> datetime | None:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC) if ns else None


_OK = BookCondition.OK


def _summary_if_changed(
    state: BookState,
    event: BookSnapshot | BookChanges,
    resync_requests: ResyncRequests | None,
) -> OrderBookSummary | None:
    book = state.book
    top = book.top()
    if top is None or top[0] >= top[2]:  # an empty side, locked or crossed
        condition = book.condition
        if condition != state.condition and not state.quiet:
            _bad_book_log.warning(
                "%s: book is %s; no summary until it is valid again",
                state.product_id,
                condition,
            )
        state.condition = condition
        state.last_top = None
        _watch_invalid(state, event, condition, resync_requests)
        return None
    if state.condition is not _OK:  # (those two are reset with it, see _watch_invalid)
        state.condition = _OK
        state.invalid_since_ns = None
        state.resync_requested = False
    if top == state.last_top:
        return None
    state.last_top = top
    return OrderBookSummary.from_top(
        state.product_id, *top, time=event_time(event), feed=event.feed
    )


def _watch_invalid(
    state: BookState,
    event: BookSnapshot | BookChanges,
    condition: BookCondition,
    resync_requests: ResyncRequests | None,
) -> None:
    """Ask for a fresh snapshot once a book stays crossed or locked too long."""
    if condition not in (BookCondition.CROSSED, BookCondition.LOCKED):
        state.invalid_since_ns = None  # an empty side: the feed's own business
        return
    now_ns = feed_time_ns(event)
    if state.invalid_since_ns is None or isinstance(event, BookSnapshot):
        state.invalid_since_ns = now_ns
        state.resync_requested = False
        return
    seconds = (now_ns - state.invalid_since_ns) / 1e9
    if not state.resync_requested and seconds >= RESYNC_AFTER_SECONDS:
        state.resync_requested = True
        reason = f"book {condition} for {seconds:.1f} s of feed time"
        if resync_requests is not None:
            resync_requests.request(state.product_id, reason)
        if not state.quiet:
            log.warning("%s: %s; asking for a fresh snapshot", state.product_id, reason)


def feed_time_ns(event: BookSnapshot | BookChanges) -> int:
    """When the event came off the socket (a replay: when it was recorded), else its
    exchange time, else now: one clock per stream, so that durations are real."""
    if event.received_ns:
        return event.received_ns
    if event.time is not None:
        return int(event.time.timestamp() * 1_000_000) * 1_000
    return time.time_ns()


def event_time(event: BookSnapshot | BookChanges) -> datetime | None:
    """The exchange's time of the event, else when it came off the socket.

    Exchange-feed snapshots carry no time; a summary with a receive time is more useful
    to a reader than one with none.
    """
    if event.time is not None:
        return event.time
    if event.received_ns:
        return datetime.fromtimestamp(event.received_ns / 1e9, tz=UTC)
    return None


Record = OrderBookSummary | OrderBookDepth | AuditRecord
_AUDIT_EVENTS = frozenset((AuditStarted, BookAudit))


class BookStep:
    """:func:`update_book` plus ``depth`` records: the book step when depth is on.

    Returns ``(state, None)`` when nothing is due, else ``(state, (received_ns,
    summary or None, depth or None))``, for :meth:`SpreadFilter.records`; an audit
    record takes the summary's place (the spread filter passes it on). A depth record
    of the top ``levels`` levels is due at every snapshot, then at most once per
    ``interval`` seconds of FEED time (the events' own time, so that a replay gives
    the records of the live run): on the first change applied after it elapsed.
    ``interval`` 0 emits one at every change of the book. Events with no time at all
    get depth records at snapshots only. ``metrics`` (a
    :class:`service.metrics.BookMetrics`) counts the events, when given;
    ``resync_requests`` is the flow's resync channel (see :func:`update_book`).
    """

    __slots__ = ("interval", "levels", "metrics", "resync_requests")

    def __init__(
        self,
        levels: int = 0,
        interval: float = 1.0,
        metrics=None,
        resync_requests: ResyncRequests | None = None,
    ) -> None:
        self.levels = levels
        self.interval = timedelta(seconds=interval)
        self.metrics = metrics
        self.resync_requests = resync_requests

    def __call__(
        self, state: BookState | None, event: BookEvent
    ) -> tuple[
        BookState | None, tuple[int, OrderBookSummary | None, Record | None] | None
    ]:
        state, summary = update_book(state, event, self.resync_requests)  # guarded
        if state is None:
            return None, None
        depth = None
        try:
            if (
                self.levels
                and state.condition is BookCondition.OK
                and state.book is not None
                and type(event) not in _AUDIT_EVENTS  # they change nothing
            ):
                t = event_time(event)
                due = state.next_depth_at
                if type(event) is BookSnapshot or (
                    t is not None and (due is None or t >= due)
                ):
                    state.next_depth_at = None if t is None else t + self.interval
                    depth = OrderBookDepth.from_book(
                        state.book, self.levels, t, event.feed
                    )
        except Exception as exc:
            # the summary, if any, came from a valid top: it is kept
            _failed(state, exc, "depth record", self.resync_requests)
        if self.metrics is not None:
            try:
                self.metrics.observe(state, event)
            except Exception as exc:
                _failure_log.error(
                    "%s: metrics: %s", shown(state.product_id), shown(exc, 200)
                )
        if summary is None and depth is None:
            return state, None
        return state, (event.received_ns, summary, depth)


class EachEvent:
    """Runs a per-event book step (:class:`UpdateBook`, :class:`BookStep`) over one
    dataflow item: a product's events as a list (the live source hands over everything
    a poll found at once) or a single event (a replay's item). Returns the step's
    outputs that are not None, in order, as one list, for :class:`SpreadFilter`.

    The loop costs one call per event (about 0.1 µs); what it buys is the batching
    upstream: Bytewax's per-item cost paid once per poll instead of once per event.
    """

    __slots__ = ("step",)

    def __init__(self, step: UpdateBook | BookStep) -> None:
        self.step = step

    def __call__(self, state: BookState | None, item: BookEvent | list) -> tuple:
        step = self.step
        if type(item) is not list:
            state, out = step(state, item)
            return state, [] if out is None else [out]
        each = getattr(step, "each", None)
        if each is not None:  # the step's own loop (UpdateBook.each)
            return each(state, item)
        outs = []
        for event in item:
            state, out = step(state, event)
            if out is not None:
                outs.append(out)
        return state, outs


class SpreadFilter:
    """Keeps summaries whose spread exceeds ``threshold_pct`` percent of the ask.

    Takes the book step's ``(key, summary or None)`` output and returns the summary or
    None, so that dropping the key, the non-events and the narrow spreads is one step.
    """

    def __init__(self, threshold_pct: Decimal, depth: bool = True) -> None:
        self.threshold_pct = Decimal(threshold_pct)
        self.depth = depth
        """Whether :meth:`records` passes depth records on (off when only the views,
        not the outputs, asked for them)."""

    def __call__(
        self, keyed: tuple[str, OrderBookSummary | None]
    ) -> OrderBookSummary | None:
        summary = keyed[1]
        if summary is not None and summary.spread_pct > self.threshold_pct:
            return summary
        return None

    def timed(
        self, keyed: tuple[str, list[tuple[int, OrderBookSummary]]]
    ) -> list[tuple[int, OrderBookSummary]]:
        """For ``EachEvent(UpdateBook(...))``'s output: the ``(received_ns, summary)``
        pairs kept; a ``(received_ns, audit record)`` pair is always kept (the
        ``AttributeError`` of its missing ``spread_pct`` says so: no test per
        summary, the second pass runs once per audit)."""
        threshold = self.threshold_pct
        try:
            return [due for due in keyed[1] if due[1].spread_pct > threshold]
        except AttributeError:  # an audit record among them: never filtered
            return [
                due
                for due in keyed[1]
                if type(due[1]) is AuditRecord or due[1].spread_pct > threshold
            ]

    def records(self, keyed: tuple[str, list[tuple]]) -> list:
        """For ``EachEvent(BookStep(...))``'s output: ``(received_ns, record)`` of each
        record kept; depth and audit records are never filtered."""
        kept = []
        for received_ns, summary, depth in keyed[1]:
            if summary is not None and (
                type(summary) is AuditRecord or summary.spread_pct > self.threshold_pct
            ):
                kept.append((received_ns, summary))
            if depth is not None and self.depth:
                kept.append((received_ns, depth))
        return kept
