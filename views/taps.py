"""Depth records for the views, taken from the book step's own book.

Until the book step emits depth records itself (a colleague's ``"type": "depth"``
records, same shape as :func:`depth_record`), :class:`BookStepWithDepth` wraps
``book_step.update_book``: it emits ``(summary or None, depth or None)``, a depth record
at most every ``interval`` seconds per product and only for a valid book. A depth record
costs a walk of the top ``levels`` levels per side and of the 10/50/100 bps bands, so it
is rate-limited rather than taken on every change.
"""

from __future__ import annotations

import time
from decimal import Decimal

from book_step import BookState, event_time, update_book
from orderbook import OrderBook, OrderBookSummary, _iso_utc, _plain
from views.records import DEPTH, LIQUIDITY_BANDS


def depth_record(
    book: OrderBook, *, time_=None, feed: str = "", levels: int = 25
) -> dict | None:
    """``{"type": "depth", ...}`` of a book, or None when a side is empty."""
    top = book.top()
    if top is None:
        return None
    bids = book.depth("bid", levels)
    asks = book.depth("ask", levels)
    mid = (top[0] + top[2]) / 2
    record = {
        "type": DEPTH,
        "product_id": book.product_id,
        "time": _iso_utc(time_),
        "feed": feed,
        "bids": [[_plain(p), _plain(s)] for p, s in bids],
        "asks": [[_plain(p), _plain(s)] for p, s in asks],
        "mid": _plain(mid),
    }
    for band in LIQUIDITY_BANDS:
        bid_total, ask_total = book.liquidity_within(band) or (Decimal(0), Decimal(0))
        record[f"bid_liquidity_{band}bps"] = _plain(bid_total)
        record[f"ask_liquidity_{band}bps"] = _plain(ask_total)
    # the bid share of the size of the listed levels of both sides
    bid_size = sum((s for _, s in bids), Decimal(0))
    ask_size = sum((s for _, s in asks), Decimal(0))
    imbalance = (bid_size / (bid_size + ask_size)).quantize(Decimal("1e-10"))
    record["imbalance"] = _plain(imbalance)
    return record


class BookStepWithDepth:
    """``update_book`` that also emits a depth record now and then (see module doc)."""

    def __init__(self, interval: float = 0.1, levels: int = 25) -> None:
        self.interval = interval
        self.levels = levels
        self._due: dict[str, float] = {}  # each product lives on one worker

    def __call__(
        self, state: BookState | None, event
    ) -> tuple[BookState, tuple[OrderBookSummary | None, dict | None]]:
        state, summary = update_book(state, event)
        depth = None
        book = state.book
        if book is not None and state.condition == "ok":
            now = time.monotonic()
            if now >= self._due.get(state.product_id, 0.0):
                when = summary.time if summary is not None else None
                if when is None and hasattr(event, "received_ns"):
                    when = event_time(event)
                depth = depth_record(
                    book, time_=when, feed=state.feed, levels=self.levels
                )
                if depth is not None:
                    self._due[state.product_id] = now + self.interval
        return state, (summary, depth)
