"""The sans-IO session: every freshness rule with hand-built frames, no socket, no thread.

Frames go through the production path: a :class:`ConnectionSession` decodes and routes
them to each product's :class:`Session` (:class:`OneProduct` is a connection carrying
one product).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from coinbase.errors import AuthError, UnknownProduct
from coinbase.multiplex import (
    PRODUCTS_PER_CONNECTION,
    ConnectionSession,
    ConnectionStep,
    group_messages,
)
from coinbase.session import Action, Session, SessionStats, Step
from events import BookChanges, BookReset, BookSnapshot
from tests.support.frames import (
    EXCHANGE_TIME,
    at_error,
    at_snapshot,
    at_subscribe,
    at_subscriptions,
    at_update,
    exchange_error,
    exchange_l2update,
    exchange_snapshot,
    exchange_subscriptions,
    text,
)

# The frames as text, from the one builder (tests/support/frames.py): one bid, one ask.


def snapshot(product: str = "BTC-USD", mid: int = 100) -> str:
    return text(exchange_snapshot(product, [(mid - 1, "1.5")], [(mid + 1, "2.5")]))


def update(product: str = "BTC-USD", size: str = "3") -> str:
    return text(exchange_l2update(product, [("buy", "99", size)]))


def at(seq: int, kind: str = "update", product: str = "BTC-USD") -> str:
    if kind == "snapshot":
        return text(at_snapshot(seq, product, [("99", "1")], []))
    return text(at_update(seq, product, [("bid", "99", "1")]))


def error(reason: str) -> str:
    return text(exchange_error("Failed to subscribe", reason))


def subscriptions(marker: str | None = None, protocol: str = "exchange") -> str:
    if protocol == "exchange":
        frame = exchange_subscriptions(["BTC-USD"], channels=["level2_batch"])
    else:
        frame = at_subscriptions(0, ["BTC-USD"])
    if marker is not None:
        frame["local_exchange"] = marker
    return text(frame)


class OneProduct:
    """A connection carrying one product, as production runs it (:class:`ConnectionSession`
    with one :class:`Session`), its steps told as that product's :class:`Step`; the
    product's session answers the rest (``stats``, ``feed``, ``settled``...)."""

    def __init__(self, feed: str = "exchange", product: str = "BTC-USD") -> None:
        self.session = Session(product, feed)
        self.session.start()
        self.conn = ConnectionSession(feed, name="test")
        self.conn.add(self.session)

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)

    def connect(self, now: float) -> list[dict]:
        return self.conn.connect(now=now)

    def receive(self, frame: str, received_ns: int) -> Step:
        return self._step(self.conn.receive(frame, received_ns))

    def disconnect(self, reason: str, close_code: int | None = None) -> Step:
        return self._step(self.conn.disconnect(reason, close_code))

    def overflow(self, dropped: int) -> Step:
        return self._step(self.conn.overflow(self.session.product_id, dropped))

    def retrying(self) -> None:
        self.conn.retrying()

    @staticmethod
    def _step(step: ConnectionStep) -> Step:
        events = [event for _, events in step.events for event in events]
        return Step(events, step.action, step.reason)


def connected(feed: str = "exchange") -> OneProduct:
    product = OneProduct(feed)
    product.connect(now=1_700_000_000)
    return product


def kinds(events: list) -> list[str]:
    names = {BookReset: "reset", BookSnapshot: "snapshot", BookChanges: "changes"}
    return [names[type(event)] for event in events]


def test_a_reset_comes_first_fresh_or_resumed() -> None:
    [fresh] = Session("BTC-USD", "exchange").start()
    [resumed] = Session("BTC-USD", "exchange", resumed=True).start()
    assert isinstance(fresh, BookReset) and fresh.reason == "start"
    assert resumed.reason == "resume"
    assert fresh.feed == "exchange"  # the feed the session was given


