"""Unit tests for orderbook.py: one rule per test, exact Decimal results."""

from __future__ import annotations

import copy
import json
import pickle
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from events import Side
from orderbook import BookCondition, Fill, InvalidChange, OrderBook
from records import OrderBookSummary


def make_book(bids=(("100.00", "1"), ("99.50", "2")), asks=(("100.50", "3"),)):
    book = OrderBook("BTC-USD")
    book.apply_snapshot(bids, asks)
    return book


def exact_levels(book: OrderBook) -> tuple:
    """Every level's exact text: catches even a 1.0 -> 1.00 rewrite."""
    return (
        book.product_id,
        [(str(p), str(s)) for p, s in book.bids],
        [(str(p), str(s)) for p, s in book.asks],
    )


# -- snapshots ------------------------------------------------------------------------


def test_snapshot_replaces_whole_book():
    book = make_book()
    book.apply_snapshot([(D(50), D(1))], [(D(51), D(2))])
    assert list(book.bids) == [(D(50), D(1))]
    assert list(book.asks) == [(D(51), D(2))]
    assert len(book) == 2


def test_snapshot_drops_zero_size_levels_in_every_form():
    book = make_book(
        bids=[("100", "0"), ("99", "0.00"), ("98", "0.00000000"), ("97", "1.5")],
        asks=[(D(101), D(0)), (D(102), D(2))],
    )
    assert list(book.bids) == [(D(97), D("1.5"))]
    assert list(book.asks) == [(D(102), D(2))]


def test_snapshot_accepts_unsorted_and_generator_input():
    book = OrderBook("X")
    book.apply_snapshot(
        ((D(p), D(1)) for p in ["3", "1", "2"]), iter([("7", "1"), ("5", "1")])
    )
    assert [p for p, _ in book.bids] == [D(1), D(2), D(3)]
    assert book.best_ask() == (D(5), D(1))


def test_invalid_snapshot_leaves_old_book_and_names_level():
    book = make_book()
    before = exact_levels(book)
    for bad_bids in (
        [("100", "1"), ("99", "-1")],
        [("100", "1"), ("abc", "1")],
        [(D(100), D(1)), (D("NaN"), D(1))],
        [(D(100), D("Infinity"))],
        [(D(0), D(1))],
        [("100", "1", "3")],
        [(100.5, "1")],
    ):
        with pytest.raises(InvalidChange) as err:
            book.apply_snapshot(bad_bids, [("200", "1")])
        assert repr(err.value.change) in str(err.value)
        assert exact_levels(book) == before


def test_snapshot_error_is_a_value_error():
    with pytest.raises(ValueError, match="price"):
        OrderBook("X").apply_snapshot([("-5", "1")], [])


def test_clear_empties_book():
    book = make_book()
    book.clear()
    assert len(book) == 0 and book.condition is BookCondition.EMPTY


# -- changes --------------------------------------------------------------------------


@pytest.mark.parametrize("zero", ["0", "0.00", "0.00000000", D("0E-8"), D("-0")])
def test_every_zero_form_removes_level(zero):
    book = make_book()
    book.apply_changes([("bid", "100.00", zero)])
    assert book.best_bid() == (D("99.50"), D(2))


def test_different_string_forms_hit_same_level():
    book = make_book()
    book.apply_changes([("bid", "100.00000000", "5")])
    book.apply_changes([("bid", "100", "6")])
    book.apply_changes([("bid", D("1.00E+2"), "7")])
    assert len(list(book.bids)) == 2
    assert book.best_bid() == (D(100), D(7))
    book.apply_changes([("bid", "100.0", "0.0")])
    assert book.best_bid() == (D("99.50"), D(2))


@pytest.mark.parametrize(
    ("side", "expected"),
    [(Side.BID, "bid"), ("bid", "bid"), (Side.ASK, "ask"), ("ask", "ask")],
)
def test_a_side_is_an_events_side(side, expected):
    book = make_book()
    book.apply_changes(
        [(side, "50", "1")] if expected == "bid" else [(side, "500", "1")]
    )
    levels = book.bids if expected == "bid" else book.asks
    assert (D(50) if expected == "bid" else D(500)) in dict(levels)


