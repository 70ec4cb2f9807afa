import copy
import json
import logging
import pickle
import time
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

import book_step
from book_step import RESYNC_AFTER_SECONDS, BookState, BookStep, UpdateBook, update_book
from coinbase.multiplex import ConnectionSession
from coinbase.session import Action, Session
from common.logs import RateLimitedLog
from dataflow import get_flow
from events import ASK, BID, BookChanges, BookReset, BookSnapshot
from orderbook import BookCondition
from records import OrderBookSummary
from resync import ResyncRequests
from service.settings import Settings

T = datetime(2026, 8, 25, 3, 35, 57, tzinfo=UTC)


def snap(bids=((D(100), D(1)),), asks=((D(101), D(2)),), received_ns=0):
    return BookSnapshot(
        "BTC-USD", list(bids), list(asks), None, "exchange", received_ns
    )


def changes(*chs):
    return BookChanges("BTC-USD", list(chs), T, "exchange")


def run(events, state=None, requests=None):
    out = []
    for e in events:
        state, summary = update_book(state, e, requests)
        out.append(summary)
    return state, out


def test_snapshot_then_changes_emit_only_on_top_change():
    _, out = run(
        [
            snap(received_ns=1_700_000_000_000_000_000),
            changes((BID, D(99), D(5))),  # below the top: no summary
            changes((BID, D(100), D(3))),  # top size changed
        ]
    )
    assert out[0].bid_price == D(100) and out[0].time.year == 2023  # receive time
    assert out[1] is None
    assert out[2].bid_size == D(3) and out[2].time == T


def test_changes_before_any_snapshot_are_ignored():
    state, out = run([changes((BID, D(100), D(1)), (ASK, D(101), D(1)))])
    assert out == [None] and state.book is None


def test_reset_drops_the_book_until_the_next_snapshot():
    state, out = run(
        [
            snap(),
            BookReset("BTC-USD", "disconnected", "exchange"),
            changes((BID, D("100.5"), D(1))),
        ]
    )
    assert out[1:] == [None, None] and state.book is None
    state, out = run([snap(bids=[(D("100.2"), D(1))])], state)
    assert out[0].bid_price == D("100.2")


def test_snapshot_replaces_never_merges():
    state, _ = run([snap(bids=[(D(100), D(1)), (D(99), D(1))])])
    state, _ = run([snap(bids=[(D(98), D(1))])], state)
    assert [p for p, _ in state.book.depth(BID, 10)] == [D(98)]


def test_crossed_book_emits_nothing_and_recovers():
    state, out = run([snap(), changes((BID, D(102), D(1)))])
    assert out[1] is None and state.condition == "crossed"
    state, out = run([changes((BID, D(102), D(0)))], state)
    assert out[0].bid_price == D(100)


def test_unappliable_message_drops_the_book():
    state, out = run([snap(), changes((BID, D(100), D(-1)))])
    assert out[1] is None and state.book is None


def test_saved_state_carries_no_stale_book():
    state, _ = run([snap()])
    for restored in (pickle.loads(pickle.dumps(state)), copy.deepcopy(state)):
        assert isinstance(restored, BookState)
        assert restored.product_id == "BTC-USD" and restored.book is None
        _, out = run([changes((BID, D(100), D(9)))], restored)
        assert out == [None]


def test_the_condition_is_the_enum_fresh_saved_and_restored():
    fresh = BookState("BTC-USD", "exchange")
    assert fresh.condition is BookCondition.AWAITING_SNAPSHOT
    state, _ = run([snap(), changes((BID, D(102), D(1)))])
    assert state.condition is BookCondition.CROSSED
    for restored in (pickle.loads(pickle.dumps(state)), copy.deepcopy(state)):
        assert restored.condition is BookCondition.AWAITING_SNAPSHOT
        restored, _ = run([snap()], restored)
        assert restored.condition is BookCondition.OK
    state, _ = run([BookReset("BTC-USD", "drop", "exchange")], state)
    assert state.condition is BookCondition.AWAITING_SNAPSHOT


# -- a book that stays crossed or locked asks for a fresh snapshot ----------------------

S = 1_000_000_000  # ns per second


@pytest.fixture
def registry() -> ResyncRequests:
    """The resync channel the book step is given (its flow's source's, in a flow)."""
    return ResyncRequests()


def at(seconds: float, *chs):
    """Changes received ``seconds`` into the feed (receive time is the feed's clock)."""
    return BookChanges(
        "BTC-USD", list(chs), T, "exchange", int(1_000 * S + seconds * S)
    )