def test_connect_returns_the_feeds_subscribe_messages() -> None:
    session = OneProduct("advanced-trade")
    assert session.connect(now=0) == [
        at_subscribe(["BTC-USD"]),
        at_subscribe(channel="heartbeats"),
    ]
    assert session.stats.connections == 1 and session.stats.state == "connected"


def test_updates_before_the_snapshot_are_dropped_and_counted() -> None:
    session = connected()
    assert session.receive(update(size="7"), 1).events == []
    step = session.receive(snapshot(), 2)
    assert kinds(step.events) == ["snapshot"] and session.settled
    [changes] = session.receive(update(size="8"), 3).events
    assert changes.changes[0][2] == Decimal(8)
    assert session.stats.dropped_before_snapshot == 1
    assert session.stats.events == 2 and session.stats.snapshots == 1


def test_a_disconnect_resets_and_waits_for_a_fresh_snapshot() -> None:
    session = connected()
    session.receive(snapshot(), 1)
    step = session.disconnect("connection closed")
    assert kinds(step.events) == ["reset"] and step.action is Action.CONTINUE
    assert step.events[0].reason == "connection closed"
    assert not session.settled
    session.retrying()
    session.connect(now=0)
    assert session.receive(update(), 2).events == []  # stale update after reconnect
    assert kinds(session.receive(snapshot(), 3).events) == ["snapshot"]
    assert session.stats.reconnects == 1 and session.stats.resets == 2


def test_frames_on_connection_counts_the_live_connections_frames_only() -> None:
    """What tests compare with the local exchange's sent frames to know all was read:
    every frame of the live connection (junk too), none once it ended, from 0 again on
    the next."""
    session = connected()
    assert session.conn.frames_on_connection == 0
    for frame in (subscriptions(), snapshot(), update(), "[1, 2]"):
        session.receive(frame, 1)
    assert session.conn.frames_on_connection == 4
    session.disconnect("connection closed")
    assert session.conn.frames_on_connection == 0
    session.connect(now=0)
    session.receive(snapshot(), 2)
    assert session.conn.frames_on_connection == 1
    assert session.conn.frames == 5


def test_consecutive_resets_are_collapsed() -> None:
    session = connected()
    assert session.disconnect("first").events == []  # nothing since the start reset
    session.connect(now=0)
    assert session.disconnect("second").events == []
    assert session.stats.resets == 1
    session.connect(now=0)
    session.receive(snapshot(), 1)
    assert kinds(session.disconnect("third").events) == ["reset"]


def test_foreign_products_are_counted_not_emitted() -> None:
    session = connected()
    assert session.receive(snapshot("ETH-USD"), 1).events == []
    assert session.conn.foreign == 1  # counted by the connection that got it


def test_a_malformed_book_frame_resyncs_and_other_junk_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = connected()
    session.receive(snapshot(), 1)
    assert session.receive("[1, 2]", 2).action is Action.CONTINUE  # not a book frame
    step = session.receive(update(size="0.-10000"), 3)
    # the product it names is resubscribed alone: a reset, and a fresh snapshot asked
    [reset] = step.events
    assert step.action is Action.CONTINUE and "malformed book frame" in reset.reason
    assert [m["type"] for m in session.conn.outgoing(now=0)] == [
        "unsubscribe",
        "subscribe",
    ]
    assert session.stats.malformed_frames == 2 and session.stats.resyncs == 1
    [said] = [r.getMessage() for r in caplog.records if "resync" in r.getMessage()]
    assert said.startswith("BTC-USD: resync (resubscribing it alone): malformed book")


def test_a_bad_timestamp_keeps_the_data_and_is_counted_across_connections() -> None:
    session = connected()
    session.receive(snapshot(), 1)
    bad = update().replace(EXCHANGE_TIME, "0001-01-01T00:00:00Z")
    [changes] = session.receive(bad, 2).events
    assert changes.time is None
    session.disconnect("drop")
    session.connect(now=0)
    session.receive(bad, 3)
    assert session.stats.bad_times == 2


