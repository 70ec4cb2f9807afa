"""The Coinbase source against real WebSocket servers on 127.0.0.1.

Exact frame-by-frame cases use the scripted server; end-to-end cases use the project's
local exchange (local_exchange.LocalExchange) and compare the rebuilt book with its true
book. Partitions are driven directly: build_part(...), then poll next_batch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.server
import logging
import pickle
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from coinbase.errors import AuthError, UnknownProduct
from coinbase_source import (
    POLL_INTERVAL,
    QUIET_POLL_INTERVAL,
    QUIET_POLLS,
    CoinbaseSource,
    _CoinbasePartition,
)
from events import BookReset
from tests.support.flow import free_port
from tests.support.scripted_server import ScriptedConnection, ScriptedServer
from tests.support.source_partitions import (
    CREDS,
    FAST,
    SECRET,
    at_frame,
    build,
    collect,
    count,
    kinds,
    open_partitions,
    polled,
    snapshot_frame,
    update_frame,
    wait_until,
)

pytestmark = pytest.mark.slow  # every test here opens sockets or threads


@pytest.fixture
def partitions() -> Iterator[list[_CoinbasePartition]]:
    """Partitions registered here are closed after the test, pass or fail."""
    yield from open_partitions()


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
    assert part.stats.malformed_frames == 2
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
        bad_items += polled(bad)
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
    assert all(isinstance(event, BookReset) for _, event in polled(part))


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


def test_a_poll_is_one_item_keyed_as_the_flow_asked(partitions: list) -> None:
    source = CoinbaseSource(
        ["BTC-USD", "ETH-USD"], url="ws://127.0.0.1:9", on_all_failed=[].append, **FAST
    )
    source.key_by({"BTC-USD": "BTC-USD~7"})  # what dataflow.get_flow does
    btc = source.build_part("in", "BTC-USD", None)
    eth = source.build_part("in", "ETH-USD", None)
    partitions += [btc, eth]
    [(key, events)] = btc.next_batch()
    assert key == "BTC-USD~7" and [type(e) for e in events] == [BookReset]
    [(key, _)] = eth.next_batch()
    assert key == "ETH-USD"  # a product without a key keeps its id


def test_next_awake_polls_when_empty_and_not_when_items_wait(partitions: list) -> None:
    part = build(partitions, ["BTC-USD"], "ws://127.0.0.1:9")
    assert part.next_awake() is None  # the start reset is queued
    assert kinds(polled(part)) == ["reset"]
    awake = part.next_awake()
    assert awake is not None and awake.tzinfo is not None


def test_a_quiet_product_is_polled_less_often_until_its_next_event(
    partitions: list,
) -> None:
    go = threading.Event()

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        await asyncio.to_thread(go.wait, 30)
        await conn.send(update_frame())
        await conn.hold()

    def poll_empty() -> tuple[float, float]:
        """Poll once, finding nothing: the interval until Bytewax is asked to poll
        again lies between the two seconds returned, however slow the machine."""
        assert part.next_batch() == []
        before = datetime.now(UTC)
        awake = part.next_awake()
        after = datetime.now(UTC)
        return (awake - after).total_seconds(), (awake - before).total_seconds()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url)
        collect(part, count("snapshot", 1))
        waits = [poll_empty() for _ in range(QUIET_POLLS + 2)]
        busy, quiet = POLL_INTERVAL.total_seconds(), QUIET_POLL_INTERVAL.total_seconds()
        assert all(low <= busy for low, _ in waits[: QUIET_POLLS - 1]), waits
        low, high = waits[-1]
        assert busy < high and low <= quiet, waits
        go.set()  # an event: the product is busy again
        collect(part, count("changes", 1))
        assert poll_empty()[0] <= busy


# -- feeds that can never work, and secrets in URLs (issue 17: findings 10, 20) ----------


class _NotWebSocket(http.server.BaseHTTPRequestHandler):
    """An HTTP server that is not a WebSocket endpoint: every request gets a 404."""

    protocol_version = "HTTP/1.1"  # what a web server of today answers with
    requests: list[str] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.send_error(404, "no WebSocket here")

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _not_websocket_server() -> Iterator[tuple[str, list[str]]]:
    requests: list[str] = []
    handler = type("Handler", (_NotWebSocket,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.server_address[1]}/feed", requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_is_not_websocket_ends_the_source_at_once(
    partitions: list,
) -> None:
    """A 404 to the upgrade can never turn into a feed: before, it was retried for
    ever (a run that never produced anything and never ended)."""
    gave_up: list[str] = []
    with _not_websocket_server() as (url, requests):
        source = CoinbaseSource(
            ["BTC-USD", "ETH-USD"], url=url, on_all_failed=gave_up.append, **FAST
        )
        parts = [source.build_part("input", p, None) for p in source.products]
        partitions.extend(parts)
        wait_until(lambda: bool(gave_up))
        wait_until(lambda: not any(part.running for part in parts))
    [line] = gave_up
    assert "every Coinbase product of this process failed permanently" in line
    assert "BTC-USD" in line and "HTTP 404" in line and url in line
    assert len(requests) == 1  # permanent: not retried
    assert all(part.stats.state == "failed" for part in parts)


def test_a_feed_answering_in_the_other_protocol_ends_the_source_with_its_reason(
    partitions: list,
) -> None:
    """Advanced Trade subscribes sent to the Exchange feed get an error reply, every
    time: after GIVE_UP_AFTER connections without a book the source gives up."""
    from coinbase.connection import GIVE_UP_AFTER
    from local_exchange.server import LocalExchange

    gave_up: list[str] = []
    with LocalExchange(["BTC-USD"], depth=10, rate=20) as exchange:
        part = build(
            partitions,
            ["BTC-USD"],
            exchange.url("exchange"),
            feed="advanced-trade",
            on_all_failed=gave_up.append,
        )
        wait_until(lambda: bool(gave_up), timeout=30)
        wait_until(lambda: not part.running)
        connections = exchange.stats["connections_accepted"]
    [line] = gave_up
    assert f"{GIVE_UP_AFTER} connections in a row failed" in line
    assert "No channels provided" in line  # the feed's own reason
    assert connections == GIVE_UP_AFTER
    assert part.stats.state == "failed"


def test_a_watchdog_too_short_for_any_snapshot_ends_the_source(
    partitions: list,
) -> None:
    from local_exchange.server import LocalExchange

    gave_up: list[str] = []
    with LocalExchange(["BTC-USD"], depth=10, rate=20) as exchange:
        build(
            partitions,
            ["BTC-USD"],
            exchange.url(),
            watchdog_seconds=1e-9,
            on_all_failed=gave_up.append,
        )
        wait_until(lambda: bool(gave_up), timeout=30)
    assert "watchdog: no snapshot within" in gave_up[0]


def test_a_feed_that_delivered_a_book_once_is_retried_for_ever(
    partitions: list,
) -> None:
    """An outage after the feed worked is not a wrong setting: never given up."""

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        if conn.index == 0:
            await conn.send(snapshot_frame())
        # returning closes the connection: later ones end before any book

    gave_up: list[str] = []
    with ScriptedServer(script) as server:
        part = build(
            partitions,
            ["BTC-USD"],
            server.url,
            give_up_after=2,
            on_all_failed=gave_up.append,
        )
        collect(part, count("snapshot", 1))
        wait_until(lambda: server.connections >= 6)
        assert part.running
    assert gave_up == [] and part.stats.state != "failed"


def test_connect_failures_never_show_the_urls_credentials(
    partitions: list, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nobody listens: every connect is refused
    url = f"ws://alice:hunter2@127.0.0.1:{port}/feed?token=s3cr3t&depth=2"
    with caplog.at_level(logging.WARNING, logger="coinbase"):
        part = build(partitions, ["BTC-USD"], url)
        wait_until(lambda: part.stats.reconnects >= 2)
    logged = caplog.text + str(part.stats)
    assert "cannot connect to ws://***@127.0.0.1" in caplog.text
    assert "hunter2" not in logged and "alice" not in logged
    assert "s3cr3t" not in logged and "token=***" in caplog.text
