"""Depth records: the record itself, and when the book step emits them (feed time)."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

from book_step import BookStep, EachEvent, SpreadFilter
from events import ASK, BID, BookChanges, BookReset, BookSnapshot
from orderbook import OrderBook
from records import OrderBookDepth, OrderBookSummary

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
CONTRACT_KEYS = [
    "type", "product_id", "time", "feed", "bids", "asks", "mid",
    "bid_liquidity_10bps", "ask_liquidity_10bps",
    "bid_liquidity_50bps", "ask_liquidity_50bps",
    "bid_liquidity_100bps", "ask_liquidity_100bps",
    "imbalance",
]  # fmt: skip


def book():
    b = OrderBook("BTC-USD")
    b.apply_snapshot(
        [(D("65000.00"), D("0.5")), (D("64990"), D("1")), (D("64400"), D("3"))],
        [(D("65000.01"), D("0.2")), (D("65100"), D("2")), (D("65600"), D("4"))],
    )
    return b


def test_depth_record_shape_and_values():
    d = OrderBookDepth.from_book(book(), 2, T0, "sim")
    data = json.loads(d.to_json())
    assert list(data) == CONTRACT_KEYS
    assert data["type"] == "depth" and data["feed"] == "sim"
    assert data["time"] == "2026-11-29T12:00:00.000000Z"
    assert data["bids"] == [["65000", "0.5"], ["64990", "1"]]  # canonical, best first
    assert data["asks"] == [["65000.01", "0.2"], ["65100", "2"]]
    assert data["mid"] == "65000.005"
    # 10 bps of 65000.005 = 65.000005: bids >= 64935.005, asks <= 65065.005
    assert (data["bid_liquidity_10bps"], data["ask_liquidity_10bps"]) == ("1.5", "0.2")
    assert (data["bid_liquidity_50bps"], data["ask_liquidity_50bps"]) == ("1.5", "2.2")
    assert (data["bid_liquidity_100bps"], data["ask_liquidity_100bps"]) == (
        "4.5",
        "6.2",
    )
    assert data["imbalance"] == str((D("1.5") / D("3.7")).quantize(D("1E-10")))
    assert OrderBookDepth.from_dict(data) == d


def test_depth_of_more_levels_than_the_book_and_of_a_crossed_book():
    d = OrderBookDepth.from_book(book(), 10, T0)
    assert len(d.bids) == 3 and len(d.asks) == 3
    crossed = OrderBook("X-Y")
    crossed.apply_snapshot([(D(101), D(1))], [(D(100), D(1))])
    assert OrderBookDepth.from_book(crossed, 5) is None


def test_summaries_carry_their_type():
    s = book().summary(time=T0, feed="sim")
    assert s.to_dict()["type"] == "summary"
    assert OrderBookSummary.from_json(s.to_json()) == s


def snap(t):
    return BookSnapshot(
        "BTC-USD",
        [(D(100), D(1)), (D(99), D(2))],
        [(D(101), D(1)), (D(102), D(2))],
        t,
        "sim",
        received_ns=5,
    )


def change(t, price="99", size="3", side=BID):
    return BookChanges("BTC-USD", [(side, D(price), D(size))], t, "sim", 7)


def emitted(due) -> tuple:
    """The records of one BookStep output, summary first."""
    return () if due is None else tuple(r for r in due[1:] if r is not None)


def kinds(step, events):
    state, out = None, []
    for event in events:
        state, due = step(state, event)
        out.append(tuple(type(r).__name__ for r in emitted(due)))
    return out


def test_depth_at_snapshot_then_once_per_interval_of_feed_time():
    step = BookStep(levels=2, interval=1.0)
    s = "OrderBookSummary"
    d = "OrderBookDepth"
    events = [
        snap(T0),
        change(T0 + timedelta(seconds=0.5)),  # below the top, interval not elapsed
        change(T0 + timedelta(seconds=0.99), "99", "4"),
        change(T0 + timedelta(seconds=1.0), "99", "5"),  # elapsed: due
        change(T0 + timedelta(seconds=1.5), "100", "2"),  # top changed, not due
        change(T0 + timedelta(seconds=2.2), "100", "3"),  # both
        BookReset("BTC-USD", "reconnect", "sim"),
        change(T0 + timedelta(seconds=2.3)),  # no book: nothing
        snap(T0 + timedelta(seconds=2.4)),  # a snapshot: at once
    ]
    assert kinds(step, events) == [
        (s, d), (), (), (d,), (s,), (s, d), (), (), (s, d),
    ]  # fmt: skip


def test_interval_zero_gives_a_depth_record_at_every_change_and_off_gives_none():
    events = [snap(T0), change(T0), change(T0, "98", "1")]
    assert [len(k) for k in kinds(BookStep(3, 0.0), events)] == [2, 1, 1]
    assert [k.count("OrderBookDepth") for k in kinds(BookStep(0), events)] == [0, 0, 0]


def test_same_events_give_the_same_records_whatever_the_wall_clock():
    events = [snap(T0)] + [
        change(T0 + timedelta(milliseconds=100 * i), "99", str(i + 1))
        for i in range(40)
    ]

    def records():
        state, out = None, []
        for event in events:
            state, due = BookStep(5, 1.0)(state, event)
            out += [r.to_json() for r in emitted(due)]
        return out

    first = records()
    assert first == records()
    depth = [json.loads(r) for r in first if '"depth"' in r]
    assert [r["time"][17:19] for r in depth] == ["00", "01", "02", "03"]


def test_depth_records_bypass_the_spread_filter_and_carry_receive_times():
    step = EachEvent(BookStep(levels=1))  # as the dataflow runs it: a list per item
    state, out = step(None, [snap(T0)])
    kept = SpreadFilter(D(50))(("k", None)), SpreadFilter(D(50)).records(("k", out))
    assert SpreadFilter(D(0)).records(("k", [])) == []
    assert kept[0] is None
    assert [(ns, type(r).__name__) for ns, r in kept[1]] == [(5, "OrderBookDepth")]
    kept = SpreadFilter(D(0)).records(("k", out))
    assert [type(r).__name__ for _, r in kept] == ["OrderBookSummary", "OrderBookDepth"]


def test_a_poll_of_events_gives_the_records_of_each_event_in_order():
    events = [snap(T0), change(T0), change(T0, "98", "1"), change(T0, "99", "6")]
    one_by_one = kinds(BookStep(3, 0.0), events)
    state, outs = EachEvent(BookStep(3, 0.0))(None, events)  # the live source's item
    assert [tuple(type(r).__name__ for r in emitted(o)) for o in outs] == [
        k for k in one_by_one if k
    ]
    assert state.book is not None and state.updates == 4
    _, single = EachEvent(BookStep(3, 0.0))(None, snap(T0))  # a replay's item
    assert [emitted(o) for o in single] == [emitted(outs[0])]


def test_book_state_still_pickles_and_copies_small():
    import copy
    import pickle

    state, _ = BookStep(levels=1)(None, snap(T0))
    assert state.next_depth_at is not None
    for back in (pickle.loads(pickle.dumps(state)), copy.deepcopy(state)):
        assert back.book is None and back.next_depth_at is None
        _, due = BookStep(levels=1)(back, snap(T0))
        assert len(emitted(due)) == 2


def test_ask_side_changes_count_too():
    _, out = BookStep(1, 0.0)(
        BookStep(1, 0.0)(None, snap(T0))[0], change(T0, "102", "0", side=ASK)
    )
    assert [type(r).__name__ for r in emitted(out)] == ["OrderBookDepth"]
