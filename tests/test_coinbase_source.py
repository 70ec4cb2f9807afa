"""The Coinbase source against real WebSocket servers on 127.0.0.1.

Exact frame-by-frame cases use the scripted server; end-to-end cases use the project's
local exchange (coinbase_sim.LocalExchange) and compare the rebuilt book with its true
book. Partitions are driven directly: build_part(...), then poll next_batch.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import pathlib
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal

import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, run_main

from coinbase.auth import Credentials
from coinbase.errors import AuthError, UnknownProduct
from coinbase_source import CoinbaseSource, _CoinbasePartition, subscribe_messages
from events import BookChanges, BookEvent, BookReset, BookSnapshot
from local_exchange.server import LocalExchange
from tests.scripted_server import ScriptedConnection, ScriptedServer

pytestmark = pytest.mark.slow  # every test here opens sockets or threads

SECRET = base64.b64encode(b"loopback secret for the source tests").decode()
CREDS = Credentials("test-key", SECRET, "test-passphrase")
FAST = {"watchdog_seconds": 0.4, "backoff_initial": 0.05, "backoff_max": 0.2}

Items = list[tuple[str, BookEvent]]
ALL_FAILED: list[str] = []
"""What sources built by these tests would have stopped the process with."""


@pytest.fixture
def partitions() -> Iterator[list[_CoinbasePartition]]:
    """Partitions registered here are closed after the test, pass or fail."""
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


def collect(
    part: _CoinbasePartition, until: Callable[[Items], bool], timeout: float = 8.0
) -> Items:
    """Poll next_batch until ``until(items)`` holds; fail with what arrived otherwise."""
    items: Items = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items += part.next_batch()
        if until(items):
            return items
        time.sleep(0.002)
    raise AssertionError(f"timed out; got {kinds(items)}; stats {part.stats}")


def wait_until(condition: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


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


# -- handshakes --------------------------------------------------------------------------


def test_exchange_subscribe_handshake(partitions: list) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url)
        items = collect(part, count("snapshot", 1))
    assert kinds(items) == ["reset", "snapshot"]
    assert items[0] == ("BTC-USD", items[0][1])
    assert items[0][1].reason == "start"
    assert server.received[0] == [
        {
            "type": "subscribe",
            "channels": [
                {"name": "level2_batch", "product_ids": ["BTC-USD"]},
                {"name": "heartbeat", "product_ids": ["BTC-USD"]},
            ],
        }
    ]


def test_advanced_trade_subscribe_handshake(partitions: list) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.recv_json()
        await conn.send(at_frame(0, "snapshot"))
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, feed="advanced-trade")
        items = collect(part, count("snapshot", 1))
    assert kinds(items) == ["reset", "snapshot"]
    assert server.received[0] == [
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "level2"},
        {"type": "subscribe", "channel": "heartbeats"},
    ]


def expected_signature(timestamp: str) -> str:
    message = f"{timestamp}GET/users/self/verify".encode()
    digest = hmac.new(base64.b64decode(SECRET), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def test_exchange_auth_handshake_is_signed_on_every_connect(partitions: list) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame("ETH-USD"))
        if conn.index == 0:
            return  # drop: the client must sign afresh on the reconnect
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(
            partitions, ["ETH-USD"], server.url, feed="exchange-auth", credentials=CREDS
        )
        collect(part, count("snapshot", 2))
    assert len(server.received) >= 2
    for [message] in server.received[:2]:
        assert message["channels"] == [
            {"name": "level2", "product_ids": ["ETH-USD"]},
            {"name": "heartbeat", "product_ids": ["ETH-USD"]},
        ]
        assert message["key"] == "test-key"
        assert message["passphrase"] == "test-passphrase"
        assert abs(float(message["timestamp"]) - time.time()) < 30
        assert message["signature"] == expected_signature(message["timestamp"])


# -- data path ---------------------------------------------------------------------------


def test_big_snapshot_then_updates(partitions: list) -> None:
    levels = 80_000
    big = snapshot_frame(mid=200_000, levels=levels)
    assert len(big) > 4_000_000

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(big)
        await conn.send(update_frame(price="199999", size="0"))
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, watchdog_seconds=2.0)
        items = collect(part, count("changes", 1), timeout=15)
    assert kinds(items) == ["reset", "snapshot", "changes"]
    snapshot = items[1][1]
    assert len(snapshot.bids) == len(snapshot.asks) == levels
    assert snapshot.bids[0] == (Decimal(199_999), Decimal("1.5"))
    assert items[2][1].changes == [("bid", Decimal(199_999), Decimal(0))]


def test_updates_before_snapshot_are_dropped_and_counted(partitions: list) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(update_frame(size="7"))
        await conn.send(snapshot_frame())
        await conn.send(update_frame(size="8"))
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url)
        items = collect(part, count("changes", 1))
    assert kinds(items) == ["reset", "snapshot", "changes"]
    assert items[2][1].changes[0][2] == Decimal(8)
    assert part.stats.dropped_before_snapshot == 1
    assert part.stats.events == 2


def test_reconnect_after_server_closes_emits_reset_then_fresh_snapshot(
    partitions: list,
) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame(mid=100 + conn.index))
        await conn.send(update_frame())
        if conn.index == 0:
            return
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url)
        items = collect(part, count("changes", 2))
        stats = part.stats.as_dict()
    assert kinds(items) == [
        "reset",
        "snapshot",
        "changes",
        "reset",
        "snapshot",
        "changes",
    ]
    assert "closed" in items[3][1].reason
    assert items[4][1].bids[0][0] == Decimal(100)  # the second connection's book
    assert stats["reconnects"] >= 1
    assert stats["resets"] == 2


def test_watchdog_reconnects_a_silent_connection(partitions: list) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        await conn.hold(10)  # silent: no heartbeat, no data

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, watchdog_seconds=0.3)
        items = collect(part, count("snapshot", 2))
    assert kinds(items)[:4] == ["reset", "snapshot", "reset", "snapshot"]
    assert "watchdog" in items[2][1].reason
    assert server.connections >= 2


def test_heartbeats_alone_do_not_keep_a_bookless_connection(partitions: list) -> None:
    heartbeat = {"type": "heartbeat", "sequence": 1, "product_id": "BTC-USD"}

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        if conn.index > 0:
            await conn.send(snapshot_frame())
        for _ in range(100):
            await conn.send(heartbeat)
            await asyncio.sleep(0.05)

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, watchdog_seconds=0.2)
        items = collect(part, count("snapshot", 1))
        assert (
            part.stats.last_disconnect
            == "watchdog: no snapshot within 0.6 s of connecting"
        )
    assert kinds(items) == ["reset", "snapshot"]  # no second reset: nothing was live
    assert server.connections == 2


def test_advanced_trade_sequence_gap_resets_and_resubscribes(partitions: list) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.recv_json()
        if conn.index == 0:
            await conn.send(
                '{"channel":"subscriptions","timestamp":"2026-08-09T21:05:48.6Z",'
                '"sequence_num":0,"events":[]}'
            )
            await conn.send(at_frame(1, "snapshot"))
            await conn.send(at_frame(2))
            await conn.send(at_frame(4))  # 3 was lost
            await conn.send(at_frame(5))
        else:
            await conn.send(at_frame(0, "snapshot"))
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, feed="advanced-trade")
        items = collect(part, count("snapshot", 2))
    assert kinds(items) == ["reset", "snapshot", "changes", "reset", "snapshot"]
    assert "expected sequence_num 3, got 4" in items[3][1].reason
    assert part.stats.sequence_gaps == 1
    assert server.connections == 2


def test_malformed_frames_are_skipped_counted_and_book_frames_resync(
    partitions: list,
) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        if conn.index == 0:
            await conn.send("[1, 2]")  # not a book frame: skipped, no resync
            await conn.send(
                update_frame().replace(
                    "2026-08-25T03:35:57.300000Z", "0001-01-01T00:00:00Z"
                )
            )
            await conn.send(update_frame(size="0.-10000"))  # bad size: book frame lost
            await conn.send(update_frame(size="5"))
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url)
        items = collect(part, count("snapshot", 2))
    assert kinds(items) == ["reset", "snapshot", "changes", "reset", "snapshot"]
    assert items[2][1].time is None  # bad timestamp alone: data kept
    assert "malformed" in items[3][1].reason
    assert part.stats.malformed == 2
    assert part.stats.bad_times == 1
    assert part.stats.resyncs == 1


# -- error replies -----------------------------------------------------------------------


def test_unknown_product_idles_its_partition_only(partitions: list) -> None:
    connections: dict[str, int] = {}

    async def script(conn: ScriptedConnection) -> None:
        message = await conn.recv_json()
        product = message["channels"][0]["product_ids"][0]
        connections[product] = connections.get(product, 0) + 1
        if product == "BAD-USD":
            await conn.send(
                {
                    "type": "error",
                    "message": "Failed to subscribe",
                    "reason": "BAD-USD is not a valid product",
                }
            )
        else:
            await conn.send(snapshot_frame(product))
        await conn.hold()

    with ScriptedServer(script) as server:
        bad = build(partitions, ["BTC-USD", "BAD-USD"], server.url, product="BAD-USD")
        good = build(partitions, ["BTC-USD", "BAD-USD"], server.url, product="BTC-USD")
        bad_items = collect(bad, lambda _: bad.stats.state == "failed")
        good_items = collect(good, count("snapshot", 1))
        wait_until(lambda: not bad.running)  # its task ended: it cannot reconnect
        bad_items += bad.next_batch()
    assert kinds(bad_items) == ["reset"]
    assert isinstance(bad.error, UnknownProduct)
    assert "BAD-USD" in bad.stats.last_error
    assert bad.stats.errors == 1
    assert connections["BAD-USD"] == 1
    assert not bad.running
    assert kinds(good_items) == ["reset", "snapshot"]
    assert good.stats.errors == 0


def test_auth_error_names_the_credential_and_hides_secrets(partitions: list) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(
            {
                "type": "error",
                "message": "Failed to subscribe",
                "reason": "invalid signature",
            }
        )
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(
            partitions, ["BTC-USD"], server.url, feed="exchange-auth", credentials=CREDS
        )
        collect(part, lambda _: part.stats.state == "failed")
    assert isinstance(part.error, AuthError)
    assert part.error.credential == "COINBASE_API_SECRET"
    assert "COINBASE_API_SECRET" in part.stats.last_error
    assert SECRET not in str(part.stats) and "test-passphrase" not in str(part.stats)
    assert server.connections == 1


def test_transient_error_reconnects(partitions: list) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.recv_json()
        if conn.index == 0:
            await conn.send(
                {"type": "error", "message": "too many L2 streams requested"}
            )
        else:
            await conn.send(at_frame(0, "snapshot"))
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, feed="advanced-trade")
        items = collect(part, count("snapshot", 1))
        assert part.stats.state == "connected"
    assert kinds(items) == ["reset", "snapshot"]
    assert part.stats.errors == 1
    assert "too many L2 streams" in part.stats.last_error


# -- lifecycle ---------------------------------------------------------------------------


def test_close_stops_the_thread_and_the_connection(partitions: list) -> None:
    closed = []

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        await conn.hold(10)
        closed.append(conn.index)

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, watchdog_seconds=5.0)
        collect(part, count("snapshot", 1))
        assert part.running
        started = time.monotonic()
        part.close()
        assert time.monotonic() - started < 1.5
        wait_until(lambda: not part.running and bool(closed))
    assert closed == [0]
    assert server.connections == 1
    assert all(isinstance(event, BookReset) for _, event in part.next_batch())


def test_close_while_waiting_to_reconnect(partitions: list) -> None:
    part = build(
        partitions, ["BTC-USD"], "ws://127.0.0.1:9", backoff_initial=5, backoff_max=5
    )
    collect(part, lambda _: part.stats.reconnects >= 1)
    started = time.monotonic()
    part.close()
    assert time.monotonic() - started < 1.5
    wait_until(lambda: not part.running)


def test_resume_starts_with_a_reset_and_snapshot_pickles(partitions: list) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url)
        state = pickle.loads(pickle.dumps(part.snapshot()))
        resumed = build(partitions, ["BTC-USD"], server.url, resume_state=state)
        items = collect(resumed, count("snapshot", 1))
    assert kinds(items) == ["reset", "snapshot"]
    assert items[0][1].reason == "resume"


def test_next_awake_polls_when_empty_and_not_when_items_wait(partitions: list) -> None:
    part = build(partitions, ["BTC-USD"], "ws://127.0.0.1:9")
    assert part.next_awake() is None  # the start reset is queued
    assert kinds(part.next_batch()) == ["reset"]
    awake = part.next_awake()
    assert awake is not None and awake.tzinfo is not None


# -- end to end against the local exchange -----------------------------------------------


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
            for product, event in part.next_batch():
                assert product == part.product_id
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
    exchange.pause_market()
    frames = [0]

    def quiet() -> bool:  # no book event for 0.3 s: all sent has been applied
        total = sum(part.stats.events for part in parts.values())
        if total != frames[0]:
            frames[0], quiet.since = total, time.monotonic()  # type: ignore[attr-defined]
        return time.monotonic() - quiet.since > 0.3  # type: ignore[attr-defined]

    quiet.since = time.monotonic()  # type: ignore[attr-defined]
    feed_books(parts, books, quiet)
    for product, book in books.items():
        true_bids, true_asks = exchange.true_book(product)
        assert book.live, parts[product].stats
        assert (book.bids, book.asks) == (true_bids, true_asks), product


@pytest.mark.parametrize(
    ("feed", "protocol"),
    [("exchange", "exchange"), ("advanced-trade", "advanced-trade")],
)
def test_local_exchange_faults_end_with_the_true_book(
    partitions: list, feed: str, protocol: str
) -> None:
    products = ["BTC-USD", "ETH-USD"]
    with LocalExchange(
        products, depth=40, rate=50, seed=3, heartbeat_interval=0.1
    ) as exchange:
        source = CoinbaseSource(
            products, feed=feed, url=exchange.url(protocol), origin="sim", **FAST
        )
        parts = {p: source.build_part("input", p, None) for p in products}
        partitions.extend(parts.values())
        books = {p: Book() for p in products}
        feed_books(parts, books, fresh_snapshots(parts))
        healthy = fresh_snapshots(parts)
        exchange.drop_connections()
        feed_books(parts, books, healthy)
        malformed = {p: part.stats.malformed for p, part in parts.items()}
        feed_books(parts, books, settled(parts))
        exchange.send_malformed(1)
        feed_books(
            parts,
            books,
            lambda: all(
                part.stats.malformed > malformed[p] for p, part in parts.items()
            ),
        )
        feed_books(parts, books, settled(parts))
        if feed == "advanced-trade":
            exchange.skip_sequence()
        healthy = fresh_snapshots(parts)
        exchange.go_silent(0.8)
        feed_books(parts, books, healthy)
        assert_books_match(exchange, parts, books)
    for part in parts.values():
        stats = part.stats.as_dict()
        assert stats["reconnects"] >= 2, stats  # the drop and the silence at least
        assert stats["malformed"] >= 1, stats
        assert stats["snapshots"] >= 3, stats
        assert stats["events"] > stats["snapshots"] + stats["resets"], stats
        if feed == "advanced-trade":
            assert stats["sequence_gaps"] + stats["resyncs"] >= 1, stats


def test_local_exchange_signed_level2(partitions: list) -> None:
    with LocalExchange(
        ["BTC-USD"],
        depth=20,
        rate=40,
        api_key="test-key",
        api_secret=SECRET,
        passphrase="test-passphrase",
        heartbeat_interval=0.1,
    ) as exchange:
        good = build(
            partitions,
            ["BTC-USD"],
            exchange.url("exchange"),
            feed="exchange-auth",
            credentials=CREDS,
        )
        wrong = Credentials("test-key", SECRET, "not-the-passphrase")
        bad = build(
            partitions,
            ["BTC-USD"],
            exchange.url("exchange"),
            feed="exchange-auth",
            credentials=wrong,
        )
        unsigned = build(
            partitions, ["BTC-USD"], exchange.url("exchange"), feed="exchange"
        )
        collect(good, count("changes", 3))
        collect(unsigned, count("changes", 3))
        collect(bad, lambda _: bad.stats.state == "failed")
    assert isinstance(bad.error, AuthError)
    assert bad.error.credential == "COINBASE_API_PASSPHRASE"
    assert "not-the-passphrase" not in bad.stats.last_error


def test_local_exchange_unknown_product(partitions: list) -> None:
    with LocalExchange(
        ["BTC-USD"], depth=20, rate=40, heartbeat_interval=0.1
    ) as exchange:
        for protocol in ("exchange", "advanced-trade"):
            part = build(partitions, ["SOL-USD"], exchange.url(protocol), feed=protocol)
            collect(part, lambda _, p=part: p.stats.state == "failed")
            assert isinstance(part.error, UnknownProduct)
            assert "SOL-USD" in part.stats.last_error


# -- inside Bytewax ----------------------------------------------------------------------


class _StopAfter(StatefulSourcePartition):
    """Ends the input once the wrapped partition has delivered ``changes`` updates."""

    def __init__(self, inner: _CoinbasePartition, changes: int) -> None:
        self.inner = inner
        self.remaining = changes

    def next_batch(self) -> list:
        if self.remaining <= 0:
            raise StopIteration
        batch = self.inner.next_batch()
        self.remaining -= sum(isinstance(event, BookChanges) for _, event in batch)
        return batch

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def snapshot(self) -> str:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class _StopAfterSource(FixedPartitionedSource):
    def __init__(self, inner: CoinbaseSource, changes: int) -> None:
        self.inner = inner
        self.changes = changes

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume_state: str | None
    ) -> _StopAfter:
        return _StopAfter(
            self.inner.build_part(step_id, for_part, resume_state), self.changes
        )


def test_runs_in_a_bytewax_flow() -> None:
    products = ["BTC-USD", "ETH-USD"]
    with LocalExchange(products, depth=20, rate=50, heartbeat_interval=0.1) as exchange:
        source = CoinbaseSource(
            products, url=exchange.url("exchange"), origin="sim", **FAST
        )
        flow = Dataflow("coinbase_source_test")
        stream = op.input("in", flow, _StopAfterSource(source, changes=5))
        out: list = []
        op.output("out", stream, TestingSink(out))
        run_main(flow)
    for product in products:
        events = [event for key, event in out if key == product]
        assert all(
            event.product_id == product and event.feed == "sim" for event in events
        )
        assert kinds([(product, event) for event in events])[:2] == [
            "reset",
            "snapshot",
        ]
        assert sum(isinstance(event, BookChanges) for event in events) >= 5


SIGINT_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from bytewax import operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from local_exchange.server import LocalExchange
from service.validation import ConfigError
from coinbase_source import CoinbaseSource
exchange = LocalExchange(["BTC-USD", "ETH-USD"], depth=10, rate=20).start()
flow = Dataflow("sigint")
stream = op.input("in", flow, CoinbaseSource(["BTC-USD", "ETH-USD"], url=exchange.url()))
op.output("out", op.map("name", stream, lambda item: type(item[1]).__name__), StdOutSink())
run_main(flow)
"""