def test_a_sequence_gap_resyncs() -> None:
    session = connected("advanced-trade")
    session.receive(at(0, "snapshot"), 1)
    session.receive(at(1), 2)
    step = session.receive(at(3), 3)
    assert step.action is Action.RESYNC
    assert "expected sequence_num 2, got 3" in step.reason
    assert session.stats.sequence_gaps == 1
    session.disconnect(step.reason)
    session.connect(now=0)  # a new connection counts from 0 again
    assert kinds(session.receive(at(0, "snapshot"), 4).events) == ["snapshot"]


def test_an_overflow_resyncs_with_its_reason() -> None:
    session = connected()
    session.receive(snapshot(), 1)
    [reset] = session.overflow(123).events  # resubscribed alone
    assert "123 events behind" in reset.reason
    assert session.stats.backlog_drops == 1 and session.stats.resyncs == 1


def test_an_unknown_product_stops_for_good() -> None:
    session = connected()
    step = session.receive(error("BTC-USD is not a valid product"), 1)
    assert step.action is Action.STOP
    assert isinstance(session.error, UnknownProduct)
    final = session.disconnect(step.reason)
    assert final.action is Action.STOP and session.done
    assert session.stats.state == "failed" and session.stats.errors == 1
    assert "BTC-USD" in (session.stats.last_error or "")


def test_refused_credentials_stop_and_a_transient_error_resyncs() -> None:
    session = connected()
    assert session.receive(error("invalid signature"), 1).action is Action.STOP
    assert isinstance(session.error, AuthError)
    transient = connected("advanced-trade")
    frame = text(at_error("too many L2 streams requested"))
    step = transient.receive(frame, 1)
    assert step.action is Action.RESYNC and transient.error is None
    assert transient.disconnect(step.reason).action is Action.CONTINUE


@pytest.mark.parametrize("protocol", ["exchange", "advanced-trade"])
@pytest.mark.parametrize("marker", ["sim", "replay"])
def test_the_local_exchange_marker_sets_the_feed(protocol: str, marker: str) -> None:
    session = connected(protocol)
    session.receive(subscriptions(marker, protocol), 1)
    assert session.feed == marker and session.local_exchange == marker
    frame = snapshot() if protocol == "exchange" else at(1, "snapshot")
    [snap] = session.receive(frame, 2).events
    assert snap.feed == marker
    [reset] = session.disconnect("drop").events
    assert reset.feed == marker


def test_without_the_marker_the_feed_stays_and_replay_beats_sim() -> None:
    session = connected()
    session.receive(subscriptions(), 1)
    assert session.feed == "exchange" and session.local_exchange is None
    session.receive(subscriptions("replay"), 2)
    session.receive(subscriptions("sim"), 3)  # a replayed recording of the sim
    assert session.feed == "replay"


def test_the_end_of_a_served_replay_ends_the_session_without_reconnecting() -> None:
    session = connected()
    session.receive(subscriptions("replay"), 1)
    session.receive(snapshot(), 2)
    step = session.disconnect("server closed the connection (code 1000)", 1000)
    assert step.action is Action.END and session.done
    assert session.stats.state == "finished"
    other = connected()  # the same close from a server that is not a replay
    other.receive(snapshot(), 1)
    assert other.disconnect("closed", 1000).action is Action.CONTINUE
    abnormal = connected()
    abnormal.receive(subscriptions("replay"), 1)
    assert abnormal.disconnect("closed", 1011).action is Action.CONTINUE


def test_stats_are_typed() -> None:
    stats = connected().stats
    assert isinstance(stats, SessionStats)
    assert set(stats.as_dict()) >= {
        "frames",
        "events",
        "snapshots",
        "malformed_frames",
        "bad_times",
        "dropped_before_snapshot",
        "foreign",
        "resets",
        "resyncs",
        "connections",
        "reconnects",
        "sequence_gaps",
        "backlog_drops",
        "errors",
        "last_error",
        "last_disconnect",
        "state",
    }


