"""Several products on one connection, against the local exchange on 127.0.0.1.

One Bytewax partition per product, fewer connections than products: the exchange's own
counters (``connections_accepted``, ``subscribes``, ``unsubscribes``) say how many were
opened and sent, every rebuilt book is compared with the exchange's true book, and the
faults show which products of a shared connection reset: all of them for a drop or a
sequence gap, one alone for its malformed frame, and an unknown product fails alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from coinbase.errors import UnknownProduct
from coinbase.multiplex import PRODUCTS_PER_CONNECTION
from coinbase_source import (
    POLLED_BY_OTHER_INTERVAL,
    CoinbaseSource,
    _CoinbasePartition,
)
from events import BookReset
from local_exchange.server import LocalExchange
from tests.support.source_partitions import (
    ALL_FAILED,
    FAST,
    Book,
    assert_books_match,
    feed_books,
    fresh_snapshots,
    open_partitions,
    polled,
    settled,
    wait_until,
)

pytestmark = pytest.mark.slow  # sockets and the shared loop thread

FEEDS = ["exchange", "advanced-trade"]


@pytest.fixture
def partitions() -> Iterator[list[_CoinbasePartition]]:
    yield from open_partitions()


def products(n: int) -> list[str]:
    return [f"C{i:03d}-USD" for i in range(n)]


def start(
    registry: list[_CoinbasePartition],
    exchange: LocalExchange,
    feed: str,
    wanted: list[str],
    all_failed: list[str] | None = None,
    poll_together: bool = False,
) -> tuple[dict[str, _CoinbasePartition], dict[str, Book]]:
    """A source over ``wanted``, every partition built in order as Bytewax does."""
    source = CoinbaseSource(
        wanted,
        poll_together=poll_together,
        feed="sim",
        protocol=feed,
        url=exchange.url(feed),
        on_all_failed=(ALL_FAILED if all_failed is None else all_failed).append,
        # Faults here are sudden (abort, gap, bad frame): a watchdog longer than FAST's
        # keeps a loaded machine's pauses from adding resets the counts do not expect.
        **{**FAST, "watchdog_seconds": 3.0},  # type: ignore[arg-type]
    )
    parts = {p: source.build_part("input", p, None) for p in wanted}
    registry.extend(parts.values())
    return parts, {p: Book() for p in wanted}


def resets(parts: dict[str, _CoinbasePartition]) -> dict[str, int]:
    return {p: part.stats.resets for p, part in parts.items()}


@pytest.mark.parametrize("feed", FEEDS)
def test_many_products_over_few_connections_each_book_true(
    partitions: list, feed: str
) -> None:
    wanted = products(40)
    per_connection = PRODUCTS_PER_CONNECTION[feed]
    connections = math.ceil(len(wanted) / per_connection)  # 2 (Exchange), 3 (AT)
    with LocalExchange(
        wanted, depth=20, rate=10, seed=7, heartbeat_interval=0.1
    ) as exchange:
        parts, books = start(partitions, exchange, feed, wanted)
        feed_books(parts, books, fresh_snapshots(parts), timeout=20)
        # One subscribe per connection (Advanced Trade: plus its heartbeats, which
        # may still be on its way, paced, when the books are already live).
        messages = connections * (2 if feed == "advanced-trade" else 1)
        wait_until(lambda: exchange.stats["subscribes"] >= messages)
        stats = exchange.stats
        assert stats["connections_accepted"] == connections, stats
        assert stats["connections_open"] == connections, stats
        assert stats["subscribes"] == messages, stats
        assert_books_match(exchange, parts, books)
    assert all(part.stats.connections == 1 for part in parts.values())


@pytest.mark.parametrize("feed", FEEDS)
def test_polled_together_one_partition_per_connection_yields_every_book(
    partitions: list, feed: str
) -> None:
    wanted = products(20)  # Exchange: one connection; Advanced Trade: 16 + 4
    with LocalExchange(
        wanted, depth=20, rate=20, seed=9, heartbeat_interval=0.1
    ) as exchange:
        parts, books = start(partitions, exchange, feed, wanted, poll_together=True)
        pollers = {p: part for p, part in parts.items() if part._poller is part}
        per_connection = PRODUCTS_PER_CONNECTION[feed]
        assert len(pollers) == math.ceil(len(wanted) / per_connection)
        # only the pollers are polled, as when Bytewax leaves the others be
        feed_books(pollers, books, fresh_snapshots(parts), timeout=20)
        assert_books_match(exchange, parts, books)  # nothing lost, nothing reordered
        before = datetime.now(UTC)
        others = [part for p, part in parts.items() if p not in pollers]
        awake = [part.next_awake() for part in others]
    assert others and all(t - before >= POLLED_BY_OTHER_INTERVAL for t in awake)


@pytest.mark.parametrize("feed", FEEDS)
def test_a_drop_or_a_gap_resets_every_product_of_the_connection_and_all_recover(
    partitions: list, feed: str
) -> None:
    wanted = products(20)  # Exchange: one connection; Advanced Trade: 16 + 4
    with LocalExchange(
        wanted, depth=20, rate=20, seed=8, heartbeat_interval=0.1
    ) as exchange:
        parts, books = start(partitions, exchange, feed, wanted)
        feed_books(parts, books, fresh_snapshots(parts), timeout=20)
        accepted = exchange.stats["connections_accepted"]
        before = resets(parts)
        healthy = fresh_snapshots(parts)
        exchange.drop_connections()
        feed_books(parts, books, healthy, timeout=20)
        assert all(n == before[p] + 1 for p, n in resets(parts).items())
        for part in parts.values():
            assert "closed" in (part.stats.last_disconnect or ""), part.stats
        assert exchange.stats["connections_accepted"] == 2 * accepted
        if feed == "advanced-trade":
            feed_books(parts, books, settled(parts))
            before = resets(parts)
            healthy = fresh_snapshots(parts)
            exchange.skip_sequence()  # every connection loses one message
            feed_books(parts, books, healthy, timeout=20)
            assert all(n == before[p] + 1 for p, n in resets(parts).items())
            assert all(part.stats.sequence_gaps == 1 for part in parts.values())
        assert_books_match(exchange, parts, books)


@pytest.mark.parametrize("feed", FEEDS)
def test_a_malformed_frame_of_one_product_resyncs_that_product_alone(
    partitions: list, feed: str
) -> None:
    wanted = products(4)
    with LocalExchange(
        wanted, depth=20, rate=20, seed=9, heartbeat_interval=0.1
    ) as exchange:
        parts, books = start(partitions, exchange, feed, wanted)
        feed_books(parts, books, fresh_snapshots(parts), timeout=20)
        before = resets(parts)
        victim = parts[wanted[0]]  # the exchange garbles its connection's first product
        snapshots = victim.stats.snapshots
        exchange.send_malformed(1, kinds=["negative_size"])
        feed_books(
            parts,
            books,
            lambda: victim.stats.snapshots > snapshots and victim.session.settled,
        )
        after = resets(parts)
        assert after[wanted[0]] == before[wanted[0]] + 1
        assert all(after[p] == before[p] for p in wanted[1:]), (before, after)
        assert victim.stats.malformed_frames == 1 and victim.stats.resyncs == 1
        stats = exchange.stats
        assert stats["connections_accepted"] == 1, stats  # no reconnect
        assert stats["unsubscribes"] == 1, stats
        assert_books_match(exchange, parts, books)


@pytest.mark.parametrize("feed", FEEDS)
def test_an_unknown_product_among_known_ones_fails_alone(
    partitions: list, feed: str
) -> None:
    with LocalExchange(
        ["BTC-USD", "ETH-USD"], depth=20, rate=20, heartbeat_interval=0.1
    ) as exchange:
        wanted = ["BTC-USD", "SOL-USD", "ETH-USD"]
        all_failed: list[str] = []
        parts, books = start(partitions, exchange, feed, wanted, all_failed)
        bad = parts.pop("SOL-USD")
        books.pop("SOL-USD")
        wait_until(lambda: bad.stats.state == "failed")
        feed_books(parts, books, settled(parts))
        assert isinstance(bad.error, UnknownProduct)
        assert "SOL-USD" in (bad.stats.last_error or "")
        assert [type(e) for _, e in polled(bad)] == [BookReset]
        assert not bad.running and all(p.running for p in parts.values())
        assert all(part.stats.errors == 0 for part in parts.values())
        assert exchange.stats["connections_accepted"] == 1
        assert_books_match(exchange, parts, books)
    assert all_failed == []  # the process keeps running for the others


def test_subscribes_of_several_connections_are_paced_together(partitions: list) -> None:
    """40 Advanced Trade products: 3 connections (16, 16, 8), 2 messages each, and the 6
    messages of the process spaced by the one process-wide message pacer."""
    import time

    from coinbase.pacing import MESSAGE_PACER
    from tests.support.scripted_server import ScriptedConnection, ScriptedServer

    arrivals: list[float] = []

    async def script(conn: ScriptedConnection) -> None:
        for _ in range(2):
            await conn.recv_json()
            arrivals.append(time.monotonic())
        await conn.hold()

    wanted = products(40)
    with ScriptedServer(script) as server:
        source = CoinbaseSource(
            wanted,
            feed="advanced-trade",
            url=server.url,
            on_all_failed=ALL_FAILED.append,
            **FAST,
        )
        partitions.extend(source.build_part("input", p, None) for p in wanted)
        wait_until(lambda: len(arrivals) >= 6)
        received = [list(messages) for messages in server.received]
    assert server.connections == 3
    sizes = sorted(len(messages[0]["product_ids"]) for messages in received)
    assert sizes == [8, 16, 16]
    assert all(
        messages[1] == {"type": "subscribe", "channel": "heartbeats"}
        for messages in received
    )
    arrivals.sort()
    # Sent one pacer interval apart at least (arrival times add jitter: some slack).
    span = arrivals[-1] - arrivals[0]
    assert span >= 5 * MESSAGE_PACER.interval - 0.15, arrivals
