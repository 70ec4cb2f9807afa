"""Frame parsing for both Coinbase wire formats, using real captured frame shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coinbase.decode import FrameDecoder, parse_time
from coinbase.errors import (
    AuthError,
    FeedError,
    MalformedFrame,
    SequenceGap,
    UnknownProduct,
)
from events import ASK, BID, BookChanges, BookSnapshot
from tests.support.frames import (
    EXCHANGE_TIME,
    at_error,
    at_l2_data,
    at_level,
    at_snapshot,
    at_update,
    exchange_error,
    exchange_l2update,
    exchange_snapshot,
    text,
)

D = Decimal


def exchange() -> FrameDecoder:
    return FrameDecoder("exchange", "exchange")


def at_frame(seq: int, events: list, channel: str = "l2_data") -> str:
    """An Advanced Trade message as text (the one builder: tests/support/frames.py)."""
    return text(at_l2_data(seq, events, channel))


# -- Exchange ---------------------------------------------------------------------------


def test_exchange_snapshot_real_shape() -> None:
    frame = (
        '{"type":"snapshot","product_id":"BAND-GBP","asks":[["14.8024","12.77"],'
        '["14.8069","12.49"]],"bids":[["14.7693","27.51"],["14.7659","12.48"]]}'
    )
    [event] = exchange().decode(frame, received_ns=123)
    assert event == BookSnapshot(
        "BAND-GBP",
        [(D("14.7693"), D("27.51")), (D("14.7659"), D("12.48"))],
        [(D("14.8024"), D("12.77")), (D("14.8069"), D("12.49"))],
        None,
        "exchange",
        123,
    )


def test_exchange_l2update_batched_changes_and_sides() -> None:
    frame = (
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","80688.08","0.59153273"],'
        '["sell","80745.16","0.00000000"]],"time":"2026-08-25T03:35:57.300000Z"}'
    )
    [event] = FrameDecoder("exchange", "sim").decode(frame.encode(), 7)
    assert isinstance(event, BookChanges)
    assert event.product_id == "BTC-USD"
    assert event.changes == [
        (BID, D("80688.08"), D("0.59153273")),
        (ASK, D("80745.16"), D(0)),
    ]
    assert event.time == datetime(2026, 8, 25, 3, 35, 57, 300000, tzinfo=UTC)
    assert (event.feed, event.received_ns) == ("sim", 7)


@pytest.mark.parametrize(
    "frame",
    [
        (
            '{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD",'
            '"time":"2014-11-07T08:19:28.464459Z"}'
        ),
        (
            '{"type":"subscriptions","channels":[{"name":"level2_batch","product_ids":'
            '["BTC-USD"],"account_ids":null}]}'
        ),
        '{"type":"ticker","product_id":"BTC-USD","price":"1"}',
        '{"type":"brand_new_type"}',
    ],
)
def test_exchange_non_book_frames_decode_to_nothing(frame: str) -> None:
    assert exchange().decode(frame) == []


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","abc"]],"time":null}',
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","0.-10000"]]}',
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","NaN"]]}',
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","-3"]]}',
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","Infinity"]]}',
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","0","1"]]}',
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy",1.5,"1"]]}',
        '{"type":"l2update","product_id":"BTC-USD","changes":[["hold","1","1"]]}',
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1"]]}',
        '{"type":"l2update","product_id":"BTC-USD"}',
        '{"type":"l2update","changes":[["buy","1","1"]]}',
        '{"type":"snapshot","product_id":"BTC-USD","bids":[["1","2"]]}',
        '{"type":"snapshot","product_id":"BTC-USD","bids":[["1","2"]],"asks":[["x","1"]]}',
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","1"]',
        "not json at all",
        '{"type":"snapshot","product_id":"A-B","bids":[["1","NaN"]],"asks":[]}',
        '{"type":"snapshot","product_id":"A-B","bids":[["Infinity","1"]],"asks":[]}',
        '{"type":"snapshot","product_id":"A-B","bids":[],"asks":[[2.5,"1"]]}',
        '{"type":"snapshot","product_id":"A-B","bids":[],"asks":[["2","-0.1"]]}',
        '{"type":"snapshot","product_id":"A-B","bids":[["1"]],"asks":[]}',
        '{"type":"snapshot","product_id":"A-B","bids":[["1","1e31"]],"asks":[]}',
    ],
)
def test_exchange_malformed_book_frames_raise_and_ask_for_resync(frame: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        exchange().decode(frame)
    assert info.value.resync is True


def test_whole_frame_is_refused_when_one_change_is_bad() -> None:
    frame = (
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"],'
        '["sell","3","abc"]],"time":"2021-04-17T16:43:37.075687Z"}'
    )
    with pytest.raises(MalformedFrame, match="BTC-USD"):
        exchange().decode(frame)


@pytest.mark.parametrize("frame", ["[1, 2]", '"text"', '{"no_type": 1}'])
def test_non_book_garbage_does_not_ask_for_resync(frame: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        exchange().decode(frame)
    assert info.value.resync is False


def test_malformed_message_is_truncated() -> None:
    frame = (
        '{"type":"snapshot","product_id":"BTC-USD","bids":' + "[" * 10 + "x" * 5_000_000
    )
    with pytest.raises(MalformedFrame) as info:
        exchange().decode(frame)
    assert len(str(info.value)) < 600


@pytest.mark.parametrize(
    "raw_time",
    [
        "0001-01-01T00:00:00.000000Z",
        "1970-01-01T00:00:00Z",
        "yesterday",
        "2021-04-17T16:43:37",
        5,
    ],
)
def test_bad_timestamp_keeps_changes_with_time_none(raw_time: object) -> None:
    decoder = exchange()
    frame = text(
        exchange_l2update("BTC-USD", [("sell", "0.00001306", "660.5")], raw_time)
    )
    [event] = decoder.decode(frame)
    assert event.time is None
    assert event.changes == [(ASK, D("0.00001306"), D("660.5"))]
    assert decoder.bad_times == 1


def test_missing_time_is_not_counted_as_bad() -> None:
    decoder = exchange()
    decoder.decode('{"type":"l2update","product_id":"A-B","changes":[["buy","1","1"]]}')
    assert decoder.bad_times == 0


def test_same_price_in_different_string_forms_is_equal() -> None:
    [event] = exchange().decode(
        '{"type":"l2update","product_id":"A-B","changes":[["buy","8442.65000000","0.00"],'
        '["buy","8442.65","0"]]}'
    )
    assert event.changes[0][1] == event.changes[1][1] == D("8442.65")
    assert event.changes[0][2] == event.changes[1][2] == 0


# -- error replies -----------------------------------------------------------------------


def test_unknown_product_error_names_the_product() -> None:
    frame = text(
        exchange_error("Failed to subscribe", "ETH-XYZ is not a valid product")
    )
    with pytest.raises(UnknownProduct) as info:
        exchange().decode(frame)
    assert info.value.product_id == "ETH-XYZ"
    assert info.value.permanent is True
    assert "ETH-XYZ" in str(info.value)


def test_auth_required_error_names_the_variables() -> None:
    frame = text(
        exchange_error(
            "Failed to subscribe",
            "level2, level3, and full channels now require authentication. "
            "https://docs.cloud.coinbase.com/exchange/docs/websocket-auth",
        )
    )
    with pytest.raises(AuthError) as info:
        exchange().decode(frame)
    assert info.value.permanent is True
    assert "COINBASE_API_SECRET" in str(info.value)


@pytest.mark.parametrize(
    ("reason", "credential"),
    [
        ("invalid signature", "COINBASE_API_SECRET"),
        ("Invalid Passphrase", "COINBASE_API_PASSPHRASE"),
        ("Invalid API Key", "COINBASE_API_KEY"),
    ],
)
def test_wrong_credential_is_named(reason: str, credential: str) -> None:
    frame = text(exchange_error("Failed to subscribe", reason))
    with pytest.raises(AuthError) as info:
        exchange().decode(frame)
    assert info.value.credential == credential
    assert credential in str(info.value)


def test_other_errors_are_transient() -> None:
    frame = text(at_error("too many L2 streams requested in a single session"))
    with pytest.raises(FeedError) as info:
        FrameDecoder("advanced-trade", "advanced-trade").decode(frame)
    assert type(info.value) is FeedError
    assert info.value.permanent is False
    assert "too many L2 streams" in str(info.value)


# -- Advanced Trade ----------------------------------------------------------------------


def test_at_snapshot_and_update_real_shape() -> None:
    decoder = FrameDecoder("advanced-trade", "advanced-trade")
    heartbeat = (
        '{"channel":"heartbeats","timestamp":"2026-08-09T21:05:48.856364007Z","sequence_num":0,'
        '"events":[{"current_time":"2026-08-09 21:05:48.854840045 +0000 UTC m=+41691.260485341",'
        '"heartbeat_counter":41691}]}'
    )
    assert decoder.decode(heartbeat) == []
    snapshot = at_frame(
        1,
        [
            {
                "type": "snapshot",
                "product_id": "BTC-USD",
                "updates": [
                    at_level("bid", "65083.66", "0.20371215"),
                    at_level("offer", "65106.54", "0.15361938"),
                    at_level("bid", "65083.27", "0.02244516"),
                ],
            }
        ],
    )
    [snap] = decoder.decode(snapshot, 5)
    assert snap == BookSnapshot(
        "BTC-USD",
        [(D("65083.66"), D("0.20371215")), (D("65083.27"), D("0.02244516"))],
        [(D("65106.54"), D("0.15361938"))],
        datetime(2026, 8, 9, 21, 5, 48, 483587, tzinfo=UTC),
        "advanced-trade",
        5,
    )
    update = at_frame(
        2,
        [
            {
                "type": "update",
                "product_id": "BTC-USD",
                "updates": [
                    at_level("offer", "65106.54", "0"),
                    at_level("bid", "65083.27", "1.5"),
                ],
            },
            {
                "type": "update",
                "product_id": "ETH-USD",
                "updates": [at_level("bid", "1", "2")],
            },
        ],
    )
    btc, eth = decoder.decode(update)
    assert btc.changes == [(ASK, D("65106.54"), D(0)), (BID, D("65083.27"), D("1.5"))]
    assert eth.product_id == "ETH-USD"


def test_at_sequence_gap_detected_across_channels() -> None:
    decoder = FrameDecoder("advanced-trade", "advanced-trade")
    decoder.decode(at_frame(0, [], channel="subscriptions"))
    decoder.decode(at_frame(1, []))
    with pytest.raises(SequenceGap) as info:
        decoder.decode(at_frame(3, []))
    assert (info.value.expected, info.value.got) == (2, 3)
    assert decoder.decode(at_frame(4, [])) == []  # counting continues after the gap


def test_at_first_message_must_be_zero() -> None:
    with pytest.raises(SequenceGap) as info:
        FrameDecoder("advanced-trade", "x").decode(
            at_frame(5, [], channel="heartbeats")
        )
    assert (info.value.expected, info.value.got) == (0, 5)


@pytest.mark.parametrize(
    "event",
    [
        {
            "type": "update",
            "product_id": "BTC-USD",
            "updates": [at_level("ask", "1", "1")],
        },
        {
            "type": "update",
            "product_id": "BTC-USD",
            "updates": [at_level("bid", "1", "abc")],
        },
        {
            "type": "snapshot",
            "product_id": "BTC-USD",
            "updates": [at_level("bid", "-1", "1")],
        },
        {"type": "snapshot", "product_id": "BTC-USD", "updates": [{"side": "bid"}]},
        {"type": "mystery", "product_id": "BTC-USD", "updates": []},
        {"type": "update", "updates": []},
    ],
)
def test_at_malformed_l2_data(event: dict) -> None:
    with pytest.raises(MalformedFrame) as info:
        FrameDecoder("advanced-trade", "x").decode(at_frame(0, [event]))
    assert info.value.resync is True


def test_at_missing_sequence_is_malformed() -> None:
    with pytest.raises(MalformedFrame, match="sequence_num"):
        FrameDecoder("advanced-trade", "x").decode('{"channel":"l2_data","events":[]}')


def test_unknown_protocol_refused() -> None:
    with pytest.raises(ValueError, match="exchange, advanced-trade"):
        FrameDecoder("fix", "x")


# -- properties --------------------------------------------------------------------------

sizes = st.decimals(min_value=0, max_value=10**9, places=8, allow_nan=False)
prices = st.decimals(
    min_value=D("0.00000001"), max_value=10**7, places=8, allow_nan=False
)


@given(
    st.lists(st.tuples(st.sampled_from(["buy", "sell"]), prices, sizes), max_size=20)
)
def test_l2update_round_trips_any_valid_changes(changes: list) -> None:
    frame = text(
        exchange_l2update("BTC-USD", changes, time="2021-04-17T16:43:37.075687Z")
    )
    [event] = exchange().decode(frame)
    assert event.changes == [
        (BID if side == "buy" else ASK, price, size) for side, price, size in changes
    ]


@given(st.text(max_size=60))
def test_arbitrary_text_never_escapes_the_documented_exceptions(text: str) -> None:
    try:
        exchange().decode(text)
    except (MalformedFrame, FeedError):
        pass


def test_parse_time_accepts_nanoseconds() -> None:
    assert parse_time("2026-08-09T21:05:48.483587501Z") == datetime(
        2026, 8, 9, 21, 5, 48, 483587, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("frame", "product"),
    [
        (
            '{"type":"error","message":"Failed to subscribe: ETH-XYZ is not a valid product"}',
            "ETH-XYZ",
        ),
        (
            '{"type":"error","message":"Failed to subscribe","reason":" is not a valid product"}',
            None,
        ),
        (
            '{"type":"error","message":"Failed to subscribe","reason":"Invalid product ID provided"}',
            None,
        ),
    ],
)
def test_unknown_product_error_variants(frame: str, product: str | None) -> None:
    with pytest.raises(UnknownProduct) as info:
        FrameDecoder("advanced-trade", "x").decode(frame)
    assert info.value.product_id == product


def test_update_prices_are_parsed_once_and_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import coinbase.decode as coinbase_parse

    decoder = FrameDecoder("exchange", "t")

    def update(price: str, size: str = "1") -> str:
        return text(exchange_l2update("BTC-USD", [("buy", price, size)], EXCHANGE_TIME))

    (first,) = decoder.decode(update("100.50"))
    (again,) = decoder.decode(update("100.50", "2"))
    assert first.changes[0][1] is again.changes[0][1]  # the same Decimal object
    with pytest.raises(MalformedFrame, match="bad price"):
        decoder.decode(update("-1"))
    with pytest.raises(MalformedFrame, match="bad size"):
        decoder.decode(update("100.50", "-3"))  # a cached price, a bad size
    monkeypatch.setattr(coinbase_parse, "PRICE_CACHE_SIZE", 3)
    monkeypatch.setattr(coinbase_parse, "_MIN_PRICE_CACHE", 1)
    decoder = FrameDecoder("exchange", "t")
    for price in ("1", "2", "3", "4"):
        decoder.decode(update(price))
    assert len(decoder._prices) <= 3  # bounded: starts afresh when full


def test_price_caches_share_one_budget_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import coinbase.decode as coinbase_parse

    monkeypatch.setattr(coinbase_parse, "PRICE_CACHE_BUDGET", 1_000)
    monkeypatch.setattr(coinbase_parse, "_MIN_PRICE_CACHE", 1)
    alone = coinbase_parse.price_cache_limit()
    decoders = [FrameDecoder("exchange", "t") for _ in range(10)]
    crowded = coinbase_parse.price_cache_limit()
    assert crowded <= 1_000 // 10 < alone
    assert decoders[-1]._price_limit <= 1_000 // 10


# -- issue 17: the number and name domain is enforced where a frame enters ----------------


def _frames_with(bid: str, ask: str, bid_size: str = "1.5", ask_size: str = "2.5"):
    """The four book frame kinds, each carrying these values."""
    return {
        "exchange snapshot": (
            "exchange",
            text(exchange_snapshot("BTC-USD", [(bid, bid_size)], [(ask, ask_size)])),
        ),
        "exchange l2update": (
            "exchange",
            text(
                exchange_l2update(
                    "BTC-USD", [("buy", bid, bid_size), ("sell", ask, ask_size)]
                )
            ),
        ),
        "advanced-trade snapshot": (
            "advanced-trade",
            text(at_snapshot(0, "BTC-USD", [(bid, bid_size)], [(ask, ask_size)])),
        ),
        "advanced-trade update": (
            "advanced-trade",
            text(
                at_update(
                    0, "BTC-USD", [("bid", bid, bid_size), ("offer", ask, ask_size)]
                )
            ),
        ),
    }


KINDS = list(_frames_with("1", "2"))


def _refused(kind: str, frame_values: dict) -> MalformedFrame:
    protocol, frame = frame_values[kind]
    with pytest.raises(MalformedFrame) as info:
        FrameDecoder(protocol, "x").decode(frame)
    assert info.value.resync is True  # a skipped book frame: the book must be rebuilt
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("kind", KINDS)
def test_finding_01_a_1e20_book_with_an_8_decimal_spread_is_malformed(kind) -> None:
    """It used to decode, then kill the dataflow in the summary (InvalidOperation)."""
    frames = _frames_with("1e20", "100000000000000000000.00000001")
    assert "not below 1E+14" in _refused(kind, frames).reason


@pytest.mark.parametrize("kind", KINDS)
def test_finding_02_a_size_of_1e_minus_999999999_is_malformed(kind) -> None:
    """It used to decode, then divide by zero in the summary (DivisionByZero)."""
    frames = _frames_with("100", "101", "1e-999999999", "1e-999999999")
    assert "more than 14 decimals" in _refused(kind, frames).reason


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "values, why",
    [
        (("100", "101", "1e-40", "1"), "bad size '1E-40': more than 14 decimals"),
        (("1e25", "2e25", "1", "1"), "bad price '1E+25': not below 1E+14"),
        (("100", "101.000000000000001", "1", "1"), "more than 14 decimals"),
        (("100", "101", "1", "100000000000000"), "not below 1E+14"),
    ],
    ids=["size 1e-40", "price 1e25", "15 decimals", "size 1e14"],
)
def test_finding_03_values_decimal_38_18_cannot_hold_are_malformed(
    kind, values, why
) -> None:
    """Parquet (decimal(38, 18)) refused a whole batch for one of these."""
    assert why in _refused(kind, _frames_with(*values)).reason


def test_values_of_the_domain_edges_still_decode() -> None:
    frames = _frames_with(
        "0.00000000000001", "99999999999999.99999999999999", "0E-40", "1E-14"
    )
    for protocol, frame in frames.values():
        events = FrameDecoder(protocol, "x").decode(frame)
        assert len(events) == 1


BAD_IDS = {
    "path": "../../..",
    "newline": "BTC-USD\nINFO forged log line",
    "ansi": "\x1b[2J\x1b[31mBTC-USD",
    "1 MB": "A" * 1_000_000,
    "lower case": "btc-usd",
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad_id", BAD_IDS.values(), ids=list(BAD_IDS))
def test_finding_11_a_product_id_not_of_coinbase_shape_is_malformed(
    kind, bad_id
) -> None:
    protocol, frame = _frames_with("100", "101")[kind]
    frame = frame.replace('"BTC-USD"', json.dumps(bad_id))
    with pytest.raises(MalformedFrame) as info:
        FrameDecoder(protocol, "x").decode(frame)
    message = str(info.value)
    # shown: escaped and cut, one short line
    assert "bad product id" in message and len(message) < 500
    assert "\n" not in message and "\x1b" not in message
    # an id of no product of ours: nothing of ours was lost, no resync
    assert info.value.resync is False


def test_finding_11_a_bad_id_beside_a_good_one_resyncs() -> None:
    """An Advanced Trade frame is dropped whole: the good event's book needs a resync."""
    good = at_update(0, "BTC-USD")["events"][0]
    bad = dict(good, product_id="../../..")
    frame = text(at_l2_data(0, [good, bad]))
    with pytest.raises(MalformedFrame) as info:
        FrameDecoder("advanced-trade", "x").decode(frame)
    assert info.value.resync is True


