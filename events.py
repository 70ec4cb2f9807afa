"""Normalised order book events: what the feed parsers produce and the book step consumes.

The parsers turn raw Coinbase frames (two wire formats) into these three shapes so that
nothing downstream ever sees JSON. Sides are normalised once to :class:`Side`;
prices and sizes are ``Decimal``. Events are small frozen slotted dataclasses so that
Bytewax can pickle them cheaply when it routes them between workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum


class Side(StrEnum):
    """A side of the book. A ``StrEnum``: ``Side.BID == "bid"``, and it prints as ``bid``.

    The parsers map every feed spelling (Exchange ``buy``/``sell``, Advanced Trade
    ``bid``/``offer``) to these two members once, so nothing downstream compares raw
    feed strings. Members hash and compare as their ``str`` values, so the book's
    per-change side test costs the same as with plain strings (measured in
    bench/bench_orderbook.py).
    """

    BID = "bid"
    ASK = "ask"


BID = Side.BID
ASK = Side.ASK

Level = tuple[Decimal, Decimal]
"""``(price, size)``."""

Change = tuple[Side, Decimal, Decimal]
"""``(side, price, new_absolute_size)``; size 0 removes the level."""


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """The whole book of one product: replaces whatever the consumer held before."""

    product_id: str
    bids: list[Level]
    asks: list[Level]
    time: datetime | None
    """Exchange event time, if the feed sent one (the Exchange feed's snapshot has none)."""
    feed: str
    """Where the data came from, carried by the records of this event (``exchange``,
    ``advanced-trade``, ``sim``, ``replay``...): see :mod:`coinbase.feeds` for feed and
    protocol."""
    received_ns: int = 0
    """``time.time_ns()`` when the frame came off the socket (0 when not from a socket)."""


@dataclass(frozen=True, slots=True)
class BookChanges:
    """New absolute sizes for some levels of one product, to apply whole or not at all."""

    product_id: str
    changes: list[Change]
    time: datetime | None
    feed: str
    received_ns: int = 0


@dataclass(frozen=True, slots=True)
class BookReset:
    """The consumer's book for this product is stale: drop it and wait for a snapshot.

    Sent on every disconnect, sequence gap or resume, before anything else of the product.
    """

    product_id: str
    reason: str
    feed: str
    received_ns: int = 0


BookEvent = BookSnapshot | BookChanges | BookReset
