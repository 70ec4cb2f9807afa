"""Shared helpers of the source's socket tests: partitions built fast, polled until a
condition holds, and hand-made frames."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING

from coinbase.auth import Credentials
from coinbase.runner import LOOP
from coinbase_source import CoinbaseSource, _CoinbasePartition
from events import BookChanges, BookEvent, BookReset, BookSnapshot
from tests.support import flow as support_flow

if TYPE_CHECKING:
    from local_exchange.server import LocalExchange

SECRET = base64.b64encode(b"loopback secret for the source tests").decode()
CREDS = Credentials("test-key", SECRET, "test-passphrase")
FAST = {"watchdog_seconds": 0.4, "backoff_initial": 0.05, "backoff_max": 0.2}

Items = list[tuple[str, BookEvent]]
ALL_FAILED: list[str] = []
"""What sources built by these tests would have stopped the process with."""


def open_partitions() -> Iterator[list[_CoinbasePartition]]:
    """For a fixture: partitions registered are closed after the test, pass or fail."""
    built: list[_CoinbasePartition] = []
    yield built
    for part in built:
        part.close()


def build(
    registry: list[_CoinbasePartition],
    products: list[str],
    url: str,
    product: str | None = None,
    resume_state: str | None = None,
    **kwargs: object,
) -> _CoinbasePartition:
    kwargs.setdefault("on_all_failed", ALL_FAILED.append)
    source = CoinbaseSource(products, url=url, **{**FAST, **kwargs})  # type: ignore[arg-type]
    part = source.build_part("input", product or products[0], resume_state)
    registry.append(part)
    return part


def polled(part: _CoinbasePartition) -> Items:
    """One poll's events as ``(key, event)`` pairs: ``next_batch`` hands over one
    ``(key, [events])`` item per poll."""
    return [(key, event) for key, events in part.next_batch() for event in events]


def collect(
    part: _CoinbasePartition, until: Callable[[Items], bool], timeout: float = 8.0
) -> Items:
    """Poll next_batch until ``until(items)`` holds; fail with what arrived otherwise."""
    items: Items = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items += polled(part)
        if until(items):
            return items
        time.sleep(0.002)
    raise AssertionError(f"timed out; got {kinds(items)}; stats {part.stats}")


def wait_until(condition: Callable[[], bool], timeout: float = 8.0) -> None:
    """The support module's wait, with the partition tests' default timeout and poll."""
    support_flow.wait_until(condition, timeout, "the condition", poll=0.005)


def kinds(items: Items) -> list[str]:
    names = {BookReset: "reset", BookSnapshot: "snapshot", BookChanges: "changes"}
    return [names[type(event)] for _, event in items]


def count(kind: str, n: int) -> Callable[[Items], bool]:
    return lambda items: kinds(items).count(kind) >= n


def snapshot_frame(product: str = "BTC-USD", mid: int = 100, levels: int = 3) -> str:
    return json.dumps(
        {
            "type": "snapshot",
            "product_id": product,
            "bids": [[str(mid - 1 - i), "1.50000000"] for i in range(levels)],
            "asks": [[str(mid + 1 + i), "2.50000000"] for i in range(levels)],
        }
    )


def update_frame(product: str = "BTC-USD", price: str = "99", size: str = "3") -> str:
    return json.dumps(
        {
            "type": "l2update",
            "product_id": product,
            "changes": [["buy", price, size]],
            "time": "2026-08-25T03:35:57.300000Z",
        }
    )


def at_frame(seq: int, kind: str = "update", product: str = "BTC-USD") -> str:
    updates = [
        {"side": "bid", "event_time": "", "price_level": "99", "new_quantity": "1"}
    ]
    return json.dumps(
        {
            "channel": "l2_data",
            "timestamp": "2026-08-09T21:05:48.483587501Z",
            "sequence_num": seq,
            "events": [{"type": kind, "product_id": product, "updates": updates}],
        }
    )


# -- books rebuilt from the events, compared with the local exchange's true book --------


class Book:
    """The minimal consumer: what a correct client holds after applying the events."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.live = False

    def apply(self, event: BookEvent) -> None:
        if isinstance(event, BookReset):
            self.bids, self.asks, self.live = {}, {}, False
        elif isinstance(event, BookSnapshot):
            self.bids, self.asks, self.live = dict(event.bids), dict(event.asks), True
        else:
            assert self.live, "changes before a snapshot must never reach the consumer"
            for side, price, size in event.changes:
                levels = self.bids if side == "bid" else self.asks
                if size == 0:
                    levels.pop(price, None)
                else:
                    levels[price] = size


def feed_books(
    parts: dict[str, _CoinbasePartition],
    books: dict[str, Book],
    until: Callable[[], bool],
    timeout: float = 10.0,
) -> None:
    """Apply every partition's events to its book until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        for part in parts.values():
            for product, event in polled(part):
                # its own product's, or those of the partitions it polls together
                assert product in {p.product_id for p in part._polled}
                books[product].apply(event)
        if until():
            return
        stats = {p: part.stats for p, part in parts.items()}
        assert time.monotonic() < deadline, f"condition not reached; {stats}"
        time.sleep(0.002)


def fresh_snapshots(parts: dict[str, _CoinbasePartition]) -> Callable[[], bool]:
    """True once every partition got a snapshot after now and holds a live book."""
    before = {p: part.stats.snapshots for p, part in parts.items()}
    return lambda: all(
        part.stats.snapshots > before[p] and part.session.settled
        for p, part in parts.items()
    )


def settled(parts: dict[str, _CoinbasePartition]) -> Callable[[], bool]:
    """True while every partition holds a live book (so that a fault hits a live one)."""
    return lambda: all(part.session.settled for part in parts.values())


def assert_books_match(exchange: LocalExchange, parts: dict, books: dict) -> None:
    apply_all_after_pause(exchange, parts, books)
    for product, book in books.items():
        true_bids, true_asks = exchange.true_book(product)
        assert book.live, parts[product].stats
        assert (book.bids, book.asks) == (true_bids, true_asks), product


def apply_all_after_pause(exchange: LocalExchange, parts: dict, books: dict) -> None:
    """Pause the market and apply events until every frame sent has been applied.

    Exact, not a quiet window: once paused, the exchange has queued every change it
    generated; all was read when what it queued and sent on its open connections equals
    what the partitions' connections received (counted on the feed loop's thread, where
    a frame's events are queued in the same step), and one more poll then takes every
    event. (It waited for 1 s without progress before: ~1 s a call, ~12 s of the suite;
    0.3 s had once been too short on a loaded machine.)"""
    exchange.pause_market()
    groups = {id(part._group): part._group for part in parts.values()}

    async def received() -> int:
        return sum(group.session.frames_on_connection for group in groups.values())

    def all_read() -> bool:
        client = LOOP.submit(received()).result(timeout=10)
        queued, sent = exchange.open_frames()
        return client == sent == queued

    feed_books(parts, books, all_read, timeout=20)
    feed_books(parts, books, lambda: True)  # the events of the last frames read