# -- several products on one connection (ConnectionSession) -------------------------------

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]


def shared(feed: str = "exchange", products: list[str] = PRODUCTS) -> ConnectionSession:
    conn = ConnectionSession(feed, name="test", snapshot_grace_ns=10**9)
    for product in products:
        session = Session(product, feed)
        session.start()
        conn.add(session)
    return conn


def routed(step: ConnectionStep) -> dict[str, list[str]]:
    return {product: kinds(events) for product, events in step.events}


def live(feed: str = "exchange") -> ConnectionSession:
    """Connected, every product holding its snapshot."""
    conn = shared(feed)
    conn.connect(now=0)
    for seq, product in enumerate(PRODUCTS):
        frame = (
            snapshot(product) if feed == "exchange" else at(seq, "snapshot", product)
        )
        conn.receive(frame, 1)
    assert conn.settled
    return conn


def test_one_subscribe_message_carries_every_product_of_the_connection() -> None:
    assert shared().connect(now=0) == [
        {
            "type": "subscribe",
            "channels": [
                {"name": "level2_batch", "product_ids": PRODUCTS},
                {"name": "heartbeat", "product_ids": PRODUCTS},
            ],
        }
    ]
    assert shared("advanced-trade").connect(now=0) == [
        {"type": "subscribe", "product_ids": PRODUCTS, "channel": "level2"},
        {"type": "subscribe", "channel": "heartbeats"},
    ]
    assert PRODUCTS_PER_CONNECTION == {"exchange": 32, "advanced-trade": 16}


def test_frames_are_routed_to_their_product_each_waiting_for_its_snapshot() -> None:
    conn = shared()
    conn.connect(now=0)
    assert routed(conn.receive(update("ETH-USD"), 1)) == {}  # before ETH's snapshot
    assert routed(conn.receive(snapshot("BTC-USD"), 2)) == {"BTC-USD": ["snapshot"]}
    assert routed(conn.receive(update("BTC-USD"), 3)) == {"BTC-USD": ["changes"]}
    assert not conn.settled  # ETH and SOL still wait
    assert routed(conn.receive(snapshot("XRP-USD"), 4)) == {}  # not on this connection
    assert conn.foreign == 1
    stats = conn.sessions["ETH-USD"].stats
    assert stats.dropped_before_snapshot == 1 and stats.snapshots == 0


def test_a_drop_resets_every_product_of_the_connection() -> None:
    conn = live()
    step = conn.disconnect("connection closed")
    assert routed(step) == {p: ["reset"] for p in PRODUCTS}
    assert step.action is Action.CONTINUE and not conn.settled
    conn.retrying()
    assert len(conn.connect(now=0)) == 1  # all subscribed again at once
    assert all(s.stats.reconnects == 1 for s in conn.sessions.values())


def test_a_sequence_gap_resyncs_the_whole_connection() -> None:
    conn = live("advanced-trade")  # sequence_num 0..2 were the snapshots
    step = conn.receive(at(4, "update", "ETH-USD"), 2)
    assert step.action is Action.RESYNC and "expected sequence_num 3" in step.reason
    assert all(s.stats.sequence_gaps == 1 for s in conn.sessions.values())
    assert routed(conn.disconnect(step.reason)) == {p: ["reset"] for p in PRODUCTS}