@pytest.mark.parametrize("spelling", ["buy", "sell", "offer", "BID"])
def test_the_feeds_own_side_spellings_are_the_decoders_business(spelling):
    """The decoders map buy/sell and bid/offer to :class:`events.Side` once; the book
    takes only that, and refuses anything else whole."""
    book = make_book()
    before = list(book.bids), list(book.asks)
    with pytest.raises(InvalidChange, match="side one of \\['ask', 'bid'\\]"):
        book.apply_changes([("bid", "50", "1"), (spelling, "500", "1")])
    assert (list(book.bids), list(book.asks)) == before


def test_changes_set_absolute_size_not_delta():
    book = make_book()
    book.apply_changes([("ask", "100.50", "0.25"), ("ask", "100.50", "0.5")])
    assert book.best_ask() == (D("100.50"), D("0.5"))


def test_delete_of_absent_level_is_noop():
    book = make_book()
    before = exact_levels(book)
    book.apply_changes([("bid", "12.34", "0"), ("ask", "999", "0.00")])
    assert exact_levels(book) == before


def test_new_level_added_in_order():
    book = make_book()
    book.apply_changes([("bid", D("99.75"), D(4)), ("ask", D("100.25"), D(1))])
    assert [p for p, _ in book.levels("bid")] == [D("100.00"), D("99.75"), D("99.50")]
    assert book.best_ask() == (D("100.25"), D(1))


@pytest.mark.parametrize(
    "bad",
    [
        ("bid", "100.00", "-1"),
        ("bid", "100.00", "abc"),
        ("bid", "abc", "1"),
        ("bid", "NaN", "1"),
        ("bid", "100", "NaN"),
        ("bid", "sNaN", "1"),
        ("ask", "Infinity", "1"),
        ("ask", "100", "-Infinity"),
        ("ask", "0", "1"),
        ("ask", "-3", "1"),
        ("ask", D("-0"), D(1)),
        ("middle", "100", "1"),
        ("BID", "100", "1"),
        ("bid", 100.5, "1"),
        ("bid", "100", None),
        ("bid", True, "1"),
        ("bid", "100"),
        ("bid", "100", "1", "extra"),
        None,
        "bid",
    ],
)
def test_invalid_change_rejects_whole_message(bad):
    book = make_book()
    before = exact_levels(book)
    before_pickle = pickle.dumps(book)
    good = [("bid", "100.00", "9"), ("ask", "101", "1"), ("bid", "99.50", "0")]
    with pytest.raises(InvalidChange) as err:
        book.apply_changes([*good, bad, ("ask", "100.50", "0")])
    assert isinstance(err.value, ValueError)
    assert err.value.change is bad
    assert repr(bad) in str(err.value)
    assert exact_levels(book) == before
    assert pickle.dumps(book) == before_pickle


def test_empty_message_is_fine():
    book = make_book()
    before = exact_levels(book)
    book.apply_changes([])
    assert exact_levels(book) == before


def test_int_inputs_are_exact():
    book = OrderBook("X")
    book.apply_changes([("bid", 10, 2), ("ask", "11", 3)])
    assert book.top() == (D(10), D(2), D(11), D(3))


# -- condition, top, summary ----------------------------------------------------------