def test_ctrl_c_ends_a_running_flow_promptly(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(SIGINT_SCRIPT.format(root=str(pathlib.Path(__file__).parents[1])))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 20
        while "BookChanges" not in lines and time.monotonic() < deadline:
            lines.append(proc.stdout.readline().strip())
        assert "BookChanges" in lines, lines[-5:]
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=5)  # raises TimeoutExpired if a thread kept it alive
    finally:
        proc.kill()
        proc.wait()
    names = [
        line for line in lines if line in ("BookReset", "BookSnapshot", "BookChanges")
    ]
    assert names[0] == "BookReset"


def test_a_backlog_the_dataflow_cannot_drain_is_dropped_and_resynced(
    partitions: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coinbase_source

    monkeypatch.setattr(coinbase_source, "MAX_BACKLOG", 30)
    with LocalExchange(["BTC-USD"], depth=50, rate=200, seed=4) as exchange:
        part = build(partitions, ["BTC-USD"], exchange.url())
        deadline = time.monotonic() + 10
        while part.stats.overflows == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # nobody drains: the backlog grows past the bound
        assert part.stats.overflows >= 1
        items = collect(part, count("snapshot", 1))
        assert len(items) <= 40 + 30  # the backlog was dropped, not delivered
        assert "reset" in kinds(items)
        assert part.stats.reconnects >= 1


def test_subscribe_messages_stay_under_eight_a_second_per_process(
    partitions: list,
) -> None:
    """Advanced Trade allows 8 unauthenticated messages/s per IP; each product sends 2."""
    arrivals: list[float] = []

    async def script(conn: ScriptedConnection) -> None:
        for _ in range(2):
            await conn.recv_json()
            arrivals.append(time.monotonic())
        await conn.hold()

    products = ["BTC-USD", "ETH-USD", "SOL-USD", "LTC-USD", "BTC-EUR", "ETH-EUR"]
    with ScriptedServer(script) as server:
        for product in products:
            build(partitions, products, server.url, product, feed="advanced-trade")
        deadline = time.monotonic() + 10
        while len(arrivals) < 2 * len(products) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(arrivals) == 2 * len(products)
    arrivals.sort()
    for i in range(len(arrivals) - 8):
        assert arrivals[i + 8] - arrivals[i] >= 1.0 - 0.05  # never 9 in one second


# -- robustness: end of a served replay, every partition failed ---------------------------


def test_the_end_of_a_served_replay_ends_the_partition(partitions: list) -> None:
    marker = {
        "type": "subscriptions",
        "channels": [{"name": "level2_batch", "product_ids": ["BTC-USD"]}],
        "local_exchange": "replay",
    }

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(marker)
        await conn.send(snapshot_frame())
        await conn.send(update_frame())
        # returning closes the connection with code 1000: the replay is over

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, origin="exchange")
        items: Items = []
        deadline = time.monotonic() + 8
        with pytest.raises(StopIteration):
            while time.monotonic() < deadline:
                items += part.next_batch()
                time.sleep(0.002)
        wait_until(lambda: not part.running)
        assert server.connections == 1  # no reconnect after the end of the data
    assert kinds(items) == ["reset", "snapshot", "changes", "reset"]
    assert {event.feed for _, event in items[1:]} == {"replay"}
    assert part.stats.state == "finished"