@pytest.mark.parametrize(
    "cross, condition",
    [((BID, D(102), D(1)), "crossed"), ((BID, D(101), D(1)), "locked")],
)
def test_book_invalid_for_a_few_seconds_of_feed_time_asks_for_a_snapshot(
    registry, cross, condition
):
    state, _ = run([snap(received_ns=1_000 * S), at(0.0, cross)], None, registry)
    late = at(RESYNC_AFTER_SECONDS - 0.5, (ASK, D(110), D(1)))
    state, _ = run([late], state, registry)
    assert state.condition == condition and registry.take("BTC-USD") is None
    later = at(RESYNC_AFTER_SECONDS + 0.1, (ASK, D(111), D(1)))
    state, out = run([later], state, registry)
    assert out == [None]
    reason = registry.take("BTC-USD")
    assert reason is not None and condition in reason
    # Asked once per episode, not on every later change.
    run([at(RESYNC_AFTER_SECONDS + 5, (ASK, D(112), D(1)))], state, registry)
    assert registry.take("BTC-USD") is None


def test_a_book_that_repairs_itself_in_time_asks_for_nothing(registry):
    state, _ = run(
        [snap(received_ns=1_000 * S), at(0.0, (BID, D(102), D(1)))], None, registry
    )
    state, out = run([at(1.0, (BID, D(102), D(0)))], state, registry)  # valid again
    assert out[0] is not None
    state, _ = run([at(2.0, (BID, D(102), D(1)))], state, registry)  # crossed anew
    run([at(2.0 + RESYNC_AFTER_SECONDS - 0.1, (ASK, D(110), D(1)))], state, registry)
    assert registry.pending() == {}


def test_a_fresh_snapshot_or_reset_restarts_the_clock(registry):
    state, _ = run(
        [snap(received_ns=1_000 * S), at(0.0, (BID, D(102), D(1)))], None, registry
    )
    reset = BookReset("BTC-USD", "disconnected", "exchange")
    state, _ = run([reset], state, registry)
    state, _ = run([snap(received_ns=int(1_002.9 * S))], state, registry)
    state, _ = run([at(3.0, (BID, D(102), D(1)))], state, registry)
    run([at(3.0 + RESYNC_AFTER_SECONDS - 0.1, (ASK, D(110), D(1)))], state, registry)
    assert registry.pending() == {}


def test_an_empty_side_is_not_a_reason_to_resync(registry):
    state, _ = run(
        [snap(received_ns=1_000 * S), at(0.0, (ASK, D(101), D(0)))], None, registry
    )
    run([at(RESYNC_AFTER_SECONDS * 3, (BID, D(90), D(1)))], state, registry)
    assert state.condition == "no_asks" and registry.pending() == {}


def test_status_line_prints_canonical_prices(caplog):
    padded = snap(
        bids=[(D("65000.20000000"), D("0.10000000"))],
        asks=[(D("65000.30"), D("1.0"))],
    )
    with caplog.at_level(logging.INFO, logger="book_step"):
        state, _ = run([padded])
    [line] = [r.getMessage() for r in caplog.records if "levels" in r.getMessage()]
    assert "bid 65000.2 ask 65000.3 " in line, line


# -- the guard: one product's bad event never escapes the step (issue 17) -----------------


@pytest.fixture(autouse=True)
def fresh_failure_log(monkeypatch):
    """The failure log is rate-limited per process: each test starts with a fresh one."""
    monkeypatch.setattr(
        book_step, "_failure_log", RateLimitedLog(book_step.log), raising=False
    )


def _good_snapshot(mid: int, received_ns: int = 0) -> BookSnapshot:
    return snap(
        bids=[(D(mid - 1), D(1))], asks=[(D(mid + 1), D(2))], received_ns=received_ns
    )


POISON = {
    # finding 1: a 1e20 top with an 8-decimal spread; 1e30 with a 1e-14 one needs 49
    # digits even in CTX (a source that skipped the domain check lets it through)
    "huge prices": snap(
        bids=[(D("1E+30"), D(1))], asks=[(D("1" + "0" * 30 + ".00000000000001"), D(1))]
    ),
    # finding 2: two 1e-999999999 sizes add up to 0 below CTX's smallest exponent
    "vanishing sizes": snap(
        bids=[(D(100), D("1E-999999999"))], asks=[(D(101), D("1E-999999999"))]
    ),
}


@pytest.mark.parametrize("poison", POISON, ids=list(POISON))
@pytest.mark.parametrize("levels", [0, 5])
def test_a_poisoned_event_drops_its_book_and_resyncs_and_never_escapes(
    registry, caplog, poison, levels
):
    step = (
        BookStep(levels=levels, interval=0, resync_requests=registry)
        if levels
        else UpdateBook(registry)
    )
    state, first = step(None, _good_snapshot(100))
    assert first is not None  # the earlier record exists
    with caplog.at_level(logging.ERROR, logger="book_step"):
        state, out = step(state, POISON[poison])  # raised before the guard
    assert out is None and state.book is None and state.condition != "ok"
    assert registry.take("BTC-USD") is not None
    lines = [r.getMessage() for r in caplog.records if r.name == "book_step"]
    assert len(lines) == 1 and "asking for a fresh snapshot" in lines[0]
    assert "\n" not in lines[0]
    state, again = step(state, _good_snapshot(200))  # the product comes back
    assert again is not None


