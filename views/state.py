"""What the live views know of each product: the latest records, their rate and age.

One :class:`MarketBoard` per process collects the records of every sink partition (every
worker thread) and answers "how does each product look now" without ever holding more
than the latest summary and depth per product, a short window of arrival times for the
rate, and (for the dashboard) a bounded history.

Feed state is derived from the records alone (a sink sees no connection events):

* ``awaiting snapshot``: nothing received for the product yet;
* ``resyncing``: it had data but nothing for ``stale_after`` seconds (a dropped book
  waits for the next snapshot; a dead connection reconnects and resubscribes);
* ``behind``: records arrive, but their lag (wall clock minus exchange time) has grown
  by more than ``behind_after`` seconds over its least of the last 10 to 20 s: the
  dataflow is not keeping up. A steady lag (a skewed clock, a recording served again
  at its pace) is not falling behind;
* ``connected``: fresh records. A replay says ``replay`` (its times are from the past);
* ``run ended``: the run is over (a replay reached the end of its file).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from common.domain import is_product_id
from views.records import (
    AUDIT,
    AUDIT_RESULTS,
    DEPTH,
    SUMMARY,
    as_record,
    epoch_seconds,
    kind,
    levels,
    num,
    spread_bps,
)

AWAITING = "awaiting snapshot"
RESYNCING = "resyncing"
BEHIND = "behind"
CONNECTED = "connected"
REPLAY = "replay"
ENDED = "run ended"
LAG_WINDOW = 10.0
"""Seconds of a window of the least lag (see ``behind``)."""
RATE_WINDOW = 5.0
"""Seconds over which updates per second are averaged."""


@dataclass
class ProductView:
    """The latest of one product, as the views show it (plain floats)."""

    product_id: str
    summary: dict | None = None
    depth: dict | None = None
    received: float = 0.0
    """``time.monotonic()`` of the last record."""
    lag: float | None = None
    """Wall clock minus the last record's exchange time, seconds."""
    arrivals: deque = field(default_factory=deque)
    updates: int = 0
    version: int = 0
    """Bumped on every record: what a client has already seen."""
    lag_floor: float | None = None
    """Least lag of the current window; with the previous window's, the baseline."""
    lag_floor_before: float | None = None
    lag_window_start: float = 0.0
    audit: str | None = None
    """The result of the product's last audit (one of ``AUDIT_RESULTS``), if any."""
    audited: float = 0.0
    """``time.monotonic()`` of the last audit record."""

    def note_lag(self, lag: float, now: float, window: float = LAG_WINDOW) -> None:
        self.lag = lag
        if now - self.lag_window_start > window:
            self.lag_floor_before = self.lag_floor
            self.lag_floor = lag
            self.lag_window_start = now
        elif self.lag_floor is None or lag < self.lag_floor:
            self.lag_floor = lag

    def lag_growth(self) -> float:
        floors = [f for f in (self.lag_floor, self.lag_floor_before) if f is not None]
        return 0.0 if self.lag is None or not floors else self.lag - min(floors)

    def rate(self, now: float) -> float:
        while self.arrivals and self.arrivals[0] < now - RATE_WINDOW:
            self.arrivals.popleft()
        return len(self.arrivals) / RATE_WINDOW

    def age(self, now: float) -> float | None:
        return None if not self.received else now - self.received

    @property
    def feed(self) -> str:
        for record in (self.summary, self.depth):
            if record and record.get("feed"):
                return record["feed"]
        return ""


