"""The sans-IO session: every freshness rule with hand-built frames, no socket, no thread."""

from __future__ import annotations

from decimal import Decimal

import pytest

from coinbase.errors import AuthError, UnknownProduct
from coinbase.session import Action, Session, SessionStats
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


def connected(feed: str = "exchange", **kwargs: object) -> Session:
    session = Session("BTC-USD", feed, **kwargs)  # type: ignore[arg-type]
    session.start()
    session.connect(now=1_700_000_000)
    return session


def kinds(events: list) -> list[str]:
    names = {BookReset: "reset", BookSnapshot: "snapshot", BookChanges: "changes"}
    return [names[type(event)] for event in events]


def test_a_reset_comes_first_fresh_or_resumed() -> None:
    [fresh] = Session("BTC-USD", "exchange").start()
    [resumed] = Session("BTC-USD", "exchange", resumed=True).start()
    assert isinstance(fresh, BookReset) and fresh.reason == "start"
    assert resumed.reason == "resume"
    assert fresh.feed == "exchange"  # the origin defaults to the feed's name


def test_connect_returns_the_feeds_subscribe_messages() -> None:
    session = Session("BTC-USD", "advanced-trade")
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
    assert session.stats.foreign == 1


def test_a_malformed_book_frame_resyncs_and_other_junk_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = connected()
    session.receive(snapshot(), 1)
    assert session.receive("[1, 2]", 2).action is Action.CONTINUE  # not a book frame
    step = session.receive(update(size="0.-10000"), 3)
    assert step.action is Action.RESYNC and "malformed book frame" in step.reason
    assert session.stats.malformed == 2 and session.stats.resyncs == 1
    [said] = [r.getMessage() for r in caplog.records if "resync" in r.getMessage()]
    assert said.startswith("BTC-USD: resync: malformed book frame")  # why, out loud


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
    step = session.overflow(123)
    assert step.action is Action.RESYNC and "123 events behind" in step.reason
    assert session.stats.overflows == 1 and session.stats.resyncs == 1


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
def test_the_local_exchange_marker_sets_the_origin(protocol: str, marker: str) -> None:
    session = connected(protocol, origin="exchange")
    session.receive(subscriptions(marker, protocol), 1)
    assert session.origin == marker and session.local_exchange == marker
    frame = snapshot() if protocol == "exchange" else at(1, "snapshot")
    [snap] = session.receive(frame, 2).events
    assert snap.feed == marker
    [reset] = session.disconnect("drop").events
    assert reset.feed == marker


def test_without_the_marker_the_origin_stays_and_replay_beats_sim() -> None:
    session = connected(origin="exchange")
    session.receive(subscriptions(), 1)
    assert session.origin == "exchange" and session.local_exchange is None
    session.receive(subscriptions("replay"), 2)
    session.receive(subscriptions("sim"), 3)  # a replayed recording of the sim
    assert session.origin == "replay"


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
        "malformed",
        "bad_times",
        "dropped_before_snapshot",
        "foreign",
        "resets",
        "resyncs",
        "connections",
        "reconnects",
        "sequence_gaps",
        "overflows",
        "errors",
        "last_error",
        "last_disconnect",
        "state",
    }
