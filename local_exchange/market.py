"""Deterministic simulation of Coinbase-like level-2 order books: no sockets, no clocks.

The local exchange (:mod:`local_exchange.server`) streams what this module generates, and the tests compare
what a client rebuilt against the TRUE book held here. Given the same products, settings and
seed, the stream of changes is identical on every run (one ``random.Random`` per product,
seeded from ``"<seed>/<product>"``, so products do not disturb each other).

The generated data mimics the awkward parts of real feeds: most activity near the top, new
levels and deletes, deletes of absent levels, zero sizes as ``"0"``/``"0.00"``/``"0.00000000"``,
and the same price in different string forms (``"65083.66"``, ``"65083.66000000"``,
``"65083.5"``). The mid price walks randomly; a step that moves the best bid up removes, in the
same batch, every ask it would cross (and vice versa), so the book is never crossed.

Spreads behave like a liquid product's: a tick or a few most of the time (under 0.01% of
the price for the default products), but now and then a thin moment: in one batch the top
levels of one side are pulled or swept (deletes), opening the spread by 0.12% to 0.4% of
the price, and the next few batches refill the gap from that side. At 20 batches a second
the service's default 0.1% filter therefore prints within seconds on every default
product. Measured over 120 simulated seconds at depth 1000, seeds 0 to 2: 66 to 89 wide
moments per product, at most 4.5 to 10.6 s apart; spreads under 0.01% in 88% to 90% of
batches.

Internally prices are integer ticks and sizes integer units of 1e-8 (fast, exact); the public
accessors hand out ``Decimal``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice

from sortedcontainers import SortedDict

BID = "bid"
ASK = "ask"

SIZE_DECIMALS = 8
_SIZE_SCALE = 10**SIZE_DECIMALS

RawChange = tuple[str, str, str]
"""``(side "bid"|"ask", price string, new absolute size string)`` as it goes on the wire."""

RawLevel = tuple[int, int]
"""``(price in ticks, size in 1e-8 units)``: cheap to copy under a lock, formatted later."""

MAX_DEPTH = 100_000
_MOVE_PROBABILITY = 0.25
_THIN_PROBABILITY = 0.035
"""Per batch: a thin moment (see the module docstring)."""
_THIN_WIDTH = (0.0012, 0.004)
"""How far, as a fraction of the price, a thin moment moves one side's best price."""
_REFILL_BATCHES = 3
"""Batches after a thin moment that insert levels back into the gap."""
_MAX_SWEEP = 400
"""Levels one thin moment may remove (a real-sized book may then stay under 0.1%)."""
_ABSENT_DELETE_PROBABILITY = 0.02
CORRUPT_DEPTH = (2, 8)
"""Best-first indexes a silent corruption picks its level from: shallow enough to stay in
the top 50 while frozen (see :meth:`Market.corrupt_level`), not the best level itself."""
FROZEN_MAX_DEPTH = 30
"""While a frozen level is this deep (best-first index), its side adds no level above it."""
_ZERO_FORMS = ("0", "0", "0", "0.00000000", "0.00000000", "0.00")


@dataclass(frozen=True, slots=True)
class ProductSpec:
    """Where a product's book starts and how fine its price grid is."""

    start_price: str
    price_decimals: int
    mean_size: float


KNOWN_PRODUCTS: dict[str, ProductSpec] = {
    "BTC-USD": ProductSpec("65000.00", 2, 0.25),
    "ETH-USD": ProductSpec("3000.00", 2, 3.0),
    "BTC-EUR": ProductSpec("60000.00", 2, 0.2),
    "ETH-EUR": ProductSpec("2800.00", 2, 2.5),
    "SOL-USD": ProductSpec("150.00", 2, 40.0),
    "LTC-USD": ProductSpec("80.00", 2, 30.0),
    "DOGE-USD": ProductSpec("0.15000", 5, 20000.0),
    "ETH-BTC": ProductSpec("0.04600", 5, 5.0),
}
GENERIC_PRODUCT = ProductSpec("100.00", 2, 10.0)