@pytest.mark.parametrize(
    ("bids", "asks", "condition"),
    [
        ([], [], BookCondition.EMPTY),
        ([], [("10", "1")], BookCondition.NO_BIDS),
        ([("10", "1")], [], BookCondition.NO_ASKS),
        ([("11", "1")], [("10", "1")], BookCondition.CROSSED),
        ([("10", "1")], [("10.00", "1")], BookCondition.LOCKED),
        ([("9.99", "1")], [("10", "1")], BookCondition.OK),
    ],
)
def test_condition_and_summary_gate(bids, asks, condition):
    book = make_book(bids, asks)
    assert book.condition is condition
    assert book.is_crossed == (condition is BookCondition.CROSSED)
    assert book.is_locked == (condition is BookCondition.LOCKED)
    summary = book.summary(feed="sim")
    assert (summary is not None) == (condition is BookCondition.OK)
    assert (book.top() is None) == (not bids or not asks)


def test_condition_follows_changes():
    book = make_book()
    book.apply_changes([("bid", "100.50", "1")])
    assert book.condition == "locked" and book.summary() is None
    book.apply_changes([("bid", "100.60", "1")])
    assert book.condition is BookCondition.CROSSED
    book.apply_changes([("bid", "100.60", "0"), ("bid", "100.50", "0")])
    assert book.condition is BookCondition.OK
    book.apply_changes([("ask", "100.50", "0")])
    assert book.condition is BookCondition.NO_ASKS and book.summary() is None


def test_best_levels_and_top():
    book = make_book()
    assert book.best_bid() == (D("100.00"), D(1))
    assert book.best_ask() == (D("100.50"), D(3))
    assert book.top() == (D("100.00"), D(1), D("100.50"), D(3))
    assert OrderBook("X").best_bid() is None and OrderBook("X").best_ask() is None


def real_top_summary(time=None, feed="exchange") -> OrderBookSummary:
    book = make_book(
        bids=[("65083.66", "0.20371215"), ("65083.27", "0.02244516")],
        asks=[("65083.67", "0.15361938")],
    )
    summary = book.summary(time=time, feed=feed)
    assert summary is not None
    return summary


def test_summary_math_is_exact():
    s = real_top_summary()
    assert s.product_id == "BTC-USD" and s.feed == "exchange" and s.time is None
    assert (s.bid_price, s.bid_size) == (D("65083.66"), D("0.20371215"))
    assert (s.ask_price, s.ask_size) == (D("65083.67"), D("0.15361938"))
    assert s.spread == D("0.01") and str(s.spread) == "0.01"
    assert s.mid == D("65083.665")
    # 0.01 / 65083.67 * 100 = 0.0000153648...; imbalance 0.20371215 / 0.35733153
    assert s.spread_pct == D("0.0000153648")
    assert s.imbalance == D("0.5700928491")
    # (65083.66*0.15361938 + 65083.67*0.20371215) / 0.35733153, to 1e-6
    exact = (D("65083.66") * D("0.15361938") + D("65083.67") * D("0.20371215")) / D(
        "0.35733153"
    )
    assert s.microprice == exact.quantize(D("1E-6")) == D("65083.665701")
    assert s.microprice.as_tuple().exponent == -6


def test_summary_ratio_precision_is_fixed():
    book = make_book(bids=[("1", "1")], asks=[("3", "2")])
    s = book.summary()
    assert s.spread_pct == D("66.6666666667")  # 2/3*100, 10 places
    assert s.imbalance == D("0.3333333333")
    assert s.microprice == D("1.6667")  # (1*2 + 3*1)/3, scale 0 + 4 digits
    assert s.mid == D(2)


def test_summary_is_frozen_and_slotted():
    s = real_top_summary()
    with pytest.raises(AttributeError):
        s.spread = D(1)
    assert not hasattr(s, "__dict__")


def test_summary_to_dict_and_json_round_trip():
    when = datetime(2026, 8, 9, 21, 5, 48, 170326, tzinfo=UTC)
    s = real_top_summary(time=when)
    data = s.to_dict()
    assert data["time"] == "2026-08-09T21:05:48.170326Z"
    assert data["spread"] == "0.01" and data["spread_pct"] == "0.0000153648"
    assert data["feed"] == "exchange"
    text = s.to_json()
    assert " " not in text and json.loads(text) == data
    assert list(json.loads(text)) == [
        "type", "product_id", "time", "bid_price", "bid_size", "ask_price", "ask_size",
        "spread", "spread_pct", "mid", "imbalance", "microprice", "feed",
    ]  # fmt: skip
    back = OrderBookSummary.from_json(text)
    assert back == s
    assert back.time == when