def test_the_source_says_when_every_partition_failed(partitions: list) -> None:
    with LocalExchange(["BTC-USD"], depth=20, rate=40) as exchange:
        calls: list[str] = []
        source = CoinbaseSource(
            ["BTC-USD", "SOL-USD"], url=exchange.url(), on_all_failed=calls.append
        )
        good = source.build_part("in", "BTC-USD", None)
        bad = source.build_part("in", "SOL-USD", None)
        partitions += [good, bad]
        collect(good, count("snapshot", 1))
        wait_until(lambda: bad.stats.state == "failed")
        assert calls == []  # one product still works: keep running
        source = CoinbaseSource(
            ["SOL-USD", "XRP-USD"], url=exchange.url(), on_all_failed=calls.append
        )
        partitions += [source.build_part("in", p, None) for p in source.products]
        wait_until(lambda: bool(calls))
    [message] = calls
    assert "every Coinbase product of this process failed permanently" in message
    assert "SOL-USD" in message and "XRP-USD" in message


ALL_FAILED_SCRIPT = """
import logging, sys
sys.path.insert(0, {root!r})
from bytewax import operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from coinbase_source import CoinbaseSource
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
flow = Dataflow("all_failed")
stream = op.input("in", flow, CoinbaseSource(["SOL-USD", "XRP-USD"], url={url!r}))
op.output("out", op.map("name", stream, lambda item: type(item[1]).__name__), StdOutSink())
run_main(flow)
"""


