"""The views' records, board and settings: pure, no sockets."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from common.validation import ConfigError, host_port
from orderbook import OrderBook
from records import OrderBookDepth, OrderBookSummary
from service.settings import Settings
from views import records
from views.dashboard import History
from views.live import _LivePartition, text_line
from views.state import (
    AWAITING,
    BEHIND,
    CONNECTED,
    ENDED,
    REPLAY,
    RESYNCING,
    MarketBoard,
)


def _summary(product="BTC-USD", bid="100", ask="100.5", feed="sim", when=None):
    return OrderBookSummary.from_top(
        product,
        Decimal(bid),
        Decimal("2"),
        Decimal(ask),
        Decimal("1"),
        time=when or datetime.now(UTC),
        feed=feed,
    )


def _depth(product="BTC-USD"):
    book = OrderBook(product)
    book.apply_snapshot(
        [("100", "1"), ("99.99", "2"), ("99", "5")],
        [("100.01", "1"), ("100.02", "3"), ("101", "4")],
    )
    return OrderBookDepth.from_book(book, 2, datetime.now(UTC), "sim").to_dict()


def test_kinds_with_or_without_type():
    s = _summary().to_dict()
    assert records.kind(s) == records.SUMMARY
    assert records.kind({**s, "type": "summary"}) == records.SUMMARY
    d = _depth()
    assert records.kind(d) == records.DEPTH
    assert records.kind({k: v for k, v in d.items() if k != "type"}) == records.DEPTH
    assert records.kind({"type": "status"}) is None
    assert records.kind({"product_id": "X"}) is None


def test_as_record_takes_dicts_and_objects():
    s = _summary()
    assert records.as_record(s) == s.to_dict()
    assert records.as_record(s.to_dict()) == s.to_dict()
    assert records.as_record(None) is None
    # the dataflow's (received_ns, record) pairs are the sinks' to unpack
    assert records.as_record((123456789, s)) is None


def test_the_live_views_sink_takes_the_dataflows_pairs():
    board = MarketBoard(["BTC-USD"])
    _LivePartition(board, view=None).write_batch([(123456789, _summary())])
    assert board.row("BTC-USD", depth_levels=0)["bid_price"] == 100.0


def test_depth_record_has_the_agreed_shape():
    d = _depth()
    assert d["bids"] == [["100", "1"], ["99.99", "2"]]
    assert d["asks"] == [["100.01", "1"], ["100.02", "3"]]
    assert d["mid"] == "100.005"
    assert d["bid_liquidity_10bps"] == "3"  # 100 and 99.99 are within 10 bps of mid
    assert d["ask_liquidity_10bps"] == "4"
    assert set(d) >= {"bid_liquidity_100bps", "ask_liquidity_50bps", "imbalance"}
    assert d["imbalance"] == "0.4285714286"  # 3 / (3 + 4), the listed levels
    assert records.levels(d, "bids") == [(100.0, 1.0), (99.99, 2.0)]
    assert records.levels({"bids": '[["1", "2"]]'}, "bids") == [(1.0, 2.0)]


def test_board_rows_and_feed_states():
    board = MarketBoard(["BTC-USD", "ETH-USD"], stale_after=0.2, threshold_pct=0.1)
    rows = {r["product_id"]: r for r in board.rows()}
    assert rows["ETH-USD"]["state"] == AWAITING
    board.update([_summary(), _depth()])
    row = board.row("BTC-USD")
    assert row["state"] == CONNECTED
    assert row["bid_price"] == 100.0 and row["ask_price"] == 100.5
    assert row["spread_bps"] == pytest.approx(49.75, rel=1e-3)
    assert row["wide"]  # 0.4975% > 0.1%
    assert row["bid_liquidity_10bps"] == 3.0
    assert row["bids"][0] == (100.0, 1.0)
    assert row["updates"] == 1  # depth records are not top-of-book updates
    old = datetime(2020, 1, 1, tzinfo=UTC)
    board.update([_summary(when=old)])
    assert board.row("BTC-USD")["state"] == BEHIND
    steady = MarketBoard()
    steady.update([_summary(when=old), _summary(when=old)])  # a steady lag: a clock
    assert steady.row("BTC-USD")["state"] == CONNECTED  # offset, not falling behind
    board.update([_summary(when=old, feed="replay")])
    assert board.row("BTC-USD")["state"] == REPLAY
    deadline = time.monotonic() + 5
    while board.row("BTC-USD")["state"] != RESYNCING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert board.row("BTC-USD")["state"] == RESYNCING
    board.finished = True
    assert board.row("BTC-USD")["state"] == ENDED
    narrow = MarketBoard(threshold_pct=1.0)
    narrow.update([_summary()])
    assert not narrow.row("BTC-USD")["wide"]
    assert "bid 100 x 2" in text_line(narrow.row("BTC-USD"))


def test_history_keeps_one_point_per_interval_and_is_bounded():
    history = History(seconds=10, interval=0.5)
    start = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    for i in range(100):  # 25 s of summaries, 4 a second
        when = datetime.fromtimestamp(start + i * 0.25, tz=UTC)
        history.add(_summary(when=when).to_dict())
    points = history.since("BTC-USD", 0)
    assert len(points) == 20  # 10 s / 0.5 s
    assert points[-1][1] == pytest.approx(start + 99 * 0.25 - 0.25, abs=0.3)
    assert history.since("BTC-USD", points[-2][0]) == points[-1:]
    assert history.since("ETH-USD", 0) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("8050", ("127.0.0.1", 8050)),
        (":8050", ("127.0.0.1", 8050)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:8050", ("::1", 8050)),
        ("", None),
    ],
)
def test_dashboard_address(raw, expected):
    assert host_port("ORDERBOOK_DASHBOARD", raw) == expected


@pytest.mark.parametrize("raw", ["x", "host:", "host:99999", "a b:80", "http://h:80"])
def test_bad_dashboard_address_is_refused_with_its_name(raw):
    with pytest.raises(ConfigError, match="ORDERBOOK_DASHBOARD"):
        host_port("ORDERBOOK_DASHBOARD", raw)


def test_settings_read_the_view_settings():
    s = Settings.from_env({"ORDERBOOK_OUTPUT": "live", "ORDERBOOK_DASHBOARD": "9000"})
    assert s.live_view and s.outputs == ()  # a view, not an output
    assert s.dashboard == ("127.0.0.1", 9000)
    assert Settings.from_env({}).dashboard is None


@pytest.mark.parametrize(
    "raw",
    [
        "*",
        "null",
        "http://a/path",
        "ftp://a",
        "http://a:0",
        "http://a:99999",
        "http://u@a",
    ],
)
def test_bad_dashboard_origins_are_refused_with_their_name(raw):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"ORDERBOOK_DASHBOARD_ORIGINS": raw})
    assert str(refused.value).startswith(f"ORDERBOOK_DASHBOARD_ORIGINS={raw!r}")
    assert "is not an origin" in str(refused.value)


def test_dashboard_origins_take_the_form_browsers_send():
    s = Settings.from_env(
        {"ORDERBOOK_DASHBOARD_ORIGINS": " HTTP://LAN.example:80/,https://[::1]:8443"}
    )
    assert s.dashboard_origins == ("http://lan.example", "https://[::1]:8443")
    assert Settings.from_env({}).dashboard_origins == ()


def test_numbers_and_times_outside_their_domain_are_missing_values():
    """Finding 29's inputs at the views' one entry point: never inf, NaN or a time
    datetime cannot hold, whatever the record's origin."""
    for bad in ("inf", "-Infinity", "NaN", "1e999", 10**400, float("nan"), [], True):
        assert records.num(bad) is None, bad
    assert records.num("1.5") == 1.5
    for bad in (1e300, float("nan"), -1.0, 10**400, "0001-01-01T00:00:00Z", "x", [1]):
        assert records.epoch_seconds(bad) is None, bad
    assert records.epoch_seconds("2026-11-01T00:00:00Z") == 1_793_491_200.0
    assert records.spread_bps({"spread_pct": "1e307"}) is None  # x 100 overflows
    depth = {"bids": [["1", "2"], ["inf", "1"], ["2", "nan"], "x", [3]], "asks": 5}
    assert records.levels(depth, "bids") == [(1.0, 2.0)]
    assert records.levels(depth, "asks") == []


def test_board_ignores_records_without_a_real_product_id():
    board = MarketBoard()
    crafted = ["\x1b[2J[red]x[/]", "../x", ["BTC-USD"], ""]
    rows = [{**_summary().to_dict(), "product_id": p} for p in crafted]
    assert board.update(rows + [_summary()]) == ["BTC-USD"]
    assert board.products() == ["BTC-USD"]