@pytest.mark.parametrize("feed", ["exchange", "advanced-trade"])
def test_a_malformed_book_frame_of_one_product_resubscribes_it_alone(feed: str) -> None:
    conn = live(feed)
    bad = (
        update("ETH-USD", size="0.-10000")
        if feed == "exchange"
        else at(3, "update", "ETH-USD").replace(
            '"new_quantity": "1"', '"new_quantity": "x"'
        )
    )
    step = conn.receive(bad, 2)
    assert step.action is Action.CONTINUE and step.send
    assert routed(step) == {"ETH-USD": ["reset"]}
    eth = conn.sessions["ETH-USD"]
    assert eth.stats.malformed_frames == 1 and eth.stats.resyncs == 1
    assert conn.sessions["BTC-USD"].stats.malformed_frames == 0
    messages = conn.outgoing(now=0)
    assert [m["type"] for m in messages] == ["unsubscribe", "subscribe"]
    assert "ETH-USD" in json.dumps(messages) and "BTC-USD" not in json.dumps(messages)
    assert "heartbeat" not in json.dumps(messages)  # the book channel only
    assert conn.outgoing(now=0) == []  # handed out once
    # Other products go on; ETH's stale updates wait for its fresh snapshot.
    n = 4 if feed == "advanced-trade" else 0
    other = update("BTC-USD") if feed == "exchange" else at(n, "update", "BTC-USD")
    assert routed(conn.receive(other, 3)) == {"BTC-USD": ["changes"]}
    stale = update("ETH-USD") if feed == "exchange" else at(n + 1, "update", "ETH-USD")
    assert routed(conn.receive(stale, 4)) == {}
    fresh = (
        snapshot("ETH-USD") if feed == "exchange" else at(n + 2, "snapshot", "ETH-USD")
    )
    assert routed(conn.receive(fresh, 5)) == {"ETH-USD": ["snapshot"]}
    assert conn.settled


def test_a_number_beyond_a_double_in_a_book_frame_blames_its_product_alone() -> None:
    """A price of ``1e400`` makes the frame malformed, and ``orjson`` cannot read it:
    the decoder's second reading still names its product, which is resubscribed alone
    (before: the Advanced Trade connection resynced every product)."""
    conn = live("advanced-trade")
    bad = at(3, "update", "ETH-USD").replace(
        '"price_level": "', '"price_level": 1e400, "p": "'
    )
    step = conn.receive(bad, 2)
    assert routed(step) == {"ETH-USD": ["reset"]} and step.action is Action.CONTINUE
    assert conn.sessions["ETH-USD"].stats.malformed_frames == 1
    assert conn.sessions["BTC-USD"].stats.malformed_frames == 0


def test_a_cut_exchange_frame_is_blamed_on_the_product_it_names() -> None:
    conn = live()
    step = conn.receive('{"type":"l2update","product_id":"SOL-USD","changes":[["bu', 2)
    assert routed(step) == {"SOL-USD": ["reset"]} and step.action is Action.CONTINUE


def test_a_book_frame_that_names_no_product_resyncs_the_connection() -> None:
    conn = live("advanced-trade")
    step = conn.receive('{"channel":"l2_data","sequence_num":', 2)  # unreadable
    assert step.action is Action.RESYNC and "its product is unknown" in step.reason
    assert all(s.stats.malformed_frames == 1 for s in conn.sessions.values())
    exchange = live()
    bad = json.dumps({"type": "l2update", "product_id": 12345, "changes": {}})
    assert exchange.receive(bad, 2).action is Action.RESYNC


def test_a_resync_request_or_overflow_resubscribes_one_product_once() -> None:
    conn = live()
    step = conn.request_resync("BTC-USD", "crossed for 3.0 s")
    assert routed(step) == {"BTC-USD": ["reset"]} and step.send
    assert step.events[0][1][0].reason == "requested: crossed for 3.0 s"
    again = conn.overflow("BTC-USD", 5)  # before the fresh snapshot: no new messages
    assert routed(again) == {} and not again.send
    assert len(conn.outgoing(now=0)) == 2
    assert conn.sessions["BTC-USD"].stats.backlog_drops == 1
    step = conn.overflow("ETH-USD", 7)
    assert routed(step) == {"ETH-USD": ["reset"]} and "7 events behind" in (
        step.events[0][1][0].reason
    )