class MarketBoard:
    """Thread-safe latest state per product, fed by sink partitions."""

    def __init__(
        self,
        products: list[str] | tuple[str, ...] = (),
        *,
        stale_after: float = 3.0,
        behind_after: float = 2.0,
        threshold_pct: float = 0.1,
    ) -> None:
        self.stale_after = stale_after
        self.behind_after = behind_after
        self.threshold_pct = threshold_pct
        self.finished = False
        """Set when the run has ended (a replay reached its end)."""
        self._lock = threading.Lock()
        self._products: dict[str, ProductView] = {p: ProductView(p) for p in products}
        self.changed = threading.Condition(self._lock)

    def add_products(self, products) -> None:
        with self._lock:
            for product in products:
                self._products.setdefault(product, ProductView(product))

    def update(self, items) -> list[str]:
        """Take a batch of records (dicts or summaries); returns the products touched."""
        now = time.monotonic()
        wall = time.time()
        touched = []
        with self._lock:
            for item in items:
                record = as_record(item)
                if record is None:
                    continue
                what = kind(record)
                product = record.get("product_id")
                if what is None or not is_product_id(product):
                    continue  # a row, a terminal cell and a page show only real ids
                view = self._products.get(product)
                if view is None:
                    view = self._products[product] = ProductView(product)
                if what == AUDIT:  # no market data: state, lag and rate stay
                    result = record.get("result")
                    view.audit = result if result in AUDIT_RESULTS else None
                    view.audited = now
                    view.version += 1
                    touched.append(product)
                    continue
                if what == SUMMARY:
                    view.summary = record
                    view.updates += 1
                    view.arrivals.append(now)
                elif what == DEPTH:
                    view.depth = record
                view.received = now
                event_time = epoch_seconds(record.get("time"))
                if event_time is not None:
                    view.note_lag(wall - event_time, now)
                view.version += 1
                touched.append(product)
            if touched:
                self.changed.notify_all()
        return touched

    def feeds(self) -> set[str]:
        with self._lock:
            return {v.feed for v in self._products.values()}

    def products(self) -> list[str]:
        with self._lock:
            return sorted(self._products)

    def state_of(self, view: ProductView, now: float) -> str:
        if not view.received:
            return AWAITING
        if self.finished:
            return ENDED
        if now - view.received > self.stale_after:
            return RESYNCING
        if view.feed == REPLAY:
            return REPLAY
        if view.lag_growth() > self.behind_after:
            return BEHIND
        return CONNECTED

    def rows(self, depth_levels: int = 5) -> list[dict]:
        """One plain dict per product, sorted by product id: what a view displays."""
        now = time.monotonic()
        with self._lock:
            return [
                self._row(view, now, depth_levels)
                for _, view in sorted(self._products.items())
            ]

    def row(self, product: str, depth_levels: int = 50) -> dict | None:
        now = time.monotonic()
        with self._lock:
            view = self._products.get(product)
            return None if view is None else self._row(view, now, depth_levels)

    def _row(self, view: ProductView, now: float, depth_levels: int) -> dict:
        s = view.summary or {}
        d = view.depth or {}
        bps = spread_bps(s) if s else None
        pct = num(s.get("spread_pct"))
        row = {
            "product_id": view.product_id,
            "feed": view.feed,
            "state": self.state_of(view, now),
            "age": view.age(now),
            "lag": view.lag,
            "rate": view.rate(now),
            "updates": view.updates,
            "version": view.version,
            "time": s.get("time") or d.get("time"),
            "bid_price": num(s.get("bid_price")),
            "bid_size": num(s.get("bid_size")),
            "ask_price": num(s.get("ask_price")),
            "ask_size": num(s.get("ask_size")),
            "spread": num(s.get("spread")),
            "spread_pct": pct,
            "spread_bps": bps,
            "wide": pct is not None and pct > self.threshold_pct,
            "mid": num(s.get("mid")) or num(d.get("mid")),
            "microprice": num(s.get("microprice")),
            "imbalance": num(s.get("imbalance")),
            "raw": s,
            "audit": view.audit,
            "audit_age": now - view.audited if view.audited else None,
            "has_depth": bool(d),
            "depth_imbalance": num(d.get("imbalance")),
            "bids": levels(d, "bids")[:depth_levels] if d else [],
            "asks": levels(d, "asks")[:depth_levels] if d else [],
        }
        for band in (10, 50, 100):
            row[f"bid_liquidity_{band}bps"] = num(d.get(f"bid_liquidity_{band}bps"))
            row[f"ask_liquidity_{band}bps"] = num(d.get(f"ask_liquidity_{band}bps"))
        return row
