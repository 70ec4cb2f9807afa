"""Coinbase's two public REST book endpoints, served as plain HTTP on the WebSocket port.

* Exchange: ``GET /products/{product_id}/book?level=1|2`` (level 1: the best bid and ask;
  level 2: the whole aggregated book; no ``level``: 1, as Coinbase does), reply
  ``{"bids": [[price, size, num_orders], ...], "asks": [...], "sequence": N,
  "auction_mode": false, "auction": null, "time": "...Z"}``; errors ``{"message": ...}``
  (404 ``NotFound``, 400 ``Invalid level``).
* Advanced Trade: ``GET /api/v3/brokerage/market/product_book?product_id=ID&limit=N``
  (no ``limit``: the whole book), reply ``{"pricebook": {"product_id", "bids": [{"price",
  "size"}], "asks": [...], "time"}, "last", "mid_market", "spread_bps",
  "spread_absolute"}``; errors ``{"error", "error_details", "message"}`` (404 NOT_FOUND,
  400 INVALID_ARGUMENT).

Prices and sizes are the exact strings the feeds print (canonical forms), read from the
TRUE book, which runs ahead of the socket by the market loop's ``socket_lag`` steps (see
:mod:`local_exchange.loops`). ``num_orders`` and ``last`` are made up (the simulated
market has no orders or trades): ``num_orders`` is 1 to 5, ``last`` the mid price.

Cost, measured with the stdlib client on loopback (median of 60 sequential requests,
round trip included): an Advanced Trade ``limit=50`` 0.7 ms at depth 1,000 and 0.8 ms at
20,000 (only the top ``limit`` levels are copied under the market lock); a whole
Exchange ``level=2`` book 12 ms at depth 1,000 and 127 ms at 20,000, formatted in a
worker thread so the feeds go on meanwhile.

This module is pure: parsing a request target, shaping replies, the request log and the
armed REST errors. :class:`~local_exchange.server.LocalExchange` routes requests here from
websockets' ``process_request`` hook and does the waiting (a ``timeout`` fault).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from common import validation
from common.decimals import CTX, plain
from local_exchange.market import RawLevel, format_size, format_ticks
from local_exchange.protocol import dumps, iso_us

EXCHANGE_BOOK_PREFIX = "/products/"
AT_BOOK_PATH = "/api/v3/brokerage/market/product_book"
CONTROL_PREFIX = "/_local/"
"""The local exchange's own endpoints (request log, faults); never logged, never faulted."""

REST_ERROR_KINDS = ("429", "500", "timeout", "not_json")
"""What ``rest_errors(kind, count)`` can make the next REST book requests get."""
TIMEOUT_HOLD_DEFAULT = 15.0
"""Seconds a ``timeout`` fault holds a request before it answers 504 (or the client gives
up first): longer than an audit client's timeout (a few seconds), short enough that a
test's exchange stops promptly (a stop releases held requests at once anyway)."""
TIMEOUT_HOLD_MAX = 50.0
"""Bound on a ``timeout`` hold (the server's handshake timeout is above it)."""
LOG_MAX = 100_000
"""Requests the log keeps (the oldest are dropped beyond it)."""
LIMIT_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


def json_reply(status: int, obj: Any) -> Reply:
    return Reply(status, dumps(obj).encode())


# ------------------------------------------------------------------ requests
@dataclass(frozen=True, slots=True)
class BookRequest:
    """A valid REST book request: which dialect, which product, how many levels."""

    dialect: str  # "exchange" | "advanced-trade"
    product_id: str
    levels: int | None  # None: the whole book


def is_http(path: str) -> bool:
    """True for the paths answered as plain HTTP (the rest stay WebSocket paths)."""
    target = urlsplit(path).path
    return (
        target.startswith(EXCHANGE_BOOK_PREFIX)
        or target.rstrip("/") == AT_BOOK_PATH
        or target.startswith(CONTROL_PREFIX)
    )


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def exchange_error(status: int, message: str) -> Reply:
    return json_reply(status, {"message": message})


def at_error(status: int, code: str, details: str) -> Reply:
    return json_reply(
        status, {"error": code, "error_details": details, "message": details}
    )