def test_a_product_without_its_new_snapshot_in_time_resyncs_the_connection() -> None:
    conn = live()
    conn.request_resync(
        "BTC-USD",
        "crossed",
    )
    conn.outgoing(now=0)
    assert conn.receive(update("ETH-USD"), time.time_ns()).action is Action.CONTINUE
    late = conn.receive(update("ETH-USD"), time.time_ns() + 2 * 10**9)
    assert late.action is Action.RESYNC and "no snapshot of BTC-USD" in late.reason
    assert routed(late) == {"ETH-USD": ["changes"]}  # what arrived is still given


def test_an_unknown_product_fails_alone_and_all_failed_stops_the_connection() -> None:
    conn = shared()
    conn.connect(now=0)
    step = conn.receive(error("SOL-USD is not a valid product"), 1)
    assert step.stopped == ["SOL-USD"] and step.action is Action.CONTINUE
    sol = conn.sessions["SOL-USD"]
    assert sol.done and isinstance(sol.error, UnknownProduct)
    assert conn.receive(snapshot("BTC-USD"), 2).events  # the others go on
    conn.receive(snapshot("ETH-USD"), 3)
    assert conn.settled  # a failed product is no longer waited for
    assert routed(conn.disconnect("drop")) == {p: ["reset"] for p in PRODUCTS[:2]}
    conn.connect(now=0)
    for product in PRODUCTS[:2]:
        step = conn.receive(error(f"{product} is not a valid product"), 4)
    assert step.action is Action.STOP  # nothing left to read


def test_refused_credentials_stop_every_product_and_a_transient_error_resyncs() -> None:
    conn = shared()
    conn.connect(now=0)
    step = conn.receive(error("invalid signature"), 1)
    assert sorted(step.stopped) == sorted(PRODUCTS) and step.action is Action.STOP
    conn = shared("advanced-trade")
    conn.connect(now=0)
    frame = json.dumps({"type": "error", "message": "too many L2 streams requested"})
    step = conn.receive(frame, 1)
    assert step.action is Action.RESYNC and not step.stopped


def test_a_product_joining_a_live_connection_is_subscribed_alone() -> None:
    conn = live("advanced-trade")
    late = Session("LTC-USD", "advanced-trade")
    late.start()
    assert conn.add(late) is True
    assert conn.outgoing(now=0) == [
        {"type": "subscribe", "product_ids": ["LTC-USD"], "channel": "level2"}
    ]
    assert not conn.settled
    assert routed(conn.receive(at(3, "snapshot", "LTC-USD"), 2)) == {
        "LTC-USD": ["snapshot"]
    }
    assert conn.settled


def test_the_local_exchange_marker_labels_every_product_of_the_connection() -> None:
    conn = shared()
    conn.connect(now=0)
    conn.receive(subscriptions("sim"), 1)
    assert {s.feed for s in conn.sessions.values()} == {"sim"}
    [(_, [snap])] = conn.receive(snapshot("ETH-USD"), 2).events
    assert snap.feed == "sim"


def test_signed_group_messages_carry_every_product() -> None:
    from tests.support.source_partitions import CREDS

    [message] = group_messages("exchange-auth", PRODUCTS, CREDS, now=1_700_000_000)
    assert message["channels"][0] == {"name": "level2", "product_ids": PRODUCTS}
    assert message["timestamp"] == "1700000000" and message["key"] == "test-key"
    [unsub] = group_messages(
        "exchange-auth", ["BTC-USD"], CREDS, now=0, kind="unsubscribe", heartbeats=False
    )
    assert unsub["type"] == "unsubscribe" and len(unsub["channels"]) == 1


def test_behind_a_served_replay_one_product_resyncs_the_connection() -> None:
    conn = shared()
    conn.connect(now=0)
    conn.receive(subscriptions("replay"), 1)  # the replay ignores unsubscribes
    step = conn.overflow("ETH-USD", 9)
    assert step.action is Action.RESYNC and "ETH-USD" in step.reason
    assert conn.outgoing(now=0) == []


