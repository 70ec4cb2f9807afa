"""What every importer yields: a recording's records, with the book events they carry.

An importer turns a foreign file into :class:`Item` s in receive order: a Coinbase frame
of one product (``text``, in the protocol of the recording it will be written to, with
the decoded ``event``), or a reset (``event`` a :class:`~events.BookReset`, ``text``
None) where the product's book must start afresh, written as the recording's
``connected`` record. A converted file is therefore an ordinary version 2 recording
(:mod:`recording.format`): it replays through the same decoder as a recorded one and the
local exchange serves it.

:class:`Streams` keeps, per product of one source (a file, or a connection within one),
the rule every recording follows: a product's stream begins with a reset, then a
snapshot; updates before the first snapshot, or after a reset and before the next
snapshot, are dropped (counted): they would change a book nobody holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

import orjson

from common import domain
from common.decimals import plain
from events import ASK, BID, BookChanges, BookEvent, BookReset, BookSnapshot

# Why a product's book starts afresh (the reason of the BookReset, shown in the report).
START = "start"
"""The product's first stream of the whole conversion (not counted as a reset)."""
NEXT_FILE = "next file"
"""Another file takes the product over (the next day's file, starting with a snapshot)."""
CONNECTION = "connection"
"""The capture says the connection was (re)opened."""
GAP = "gap"
"""Advanced Trade messages are missing (a ``sequence_num`` jump)."""
MALFORMED = "malformed"
"""A book frame of the product could not be applied whole: its book is unknown after it."""
NEW_SNAPSHOT = "new snapshot"
"""A new snapshot replaces the book with no reconnection in the file (tardis.dev)."""
REASONS = (START, NEXT_FILE, CONNECTION, GAP, MALFORMED, NEW_SNAPSHOT)

SKIP_BEFORE_SNAPSHOT = "updates before a snapshot"


class Item(NamedTuple):
    """One record of the recording to write (see the module docstring)."""

    t_ns: int
    """Receive time, ns since the epoch (the recording's ``t_ns``)."""
    product_id: str
    event: BookEvent
    text: str | None
    """The frame's text; None for a reset, or for a frame built from ``event`` when it is
    written (:func:`exchange_frame`)."""
    source: str
    """Which source (file, or connection within one) it came from: the merge keeps
    streams apart."""
    sequence: int | None = None
    """An Advanced Trade frame's ``sequence_num`` (the writer renumbers each product's
    frames from 0 after each reset, as the recorder's one connection per product does)."""

    @property
    def is_reset(self) -> bool:
        return type(self.event) is BookReset

    def frame(self) -> str:
        """The text to record: the foreign frame itself, or one built from the event."""
        return self.text if self.text is not None else exchange_frame(self.event)


def t_ns_of(item: Item) -> int:
    """The merge key (``operator.attrgetter`` costs the same; this one is named)."""
    return item.t_ns


# -- numbers and times --------------------------------------------------------------------


def price_of(text: str) -> Decimal:
    """A price in the service's domain (:func:`common.domain.price`): the decoder would
    refuse any other at replay, so an importer skips it where it reads it."""
    return domain.price(text)


def size_of(text: str) -> Decimal:
    """A size in the service's domain (:func:`common.domain.size`)."""
    return domain.size(text)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def time_of_us(us: int) -> datetime:
    """An exact UTC time from microseconds since the epoch (no float rounding)."""
    return _EPOCH + timedelta(0, 0, us)  # positional: 0.40 -> 0.31 µs


def iso_of(time: datetime | None) -> str | None:
    """The time text Coinbase frames carry: ``2026-08-25T03:35:57.300000Z``."""
    if time is None:
        return None
    return time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seconds_to_ns(text: str) -> int:
    """Unix seconds as text (``1616161616.1234567``) to integer ns, exactly; ValueError
    for anything but a plain non-negative number."""
    whole, dot, fraction = text.partition(".")
    if whole.isdigit() and (not dot or fraction.isdigit()) and len(whole) < 12:
        return int(whole) * 1_000_000_000 + int((fraction + "000000000")[:9])
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError, TypeError):
        raise ValueError(f"time {text[:40]!r} is not a number") from None
    if not (value.is_finite() and 0 <= value < 10**11):
        raise ValueError(f"time {text[:40]!r} is not a time")
    return int(value.scaleb(9))


# -- Exchange-protocol frames built from events --------------------------------------------

_EXCHANGE_SIDE = {BID: "buy", ASK: "sell"}


def exchange_frame(event: BookEvent) -> str:
    """An Exchange-feed ``snapshot`` or ``l2update`` frame holding ``event``, prices and
    sizes as canonical decimal text (:func:`common.decimals.plain`), bids best first."""
    if type(event) is BookSnapshot:
        frame = {
            "type": "snapshot",
            "product_id": event.product_id,
            "bids": [[plain(p), plain(s)] for p, s in event.bids],
            "asks": [[plain(p), plain(s)] for p, s in event.asks],
        }
    elif type(event) is BookChanges:
        frame = {
            "type": "l2update",
            "product_id": event.product_id,
            "changes": [
                [_EXCHANGE_SIDE[side], plain(p), plain(s)]
                for side, p, s in event.changes
            ],
        }
    else:
        raise TypeError(f"no frame for {type(event).__name__}")
    if event.time is not None:
        frame["time"] = iso_of(event.time)
    return orjson.dumps(frame).decode()


# -- per-source streams ---------------------------------------------------------------------


class Streams:
    """The products of one source: which are live (a snapshot since the last reset),
    which have a reset written that no snapshot followed yet."""

    __slots__ = ("feed", "live", "pending", "skipped", "source")

    def __init__(self, source: str, feed: str, skipped: Counter) -> None:
        self.source = source
        self.feed = feed
        self.live: set[str] = set()
        self.pending: set[str] = set()
        """Products whose reset was yielded and whose snapshot has not come yet."""
        self.skipped = skipped
        """``(product or None, why) -> count``, shared with the source's reader."""

    def reset(self, t_ns: int, products, reason: str) -> Iterator[Item]:
        """Resets for ``products`` (those not already waiting for a snapshot)."""
        for product in sorted(products):
            self.live.discard(product)
            if product not in self.pending:
                self.pending.add(product)
                yield Item(
                    t_ns,
                    product,
                    BookReset(product, reason, self.feed, t_ns),
                    None,
                    self.source,
                )

    def snapshot(
        self,
        t_ns: int,
        event: BookSnapshot,
        text: str | None,
        sequence: int | None = None,
    ) -> Item:
        product = event.product_id
        self.pending.discard(product)
        self.live.add(product)
        return Item(t_ns, product, event, text, self.source, sequence)

    def update(
        self,
        t_ns: int,
        event: BookChanges,
        text: str | None,
        sequence: int | None = None,
    ) -> Item | None:
        product = event.product_id
        if product not in self.live:
            self.skipped[product, SKIP_BEFORE_SNAPSHOT] += 1
            return None
        return Item(t_ns, product, event, text, self.source, sequence)
