"""The one naive reference book of the tests: a plain dict per side, recomputed naively.

It is deliberately the obviously-right way (``max``/``min`` over dicts, validate the whole
message before touching anything) so that the real ``OrderBook``, the parsers, the source
and the local exchange can all be checked against it. It takes every input form the tests
produce: raw wire levels (text, any side spelling), parsed events (``BookSnapshot``,
``BookChanges``, ``BookReset``) and whole Exchange / Advanced Trade frames.

``ReferenceBook`` is one product's book; ``ReferenceBooks`` holds one per product and
applies frames of either protocol.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from events import BookChanges, BookReset, BookSnapshot
from orderbook import BookCondition

SIDES = {"bid": "bid", "buy": "bid", "ask": "ask", "sell": "ask", "offer": "ask"}
"""Every side spelling of both feeds, to the book's two sides."""
EXCHANGE_SIDES = frozenset({"buy", "sell"})
"""The sides an Exchange-feed frame may name."""
AT_SIDES = frozenset({"bid", "offer"})
"""The sides an Advanced Trade frame may name."""


class InvalidMessage(ValueError):
    """A change that no correct book may apply; the whole message is refused."""


def _number(value: Any) -> Decimal:
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise InvalidMessage(f"not a number: {value!r}") from exc
    if not number.is_finite():
        raise InvalidMessage(f"not a finite number: {value!r}")
    return number


class ReferenceBook:
    """One product's book: ``sides["bid"]`` and ``sides["ask"]``, Decimal price -> size."""

    def __init__(self) -> None:
        self.sides: dict[str, dict[Decimal, Decimal]] = {"bid": {}, "ask": {}}
        self.live = False
        """True between a snapshot and the next reset (what a consumer may serve)."""

    @property
    def bids(self) -> dict[Decimal, Decimal]:
        return self.sides["bid"]

    @property
    def asks(self) -> dict[Decimal, Decimal]:
        return self.sides["ask"]

    # -- input ---------------------------------------------------------------------------
    def snapshot(self, bids: Iterable, asks: Iterable) -> None:
        """Replace the book; a price repeated within a side keeps its last size."""
        sides = {}
        for side, levels in (("bid", bids), ("ask", asks)):
            book = {_number(p): _number(s) for p, s in levels}
            sides[side] = {p: s for p, s in book.items() if s != 0}
        self.sides, self.live = sides, True

    def changes(self, changes: Iterable, sides: Collection[str] = SIDES) -> None:
        """Absolute new sizes (0 deletes); validated whole first, then applied whole.
        ``sides``: the side spellings allowed (a frame allows its protocol's only)."""
        parsed = []
        for change in changes:
            if len(change) != 3:
                raise InvalidMessage(f"not (side, price, size): {change!r}")
            side, price, size = change
            if side not in sides or side not in SIDES:
                raise InvalidMessage(f"unknown side {side!r}")
            p, s = _number(price), _number(size)
            if p <= 0 or s < 0:
                raise InvalidMessage(f"bad level {price!r} {size!r}")
            parsed.append((self.sides[SIDES[side]], p, s))
        for levels, p, s in parsed:
            if s == 0:
                levels.pop(p, None)
            else:
                levels[p] = s

    def reset(self) -> None:
        self.sides, self.live = {"bid": {}, "ask": {}}, False

    def apply(self, event: BookSnapshot | BookChanges | BookReset) -> None:
        """A parsed event, as a consumer of the source sees it."""
        if isinstance(event, BookReset):
            self.reset()
        elif isinstance(event, BookSnapshot):
            self.snapshot(event.bids, event.asks)
        else:
            assert self.live, "changes before a snapshot must never reach the consumer"
            self.changes(event.changes)

    # -- queries -------------------------------------------------------------------------
    def best(self, side: str) -> tuple[Decimal, Decimal] | None:
        book = self.sides[SIDES[side]]
        if not book:
            return None
        price = max(book) if SIDES[side] == "bid" else min(book)
        return price, book[price]

    def top(self) -> tuple[Decimal, Decimal, Decimal, Decimal] | None:
        """``(bid, bid_size, ask, ask_size)``, or None with an empty side."""
        bid, ask = self.best("bid"), self.best("ask")
        return None if bid is None or ask is None else bid + ask

    def condition(self) -> BookCondition:
        bid, ask = self.best("bid"), self.best("ask")
        if bid is None and ask is None:
            return BookCondition.EMPTY
        if bid is None:
            return BookCondition.NO_BIDS
        if ask is None:
            return BookCondition.NO_ASKS
        if bid[0] > ask[0]:
            return BookCondition.CROSSED
        if bid[0] == ask[0]:
            return BookCondition.LOCKED
        return BookCondition.OK

    def depth(self, side: str, n: int) -> list[tuple[Decimal, Decimal]]:
        book = self.sides[SIDES[side]]
        best_first = sorted(book, reverse=SIDES[side] == "bid")
        return [(p, book[p]) for p in best_first][:n]


class ReferenceBooks:
    """One :class:`ReferenceBook` per product, fed whole frames of either protocol.

    As strict as a correct client: a frame that cannot be applied whole raises (and
    changes nothing), a change before its product's snapshot included, and each protocol
    accepts its own side spellings only (``buy``/``sell``, ``bid``/``offer``)."""

    def __init__(self) -> None:
        self.books: dict[str, ReferenceBook] = {}

    def __getitem__(self, product_id: str) -> ReferenceBook:
        return self.books.setdefault(product_id, ReferenceBook())

    def __contains__(self, product_id: str) -> bool:
        return product_id in self.books

    def true_book_form(self, product_id: str) -> tuple[dict, dict]:
        """``(bids, asks)`` as ``LocalExchange.true_book`` returns them."""
        book = self[product_id]
        return dict(book.bids), dict(book.asks)

    def _live(self, product_id: Any) -> ReferenceBook:
        """The book changes go to: refused before the product's snapshot."""
        book = self.books.get(product_id)
        if book is None or not book.live:
            raise InvalidMessage(f"changes for {product_id!r} before its snapshot")
        return book

    def apply_exchange(self, msg: dict) -> None:
        """An Exchange-feed frame (decoded JSON); anything but book frames is ignored."""
        if msg.get("type") == "snapshot":
            self[msg["product_id"]].snapshot(msg["bids"], msg["asks"])
        elif msg.get("type") == "l2update":
            self._live(msg["product_id"]).changes(msg["changes"], EXCHANGE_SIDES)

    def apply_at(self, msg: dict) -> None:
        """An Advanced Trade frame (decoded JSON); only ``l2_data`` touches the books."""
        if msg.get("channel") != "l2_data":
            return
        for event in msg["events"]:
            levels = [
                (u["side"], u["price_level"], u["new_quantity"])
                for u in event["updates"]
            ]
            if event["type"] == "snapshot":
                if any(s not in AT_SIDES for s, _, _ in levels):
                    raise InvalidMessage(f"unknown side in {event!r}")
                self[event["product_id"]].snapshot(
                    [(p, q) for s, p, q in levels if s == "bid"],
                    [(p, q) for s, p, q in levels if s == "offer"],
                )
            else:
                self._live(event["product_id"]).changes(levels, AT_SIDES)
