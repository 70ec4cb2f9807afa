"""One product's level-2 order book; the records it emits are in :mod:`records`.

Pure logic: no sockets, no Bytewax. Each side is a ``SortedDict`` keyed by ``Decimal``
price with ``Decimal`` size, so the best bid (last key) and best ask (first key) cost
O(1) and a change costs O(log n); nothing ever scans a side. Bids are a plain ascending
``SortedDict`` (no key function) so the state pickles.

Rules the book enforces (they come from what the Coinbase feeds really send):

* A snapshot REPLACES the book; zero-size levels in it are dropped.
* A change carries the NEW ABSOLUTE size of a level; any zero ("0", "0.00", ...) removes
  it; removing an absent level is a no-op; "8442.65" and "8442.65000000" are one level.
* A message is applied whole or not at all: every change is validated first, and an
  invalid one raises :class:`InvalidChange` (a ``ValueError``) leaving the book as it was
  (a :class:`CheckedChanges` list was validated by the decoder that built it).
* A book with an empty side, or a crossed or locked book, never yields a summary: the
  caller asks :attr:`OrderBook.condition` and resyncs.

Decimal arithmetic uses a private context (34 digits, half-even), never the caller's
thread-local one, so results do not depend on who changed ``decimal.getcontext()``.
The book checks only what keeps it consistent (finite, price > 0, size >= 0); the
number domain (:mod:`common.domain`: bounds that every derived value and every output
can hold) is enforced where values enter, by the decoders and readers.
Exact results stay exact (``spread``, ``mid``: exact while prices have at most 33
significant digits); divisions are quantized so records stay
readable: ``spread_pct`` and ``imbalance`` to 1e-10, ``microprice`` and fill ``vwap`` to
the finer of the prices' scales plus 4 digits (65083.66 -> 0.000001).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import (
    Decimal,
    InvalidOperation,
    localcontext,
)
from enum import StrEnum
from itertools import islice

from sortedcontainers import SortedDict
from sortedcontainers.sorteddict import SortedItemsView

import records
from common.decimals import CTX as _CTX
from events import ASK, BID, Change, Level
from records import _EXTRA_PRICE_DIGITS, _TEN_THOUSAND, _ZERO

__all__ = [
    "BookCondition",
    "CheckedChanges",
    "CheckedLevels",
    "Fill",
    "InvalidChange",
    "OrderBook",
]

_SIDE_INDEX: dict[str, int] = {BID.value: 0, ASK.value: 1}
"""A change's side, an :class:`events.Side` (equal to its value, so keyed by it): the
decoders map the feeds' spellings (Exchange buy/sell, Advanced Trade bid/offer) once."""


class CheckedChanges(list):
    """Changes whose every value was checked where it entered: ``(side, price, size)``
    with ``side`` an :class:`events.Side` member, ``price`` a ``Decimal`` in the price
    domain and ``size`` one in the size domain (:mod:`common.domain`, stricter than what
    the book checks). The decoders build their changes as this list;
    :meth:`OrderBook.apply_changes` then skips its own checks and the staging pass:
    nothing in such a list can be refused, so the message is still applied whole.

    Build one only from values checked so (the decoders do, in ``coinbase/decode.py``);
    any other list of changes is checked change by change as before. Measured on the
    46,000-level book (bench/book_shape.py's 100,000 changes, CPU time, three runs):
    apply 620 -> 437 ns a change.
    """

    __slots__ = ()


class CheckedLevels(list):
    """Snapshot levels whose every value was checked where it entered: ``(price,
    size)`` tuples of Decimals, prices in the price domain and sizes in the size domain
    (:mod:`common.domain`). The snapshot decoders (``coinbase/fast_snapshot.py``) build
    their levels as this list; :meth:`OrderBook.apply_snapshot` then skips its own
    checks (two ``is_finite`` passes and two ``min`` over each side: 2-3 ms of a
    46,000-level snapshot). Any other list of levels is checked as before.
    """

    __slots__ = ()


class InvalidChange(ValueError):
    """A change or snapshot level that must not touch the book; the book is unchanged.

    ``change`` is the offending item exactly as the caller passed it.
    """

    def __init__(self, change: object, reason: str) -> None:
        super().__init__(f"invalid order book change {change!r}: {reason}")
        self.change = change
        self.reason = reason