# -- issue 17: feed text never reaches a log raw; resync lines are rate-limited -----------

HOSTILE_FRAMES = [
    # a product id with a newline, in a book frame that cannot be applied
    text(exchange_l2update("BTC-USD\nERROR forged line", [("buy", "99", "x")])),
    # a 1 MB product id in a malformed frame
    json.dumps({"type": "l2update", "product_id": "A" * 1_000_000}),
    # terminal escapes and a newline in a frame that is not even JSON
    "\x1b[2J\x1b[31m{not json\nCRITICAL forged" + "y" * 1_000_000,
    # an error reply quoting hostile text
    text(exchange_error("\x1b[31mboom\nforged", "x" * 100_000)),
    # a good frame of a product id of the wrong shape
    text(exchange_snapshot("../../../etc", [("99", "1")], [("101", "1")])),
]


def _safe(records) -> list[str]:
    lines = [r.getMessage() for r in records]
    for line in lines:
        assert "\n" not in line and "\x1b" not in line, line[:200]
        assert len(line) < 2_000, len(line)
    return lines


def test_finding_13_feed_text_reaches_the_logs_escaped_and_cut(caplog) -> None:
    with caplog.at_level("DEBUG"):
        for frame in HOSTILE_FRAMES:
            session = connected()
            step = session.receive(frame, 1)
            if step.action is not Action.CONTINUE:
                session.disconnect(step.reason)
            conn = live()
            step = conn.receive(frame, 2)
            if step.action is not Action.CONTINUE:
                conn.disconnect(step.reason)
    lines = _safe(caplog.records)
    assert any("skipped malformed frame" in line for line in lines)


def test_finding_13_a_server_close_reason_is_logged_escaped(caplog) -> None:
    with caplog.at_level("INFO", logger="coinbase.session"):
        connected().disconnect("connection closed (1000 \x1b[2J" + "z" * 10**6 + ")")
    assert [line for line in _safe(caplog.records) if "disconnected" in line]


def test_finding_11_a_bad_product_id_is_counted_skipped_and_resyncs_nothing() -> None:
    session = connected()
    session.receive(snapshot(), 1)
    step = session.receive(HOSTILE_FRAMES[-1], 2)
    assert step == Step() and session.stats.malformed_frames == 1
    conn = live()
    step = conn.receive(HOSTILE_FRAMES[-1], 2)
    assert step.action is Action.CONTINUE and not step.events and not step.send
    assert all(s.settled for s in conn.sessions.values())


def _resync_lines(records) -> list[str]:
    return [line for line in _safe(records) if "resync" in line]


def test_finding_14_many_malformed_updates_log_one_resync_line_a_second(
    caplog,
) -> None:
    session = connected()
    session.receive(snapshot(), 1)
    bad = update(size="x")
    with caplog.at_level("WARNING", logger="coinbase.session"):
        start = time.monotonic()
        for n in range(5_000):
            step = session.receive(bad, n)
            assert step.action is Action.CONTINUE  # resubscribed alone, each time
        elapsed = time.monotonic() - start
    assert session.stats.malformed_frames == session.stats.resyncs == 5_000
    lines = _resync_lines(caplog.records)
    assert 1 <= len(lines) <= 2 + elapsed  # not 5,000
    assert session.stats.malformed_frames == 5_000


def test_finding_14_on_a_shared_connection_too(caplog) -> None:
    conn = live()
    bad = update("ETH-USD", size="x")
    with caplog.at_level("WARNING"):
        start = time.monotonic()
        for n in range(5_000):
            conn.receive(bad, n)
        elapsed = time.monotonic() - start
    assert conn.sessions["ETH-USD"].stats.resyncs == 5_000
    lines = _resync_lines(caplog.records)
    assert 1 <= len(lines) <= 2 + elapsed
    later = [line for line in lines[1:] if "suppressed" in line]
    assert len(later) == len(lines) - 1  # each later line counts what it held back