def format_ticks(ticks: int, decimals: int) -> str:
    """Canonical price string, e.g. ``6508366`` ticks at 2 decimals -> ``"65083.66"``."""
    if decimals == 0:
        return str(ticks)
    whole, frac = divmod(ticks, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


def format_size(units: int) -> str:
    """Size string the way Coinbase writes it: 8 decimals, trailing zeros dropped."""
    whole, frac = divmod(units, _SIZE_SCALE)
    if frac == 0:
        return str(whole)
    return f"{whole}.{frac:08d}".rstrip("0")


def format_levels(levels: Sequence[RawLevel], decimals: int) -> list[list[str]]:
    """``[[price, size], ...]`` strings for a snapshot (runs off the event loop)."""
    return [[format_ticks(p, decimals), format_size(s)] for p, s in levels]


def _to_decimal(value: int, decimals: int) -> Decimal:
    return Decimal(value).scaleb(-decimals)


class _ProductBook:
    """One product's true book and its private random stream."""

    __slots__ = (
        "asks",
        "batches_generated",
        "bids",
        "changes_generated",
        "changes_per_batch",
        "frozen",
        "product_id",
        "refill_bids",
        "refill_left",
        "rng",
        "spec",
        "target_asks",
        "target_bids",
    )

    def __init__(
        self, product_id: str, seed: int, depth: tuple[int, int], changes_per_batch: int
    ) -> None:
        self.product_id = product_id
        self.spec = KNOWN_PRODUCTS.get(product_id, GENERIC_PRODUCT)
        self.rng = random.Random(f"{seed}/{product_id}")
        self.target_bids, self.target_asks = depth
        self.changes_per_batch = changes_per_batch
        self.changes_generated = 0
        self.batches_generated = 0
        self.refill_left = 0  # batches that still refill after a thin moment
        self.refill_bids = True  # the side being refilled
        self.frozen: dict[tuple[bool, int], int] = {}
        """(is_bid, price) -> the batch count at which the market may touch it again."""
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()
        self._fill_initial()

    # -- construction -------------------------------------------------------------------
    def _fill_initial(self) -> None:
        spec = self.spec
        start = int(Decimal(spec.start_price).scaleb(spec.price_decimals))
        self._fill_side(self.bids, start, -1, self.target_bids, start)
        self._fill_side(self.asks, start + 1, +1, self.target_asks, start)

    def _fill_side(
        self, side: SortedDict, first: int, direction: int, count: int, start: int
    ) -> None:
        # Gaps grow with distance from the top so the side spans ~40% of the price; the first
        # levels are 1-2 ticks apart, like a liquid product.
        rng = self.rng
        span = 0.4 * start
        scale = max(0.0, (span - 1.5 * count) * 2 / max(1, count) ** 2)
        price = first
        for i in range(count):
            if price < 1:
                break
            side[price] = self._new_size()
            gap = 1 + int(rng.expovariate(1 / (0.5 + i * scale)))
            price += direction * gap

    # -- helpers -------------------------------------------------------------------------
    def _new_size(self) -> int:
        rng = self.rng
        units = max(1, int(rng.expovariate(1 / (self.spec.mean_size * _SIZE_SCALE))))
        if rng.random() < 0.2:  # round lots ("12.77", "0.5") occur often in real books
            units = max(10**6, units - units % 10**6)
        return units

    def _price_str(self, ticks: int) -> str:
        text = format_ticks(ticks, self.spec.price_decimals)
        r = self.rng.random()
        if r < 0.08:
            return format_ticks(ticks * 10 ** (8 - self.spec.price_decimals), 8)
        if r < 0.16 and "." in text:
            return text.rstrip("0").rstrip(".")
        return text

    def _size_str(self, units: int) -> str:
        if self.rng.random() < 0.1:
            return format_ticks(units, SIZE_DECIMALS)
        return format_size(units)

    def _zero(self) -> str:
        return self.rng.choice(_ZERO_FORMS)

    def _free_price(
        self, is_bid: bool, levels: SortedDict, best_bid: int, best_ask: int
    ) -> int | None:
        """A price with no level on this side that would not cross: mostly near the top,
        sometimes inside the spread, sometimes anywhere within the side's range (so deep
        deletes are replaced and the depth stays near its target)."""
        rng = self.rng
        spread = best_ask - best_bid
        r = rng.random()
        if spread > 1 and r < 0.3:
            inside = 1 + rng.randrange(spread - 1)
            return best_bid + inside if is_bid else best_ask - inside
        if r < 0.4:
            far = levels.peekitem(0 if is_bid else -1)[0]
            near = best_bid if is_bid else best_ask
            lo, hi = min(far, near), max(far, near)
            if hi - lo > 1:
                price = rng.randrange(lo + 1, hi)
                if price not in levels:
                    return price
        mean = 8.0
        for _ in range(12):
            dist = 1 + int(rng.expovariate(1 / mean))
            price = best_bid - dist if is_bid else best_ask + dist
            if price < 1:
                return None
            if price not in levels:
                return price
            mean *= 2
        return None

    def _depth_index(self, count: int) -> int:
        rng = self.rng
        if rng.random() < 0.05:
            return rng.randrange(count)
        return min(count - 1, int(rng.expovariate(1 / 6)))

    # -- generation ----------------------------------------------------------------------
    def next_batch(self) -> list[RawChange]:
        if self.frozen:
            self._thaw()
        out: list[RawChange] = []
        r = self.rng.random()
        if r < _MOVE_PROBABILITY:
            self._move(out)
        elif r < _MOVE_PROBABILITY + _THIN_PROBABILITY:
            self._thin(out)
        elif self.refill_left:
            self.refill_left -= 1
            self._refill(out)
        while len(out) < self.changes_per_batch:
            self._routine(out)
        self.batches_generated += 1
        self.changes_generated += len(out)
        return out

    # -- frozen levels (a silent corruption's level; see Market.corrupt_level) -----------
    def _thaw(self) -> None:
        now = self.batches_generated
        for key in [k for k, until in self.frozen.items() if until <= now]:
            del self.frozen[key]

    def _is_frozen(self, is_bid: bool, price: int) -> bool:
        return bool(self.frozen) and (is_bid, price) in self.frozen

    def _frozen_beyond(self, is_bid: bool, price: int) -> bool:
        """True if a frozen level of this side would be crossed by the other side's best
        moving to ``price`` (bids at or above it, asks at or below it)."""
        return any(
            b == is_bid and (p >= price if is_bid else p <= price)
            for b, p in self.frozen
        )

    def _crowded(self, is_bid: bool) -> bool:
        """True if a frozen level of this side sits :data:`FROZEN_MAX_DEPTH` deep or more
        (then the side adds no level above it, so it stays in the top 50)."""
        levels = self.bids if is_bid else self.asks
        last = len(levels) - 1
        return any(
            b == is_bid
            and (last - levels.index(p) if b else levels.index(p)) >= FROZEN_MAX_DEPTH
            for b, p in self.frozen
        )

    def _move(self, out: list[RawChange]) -> None:
        """Shift the top one way and delete, in the same batch, what would now cross."""
        rng, bids, asks = self.rng, self.bids, self.asks
        steps = 1 + int(rng.expovariate(0.7))
        if rng.random() < 0.5:
            new_bid = bids.peekitem(-1)[0] + steps
            crossed = asks.bisect_right(new_bid)
            if crossed >= len(asks) or (
                self.frozen
                and (self._frozen_beyond(False, new_bid) or self._crowded(True))
            ):
                return
            for _ in range(crossed):
                price, _ = asks.popitem(0)
                out.append((ASK, self._price_str(price), self._zero()))
            size = self._new_size()
            bids[new_bid] = size
            out.append((BID, self._price_str(new_bid), self._size_str(size)))
        else:
            new_ask = asks.peekitem(0)[0] - steps
            if new_ask < 1:
                return
            crossed = len(bids) - bids.bisect_left(new_ask)
            if crossed >= len(bids) or (
                self.frozen
                and (self._frozen_beyond(True, new_ask) or self._crowded(False))
            ):
                return
            for _ in range(crossed):
                price, _ = bids.popitem(-1)
                out.append((BID, self._price_str(price), self._zero()))
            size = self._new_size()
            asks[new_ask] = size
            out.append((ASK, self._price_str(new_ask), self._size_str(size)))

    def _thin(self, out: list[RawChange]) -> None:
        """Pull or sweep one side's top levels until its best is ``_THIN_WIDTH`` away."""
        rng = self.rng
        is_bid = rng.random() < 0.5
        levels = self.bids if is_bid else self.asks
        top = -1 if is_bid else 0
        best = levels.peekitem(top)[0]
        width = max(1, int(best * rng.uniform(*_THIN_WIDTH)))
        limit = best - width if is_bid else best + width
        for _ in range(_MAX_SWEEP):
            if len(levels) <= 2:
                break
            price = levels.peekitem(top)[0]
            if (price <= limit) if is_bid else (price >= limit):
                break
            if self._is_frozen(is_bid, price):
                break
            del levels[price]
            out.append((BID if is_bid else ASK, self._price_str(price), self._zero()))
        self.refill_left, self.refill_bids = _REFILL_BATCHES, is_bid

    def _refill(self, out: list[RawChange]) -> None:
        """New levels on the thinned side, each closing most of what is left of the gap."""
        rng = self.rng
        levels = self.bids if self.refill_bids else self.asks
        if self.frozen and self._crowded(self.refill_bids):
            return
        for _ in range(2):
            bid, ask = self.bids.peekitem(-1)[0], self.asks.peekitem(0)[0]
            spread = ask - bid
            if spread <= 1:
                return
            step = max(1, int(spread * rng.uniform(0.5, 0.85)))
            price = bid + step if self.refill_bids else ask - step
            size = self._new_size()
            levels[price] = size
            side = BID if self.refill_bids else ASK
            out.append((side, self._price_str(price), self._size_str(size)))

    def _routine(self, out: list[RawChange]) -> None:
        rng = self.rng
        is_bid = rng.random() < 0.5
        side_name = BID if is_bid else ASK
        levels = self.bids if is_bid else self.asks
        target = self.target_bids if is_bid else self.target_asks
        count = len(levels)
        best_bid = self.bids.peekitem(-1)[0]
        best_ask = self.asks.peekitem(0)[0]

        if count > target * 1.1 + 1:  # trim the far end so depth stays near its target
            price = levels.peekitem(0 if is_bid else -1)[0]
            if not self._is_frozen(is_bid, price):
                del levels[price]
                out.append((side_name, self._price_str(price), self._zero()))
                return

        p_insert = min(0.8, max(0.05, 0.3 + 0.4 * (target - count) / max(1, target)))
        p_delete = 0.25 if count > 1 else 0.0
        r = rng.random()
        if r < _ABSENT_DELETE_PROBABILITY:
            # Real feeds delete levels the client never had; a correct client ignores them.
            top = best_bid if is_bid else best_ask
            for _ in range(8):
                dist = 1 + int(rng.expovariate(1 / 20))
                price = top - dist if is_bid else top + dist
                if price >= 1 and price not in levels:
                    out.append((side_name, self._price_str(price), self._zero()))
                    return
        elif r < _ABSENT_DELETE_PROBABILITY + p_insert:
            price = self._free_price(is_bid, levels, best_bid, best_ask)
            if price is not None and not (self.frozen and self._crowded(is_bid)):
                size = self._new_size()
                levels[price] = size
                out.append((side_name, self._price_str(price), self._size_str(size)))
                return
        elif r < _ABSENT_DELETE_PROBABILITY + p_insert + p_delete:
            k = self._depth_index(count)
            price, _ = levels.peekitem(-1 - k if is_bid else k)
            if not self._is_frozen(is_bid, price):
                del levels[price]
                out.append((side_name, self._price_str(price), self._zero()))
                return
        # Default (and fallback): new size for an existing level near the top.
        k = self._depth_index(count)
        price, _ = levels.peekitem(-1 - k if is_bid else k)
        if self._is_frozen(is_bid, price):
            return  # the caller draws again
        size = self._new_size()
        levels[price] = size
        out.append((side_name, self._price_str(price), self._size_str(size)))

    def corrupt_level(
        self, rng: random.Random, hold_batches: int
    ) -> tuple[str, int, int, int]:
        """Give a shallow level a new size and freeze it for ``hold_batches`` batches.

        Returns ``(side, price, old size, new size)``. Frozen, the level is neither
        changed nor deleted, nor crossed by the other side, nor swept by a thin moment.
        """
        low, high = CORRUPT_DEPTH
        sides = [s for s in (True, False) if len(self.bids if s else self.asks) > low]
        if not sides:
            raise ValueError(
                f"{self.product_id}: a silent corruption needs more than {low} levels on a side"
            )
        is_bid = rng.choice(sides)
        levels = self.bids if is_bid else self.asks
        for _ in range(100):
            k = rng.randint(low, min(high, len(levels) - 1))
            price, old = levels.peekitem(-1 - k if is_bid else k)
            if not self._is_frozen(is_bid, price):
                break
        else:
            raise ValueError(
                f"{self.product_id}: every shallow level is frozen already"
            )
        new = old
        while new == old:
            new = max(1, int(rng.expovariate(1 / (self.spec.mean_size * _SIZE_SCALE))))
        levels[price] = new
        self.changes_generated += 1
        self.frozen[(is_bid, price)] = self.batches_generated + hold_batches
        return (BID if is_bid else ASK), price, old, new

    # -- views ---------------------------------------------------------------------------
    def raw_levels(
        self, limit: int | None = None
    ) -> tuple[list[RawLevel], list[RawLevel]]:
        if limit is None:
            return list(reversed(self.bids.items())), list(self.asks.items())
        return (
            list(islice(reversed(self.bids.items()), limit)),
            list(islice(self.asks.items(), limit)),
        )


def _parse_depth(name: str, value: object) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        pair = (value[0], value[1])
    else:
        raise ValueError(
            f"{name} must be an int or (bids, asks) pair of ints in 1..{MAX_DEPTH}, got {value!r}"
        )
    if not all(1 <= v <= MAX_DEPTH for v in pair):
        raise ValueError(
            f"{name} must be between 1 and {MAX_DEPTH} levels per side, got {value!r}"
        )
    return pair


class Market:
    """The true books of many products and the change streams that evolve them.

    ``depth`` is levels per side (or a ``(bids, asks)`` pair); ``depth_override`` sets it per
    product, e.g. ``{"BTC-USD": (18_000, 28_000)}`` for a real-sized BTC-USD book.
    ``rate`` is batches per second per product, used only by :meth:`step`.
    """

    def __init__(
        self,
        products: Sequence[str],
        *,
        depth: int | tuple[int, int] = 1000,
        rate: float = 20.0,
        changes_per_batch: int = 5,
        seed: int = 0,
        depth_override: Mapping[str, int | tuple[int, int]] | None = None,
    ) -> None:
        if isinstance(products, str) or not products:
            raise ValueError(
                "products must be a non-empty sequence of product ids like 'BTC-USD'"
            )
        if len(set(products)) != len(products):
            raise ValueError(f"products must not repeat, got {list(products)!r}")
        base_depth = _parse_depth("depth", depth)
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not 0 < rate <= 10_000
        ):
            raise ValueError(
                f"rate must be a number of batches per second in (0, 10000], got {rate!r}"
            )
        if (
            isinstance(changes_per_batch, bool)
            or not isinstance(changes_per_batch, int)
            or not 1 <= changes_per_batch <= 10_000
        ):
            raise ValueError(
                f"changes_per_batch must be an int in 1..10000, got {changes_per_batch!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        overrides = dict(depth_override or {})
        unknown = sorted(set(overrides) - set(products))
        if unknown:
            raise ValueError(
                f"depth_override names products not simulated: {unknown}; allowed: {list(products)}"
            )
        self.rate = float(rate)
        self.changes_per_batch = changes_per_batch
        self.seed = seed
        self._books = {
            pid: _ProductBook(
                pid,
                seed,
                _parse_depth(f"depth_override[{pid!r}]", overrides[pid])
                if pid in overrides
                else base_depth,
                changes_per_batch,
            )
            for pid in products
        }
        self._owed = 0.0

    @property
    def products(self) -> tuple[str, ...]:
        return tuple(self._books)

    def _get(self, product_id: str) -> _ProductBook:
        try:
            return self._books[product_id]
        except KeyError:
            raise ValueError(
                f"unknown product {product_id!r}; this market simulates {list(self._books)}"
            ) from None

    def next_batch(self, product_id: str) -> list[RawChange]:
        """Generate one batch for ``product_id``, apply it to the true book, return it."""
        return self._get(product_id).next_batch()

    def step(self, dt: float) -> list[tuple[str, list[RawChange]]]:
        """Advance ``dt`` seconds: ``rate * dt`` batches per product (fractions carry over)."""
        if dt < 0:
            raise ValueError(f"dt must be >= 0 seconds, got {dt!r}")
        self._owed += dt * self.rate
        rounds = int(self._owed)
        self._owed -= rounds
        return [
            (pid, book.next_batch())
            for _ in range(rounds)
            for pid, book in self._books.items()
        ]

    def book(
        self, product_id: str
    ) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        """Copies of the true ``(bids, asks)`` keyed by Decimal price."""
        b = self._get(product_id)
        d = b.spec.price_decimals
        bids = {
            _to_decimal(p, d): _to_decimal(s, SIZE_DECIMALS) for p, s in b.bids.items()
        }
        asks = {
            _to_decimal(p, d): _to_decimal(s, SIZE_DECIMALS) for p, s in b.asks.items()
        }
        return bids, asks

    def top(self, product_id: str) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        """``(bid_price, bid_size, ask_price, ask_size)`` of the true book."""
        b = self._get(product_id)
        d = b.spec.price_decimals
        bp, bs = b.bids.peekitem(-1)
        ap, as_ = b.asks.peekitem(0)
        return (
            _to_decimal(bp, d),
            _to_decimal(bs, SIZE_DECIMALS),
            _to_decimal(ap, d),
            _to_decimal(as_, SIZE_DECIMALS),
        )

    def raw_levels(
        self, product_id: str, limit: int | None = None
    ) -> tuple[list[RawLevel], list[RawLevel]]:
        """Best-first ``(bids, asks)`` in ticks/units (the best ``limit`` per side, or
        all): a cheap copy to format elsewhere."""
        return self._get(product_id).raw_levels(limit)

    def corrupt_level(
        self, product_id: str, hold_batches: int, rng: random.Random
    ) -> tuple[str, int, int, int]:
        """A silent corruption's true change: ``(side, price ticks, old units, new
        units)``, applied to the true book; the level then stays untouched by the market
        for ``hold_batches`` of the product's batches (the market moves around it), so a
        client that missed or misread the change stays wrong until it resyncs."""
        return self._get(product_id).corrupt_level(rng, hold_batches)

    def raw_top_bid(self, product_id: str) -> RawLevel:
        return self._get(product_id).bids.peekitem(-1)

    def price_decimals(self, product_id: str) -> int:
        return self._get(product_id).spec.price_decimals

    def snapshot(self, product_id: str) -> tuple[list[list[str]], list[list[str]]]:
        """Best-first ``(bids, asks)`` as ``[price, size]`` strings (canonical forms)."""
        bids, asks = self.raw_levels(product_id)
        d = self.price_decimals(product_id)
        return format_levels(bids, d), format_levels(asks, d)

    def level_counts(self, product_id: str) -> tuple[int, int]:
        b = self._get(product_id)
        return len(b.bids), len(b.asks)

    def changes_generated(self, product_id: str) -> int:
        return self._get(product_id).changes_generated

    def is_crossed(self, product_id: str) -> bool:
        b = self._get(product_id)
        return b.bids.peekitem(-1)[0] >= b.asks.peekitem(0)[0]
