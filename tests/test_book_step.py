import copy
import logging
import pickle
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from book_step import RESYNC_AFTER_SECONDS, BookState, update_book
from events import ASK, BID, BookChanges, BookReset, BookSnapshot
from resync import (
    clear_resync_requests,
    pending_resyncs,
    take_resync_request,
)

T = datetime(2026, 8, 25, 3, 35, 57, tzinfo=UTC)


def snap(bids=((D(100), D(1)),), asks=((D(101), D(2)),), received_ns=0):
    return BookSnapshot(
        "BTC-USD", list(bids), list(asks), None, "exchange", received_ns
    )


def changes(*chs):
    return BookChanges("BTC-USD", list(chs), T, "exchange")


def run(events, state=None):
    out = []
    for e in events:
        state, summary = update_book(state, e)
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


# -- a book that stays crossed or locked asks for a fresh snapshot ----------------------

S = 1_000_000_000  # ns per second


@pytest.fixture
def registry():
    clear_resync_requests()
    yield
    clear_resync_requests()


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
    state, _ = run([snap(received_ns=1_000 * S), at(0.0, cross)])
    state, _ = run([at(RESYNC_AFTER_SECONDS - 0.5, (ASK, D(110), D(1)))], state)
    assert state.condition == condition and take_resync_request("BTC-USD") is None
    state, out = run([at(RESYNC_AFTER_SECONDS + 0.1, (ASK, D(111), D(1)))], state)
    assert out == [None]
    reason = take_resync_request("BTC-USD")
    assert reason is not None and condition in reason
    # Asked once per episode, not on every later change.
    run([at(RESYNC_AFTER_SECONDS + 5, (ASK, D(112), D(1)))], state)
    assert take_resync_request("BTC-USD") is None


def test_a_book_that_repairs_itself_in_time_asks_for_nothing(registry):
    state, _ = run([snap(received_ns=1_000 * S), at(0.0, (BID, D(102), D(1)))])
    state, out = run([at(1.0, (BID, D(102), D(0)))], state)  # valid again
    assert out[0] is not None
    state, _ = run([at(2.0, (BID, D(102), D(1)))], state)  # crossed anew
    run([at(2.0 + RESYNC_AFTER_SECONDS - 0.1, (ASK, D(110), D(1)))], state)
    assert pending_resyncs() == {}


def test_a_fresh_snapshot_or_reset_restarts_the_clock(registry):
    state, _ = run([snap(received_ns=1_000 * S), at(0.0, (BID, D(102), D(1)))])
    state, _ = run([BookReset("BTC-USD", "disconnected", "exchange")], state)
    state, _ = run([snap(received_ns=int(1_002.9 * S))], state)
    state, _ = run([at(3.0, (BID, D(102), D(1)))], state)
    run([at(3.0 + RESYNC_AFTER_SECONDS - 0.1, (ASK, D(110), D(1)))], state)
    assert pending_resyncs() == {}


def test_an_empty_side_is_not_a_reason_to_resync(registry):
    state, _ = run([snap(received_ns=1_000 * S), at(0.0, (ASK, D(101), D(0)))])
    run([at(RESYNC_AFTER_SECONDS * 3, (BID, D(90), D(1)))], state)
    assert state.condition == "no_asks" and pending_resyncs() == {}


def test_status_line_prints_canonical_prices(caplog):
    padded = snap(
        bids=[(D("65000.20000000"), D("0.10000000"))],
        asks=[(D("65000.30"), D("1.0"))],
    )
    with caplog.at_level(logging.INFO, logger="book_step"):
        state, _ = run([padded])
    [line] = [r.getMessage() for r in caplog.records if "levels" in r.getMessage()]
    assert "bid 65000.2 ask 65000.3 " in line, line