def test_to_dict_time_forms():
    local = timezone(timedelta(hours=2))
    s = real_top_summary(time=datetime(2026, 1, 1, 2, 0, tzinfo=local))
    assert s.to_dict()["time"] == "2026-01-01T00:00:00.000000Z"
    naive = real_top_summary(time=datetime(2026, 1, 1))
    assert naive.to_dict()["time"] == "2026-01-01T00:00:00.000000Z"
    assert real_top_summary().to_json().count('"time":null') == 1


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 8, 9, 21, 5, 48, 170326, tzinfo=UTC),  # orjson prints it
        datetime(2026, 8, 9, 21, 5, 48, tzinfo=UTC),  # no microseconds: ".000000Z"
        datetime(2026, 8, 9, 23, 5, 48, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 8, 9, 21, 5, 48, 5),  # naive: taken as UTC
        None,
    ],
)
def test_to_json_is_json_dumps_of_to_dict_whatever_the_time(when):
    """to_json's orjson shortcut (the time left to orjson) prints what json.dumps of
    to_dict does, byte for byte."""
    s = real_top_summary(time=when)
    assert s.to_json() == json.dumps(s.to_dict(), separators=(",", ":"))


def test_to_dict_never_uses_exponent_notation():
    book = make_book(bids=[("0.00000001", "1")], asks=[("0.00000002", "100000000")])
    data = book.summary().to_dict()
    assert "E" not in json.dumps(data)
    assert data["imbalance"] == "0.00000001"  # canonical: no trailing zeros


def test_str_is_readable():
    text = str(real_top_summary())
    assert text.startswith("BTC-USD  bid 65083.66 x 0.20371215  ask 65083.67")
    assert "spread 0.01 (0.0000154%)" in text
    assert "[exchange]" in text


# -- depth analytics ------------------------------------------------------------------


def deep_book() -> OrderBook:
    return make_book(
        bids=[("100", "1"), ("99", "2"), ("98", "3"), ("90", "4")],
        asks=[("101", "1.5"), ("102", "2.5"), ("110", "10")],
    )


def test_depth_best_first():
    book = deep_book()
    assert book.depth("bid", 2) == [(D(100), D(1)), (D(99), D(2))]
    assert book.depth("ask", 10) == [
        (D(101), D("1.5")),
        (D(102), D("2.5")),
        (D(110), D(10)),
    ]
    assert book.depth("ask", 0) == []
    with pytest.raises(ValueError):
        book.depth("buy", 1)
    with pytest.raises(ValueError):
        book.depth("bid", -1)


def test_levels_iterates_best_first_and_rejects_bad_side_eagerly():
    book = deep_book()
    assert [p for p, _ in book.levels("bid")] == [D(100), D(99), D(98), D(90)]
    assert [p for p, _ in book.levels("ask")] == [D(101), D(102), D(110)]
    with pytest.raises(ValueError, match="side"):
        book.levels("offer")


def test_liquidity_within_bps_inclusive():
    book = deep_book()  # mid 100.5
    assert book.liquidity_within(0) == (D(0), D(0))
    # 100 bps of 100.5 = 1.005: bids >= 99.495, asks <= 101.505
    assert book.liquidity_within(100) == (D(1), D("1.5"))
    # 150 bps -> 1.5075: bids >= 98.9925, asks <= 102.0075
    assert book.liquidity_within("150") == (D(3), D(4))
    assert book.liquidity_within(D(10_000)) == (D(10), D(14))
    assert OrderBook("X").liquidity_within(5) is None
    with pytest.raises(ValueError):
        book.liquidity_within(-1)


