"""The records the dataflow emits: a top-of-book summary, a depth snapshot, an audit.

Pure values, no sockets, no Bytewax: :class:`OrderBookSummary` (what the spread filter
looks at, emitted whenever the top of a book changes) and :class:`OrderBookDepth` (the top
N levels of each side with liquidity bands and imbalance, at a cadence in feed time)
and :class:`AuditRecord` (what one comparison of a book with the exchange's REST book
found, issue 19; built by :mod:`book_step`).
Both serialise to one JSON object with a ``"type"`` and exact decimals as canonical
strings, so nothing is lost to floating point. :class:`orderbook.OrderBook` builds them;
this module knows nothing of the book but its public methods, one structure per module
(orderbook.py holds the book).

Decimal arithmetic uses :data:`common.decimals.CTX` (34 digits, half-even), shared with
the book so that results never depend on ``decimal.getcontext()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, getcontext, localcontext, setcontext
from typing import TYPE_CHECKING, Any

import orjson

from common.decimals import CTX, plain
from common.domain import check_output
from common.slots import slot_setters
from events import ASK, BID, Level

if TYPE_CHECKING:
    from orderbook import OrderBook

__all__ = [
    "DEPTH_BANDS_BPS",
    "AuditRecord",
    "Mismatch",
    "OrderBookDepth",
    "OrderBookSummary",
    "SUMMARY_DECIMALS",
]

_ZERO = Decimal(0)
_HUNDRED = Decimal(100)
_TEN_THOUSAND = Decimal(10_000)
_RATIO_EXP = Decimal("1E-10")
"""Quantum of ``spread_pct`` and ``imbalance``."""
_EXTRA_PRICE_DIGITS = 4
"""Digits kept beyond the prices' own scale for ``microprice`` and ``vwap``."""