def test_finding_13_feed_text_in_a_reason_is_escaped_and_cut() -> None:
    """Every piece of a frame quoted in an error is shown(): no forged or 1 MB lines."""
    event = {"type": "\n" + "x" * 1_000_000, "product_id": "BTC-USD", "updates": []}
    with pytest.raises(MalformedFrame) as info:
        FrameDecoder("advanced-trade", "x").decode(text(at_l2_data(0, [event])))
    assert "\n" not in info.value.reason and len(info.value.reason) < 300
    side = text(exchange_l2update("BTC-USD", [("\x1b[31m" + "b" * 10_000, "1", "1")]))
    with pytest.raises(MalformedFrame) as info:
        FrameDecoder("exchange", "x").decode(side)
    assert "\x1b" not in info.value.reason and len(info.value.reason) < 300


def test_an_error_reply_naming_a_hostile_product_names_none() -> None:
    reply = text(exchange_error("Failed", "\x1b[2J../x is not a valid product"))
    with pytest.raises(UnknownProduct) as info:
        exchange().decode(reply)
    assert info.value.product_id is None and "\x1b" not in str(info.value)


@pytest.mark.parametrize(
    "size, ok",
    [
        ("0.20371215", True),  # the cheap test proves it
        ("0.00000100", True),  # the cheap test cannot tell; the exact one accepts
        ("12.34000000", True),
        ("99999999999999.99999999999999", True),
        ("0E-40", True),  # a zero, written any way
        ("1.5E-14", False),
        ("1." + "9" * 40 + "E-14", False),  # a plain % would round it into the domain
        ("0.000000000000001", False),
    ],
)
def test_update_sizes_are_checked_exactly_on_the_fast_loop(size, ok) -> None:
    frame = text(exchange_l2update("BTC-USD", [("buy", "100", size)]))
    if ok:
        [event] = exchange().decode(frame)
        assert event.changes[0][2] == D(size)
    else:
        with pytest.raises(MalformedFrame, match="more than 14 decimals"):
            exchange().decode(frame)


@pytest.mark.parametrize(
    "frame",
    [
        '{"product_id": "BTC-USD\\n2026-01-01 ERROR forged", "x": "\x1b[2J'
        + "A" * 5000,
        b'{"product_id": "\x1b[31m\n' + b"B" * 5000,
    ],
    ids=["text", "bytes"],
)
def test_a_malformed_frames_excerpt_is_escaped_and_cut(frame):
    message = str(MalformedFrame("bad", frame))
    assert "\n" not in message and "\x1b" not in message
    assert len(message) < 260 and message.endswith(("chars)", "bytes)"))