def test_liquidity_band_edge_is_inclusive():
    book = make_book(
        bids=[("98.99", "7"), ("99", "1")], asks=[("101", "2"), ("101.01", "5")]
    )
    # mid 100; 100 bps = 1.00 exactly: 99 and 101 sit on the edges and count
    assert book.liquidity_within(100) == (D(1), D(2))
    assert book.liquidity_within(99) == (D(0), D(0))


def test_vwap_walks_asks_when_buying():
    fill = deep_book().vwap_for_size("ask", "3")
    assert fill == Fill(
        side="ask",
        requested=D(3),
        filled=D(3),
        notional=D(101) * D("1.5") + D(102) * D("1.5"),
        vwap=D("101.5"),
        complete=True,
        levels=2,
        worst_price=D(102),
    )


def test_vwap_walks_bids_when_selling():
    fill = deep_book().vwap_for_size("bid", D(2))
    assert fill.filled == D(2) and fill.complete and fill.levels == 2
    assert fill.notional == D(199)
    assert fill.vwap == D("99.5")
    assert fill.worst_price == D(99)


def test_vwap_thin_book_is_incomplete_not_an_error():
    fill = deep_book().vwap_for_size("ask", 100)
    assert not fill.complete
    assert fill.filled == D(14) and fill.requested == D(100)
    assert fill.notional == D(101) * D("1.5") + D(102) * D("2.5") + D(1100)
    assert fill.vwap == (fill.notional / fill.filled).quantize(D("1E-4"))
    empty = OrderBook("X").vwap_for_size("bid", 1)
    assert empty.filled == 0 and empty.vwap is None and not empty.complete
    assert empty.levels == 0


def test_vwap_rejects_bad_requests():
    book = deep_book()
    for bad in (0, -1, "NaN"):
        with pytest.raises(ValueError):
            book.vwap_for_size("ask", bad)
    with pytest.raises(ValueError):
        book.vwap_for_size("sell", 1)


# -- views, equality, state -----------------------------------------------------------


def test_len_views_and_repr():
    book = deep_book()
    assert len(book) == 7
    assert [p for p, _ in book.bids] == [D(90), D(98), D(99), D(100)]  # ascending view
    assert "BTC-USD" in repr(book) and "ok" in repr(book)


def test_equality_is_numeric_and_includes_product():
    a = make_book(bids=[("100.0", "1.0")], asks=[("101", "1")])
    b = make_book(bids=[("100", "1")], asks=[("101.00", "1")])
    assert a == b
    b.apply_changes([("ask", "101", "2")])
    assert a != b
    other = OrderBook("ETH-USD")
    other.apply_snapshot([("100", "1")], [("101", "1")])
    assert a != other
    assert a != "not a book"


def test_pickle_round_trip_keeps_exact_text():
    book = make_book(
        bids=[("100.00000000", "1.50"), ("99", "2")], asks=[("101.5", "3")]
    )
    back = pickle.loads(pickle.dumps(book))
    assert back == book
    assert exact_levels(back) == exact_levels(book)
    back.apply_changes([("bid", "100", "0")])
    assert back != book and book.best_bid() == (D(100), D("1.50"))


def test_pickle_of_empty_book():
    book = OrderBook("X")
    back = pickle.loads(pickle.dumps(book))
    assert back == book and len(back) == 0 and back.product_id == "X"


def test_deepcopy_is_independent():
    book = deep_book()
    twin = copy.deepcopy(book)
    assert twin == book and exact_levels(twin) == exact_levels(book)
    twin.apply_changes([("ask", "101", "0"), ("bid", "100.5", "1")])
    assert twin != book
    assert book.top() == (D(100), D(1), D(101), D("1.5"))
    assert copy.copy(book) == book


def test_unknown_state_version_refused():
    book = deep_book()
    state = (99, *book.__getstate__()[1:])
    fresh = OrderBook.__new__(OrderBook)
    with pytest.raises(ValueError, match="version"):
        fresh.__setstate__(state)