def test_a_run_whose_every_product_is_unknown_exits_with_one_line(
    tmp_path: pathlib.Path,
) -> None:
    script = tmp_path / "flow.py"
    root = str(pathlib.Path(__file__).parents[1])
    with LocalExchange(["BTC-USD"], depth=20, rate=40) as exchange:
        script.write_text(ALL_FAILED_SCRIPT.format(root=root, url=exchange.url()))
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=30
        )
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [
        line
        for line in proc.stderr.splitlines()
        if "every Coinbase product of this process failed permanently" in line
    ]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("CRITICAL") and "SOL-USD" in lines[0]
    assert "Traceback" not in proc.stderr


def test_a_resync_request_from_the_book_step_gets_a_fresh_snapshot(
    partitions: list,
) -> None:
    from service.resync import clear_resync_requests, request_resync

    clear_resync_requests()
    with LocalExchange(["BTC-USD"], depth=20, rate=40, heartbeat_interval=0.1) as ex:
        part = build(partitions, ["BTC-USD"], ex.url())
        collect(part, count("snapshot", 1))
        request_resync("BTC-USD", "crossed for 3.0 s of feed time")
        items = collect(part, count("snapshot", 1))
    resets = [event for _, event in items if isinstance(event, BookReset)]
    assert resets and "requested: crossed for 3.0 s" in resets[0].reason
    assert part.stats.resyncs == 1


def _marks_itself(exchange: LocalExchange) -> bool:
    """Whether this local exchange puts "local_exchange" in its subscriptions reply."""

    async def probe() -> bool:
        import websockets

        async with websockets.connect(exchange.url()) as ws:
            await ws.send(json.dumps(subscribe_messages("exchange", "BTC-USD")[0]))
            for _ in range(20):
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if frame.get("type") == "subscriptions":
                    return "local_exchange" in frame
        return False

    return asyncio.run(probe())


def test_data_from_the_local_exchange_is_labelled_by_its_marker(
    partitions: list,
) -> None:
    with LocalExchange(["BTC-USD"], depth=20, rate=40) as exchange:
        if not _marks_itself(exchange):
            pytest.skip("this local exchange does not mark its subscriptions reply yet")
        part = build(partitions, ["BTC-USD"], exchange.url(), origin="exchange")
        items = collect(part, count("changes", 2))
    assert part.session.local_exchange == "sim"
    assert {event.feed for _, event in items[1:]} == {"sim"}
