"""How good an imported file's data is, per product: pure, fed the items as written.

Per product: the time range (receive time), frames and snapshots, level changes, resets
by reason (a new connection, an Advanced Trade sequence gap, a malformed frame, a new
snapshot, a new file; the product's first start is not a reset), crossed and locked
episodes (how many, and their total time: the book is rebuilt with
a dict and a heap of prices per side as the items go by, an episode runs from the item that
crossed or locked the book to the one that uncrossed it, or to a reset or the end), the
longest silence (the longest time between two records of the product, and when it
began), and what was skipped (damaged rows, updates before a snapshot...). Skips that
belong to no product (a line that could not be read) are reported for the whole import.

The report prints as text (one paragraph per product) and as JSON (:meth:`to_json`,
``--report PATH``): times as ISO-8601 UTC and integer nanoseconds, durations in seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from heapq import heapify, heappop, heappush
from typing import Any

from events import BID, BookChanges, BookReset, BookSnapshot
from importers.stream import START, Item


@dataclass
class ProductQuality:
    product_id: str
    first_ns: int | None = None
    last_ns: int | None = None
    frames: int = 0
    snapshots: int = 0
    changes: int = 0
    resets: Counter = field(default_factory=Counter)
    episodes: Counter = field(default_factory=Counter)
    """``crossed``/``locked`` -> how many episodes."""
    episode_ns: Counter = field(default_factory=Counter)
    """``crossed``/``locked`` -> their total time, ns."""
    longest_silence_ns: int = 0
    silence_from_ns: int | None = None
    skipped: Counter = field(default_factory=Counter)
    episodes_measured: bool = True
    """False in the light report of a replay (``importers.replay.LIGHT``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "first": _iso(self.first_ns),
            "last": _iso(self.last_ns),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "frames": self.frames,
            "snapshots": self.snapshots,
            "changes": self.changes,
            "resets": dict(self.resets),
            "crossed_episodes": self.episodes["crossed"],
            "crossed_seconds": self.episode_ns["crossed"] / 1e9,
            "locked_episodes": self.episodes["locked"],
            "locked_seconds": self.episode_ns["locked"] / 1e9,
            "longest_silence_seconds": self.longest_silence_ns / 1e9,
            "longest_silence_from": _iso(self.silence_from_ns),
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProductQuality:
        """The inverse of :meth:`to_dict` (a report read back from its JSON)."""
        quality = cls(
            data["product_id"],
            data.get("first_ns"),
            data.get("last_ns"),
            int(data.get("frames", 0)),
            int(data.get("snapshots", 0)),
            int(data.get("changes", 0)),
            Counter(data.get("resets", {})),
            longest_silence_ns=round(data.get("longest_silence_seconds", 0) * 1e9),
            silence_from_ns=_ns_of(data.get("longest_silence_from")),
            skipped=Counter(data.get("skipped", {})),
        )
        for kind in ("crossed", "locked"):
            if data.get(f"{kind}_episodes"):
                quality.episodes[kind] = int(data[f"{kind}_episodes"])
                quality.episode_ns[kind] = round(data.get(f"{kind}_seconds", 0) * 1e9)
        return quality

    def to_text(self) -> str:
        span = (
            f"{_iso(self.first_ns)} to {_iso(self.last_ns)} "
            f"({_duration((self.last_ns or 0) - (self.first_ns or 0))})"
            if self.first_ns is not None
            else "no records"
        )
        text = (
            f"{self.product_id}: {span}; {self.frames:,} frames "
            f"({self.snapshots:,} snapshot{'' if self.snapshots == 1 else 's'}, "
            f"{self.changes:,} level changes)"
        )
        resets = sum(self.resets.values())
        text += f"; {_counts(self.resets, 'reset', 'resets') if resets else 'no reset'}"
        for kind in ("crossed", "locked") if self.episodes_measured else ():
            n = self.episodes[kind]
            if n:
                text += (
                    f"; {kind} {n:,} time{'s' if n != 1 else ''} "
                    f"({_duration(self.episode_ns[kind])} in all)"
                )
            else:
                text += f"; never {kind}"
        if not self.episodes_measured:
            text += (
                "; crossed or locked not measured (ORDERBOOK_REPLAY_REPORT measures it)"
            )
        if self.silence_from_ns is not None:
            text += (
                f"; longest silence {_duration(self.longest_silence_ns)} from "
                f"{_iso(self.silence_from_ns)}"
            )
        if self.skipped:
            text += f"; skipped {_counts(self.skipped)}"
        return text + "."


@dataclass
class QualityReport:
    products: list[ProductQuality]
    skipped: Counter
    """What no product can be charged with (unreadable lines...)."""
    ignored: Counter
    """Frames left out on purpose (other channels), by type."""
    ended_early: list[tuple[str, str]]
    """``(file, why)`` of each file that ended before its data did."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "products": [p.to_dict() for p in self.products],
            "skipped": dict(self.skipped),
            "ignored_frames": dict(self.ignored),
            "ended_early": [{"file": f, "why": why} for f, why in self.ended_early],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityReport:
        """The inverse of :meth:`to_dict`."""
        return cls(
            [ProductQuality.from_dict(p) for p in data.get("products", [])],
            Counter(data.get("skipped", {})),
            Counter(data.get("ignored_frames", {})),
            [(e["file"], e["why"]) for e in data.get("ended_early", [])],
        )

    def to_text(self) -> str:
        lines = [p.to_text() for p in self.products] or ["no product has any record."]
        if self.skipped:
            lines.append(f"skipped (no product): {_counts(self.skipped)}.")
        if self.ignored:
            lines.append(f"left out (not book data): {_counts(self.ignored)}.")
        for name, why in self.ended_early:
            lines.append(f"{name} ends early ({why}): read up to where its data ends.")
        return "\n".join(lines)


class _Top:
    """The best bid and ask of one product's book, all a report needs of it (crossed
    or locked after each item): each side's levels in a dict and its prices in a heap
    (bids negated), a deleted price left in the heap until it comes to the top.

    Why not :class:`orderbook.OrderBook`: its sorted sides cost more per change than a
    dict and a heap push, and the report is made on every replay. Measured on
    bench_importers' 100,004 items (330,373 level changes, 1,000-level books), the two
    interleaved on the busy machine: 0.42-0.78 s with an ``OrderBook`` per product,
    0.26-0.46 s with this.
    """

    __slots__ = ("ask", "ask_heap", "asks", "bid", "bid_heap", "bids")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.bids: dict = {}
        self.asks: dict = {}
        self.bid_heap: list = []
        self.ask_heap: list = []
        self.bid = self.ask = None

    def snapshot(self, bids, asks) -> None:
        self.bids = {p: s for p, s in dict(bids).items() if s}
        self.asks = {p: s for p, s in dict(asks).items() if s}
        self.bid_heap = [-p for p in self.bids]
        self.ask_heap = list(self.asks)
        heapify(self.bid_heap)
        heapify(self.ask_heap)
        self.bid = -self.bid_heap[0] if self.bid_heap else None
        self.ask = self.ask_heap[0] if self.ask_heap else None

    def changes(self, changes) -> None:
        bids, asks = self.bids, self.asks
        bid, ask = self.bid, self.ask
        for side, price, size in changes:
            if side == BID:
                if not size:
                    if bids.pop(price, None) is not None and price == bid:
                        bid = self._best(self.bid_heap, bids, True)
                elif price in bids:
                    bids[price] = size
                else:
                    bids[price] = size
                    self._pushed(self.bid_heap, bids, -price, True)
                    if bid is None or price > bid:
                        bid = price
            elif not size:
                if asks.pop(price, None) is not None and price == ask:
                    ask = self._best(self.ask_heap, asks, False)
            elif price in asks:
                asks[price] = size
            else:
                asks[price] = size
                self._pushed(self.ask_heap, asks, price, False)
                if ask is None or price < ask:
                    ask = price
        self.bid, self.ask = bid, ask

    @classmethod
    def _pushed(cls, heap: list, levels: dict, key, negated: bool) -> None:
        """A new price into its side's heap (``key``: the price, negated for bids)."""
        heappush(heap, key)
        if len(heap) > 2 * len(levels) + 64:
            cls._compact(heap, levels, negated)

    @staticmethod
    def _compact(heap: list, levels: dict, negated: bool) -> None:
        """Deleted prices piled up in the heap (a price added and deleted again and
        again away from the top): the heap made again from the side's prices."""
        heap[:] = [-p for p in levels] if negated else list(levels)
        heapify(heap)

    @classmethod
    def _best(cls, heap: list, levels: dict, negated: bool):
        """The side's best price after its best level was deleted."""
        if len(heap) > 2 * len(levels) + 64:
            cls._compact(heap, levels, negated)
        if negated:
            while heap and -heap[0] not in levels:
                heappop(heap)
            return -heap[0] if heap else None
        while heap and heap[0] not in levels:
            heappop(heap)
        return heap[0] if heap else None

    def episode(self) -> str | None:
        """``crossed``, ``locked`` or None (a side empty, or the book is fine)."""
        bid, ask = self.bid, self.ask
        if bid is None or ask is None or bid < ask:
            return None
        return "locked" if bid == ask else "crossed"