def test_a_poisoned_event_asks_its_source_for_a_fresh_snapshot(registry):
    state, _ = update_book(None, _good_snapshot(100), registry)
    update_book(state, POISON["huge prices"], registry)
    reason = registry.take("BTC-USD")
    assert reason is not None and "InvalidOperation" in reason


def test_failures_of_many_events_log_one_line_a_second(registry, caplog):
    state, _ = update_book(None, _good_snapshot(100))
    with caplog.at_level(logging.ERROR, logger="book_step"):
        start = time.monotonic()
        for _ in range(500):
            state, _ = update_book(state, POISON["vanishing sizes"])
        elapsed = time.monotonic() - start
    lines = [r for r in caplog.records if r.name == "book_step"]
    assert 1 <= len(lines) <= 2 + elapsed  # at most one a second, not 500


def test_a_depth_record_that_cannot_be_built_keeps_the_summary(registry, monkeypatch):
    def broken(*args, **kwargs):
        raise ArithmeticError("boom\nFORGED LINE")

    monkeypatch.setattr(book_step.OrderBookDepth, "from_book", broken)
    step = BookStep(levels=5, interval=0, resync_requests=registry)
    state, out = step(None, _good_snapshot(100))
    _, summary, depth = out
    assert summary is not None and depth is None and state.book is None
    assert "boom" in registry.take("BTC-USD")


def test_a_failing_metrics_observer_costs_nothing_but_a_line(caplog):
    class Broken:
        def observe(self, state, event):
            raise RuntimeError("metrics down")

    with caplog.at_level(logging.ERROR, logger="book_step"):
        state, out = BookStep(levels=0, metrics=Broken())(None, _good_snapshot(100))
    assert out is not None and state.book is not None
    assert any("metrics down" in r.getMessage() for r in caplog.records)


# -- end to end: frames -> the real decoder and session -> the real dataflow -------------


def _events_from_frames(frames: list[str]) -> list:
    """What CoinbaseSource emits for these frames, sans socket: the real connection
    session and Session, and a reconnect (a reset, then the next snapshot) whenever it
    asks for a resync."""
    session = Session("BTC-USD", "exchange")
    events = list(session.start())
    conn = ConnectionSession("exchange")
    conn.add(session)
    conn.connect(now=1_700_000_000)
    for n, frame in enumerate(frames, 1):
        result = conn.receive(frame, 1_700_000_000_000_000_000 + n)
        events += [e for _, product_events in result.events for e in product_events]
        if result.action is Action.RESYNC:
            for _, product_events in conn.disconnect(result.reason).events:
                events += product_events
            conn.connect(now=1_700_000_000)
    return events


def _exchange_snapshot(bid: str, ask: str) -> str:
    return json.dumps(
        {
            "type": "snapshot",
            "product_id": "BTC-USD",
            "bids": [[bid, "1.5"]],
            "asks": [[ask, "2.5"]],
        }
    )


def _run_flow(events: list, levels: int) -> list:
    out: list = []
    settings = Settings(spread_threshold_pct=D(0), depth_levels=levels)
    flow = get_flow(
        settings,
        source=TestingSource([(e.product_id, e) for e in events]),
        products=["BTC-USD"],
        sink=TestingSink(out),
    )
    run_main(flow)  # an exception in any step would raise here and lose `out`
    return [record for _, record in out]  # (received_ns, record) pairs


@pytest.mark.parametrize("levels", [0, 5])
@pytest.mark.parametrize(
    "bad_frame",
    [
        # finding 1: 1e20 with an 8-decimal spread (34 digits for the microprice)
        _exchange_snapshot("1e20", "100000000000000000000.00000001"),
        # finding 2: sizes the decoder used to accept
        _exchange_snapshot("100", "101")
        .replace('"1.5"', '"1e-999999999"')
        .replace('"2.5"', '"1e-999999999"'),
    ],
    ids=["finding_01_1e20_prices", "finding_02_1e-999999999_sizes"],
)
def test_finding_01_02_the_run_goes_on_and_keeps_the_earlier_summary(
    registry, levels, bad_frame
):
    events = _events_from_frames(
        [_exchange_snapshot("100", "101"), bad_frame, _exchange_snapshot("200", "201")]
    )
    records = _run_flow(events, levels)
    summaries = [r for r in records if isinstance(r, OrderBookSummary)]
    assert [s.bid_price for s in summaries] == [D(100), D(200)]


@pytest.mark.parametrize("levels", [0, 5])
def test_poisoned_events_in_the_dataflow_cost_their_book_not_the_run(registry, levels):
    """Events no decoder checked (a source that skipped the domain) cannot stop it."""
    events = [
        _good_snapshot(100, 1),
        POISON["huge prices"],
        _good_snapshot(150, 2),
        POISON["vanishing sizes"],
        _good_snapshot(200, 3),
    ]
    records = _run_flow(events, levels)
    summaries = [r for r in records if isinstance(r, OrderBookSummary)]
    assert [s.bid_price for s in summaries] == [D(99), D(149), D(199)]