@dataclass(frozen=True, slots=True)
class OrderBookSummary:
    """Top of one product's book at one moment: what the dataflow emits.

    ``spread`` and ``mid`` are exact; ``spread_pct`` (spread as a percentage of the ask,
    what the spread filter uses) and ``imbalance`` are quantized to 1e-10;
    ``microprice`` to the prices' scale + 4 digits. ``feed`` says where the data came
    from ("exchange", "advanced-trade", "sim", "replay"), so simulated data is never mistaken for
    market data.
    """

    product_id: str
    time: datetime | None
    bid_price: Decimal
    bid_size: Decimal
    ask_price: Decimal
    ask_size: Decimal
    spread: Decimal
    spread_pct: Decimal
    mid: Decimal
    imbalance: Decimal
    microprice: Decimal
    feed: str = ""

    @classmethod
    def from_top(
        cls,
        product_id: str,
        bid_price: Decimal,
        bid_size: Decimal,
        ask_price: Decimal,
        ask_size: Decimal,
        time: datetime | None = None,
        feed: str = "",
    ) -> OrderBookSummary:
        """Compute every derived field from a valid (uncrossed, non-empty) top.

        In :data:`common.decimals.CTX`, never the calling thread's context: with prices
        and sizes of the domain (:mod:`common.domain`) every field is exact or quantized
        within its 34 digits, so this cannot raise (tests/test_domain.py proves it
        on random books); outside the domain it may, and the book step's guard turns
        that into a resync of the product. CTX is made the thread's context for the
        duration (``setcontext``, restored after), so plain operators can be used:
        ``CTX.method`` calls cost 0.13 µs each against 0.04 µs for an operator, the
        context switched and restored 0.17 µs in all.

        The object is filled through :data:`_SUMMARY_SLOTS`, not the frozen dataclass's
        ``__init__`` (twelve ``object.__setattr__`` calls): 0.57 against 1.08 µs, and
        a summary is built for most messages (62% of a replay's). Measured per summary
        (timeit), 2.8 -> 1.9 µs.
        """
        saved = getcontext()
        setcontext(CTX)
        try:
            spread = ask_price - bid_price
            depth = bid_size + ask_size
            # quantum from the normalised spread, so that "65000.04" and
            # "65000.04000000" give the same microprice text
            finer = spread.normalize().scaleb(-_EXTRA_PRICE_DIGITS)
            spread_pct = (spread * _HUNDRED / ask_price).quantize(_RATIO_EXP)
            mid = (bid_price + ask_price) / 2
            imbalance = (bid_size / depth).quantize(_RATIO_EXP)
            microprice = (
                (bid_price * ask_size + ask_price * bid_size) / depth
            ).quantize(finer)
        finally:
            setcontext(saved)
        if cls is not OrderBookSummary:  # a subclass may have its own __init__
            return cls(
                product_id,
                time,
                bid_price,
                bid_size,
                ask_price,
                ask_size,
                spread,
                spread_pct,
                mid,
                imbalance,
                microprice,
                feed,
            )
        summary = _new(cls)
        (
            set_product_id,
            set_time,
            set_bid_price,
            set_bid_size,
            set_ask_price,
            set_ask_size,
            set_spread,
            set_spread_pct,
            set_mid,
            set_imbalance,
            set_microprice,
            set_feed,
        ) = _SUMMARY_SLOTS
        set_product_id(summary, product_id)
        set_time(summary, time)
        set_bid_price(summary, bid_price)
        set_bid_size(summary, bid_size)
        set_ask_price(summary, ask_price)
        set_ask_size(summary, ask_size)
        set_spread(summary, spread)
        set_spread_pct(summary, spread_pct)
        set_mid(summary, mid)
        set_imbalance(summary, imbalance)
        set_microprice(summary, microprice)
        set_feed(summary, feed)
        return summary

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: decimals as fixed-point strings, time ISO-8601 UTC 'Z'."""
        return self._fields(_iso_utc(self.time))

    def to_json(self) -> str:
        """Compact JSON object (strings for decimals: no float rounding downstream).

        The text ``orjson`` gives for :meth:`to_dict` (the contract; tests compare
        the two on every kind of time, id and feed), written out directly: the decimals
        are ``plain()`` text (digits, a point, a minus: nothing to escape), the product
        id and the feed are JSON strings made by ``orjson`` once per distinct value
        (:func:`_json_string`), and the time is ``orjson``'s (a UTC time with
        microseconds, what the feeds send; any other through ``_iso_utc``). Measured
        per summary (timeit): 8.6 µs with ``json.dumps`` of :meth:`to_dict`, 3.7 µs
        with ``orjson.dumps`` of it, 2.4 µs this way.
        """
        time = self.time
        if time is None:
            time_json = "null"
        elif time.tzinfo is UTC and time.microsecond:
            time_json = orjson.dumps(time, option=orjson.OPT_UTC_Z).decode()
        else:  # orjson would print no ".000000" or a non-Z offset
            time_json = f'"{_iso_utc(time)}"'
        return (
            f'{{"type":"summary","product_id":{_json_string(self.product_id)},'
            f'"time":{time_json},'
            f'"bid_price":"{plain(self.bid_price)}",'
            f'"bid_size":"{plain(self.bid_size)}",'
            f'"ask_price":"{plain(self.ask_price)}",'
            f'"ask_size":"{plain(self.ask_size)}",'
            f'"spread":"{plain(self.spread)}",'
            f'"spread_pct":"{plain(self.spread_pct)}",'
            f'"mid":"{plain(self.mid)}",'
            f'"imbalance":"{plain(self.imbalance)}",'
            f'"microprice":"{plain(self.microprice)}",'
            f'"feed":{_json_string(self.feed)}}}'
        )

    def _fields(self, time: str | datetime | None) -> dict[str, Any]:
        return {
            "type": "summary",
            "product_id": self.product_id,
            "time": time,
            "bid_price": plain(self.bid_price),
            "bid_size": plain(self.bid_size),
            "ask_price": plain(self.ask_price),
            "ask_size": plain(self.ask_size),
            "spread": plain(self.spread),
            "spread_pct": plain(self.spread_pct),
            "mid": plain(self.mid),
            "imbalance": plain(self.imbalance),
            "microprice": plain(self.microprice),
            "feed": self.feed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrderBookSummary:
        """Inverse of :meth:`to_dict` (numerically equal decimals, same instant)."""
        time = data.get("time")
        return cls(
            product_id=data["product_id"],
            time=None if time is None else datetime.fromisoformat(time),
            bid_price=Decimal(data["bid_price"]),
            bid_size=Decimal(data["bid_size"]),
            ask_price=Decimal(data["ask_price"]),
            ask_size=Decimal(data["ask_size"]),
            spread=Decimal(data["spread"]),
            spread_pct=Decimal(data["spread_pct"]),
            mid=Decimal(data["mid"]),
            imbalance=Decimal(data["imbalance"]),
            microprice=Decimal(data["microprice"]),
            feed=data.get("feed", ""),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> OrderBookSummary:
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        feed = f"  [{self.feed}]" if self.feed else ""
        return (
            f"{self.product_id}  bid {plain(self.bid_price)} x {plain(self.bid_size)}"
            f"  ask {plain(self.ask_price)} x {plain(self.ask_size)}"
            f"  spread {plain(self.spread)} ({self.spread_pct:.3g}%){feed}"
        )


SUMMARY_DECIMALS = (
    "bid_price",
    "bid_size",
    "ask_price",
    "ask_size",
    "spread",
    "spread_pct",
    "mid",
    "imbalance",
    "microprice",
)
"""The summary's decimal fields, in order (the outputs' decimal columns too)."""

_new = object.__new__
_SUMMARY_SLOTS = slot_setters(
    OrderBookSummary, ("product_id", "time", *SUMMARY_DECIMALS, "feed")
)
"""The slots' setters, in the fields' order: :meth:`OrderBookSummary.from_top`."""

_JSON_STRINGS: dict[str, str] = {}
"""A module-level memo, process-wide by nature: the results of a pure function, the same
for every flow and worker thread of the process (a lost race only computes one twice)."""
_JSON_STRINGS_MAX = 4096


def _json_string(text: str) -> str:
    """``text`` as ``orjson`` writes it in JSON (quotes, escapes), once per distinct
    value: a run has a few product ids and one feed. Bounded: emptied when full.
    A string ``orjson`` refuses (a lone surrogate) raises as ``orjson.dumps`` did."""
    found = _JSON_STRINGS.get(text)
    if found is None:
        found = orjson.dumps(text).decode()
        if len(_JSON_STRINGS) >= _JSON_STRINGS_MAX:
            _JSON_STRINGS.clear()
        _JSON_STRINGS[text] = found
    return found


DEPTH_BANDS_BPS = (10, 50, 100)
"""Bands around mid, in basis points, of the depth record's liquidity fields."""
_DEPTH_BANDS = tuple(Decimal(b) for b in DEPTH_BANDS_BPS)