class QualityTracker:
    """Fed every written :class:`~importers.stream.Item` (or a replay's events,
    :meth:`add_event`) in order; :meth:`report` at the end."""

    def __init__(self, episodes: bool = True) -> None:
        self.episodes = episodes
        """False: no crossed or locked episodes measured (no book kept): the light
        report of a replay (see ``importers.replay.LIGHT``)."""
        self.products: dict[str, ProductQuality] = {}
        self._books: dict[str, _Top] = {}
        self._episode: dict[str, tuple[str, int]] = {}
        self.skipped: Counter = Counter()
        self.ignored: Counter = Counter()
        self.ended_early: list[tuple[str, str]] = []

    def _product(self, product_id: str) -> ProductQuality:
        quality = self.products.get(product_id)
        if quality is None:
            quality = self.products[product_id] = ProductQuality(product_id)
            quality.episodes_measured = self.episodes
            if self.episodes:
                self._books[product_id] = _Top()
        return quality

    def add(self, item: Item) -> None:
        self.add_event(item.product_id, item.event, item.t_ns)

    def add_event(self, product: str, event, t: int) -> None:
        """One event of ``product`` received at ``t`` (ns); a reset's reason counts
        unless it is :data:`~importers.stream.START`."""
        quality = self.products.get(product) or self._product(product)
        last = quality.last_ns
        if last is None:
            quality.first_ns = t
        elif t - last > quality.longest_silence_ns:
            quality.longest_silence_ns = t - last
            quality.silence_from_ns = last
        quality.last_ns = t
        kind = type(event)
        if kind is BookChanges:
            quality.frames += 1
            quality.changes += len(event.changes)
        elif kind is BookSnapshot:
            quality.frames += 1
            quality.snapshots += 1
        elif kind is BookReset and event.reason != START:
            quality.resets[event.reason] += 1
        book = self._books.get(product)
        if book is not None:  # None: no episodes measured
            self._follow(product, quality, book, event, kind, t)

    def _follow(self, product, quality, book: _Top, event, kind, t: int) -> None:
        """The event applied to the product's best prices; an episode that begins or
        ends there counted."""
        if kind is BookChanges:
            book.changes(event.changes)
        elif kind is BookSnapshot:
            book.snapshot(event.bids, event.asks)
        elif kind is BookReset:
            book.clear()
        name = book.episode()
        open_episode = self._episode.get(product)
        if open_episode is not None:
            if open_episode[0] == name:
                return
            quality.episode_ns[open_episode[0]] += t - open_episode[1]
            del self._episode[product]
        if name is not None:
            quality.episodes[name] += 1
            self._episode[product] = (name, t)

    def skip(self, product: str | None, why: str, n: int = 1) -> None:
        if product is None:
            self.skipped[why] += n
        else:
            self._product(product).skipped[why] += n

    def report(self) -> QualityReport:
        """The report; an episode still open ends at its product's last record."""
        for product, (name, start) in list(self._episode.items()):
            quality = self.products[product]
            quality.episode_ns[name] += (quality.last_ns or start) - start
            self._episode[product] = (name, quality.last_ns or start)
        return QualityReport(
            [self.products[p] for p in sorted(self.products)],
            Counter(self.skipped),
            Counter(self.ignored),
            list(self.ended_early),
        )


def _iso(t_ns: int | None) -> str | None:
    if t_ns is None:
        return None
    seconds, ns = divmod(t_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns // 1000:06d}Z"


def _ns_of(iso: str | None) -> int | None:
    """ns since the epoch of an :func:`_iso` text (µs precision, as written)."""
    if iso is None:
        return None
    stamp = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    seconds = int(stamp.replace(microsecond=0).timestamp())
    return seconds * 1_000_000_000 + stamp.microsecond * 1000


def _duration(ns: int) -> str:
    seconds = ns / 1e9
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s"


def _counts(counts: Counter, one: str = "", many: str = "") -> str:
    parts = ", ".join(f"{n:,} {why}" for why, n in counts.most_common())
    if not one:
        return parts
    total = sum(counts.values())
    return f"{total:,} {one if total == 1 else many} ({parts})"