class BookCondition(StrEnum):
    """Whether the top of the book can be trusted; anything but OK means resync.

    :attr:`OrderBook.condition` is one of the first six; ``AWAITING_SNAPSHOT`` is the
    book step's, for a product whose book was dropped (a reset, a failed event) and that
    waits for the next snapshot (``book_step.BookState.condition``).
    """

    OK = "ok"
    EMPTY = "empty"
    NO_BIDS = "no_bids"
    NO_ASKS = "no_asks"
    CROSSED = "crossed"
    LOCKED = "locked"
    AWAITING_SNAPSHOT = "awaiting-snapshot"


def _analytics_side(side: str) -> int:
    """Analytics take only ``"bid"``/``"ask"``: "buy" would be ambiguous for a fill."""
    if side == BID:
        return 0
    if side == ASK:
        return 1
    raise ValueError(f"side must be 'bid' or 'ask', got {side!r}")


def _to_decimal(value: object, what: str, change: object) -> Decimal:
    """Slow path for non-Decimal input: str (or int) to Decimal, else InvalidChange."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str) or (type(value) is int):
        try:
            return Decimal(value)
        except (InvalidOperation, ValueError):
            raise InvalidChange(change, f"{what} {value!r} is not a number") from None
    raise InvalidChange(
        change, f"{what} must be a Decimal or str, got {type(value).__name__}"
    )


def _check(price: Decimal, size: Decimal, change: object) -> None:
    """Raise InvalidChange unless price is finite and > 0 and size finite and >= 0."""
    if not (price.is_finite() and price > _ZERO):
        raise InvalidChange(change, f"price {price} must be a finite number > 0")
    if not (size.is_finite() and size >= _ZERO):
        raise InvalidChange(change, f"size {size} must be a finite number >= 0")


def _build_side(levels: Iterable[Level], side: str) -> SortedDict:
    """A new side from (price, size) pairs; zero sizes dropped; raises InvalidChange.

    Fast path for all-Decimal input: one C-level ``dict()`` build, C-level checks via
    ``map``/``min`` (none for :class:`CheckedLevels`), and a sort that is linear on
    already ordered (wire-order) prices. Most of what is left is hashing the fresh
    Decimal prices (~330 ns each, a modular power in CPython's ``Decimal.__hash__``).
    """
    if type(levels) is CheckedLevels:  # the decoders checked every value
        book = dict(levels)
        fast = True
    else:
        if not isinstance(levels, (list, tuple)):
            levels = list(levels)
        try:
            book = dict(levels)
            prices = book.keys()
            sizes = book.values()
            # Unbound Decimal.is_finite raises TypeError for non-Decimals: a free
            # type check.
            fast = (
                all(map(Decimal.is_finite, prices))
                and all(map(Decimal.is_finite, sizes))
                and (not book or (min(prices) > _ZERO and min(sizes) >= _ZERO))
            )
        except (TypeError, ValueError, InvalidOperation):
            fast = False
    if not fast:
        book = {}
        for level in levels:
            try:
                price, size = level
            except (TypeError, ValueError):
                raise InvalidChange(
                    level, f"snapshot {side} level is not a (price, size) pair"
                ) from None
            try:
                if type(price) is not Decimal:
                    price = _to_decimal(price, "price", level)
                if type(size) is not Decimal:
                    size = _to_decimal(size, "size", level)
                _check(price, size, level)
            except InvalidChange as err:
                raise InvalidChange(
                    level, f"snapshot {side} level: {err.reason}"
                ) from None
            book[price] = size
    if book and not all(book.values()):
        book = {price: size for price, size in book.items() if size}
    # SortedDict(book) would copy the dict once more; fill its two halves directly.
    side = SortedDict()
    dict.update(side, book)
    side._list_update(book)
    return side


def _copy_side(side: SortedDict) -> SortedDict:
    """Share the immutable Decimals; only the containers are new."""
    return SortedDict(dict.items(side))


def _side_state(side: SortedDict) -> tuple[str, str]:
    """Prices and sizes as two space-joined strings: tiny to pickle, exact forms kept."""
    prices = list(side.keys())
    return " ".join(map(str, prices)), " ".join(map(str, map(side.__getitem__, prices)))


def _side_from_state(prices: str, sizes: str) -> SortedDict:
    return SortedDict(
        dict(
            zip(map(Decimal, prices.split()), map(Decimal, sizes.split()), strict=True)
        )
    )


def _walk(book: SortedDict, prices: Iterator[Decimal]) -> Iterator[Level]:
    for price in prices:
        yield price, book[price]


def _fine_quantum(a: Decimal, b: Decimal) -> Decimal:
    """Quantum with ``_EXTRA_PRICE_DIGITS`` more places than the finer of two prices.

    An exact difference carries the smaller exponent of its operands, and quantize only
    looks at the quantum's exponent: cheaper than ``as_tuple()`` by a factor of ~5.
    """
    return _CTX.subtract(a, b).scaleb(-_EXTRA_PRICE_DIGITS, _CTX)


def _best_bid_price(bids: SortedDict) -> Decimal:
    """Highest key of a non-empty side, O(1).

    Reads sortedcontainers' internal list of sublists (stable since 1.x, pinned <3):
    ``peekitem(-1)`` gives the same answer but costs ~5x more, and the top of the book
    is read after every message. The property tests check both against a naive model.
    """
    return bids._list._lists[-1][-1]


def _best_ask_price(asks: SortedDict) -> Decimal:
    """Lowest key of a non-empty side, O(1) (see :func:`_best_bid_price`)."""
    return asks._list._lists[0][0]


@dataclass(frozen=True, slots=True)
class Fill:
    """Result of walking one side for a size: thin books give ``complete=False``.

    ``side`` "bid" means selling into the bids, "ask" buying from the asks.
    ``filled`` is what the side could absorb (at most ``requested``), ``notional`` its
    exact cost, ``vwap`` ``notional / filled`` (None when nothing filled), ``levels``
    how many price levels were touched, ``worst_price`` the last one touched.
    """

    side: str
    requested: Decimal
    filled: Decimal
    notional: Decimal
    vwap: Decimal | None
    complete: bool
    levels: int
    worst_price: Decimal | None


class OrderBook:
    """One product's level-2 book (see module docstring for the rules)."""

    __slots__ = ("_asks", "_bids", "product_id")

    def __init__(self, product_id: str) -> None:
        self.product_id = product_id
        self._bids: SortedDict = SortedDict()
        self._asks: SortedDict = SortedDict()

    # -- mutation ---------------------------------------------------------------------

    def apply_snapshot(
        self,
        bids: Iterable[tuple[Decimal | str, Decimal | str]],
        asks: Iterable[tuple[Decimal | str, Decimal | str]],
    ) -> None:
        """Replace the whole book with these levels (zero sizes dropped).

        Pass ``(Decimal, Decimal)`` pairs, ideally in wire order, for the fast path; str
        is accepted too. Any bad level raises :class:`InvalidChange` and the old book
        stays. A price repeated within a side keeps its last size.
        """
        new_bids = _build_side(bids, BID)
        new_asks = _build_side(asks, ASK)
        self._bids = new_bids
        self._asks = new_asks

    def apply_changes(self, changes: Iterable[Change]) -> None:
        """Apply ``(side, price, new_absolute_size)`` changes, all or none.

        ``side`` is an :class:`events.Side` (``"bid"``/``"ask"``). Size 0 removes the level; removing
        an absent level is a no-op. Prices and sizes may be Decimal (fast path), str or
        int; changes apply in order, so a price repeated in one message ends at its last
        size. Raises :class:`InvalidChange` naming the first bad change; nothing is applied.
        A :class:`CheckedChanges` list is applied without the checks (see there).
        """
        if type(changes) is CheckedChanges:
            self._apply_checked(changes)
            return
        books = (self._bids, self._asks)
        side_index = _SIDE_INDEX
        staged = []
        stage = staged.append
        for change in changes:
            try:
                side, price, size = change
                book = books[side_index[side]]
            except (KeyError, TypeError, ValueError):
                raise InvalidChange(
                    change,
                    "expected (side, price, size) with side one of "
                    f"{sorted(side_index)}",
                ) from None
            if type(price) is not Decimal:
                price = _to_decimal(price, "price", change)
            if type(size) is not Decimal:
                size = _to_decimal(size, "size", change)
            if not (
                price.is_finite()
                and size.is_finite()
                and price > _ZERO
                and size >= _ZERO
            ):
                _check(price, size, change)
            stage((book, price, size))
        # Straight to SortedDict's two halves (its dict and its sorted key list): the
        # membership test below is the one SortedDict.__setitem__/__delitem__ would
        # repeat, and this loop runs for every change of every message.
        dict_set = dict.__setitem__
        dict_del = dict.__delitem__
        for book, price, size in staged:
            if price in book:
                if size:
                    dict_set(book, price, size)
                else:
                    dict_del(book, price)
                    book._list_remove(price)
            elif size:
                dict_set(book, price, size)
                book._list_add(price)

    def _apply_checked(self, changes: CheckedChanges) -> None:
        """The second half of :meth:`apply_changes` alone: every change is valid."""
        bids, asks = self._bids, self._asks
        dict_set = dict.__setitem__
        dict_del = dict.__delitem__
        for side, price, size in changes:
            book = bids if side is BID else asks
            if price in book:
                if size:
                    dict_set(book, price, size)
                else:
                    dict_del(book, price)
                    book._list_remove(price)
            elif size:
                dict_set(book, price, size)
                book._list_add(price)

    def clear(self) -> None:
        """Drop every level (on a BookReset: the book is stale until a snapshot)."""
        self._bids = SortedDict()
        self._asks = SortedDict()

    # -- top of book ------------------------------------------------------------------

    def best_bid(self) -> Level | None:
        """(price, size) of the highest bid, or None."""
        bids = self._bids
        if not bids:
            return None
        price = _best_bid_price(bids)
        return price, bids[price]

    def best_ask(self) -> Level | None:
        """(price, size) of the lowest ask, or None."""
        asks = self._asks
        if not asks:
            return None
        price = _best_ask_price(asks)
        return price, asks[price]

    def top(self) -> tuple[Decimal, Decimal, Decimal, Decimal] | None:
        """(bid_price, bid_size, ask_price, ask_size), or None if a side is empty.

        Cheap (two O(1) peeks) so the caller can compare it with the previous top and
        emit only when it changed. Crossed tops are returned: check ``condition``.
        """
        bids, asks = self._bids, self._asks
        if not bids or not asks:
            return None
        bid = _best_bid_price(bids)
        ask = _best_ask_price(asks)
        return bid, bids[bid], ask, asks[ask]

    @property
    def condition(self) -> BookCondition:
        bids, asks = self._bids, self._asks
        if not bids:
            return BookCondition.NO_BIDS if asks else BookCondition.EMPTY
        if not asks:
            return BookCondition.NO_ASKS
        best_bid = _best_bid_price(bids)
        best_ask = _best_ask_price(asks)
        if best_bid < best_ask:
            return BookCondition.OK
        return BookCondition.LOCKED if best_bid == best_ask else BookCondition.CROSSED

    @property
    def is_crossed(self) -> bool:
        return self.condition is BookCondition.CROSSED

    @property
    def is_locked(self) -> bool:
        return self.condition is BookCondition.LOCKED

    def summary(
        self, time: datetime | None = None, feed: str = ""
    ) -> records.OrderBookSummary | None:
        """The top as an :class:`~records.OrderBookSummary`, or None unless OK."""
        top = self.top()
        if top is None or top[0] >= top[2]:
            return None
        return records.OrderBookSummary.from_top(
            self.product_id, *top, time=time, feed=feed
        )

    # -- depth analytics (read-only walks from the top, no copies) -------------------

    def levels(self, side: str) -> Iterator[Level]:
        """Iterate (price, size) of one side, best first (bids descending)."""
        if _analytics_side(side) == 0:
            return _walk(self._bids, reversed(self._bids))
        return _walk(self._asks, iter(self._asks))

    def depth(self, side: str, n: int) -> list[Level]:
        """The top ``n`` levels of ``side`` ("bid"/"ask"), best first."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return list(islice(self.levels(side), n))

    def liquidity_within(
        self, bps: Decimal | int | str
    ) -> tuple[Decimal, Decimal] | None:
        """Total (bid size, ask size) priced within ``bps`` basis points of mid.

        Bounds are inclusive: bids >= mid*(1-bps/1e4), asks <= mid*(1+bps/1e4).
        None when a side is empty (no mid). Walks only the levels inside the band.
        """
        bps = bps if type(bps) is Decimal else _to_decimal(bps, "bps", bps)
        if not (bps.is_finite() and bps >= _ZERO):
            raise ValueError(f"bps must be a finite number >= 0, got {bps}")
        top = self.top()
        if top is None:
            return None
        ctx = _CTX
        mid = ctx.divide(ctx.add(top[0], top[2]), 2)
        offset = ctx.divide(ctx.multiply(mid, bps), _TEN_THOUSAND)
        bids, asks = self._bids, self._asks
        low, high = ctx.subtract(mid, offset), ctx.add(mid, offset)
        with localcontext(ctx):  # sums in CTX too, whatever the thread's context
            bid_total = sum(map(bids.__getitem__, bids.irange(minimum=low)), _ZERO)
            ask_total = sum(map(asks.__getitem__, asks.irange(maximum=high)), _ZERO)
        return bid_total, ask_total

    def vwap_for_size(self, side: str, size: Decimal | int | str) -> Fill:
        """Average price to fill ``size`` by walking ``side`` from its best level.

        "bid" = selling into the bids, "ask" = buying from the asks. Never raises for a
        thin book: the :class:`Fill` says how much was ``filled`` and ``complete``.
        """
        size = size if type(size) is Decimal else _to_decimal(size, "size", size)
        if not (size.is_finite() and size > _ZERO):
            raise ValueError(f"size must be a finite number > 0, got {size}")
        ctx = _CTX
        remaining = size
        notional = _ZERO
        used = 0
        first = last = None
        for price, available in self.levels(side):
            take = min(remaining, available)
            notional = ctx.add(notional, ctx.multiply(price, take))
            remaining = ctx.subtract(remaining, take)
            used += 1
            if first is None:
                first = price
            last = price
            if not remaining:
                break
        filled = ctx.subtract(size, remaining)
        vwap = None
        if filled:
            vwap = ctx.divide(notional, filled).quantize(
                _fine_quantum(first, last), context=ctx
            )
        return Fill(
            side=side,
            requested=size,
            filled=filled,
            notional=notional,
            vwap=vwap,
            complete=not remaining,
            levels=used,
            worst_price=last,
        )

    # -- views and dunders ------------------------------------------------------------

    @property
    def bids(self) -> SortedItemsView:
        """Read-only (price, size) view of the bids in ASCENDING price order."""
        return self._bids.items()

    @property
    def asks(self) -> SortedItemsView:
        """Read-only (price, size) view of the asks in ascending price order."""
        return self._asks.items()

    def __len__(self) -> int:
        """Number of price levels on both sides."""
        return len(self._bids) + len(self._asks)

    def __eq__(self, other: object) -> bool:
        """Same product and the same levels (numerically: 1.0 == 1.00)."""
        if not isinstance(other, OrderBook):
            return NotImplemented
        return (
            self.product_id == other.product_id
            and dict.__eq__(self._bids, other._bids)
            and dict.__eq__(self._asks, other._asks)
        )

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return (
            f"OrderBook({self.product_id!r}, bids={len(self._bids)}, "
            f"asks={len(self._asks)}, condition={self.condition.value})"
        )

    # Bytewax deep-copies touched state every epoch and pickles it for recovery.
    # Decimals are immutable, so a deep copy only needs new containers; the pickled
    # form is four space-joined strings (exact text of every price and size), several
    # times smaller and faster than pickling Decimal objects one by one.

    def __deepcopy__(self, memo: dict) -> OrderBook:
        new = OrderBook.__new__(OrderBook)
        new.product_id = self.product_id
        new._bids = _copy_side(self._bids)
        new._asks = _copy_side(self._asks)
        return new

    def __copy__(self) -> OrderBook:
        return self.__deepcopy__({})

    def __getstate__(self) -> tuple:
        return (1, self.product_id, *_side_state(self._bids), *_side_state(self._asks))

    def __setstate__(self, state: tuple) -> None:
        version, product_id, bid_prices, bid_sizes, ask_prices, ask_sizes = state
        if version != 1:
            raise ValueError(f"unknown OrderBook state version {version!r}")
        self.product_id = product_id
        self._bids = _side_from_state(bid_prices, bid_sizes)
        self._asks = _side_from_state(ask_prices, ask_sizes)