@dataclass(frozen=True, slots=True)
class OrderBookDepth:
    """The top ``N`` levels of one product's book at one instant: the ``depth`` record.

    ``bids``/``asks`` are ``(price, size)`` pairs, best first. ``mid`` is exact;
    ``liquidity`` holds the (bid, ask) size totals within 10, 50 and 100 bps of mid
    (:meth:`OrderBook.liquidity_within`, bounds inclusive), whatever ``N`` is;
    ``imbalance`` is the bid share of the size of the ``N`` levels of both sides,
    quantized to 1e-10 like the summary's.
    """

    product_id: str
    time: datetime | None
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    mid: Decimal
    liquidity: tuple[tuple[Decimal, Decimal], ...]
    """(bid, ask) within each of :data:`DEPTH_BANDS_BPS`, in that order."""
    imbalance: Decimal
    feed: str = ""

    @classmethod
    def from_book(
        cls,
        book: OrderBook,
        levels: int,
        time: datetime | None = None,
        feed: str = "",
    ) -> OrderBookDepth | None:
        """The record of a valid book (None for an empty-sided, locked or crossed one).

        All in :data:`common.decimals.CTX`. Raises :class:`common.domain.DomainError`
        when a liquidity band adds up to more than an output can hold (1e20: only a
        band of a million levels at the size bound gets there, see
        :mod:`common.domain`); the book step turns that into a resync.
        """
        top = book.top()
        if top is None or top[0] >= top[2]:
            return None
        bids = tuple(book.depth(BID, levels))
        asks = tuple(book.depth(ASK, levels))
        with localcontext(CTX):
            bid_total = sum([size for _, size in bids], _ZERO)
            ask_total = sum([size for _, size in asks], _ZERO)
            mid = (top[0] + top[2]) / 2
            imbalance = (bid_total / (bid_total + ask_total)).quantize(_RATIO_EXP)
        liquidity = tuple(book.liquidity_within(bps) for bps in _DEPTH_BANDS)
        for bid, ask in liquidity:
            check_output(bid, "bid liquidity")
            check_output(ask, "ask liquidity")
        return cls(book.product_id, time, bids, asks, mid, liquidity, imbalance, feed)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (a fixed contract): decimals as canonical strings."""
        data: dict[str, Any] = {
            "type": "depth",
            "product_id": self.product_id,
            "time": _iso_utc(self.time),
            "feed": self.feed,
            "bids": [[plain(p), plain(s)] for p, s in self.bids],
            "asks": [[plain(p), plain(s)] for p, s in self.asks],
            "mid": plain(self.mid),
        }
        for bps, (bid, ask) in zip(DEPTH_BANDS_BPS, self.liquidity, strict=True):
            data[f"bid_liquidity_{bps}bps"] = plain(bid)
            data[f"ask_liquidity_{bps}bps"] = plain(ask)
        data["imbalance"] = plain(self.imbalance)
        return data

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()  # json.dumps' text, 3x faster

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrderBookDepth:
        """Inverse of :meth:`to_dict` (numerically equal decimals, same instant)."""
        time = data.get("time")
        return cls(
            product_id=data["product_id"],
            time=None if time is None else datetime.fromisoformat(time),
            bids=tuple((Decimal(p), Decimal(s)) for p, s in data["bids"]),
            asks=tuple((Decimal(p), Decimal(s)) for p, s in data["asks"]),
            mid=Decimal(data["mid"]),
            liquidity=tuple(
                (
                    Decimal(data[f"bid_liquidity_{bps}bps"]),
                    Decimal(data[f"ask_liquidity_{bps}bps"]),
                )
                for bps in DEPTH_BANDS_BPS
            ),
            imbalance=Decimal(data["imbalance"]),
            feed=data.get("feed", ""),
        )

    def __str__(self) -> str:
        feed = f"  [{self.feed}]" if self.feed else ""
        bid, ask = self.liquidity[0]
        return (
            f"{self.product_id}  depth {len(self.bids)}x{len(self.asks)} levels"
            f"  mid {plain(self.mid)}  imbalance {plain(self.imbalance)}"
            f"  within 10bps bid {plain(bid)} ask {plain(ask)}{feed}"
        )


AUDIT_RESULTS = ("match", "drift", "skipped", "failed")
"""Every value of :attr:`AuditRecord.result` (and of the metrics' ``result`` label)."""

Mismatch = tuple[str, Decimal, Decimal, Decimal]
"""``(side, price, our size, REST size)`` of one level that differs; a size of 0 is a
level one of the two books does not have."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit of one product's book against the exchange's REST book: the ``audit``
    record, whatever its result, so that a history says which stretches were verified.

    ``result`` is one of :data:`AUDIT_RESULTS`: ``match`` (every compared level equal),
    ``drift`` (``mismatches`` lists the untouched levels that differ, best first, bids
    then asks), ``skipped`` (``reason``: no book, no pending request, a snapshot or a
    reset in between) or ``failed`` (``reason``: why no REST book came). ``levels`` is
    the number of levels a side asked of the REST book; ``compared`` the (side, price)
    pairs compared, ``touched`` those left out because the stream changed them while
    the REST book was taken. ``time`` is when the book step compared; ``requested`` and
    ``replied`` when the REST request was sent and answered (the process's clock).
    """

    product_id: str
    time: datetime | None
    result: str
    levels: int
    compared: int = 0
    touched: int = 0
    mismatches: tuple[Mismatch, ...] = ()
    reason: str | None = None
    requested: datetime | None = None
    replied: datetime | None = None
    feed: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (a fixed contract): decimals as canonical strings."""
        return {
            "type": "audit",
            "product_id": self.product_id,
            "time": _iso_utc(self.time),
            "feed": self.feed,
            "result": self.result,
            "levels": self.levels,
            "compared": self.compared,
            "touched": self.touched,
            "mismatches": [
                {"side": side, "price": plain(p), "ours": plain(o), "rest": plain(r)}
                for side, p, o, r in self.mismatches
            ],
            "reason": self.reason,
            "requested": _iso_utc(self.requested),
            "replied": _iso_utc(self.replied),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditRecord:
        """Inverse of :meth:`to_dict` (numerically equal decimals, same instants)."""

        def when(key: str) -> datetime | None:
            value = data.get(key)
            return None if value is None else datetime.fromisoformat(value)

        return cls(
            product_id=data["product_id"],
            time=when("time"),
            result=data["result"],
            levels=int(data["levels"]),
            compared=int(data.get("compared", 0)),
            touched=int(data.get("touched", 0)),
            mismatches=tuple(
                (m["side"], Decimal(m["price"]), Decimal(m["ours"]), Decimal(m["rest"]))
                for m in data.get("mismatches", ())
            ),
            reason=data.get("reason"),
            requested=when("requested"),
            replied=when("replied"),
            feed=data.get("feed", ""),
        )

    def __str__(self) -> str:
        feed = f"  [{self.feed}]" if self.feed else ""
        detail = f"{self.compared} levels compared"
        if self.mismatches:
            shown_ = "; ".join(
                f"{side} {plain(p)}: ours {plain(o)}, REST {plain(r)}"
                for side, p, o, r in self.mismatches[:5]
            )
            more = len(self.mismatches) - 5
            detail += f", {len(self.mismatches)} differ: {shown_}"
            if more > 0:
                detail += f" (+{more} more)"
        if self.reason:
            detail = f"{detail} ({self.reason})" if self.compared else self.reason
        return f"{self.product_id}  audit {self.result}: {detail}{feed}"


def _iso_utc(time: datetime | None) -> str | None:
    """ISO-8601 in UTC with 'Z' and microseconds; a naive datetime is taken as UTC."""
    if time is None:
        return None
    if time.tzinfo is None:
        time = time.replace(tzinfo=UTC)
    else:
        time = time.astimezone(UTC)
    return time.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