def parse_book_request(path: str, is_product: Any) -> BookRequest | Reply:
    """The book a path asks for, or the error reply (404 unknown, 400 bad query)."""
    parts = urlsplit(path)
    query = parse_qs(parts.query, keep_blank_values=True)
    target = parts.path
    if target.rstrip("/") == AT_BOOK_PATH:
        pid = _one(query, "product_id")
        if not pid:
            return at_error(400, "INVALID_ARGUMENT", "product_id is required")
        limit_text = _one(query, "limit")
        limit = None
        if limit_text not in (None, ""):
            try:
                limit = validation.integer("limit", limit_text, 1, LIMIT_MAX)
            except validation.ConfigError:
                return at_error(
                    400,
                    "INVALID_ARGUMENT",
                    f"limit must be an integer in 1..{LIMIT_MAX}",
                )
        if not is_product(pid):
            return at_error(
                404, "NOT_FOUND", f"ProductBook with product_id {pid} not found"
            )
        return BookRequest("advanced-trade", pid, limit)
    segments = target[len(EXCHANGE_BOOK_PREFIX) :].split("/")
    if len(segments) != 2 or segments[1] != "book" or not segments[0]:
        return exchange_error(404, "NotFound")
    pid = unquote(segments[0])
    if not is_product(pid):
        return exchange_error(404, "NotFound")
    level = _one(query, "level") or "1"
    if level not in ("1", "2"):
        return exchange_error(400, "Invalid level")
    return BookRequest("exchange", pid, 1 if level == "1" else None)


# ------------------------------------------------------------------ replies
def _num_orders(units: int) -> int:
    return 1 + units % 5


def exchange_book(
    bids: list[RawLevel],
    asks: list[RawLevel],
    decimals: int,
    levels: int | None,
    sequence: int,
    now_ns: int,
) -> Reply:
    """``/products/{id}/book``: best-first ``[price, size, num_orders]`` per side."""
    if levels is not None:
        bids, asks = bids[:levels], asks[:levels]

    def side(raw: list[RawLevel]) -> list[list[Any]]:
        return [
            [format_ticks(p, decimals), format_size(s), _num_orders(s)] for p, s in raw
        ]

    return json_reply(
        200,
        {
            "bids": side(bids),
            "asks": side(asks),
            "sequence": sequence,
            "auction_mode": False,
            "auction": None,
            "time": iso_us(now_ns),
        },
    )


def at_book(
    pid: str,
    bids: list[RawLevel],
    asks: list[RawLevel],
    decimals: int,
    levels: int | None,
    now_ns: int,
) -> Reply:
    """``/api/v3/brokerage/market/product_book``: ``{"price", "size"}`` levels."""
    summary: dict[str, str] = {}
    if bids and asks:
        bid = Decimal(format_ticks(bids[0][0], decimals))
        ask = Decimal(format_ticks(asks[0][0], decimals))
        mid = CTX.divide(CTX.add(bid, ask), 2)
        spread = CTX.subtract(ask, bid)
        bps = CTX.multiply(CTX.divide(spread, mid), 10_000)
        summary = {
            "last": plain(mid),
            "mid_market": plain(mid),
            "spread_bps": plain(bps.quantize(Decimal("1e-12"), context=CTX)),
            "spread_absolute": plain(spread),
        }
    if levels is not None:
        bids, asks = bids[:levels], asks[:levels]

    def side(raw: list[RawLevel]) -> list[dict[str, str]]:
        return [
            {"price": format_ticks(p, decimals), "size": format_size(s)} for p, s in raw
        ]

    return json_reply(
        200,
        {
            "pricebook": {
                "product_id": pid,
                "bids": side(bids),
                "asks": side(asks),
                "time": iso_us(now_ns),
            },
            **summary,
        },
    )


# ------------------------------------------------------------------ faults
def fault_reply(kind: str, dialect: str) -> Reply:
    """The reply an armed REST error gives (``timeout``: after the hold)."""
    if kind == "429":
        if dialect == "exchange":
            return exchange_error(429, "Public rate limit exceeded")
        return at_error(429, "RESOURCE_EXHAUSTED", "Too many requests")
    if kind == "500":
        if dialect == "exchange":
            return exchange_error(500, "Internal server error")
        return at_error(500, "INTERNAL", "Internal error")
    if kind == "timeout":
        return exchange_error(504, "Gateway timeout")
    return Reply(  # not_json: what a proxy in the way answers
        200,
        b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        "text/html; charset=utf-8",
    )


class RestFaults:
    """Armed REST errors, taken one per REST book request, oldest first. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: deque[list[Any]] = deque()  # [kind, remaining, hold seconds]

    def arm(self, kind: str, count: int, hold: float) -> None:
        with self._lock:
            self._armed.append([kind, count, hold])

    def take(self) -> tuple[str, float] | None:
        with self._lock:
            if not self._armed:
                return None
            armed = self._armed[0]
            armed[1] -= 1
            if armed[1] <= 0:
                self._armed.popleft()
            return armed[0], armed[2]

    def pending(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(k, n) for k, n, _ in self._armed]


class RestLog:
    """Every REST request: ``(time.monotonic() at arrival, path, status)``. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: deque[tuple[float, str, int]] = deque(maxlen=LOG_MAX)

    def record(self, t: float, path: str, status: int) -> None:
        with self._lock:
            self._entries.append((t, path, status))

    def entries(self) -> list[tuple[float, str, int]]:
        with self._lock:
            return list(self._entries)

    def as_json(self) -> list[dict[str, Any]]:
        return [{"t": t, "path": p, "status": s} for t, p, s in self.entries()]
