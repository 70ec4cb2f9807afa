"""The typed way (msgspec Structs of the wire schema) and the generic way (orjson dicts)
decode every frame alike: the same events, the same errors, the same decoder state.

A decoder decodes an update frame of a product it has seen through the typed way, and
falls back to the generic way for anything the typed way does not accept; so each case
primes two decoders (``typed=True`` and ``typed=False``) with the same valid frames, then
feeds both the frame under test and compares everything observable.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coinbase.decode as decode_module
from coinbase.decode import FrameDecoder
from coinbase.errors import MalformedFrame
from tests.support import frames

COMPARE = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class Bare:
    """A JSON token written bare by :func:`_text`: numbers ``json.dumps`` never writes
    (beyond a double, ``NaN``...), which the typed ways skip unread in a field they do
    not declare and ``orjson`` reads or refuses."""

    def __init__(self, token: str) -> None:
        self.token = token


BARE_TOKENS = [
    "1e400",
    "-1e400",
    "1E+400",
    "1" + "0" * 400,
    "-" + "9" * 30,
    str(2**64),
    "1e-400",
    "NaN",
    "Infinity",
    "-Infinity",
]
_BARE = re.compile(r'"\\u0000bare\\u0000([^"]*)"')


def _text(frame: object) -> str:
    """``json.dumps(frame)`` with each :class:`Bare` token written bare."""
    written = json.dumps(frame, default=lambda bare: f"\0bare\0{bare.token}")
    return _BARE.sub(lambda match: match[1], written)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "65000.01",
            "65000.0100",
            "-1",
            "0",
            "0E-40",
            "1e400",
            "1E+14",
            "99999999999999.99",
            "1.000000000000001",
            "NaN",
            "Infinity",
            "buy",
            "sell",
            "bid",
            "offer",
            "l2update",
            "update",
            "snapshot",
            "l2_data",
            "ETH-USD",
            "../x",
            "2026-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "",
        ]
    )
    | st.sampled_from(BARE_TOKENS).map(Bare),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)

UPDATES = {
    "exchange": frames.exchange_l2update(
        changes=[("buy", "99.50", "3"), ("sell", "100.25", "0.00000000")]
    ),
    "advanced-trade": frames.at_update(
        2, changes=[("bid", "99.50", "3"), ("offer", "100.25", "0")]
    ),
}


def _primed(protocol: str, typed: bool) -> FrameDecoder:
    """A decoder that has seen a snapshot and an update of BTC-USD (AT: seq 0 and 1)."""
    decoder = FrameDecoder(protocol, "test", typed=typed)
    if protocol == "exchange":
        first = [frames.exchange_snapshot(), frames.exchange_l2update()]
    else:
        first = [frames.at_snapshot(0), frames.at_update(1)]
    for frame in first:
        decoder.decode(json.dumps(frame), 1)
    return decoder


def _outcome(decoder: FrameDecoder, frame: str | bytes) -> tuple:
    try:
        result: tuple = ("events", decoder.decode(frame, 7))
    except Exception as exc:
        result = (
            "error",
            type(exc).__name__,
            str(exc),
            getattr(exc, "resync", None),
        )
    return (*result, decoder.next_sequence, decoder.bad_times)


def assert_alike(protocol: str, frame: str | bytes) -> tuple:
    typed = _outcome(_primed(protocol, True), frame)
    generic = _outcome(_primed(protocol, False), frame)
    assert typed == generic
    return typed


def _mutate(frame: object, path: list[int], value: object) -> object:
    """``frame`` with the element at ``path`` (keys/indices, as far as they go) replaced."""
    if not path or not isinstance(frame, (dict, list)) or not frame:
        return value
    if isinstance(frame, dict):
        key = sorted(frame)[path[0] % len(frame)]
        return {**frame, key: _mutate(frame[key], path[1:], value)}
    index = path[0] % len(frame)
    copy = list(frame)
    copy[index] = _mutate(frame[index], path[1:], value)
    return copy


@pytest.mark.parametrize("protocol", sorted(UPDATES))
def test_valid_updates_decode_alike(protocol):
    kind, events, *_ = assert_alike(protocol, json.dumps(UPDATES[protocol]))
    assert kind == "events"
    assert [len(e.changes) for e in events] == [2]


@COMPARE
@given(
    st.sampled_from(sorted(UPDATES)),
    st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=5),
    values,
)
def test_mutated_updates_decode_alike(protocol, path, value):
    assert_alike(protocol, _text(_mutate(UPDATES[protocol], path, value)))


def _insert(frame: object, which: int, key: str, value: object) -> object:
    """``frame`` with ``key: value`` in one of its objects (the ``which``-th in document
    order, modulo their number): an unknown key, or one the typed ways read."""
    objects, target = -1, -1

    def walk(node: object) -> object:
        nonlocal objects
        if isinstance(node, dict):
            objects += 1
            here = objects
            out = {k: walk(v) for k, v in node.items()}
            if here == target:
                out[key] = value
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    walk(frame)
    target = which % (objects + 1)
    objects = -1
    return walk(frame)


@COMPARE
@given(
    st.sampled_from(sorted(UPDATES)),
    st.integers(min_value=0, max_value=10),
    st.text(max_size=8)
    | st.sampled_from(["x", "client_id", "event_time", "time", "sequence_num"]),
    values,
)
def test_updates_with_another_field_decode_alike(protocol, which, key, value):
    """A field added anywhere (the envelope, an event, an update): one the typed ways
    skip unread, or one they read, holding anything, bare numbers beyond a double
    included."""
    assert_alike(protocol, _text(_insert(UPDATES[protocol], which, key, value)))


@COMPARE
@given(st.sampled_from(sorted(UPDATES)), st.text(max_size=120) | st.binary(max_size=80))
def test_arbitrary_text_decodes_alike(protocol, raw):
    assert_alike(protocol, raw)


@pytest.mark.parametrize(
    "protocol, frame, why",
    [
        ("exchange", '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"]],"changes":[]}', "duplicate key: last wins"),
        ("exchange", '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2","3"]]}', "a change of four"),
        ("exchange", '{"type":"l2update","product_id":"BTC-USD","changes":[["buy",1.5,"2"]]}', "a float price"),
        ("exchange", '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"]],"time":7}', "a number for the time"),
        ("exchange", '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"]],"x":"\\ud800"}', "a lone surrogate in an extra key"),
        ("exchange", b'{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"]],"x":"\xff"}', "bad UTF-8 in an extra key"),
        ("exchange", '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"]],"x":["\\ud800",1e400]}', "a lone surrogate beside a number beyond a double"),
        ("exchange", b'{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"]],"x":["\xff",1e400]}', "bad UTF-8 beside a number beyond a double"),
        ("exchange", '\ufeff{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"]],"x":1e400}', "a byte order mark and a number beyond a double"),
        ("exchange", b'\xef\xbb\xbf{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"]],"x":1e400}', "a UTF-8 byte order mark and a number beyond a double"),
        ("exchange", '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"]],"x":1e400} x', "a number beyond a double and trailing text"),
        ("exchange", '{"type":"l2update","product_id":"ETH-USD","changes":[["buy","1","2"]]}', "a product not seen yet"),
        ("exchange", '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","1","2"]]} x', "trailing text"),
        ("advanced-trade", json.dumps(frames.at_update(5)), "a sequence gap"),
        ("advanced-trade", json.dumps(frames.at_update(2, changes=[("bid", "1", "1E-15")])), "a gap-free frame with a bad size"),
        ("advanced-trade", json.dumps(frames.at_update(7, changes=[("bid", "NaN", "1")])), "a gap and a bad price"),
        ("advanced-trade", json.dumps({**frames.at_update(2), "timestamp": "0001-01-01T00:00:00Z"}), "a placeholder time"),
        ("advanced-trade", json.dumps({**frames.at_update(2), "sequence_num": 2.0}), "a float sequence number"),
        ("advanced-trade", json.dumps(frames.at_heartbeats(2)), "a heartbeat"),
    ],
)  # fmt: skip
def test_edge_frames_decode_alike(protocol, frame, why):
    assert_alike(protocol, frame)


def _at(sequence_num=2, *events, **fields):
    """An Advanced Trade frame of ``events`` (``(type, product, changes)``)."""
    frame = frames.at_l2_data(
        sequence_num,
        [
            {**frames.at_update(0, product, changes)["events"][0], "type": kind}
            for kind, product, changes in events
        ],
    )
    frame.update(fields)
    return {key: value for key, value in frame.items() if value is not ...}


GOOD = ("update", "BTC-USD", [("bid", "99.50", "3"), ("offer", "100.25", "0")])


@pytest.mark.parametrize(
    "frame, why",
    [
        (_at(2, GOOD, ("update", "BTC-USD", [("offer", "101", "0.00000000"), ("bid", "98", "1.5")])), "two update events"),
        (_at(2, GOOD, ("update", "BTC-USD", [("bid", "97", "1E-15")])), "a bad size in the second event (the first's prices cached)"),
        (_at(2, GOOD, ("update", "ETH-USD", [("bid", "97", "1")])), "a product not seen yet in the second event"),
        (_at(2, GOOD, ("update", "../x", [("bid", "97", "1")])), "a badly shaped product id in the second event"),
        (_at(2, GOOD, ("snapshot", "BTC-USD", [("bid", "97", "1")])), "an update then a snapshot"),
        (_at(2, ("snapshot", "BTC-USD", [("bid", "97", "1"), ("offer", "103", "2")])), "a small snapshot of a known product"),
        (_at(2, ("trade", "BTC-USD", [("bid", "97", "1")])), "another event type"),
        (_at(2, ("update", "BTC-USD", [("buy", "97", "1")])), "an Exchange side"),
        (_at(2, ("update", "BTC-USD", [("Bid", "97", "1")])), "a side in another case"),
        (_at(2, ("update", "BTC-USD", [("bid", "0", "1")])), "a zero price"),
        (_at(2, ("update", "BTC-USD", [("bid", "1E+14", "1")])), "a price at the limit"),
        (_at(2, ("update", "BTC-USD", [("bid", "1.000000000000001", "1")])), "a price of 15 decimals"),
        (_at(2, ("update", "BTC-USD", [("bid", "97", "-1")])), "a negative size"),
        (_at(2, ("update", "BTC-USD", [("bid", "97", "-0")])), "a negative zero size"),
        (_at(2, ("update", "BTC-USD", [("bid", "97", "0E+3")])), "a zero size with an exponent"),
        (_at(2, ("update", "BTC-USD", [("offer", "97", "abc")])), "a size that is no number"),
        (_at(2, ("update", "BTC-USD", [])), "an update of no changes"),
        (_at(2), "no events"),
        (_at(2, GOOD, channel="market_trades"), "book-shaped events on another channel"),
        (_at(2, GOOD, channel="l2_data "), "a channel with a trailing space"),
        (_at(2**70, GOOD), "a sequence number beyond 64 bits"),
        (_at(-1, GOOD), "a negative sequence number"),
        (_at(1, GOOD), "a repeated sequence number"),
        (_at(True, GOOD), "true for the sequence number"),
        (_at(2, GOOD, timestamp=...), "no timestamp"),
        (_at(2, GOOD, timestamp=None), "a null timestamp"),
        (_at(2, GOOD, timestamp=17), "a number for the timestamp"),
        (_at(2, GOOD, timestamp="2026-08-09T21:05:48.483587501"), "a naive timestamp"),
        (_at(2, GOOD, timestamp="2026-08-09T21:05:48.483587501Z"), "a timestamp in nanoseconds"),
        (_at(2, GOOD, client_id=7, extra={"a": [1, 2]}), "other and unknown keys"),
        (_at(2, GOOD, events={"type": "update"}), "events not a list"),
    ],
)  # fmt: skip
def test_advanced_trade_edge_frames_decode_alike(frame, why):
    """The typed Advanced Trade way reads the changes off msgspec's structs, declares
    the channel, the event types and the sides it takes, and checks the sequence
    inline: whatever it refuses, the generic way decodes the same."""
    assert_alike("advanced-trade", json.dumps(frame))


def test_an_update_of_a_known_product_takes_the_typed_way(monkeypatch):
    """The typed way builds no dict: with ``orjson.loads`` gone from the decoder, a
    known product's update still decodes (the generic way would fail)."""
    for protocol in sorted(UPDATES):
        decoder = _primed(protocol, True)

        def no_generic(frame):
            raise AssertionError("the generic way was taken")

        monkeypatch.setattr(decode_module, "loads", no_generic)
        (event,) = decoder.decode(json.dumps(UPDATES[protocol]), 3)
        assert [(str(s), str(p), str(q)) for s, p, q in event.changes] == [
            ("bid", "99.50", "3"),
            ("ask", "100.25", "0E-8" if protocol == "exchange" else "0"),
        ]
        assert event.received_ns == 3
        monkeypatch.undo()


OFFSETS = st.sampled_from(
    [
        None,
        UTC,
        timezone(timedelta(hours=5, minutes=30)),
        timezone(-timedelta(hours=23, minutes=59)),
    ]
)
ISO_TIMES = st.builds(
    lambda moment, zone, digits, sep, zulu: (
        moment.replace(tzinfo=zone).isoformat(sep=sep)
        + ("." + digits if digits and not moment.microsecond else digits[:0])
    ).replace("+00:00", "Z" if zulu else "+00:00"),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    OFFSETS,
    st.text("0123456789", max_size=12),
    st.sampled_from(["T", " ", "t"]),
    st.booleans(),
)


@COMPARE
@given(
    ISO_TIMES
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "2009-12-31T23:59:59.999999999Z",
            "2010-01-01T00:00:00Z",
            "2010-01-01T00:30:00+01:00",
            "2026-08-09T21:05:01.483587501Z",
            "2026-W32-7T21:05:01Z",
            "20260809T210501Z",
        ]
    )
)
def test_advanced_trade_timestamps_decode_alike(stamp):
    """The typed Advanced Trade way parses the envelope's timestamp inline; it gives
    what parse_time gives (the generic way), bad_times alike, on any text."""
    assert_alike("advanced-trade", json.dumps(_at(2, GOOD, timestamp=stamp)))


@pytest.mark.parametrize("sequence", [2**63, 2**64 - 1, 2**64, 2**70, -(2**63) - 1])
def test_a_sequence_number_beyond_int64_goes_the_generic_way(sequence):
    """orjson reads an integer of 2**64 or more as a float, which the generic way
    refuses as a sequence number (and moves nothing), where msgspec would give the
    int: the typed ways (an update, and a snapshot big enough for the fast snapshot
    decoder) leave any number beyond int64 to the generic way. Before, both said
    SequenceGap and moved ``next_sequence`` past it."""
    assert_alike("advanced-trade", json.dumps(_at(sequence, GOOD)))
    bids, asks = frames.ladder(mid=50_000, levels=400)
    snapshot = json.dumps(frames.at_snapshot(sequence, bids=bids, asks=asks))
    assert len(snapshot) >= decode_module.fast_snapshot.MIN_FRAME_BYTES
    decoder = FrameDecoder("advanced-trade", "test")
    outcome = _outcome(decoder, snapshot)
    if sequence < 2**64 and sequence >= 0:  # an int for orjson too: a gap from 0
        assert outcome[:2] == ("error", "SequenceGap")
        assert decoder.next_sequence == sequence + 1
    else:
        assert outcome[:2] == ("error", "MalformedFrame")
        assert outcome[2].startswith("missing or non-integer 'sequence_num'")
        assert outcome[3] is True
        assert decoder.next_sequence == 0


def test_an_advanced_trade_update_builds_no_triple_per_change(monkeypatch):
    """The typed Advanced Trade way reads each change's fields off msgspec's struct:
    no ``(side, price, size)`` triple is built for a well-formed frame (before, one
    tuple and a list per frame went through ``at_triple``); a frame with a change to
    refuse still gets them, for the generic loop that says what is wrong."""
    decoder = _primed("advanced-trade", True)

    def no_triples(update):
        raise AssertionError("a triple was built")

    monkeypatch.setattr(decode_module, "at_triple", no_triples)
    (event,) = decoder.decode(json.dumps(UPDATES["advanced-trade"]), 3)
    assert [(s, str(p), str(q)) for s, p, q in event.changes] == [
        ("bid", "99.50", "3"),
        ("ask", "100.25", "0"),
    ]
    with pytest.raises(AssertionError, match="a triple was built"):
        decoder.decode(json.dumps(_at(3, ("update", "BTC-USD", [("bid", "0", "1")]))))


def test_advanced_trade_structs_are_left_out_of_the_cyclic_gc():
    """What msgspec builds of an Advanced Trade frame (envelope, events, updates) is
    read once and dropped and cannot form a cycle: none of it is tracked by the GC, so
    a frame brings the next collection (over a 46,000-level book) less near."""
    import gc

    from coinbase.fast_snapshot import decode_advanced_trade

    msg = decode_advanced_trade(json.dumps(UPDATES["advanced-trade"]))
    (event,) = msg.events
    assert not gc.is_tracked(msg)
    assert not gc.is_tracked(event)
    assert not any(gc.is_tracked(update) for update in event.updates)


def test_zero_sizes_of_any_form_decode_alike_and_few_are_remembered():
    """A removal's size is remembered by its text (no parse the next time), a bounded
    number of forms: a feed writing zero as "0E-1", "0E-2"... cannot grow the decoder."""
    typed, generic = _primed("exchange", True), _primed("exchange", False)
    for exponent in range(100):
        zero = "0" if exponent == 0 else f"0E-{exponent}"
        frame = json.dumps(frames.exchange_l2update(changes=[("sell", "101", zero)]))
        for _ in range(2):  # the second time from the remembered forms
            assert _outcome(typed, frame) == _outcome(generic, frame)
    assert 0 < len(typed._zeros) <= decode_module._ZERO_FORMS


def test_a_decoder_dies_with_its_last_reference():
    """No reference cycle: a decoder dropped gives back its share of the process's
    price cache budget at once, not at the next cyclic collection."""
    import gc

    gc.disable()
    try:
        before = decode_module._live_decoders
        decoders = [FrameDecoder(p, "t", typed=True) for p in UPDATES for _ in range(5)]
        assert decode_module._live_decoders == before + 10
        del decoders
        assert decode_module._live_decoders == before
    finally:
        gc.enable()


def _with(frame: dict, token: str, *path: str | int, key: str = "x") -> str:
    """``frame`` as JSON text with ``key: token`` (a bare JSON token) in the object at
    ``path``."""
    node = frame = json.loads(json.dumps(frame))
    for step in path:
        node = node[step]
    node[key] = Bare(token)
    return _text(frame)


BEYOND_DOUBLE = ["1e400", "-1e400", "1" + "0" * 400, "-" + "9" * 5000]
"""Numbers ``orjson`` refuses a document for (5,000 digits: past Python's default limit
of 4,300 for ``int()`` of a text too)."""
BEYOND_IDS = ["1e400", "-1e400", "400 digits", "-5000 digits"]
AT_UPDATE = UPDATES["advanced-trade"]
EX_UPDATE = UPDATES["exchange"]


@pytest.mark.parametrize("token", BEYOND_DOUBLE, ids=BEYOND_IDS)
@pytest.mark.parametrize(
    "protocol, frame, where",
    [
        ("exchange", lambda t: _with(EX_UPDATE, t), "an unknown key"),
        ("exchange", lambda t: _with(EX_UPDATE, f"[[{t}], [1, {t}]]"), "nested in an unknown key"),
        ("exchange", lambda t: _with(EX_UPDATE, t).encode(), "an unknown key of a bytes frame"),
        ("advanced-trade", lambda t: _with(AT_UPDATE, t), "an unknown key of the envelope"),
        ("advanced-trade", lambda t: _with(AT_UPDATE, t, key="client_id"), "client_id (not read)"),
        ("advanced-trade", lambda t: _with(AT_UPDATE, t, "events", 0), "an unknown key of an event"),
        ("advanced-trade", lambda t: _with(AT_UPDATE, t, "events", 0, "updates", 1, key="event_time"), "an update's event_time (not read)"),
    ],
)  # fmt: skip
def test_a_number_beyond_a_double_in_a_field_never_read_loses_nothing(
    protocol, frame, where, token
):
    """The typed ways skip a field they do not read without converting it; ``orjson``
    refused the whole document, so the generic way lost the frame (a resync) where the
    typed way applied it. Now both apply it."""
    kind, events, *_ = assert_alike(protocol, frame(token))
    assert kind == "events"
    assert [[(s, str(p)) for s, p, _ in e.changes] for e in events] == [
        [("bid", "99.50"), ("ask", "100.25")]
    ]


@pytest.mark.parametrize("protocol", sorted(UPDATES))
@pytest.mark.parametrize("levels", [3, 1_500])
def test_a_snapshot_with_a_number_beyond_a_double_in_an_unknown_key_decodes_at_any_size(
    protocol, levels
):
    """A small snapshot goes the generic way, a big one (64 KiB or more) the typed
    snapshot decoder, which skips the unknown key: both give the book (before, the
    small one was invalid JSON, the big one a book)."""
    bids, asks = frames.ladder(mid=50_000, levels=levels)
    if protocol == "exchange":
        snapshot = frames.exchange_snapshot(bids=bids, asks=asks)
    else:
        snapshot = frames.at_snapshot(0, bids=bids, asks=asks)
    text = _with(snapshot, "1e400")
    assert (len(text) >= decode_module.fast_snapshot.MIN_FRAME_BYTES) == (levels > 3)
    for typed in (True, False):
        (book,) = FrameDecoder(protocol, "test", typed=typed).decode(text)
        assert (len(book.bids), len(book.asks)) == (levels, levels)


def test_a_heartbeat_with_a_number_beyond_a_double_is_no_malformed_frame():
    """A frame with no book data loses nothing either: before, it was invalid JSON and
    (unreadable, so possibly book data) asked for a resync."""
    heartbeat = _with(frames.exchange_heartbeat(), "1e400")
    assert FrameDecoder("exchange", "test").decode(heartbeat) == []
    heartbeats = _with(frames.at_heartbeats(0), "1" + "0" * 400)
    assert FrameDecoder("advanced-trade", "test").decode(heartbeats) == []


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("protocol", sorted(UPDATES))
def test_nan_and_infinity_tokens_are_invalid_json_both_ways(protocol, token):
    """``NaN``/``Infinity`` are no JSON (RFC 8259): ``orjson`` refuses them, and so
    does msgspec even in a field it skips; the generic way's second reading
    (``json.loads``, which takes them) must not: both ways refuse the frame, wherever
    the token is, a big snapshot included."""
    typed_ = assert_alike(protocol, _with(UPDATES[protocol], token))
    assert typed_[:2] == ("error", "MalformedFrame")
    assert typed_[2].startswith("invalid JSON (")
    assert typed_[3] is True
    _assert_big_snapshot_refused(protocol, token)


def _replaced(frame: dict, token: str, *path: str | int) -> str:
    *parents, last = path
    return _with(frame, token, *parents, key=last)


@pytest.mark.parametrize("token", BEYOND_DOUBLE[::2], ids=BEYOND_IDS[::2])
@pytest.mark.parametrize(
    "protocol, frame, outcome",
    [
        ("exchange", lambda t: _replaced(EX_UPDATE, t, "changes", 0, 1), "l2update of BTC-USD: bad change (price and size must be JSON strings, got float and str)"),
        ("exchange", lambda t: _replaced(EX_UPDATE, t, "changes", 1, 2), "l2update of BTC-USD: bad change (price and size must be JSON strings, got str and float)"),
        ("exchange", lambda t: _replaced(EX_UPDATE, t, "type"), "missing 'type'"),
        ("exchange", lambda t: _replaced(EX_UPDATE, t, "product_id"), "missing or non-string 'product_id'"),
        ("advanced-trade", lambda t: _replaced(AT_UPDATE, t, "events", 0, "updates", 0, "price_level"), "l2_data of BTC-USD: bad update (price and size must be JSON strings, got float and str)"),
        ("advanced-trade", lambda t: _replaced(AT_UPDATE, t, "events", 0, "updates", 1, "new_quantity"), "l2_data of BTC-USD: bad update (price and size must be JSON strings, got str and float)"),
        ("advanced-trade", lambda t: _replaced(AT_UPDATE, t, "sequence_num"), "missing or non-integer 'sequence_num'"),
        ("advanced-trade", lambda t: _replaced(AT_UPDATE, t, "channel"), "missing 'channel'"),
        ("exchange", lambda t: _replaced(EX_UPDATE, t, "time"), None),
        ("advanced-trade", lambda t: _replaced(AT_UPDATE, t, "timestamp"), None),
    ],
)  # fmt: skip
def test_a_number_beyond_a_double_in_a_field_read_is_refused_for_what_it_is(
    protocol, frame, outcome, token
):
    """In a field the decoder reads, such a number is a float like any other there
    (``inf``; an integer beyond 64 bits is a float for ``orjson`` too): both ways refuse
    the frame with that reason, one line, where before it was "invalid JSON". A time
    that is no text keeps the data with ``time=None`` (a bad time alone loses nothing)."""
    result = assert_alike(protocol, frame(token))
    if outcome is None:
        kind, (event,), _, bad_times = result
        assert (kind, event.time, len(event.changes), bad_times) == (
            "events",
            None,
            2,
            1,
        )
        return
    kind, name, message, _, next_sequence, _ = result
    assert (kind, name) == ("error", "MalformedFrame")
    assert message.partition("; frame: ")[0] == outcome
    assert "\n" not in message
    if "sequence_num" in outcome:
        assert next_sequence == 2  # not moved past a refused number


@pytest.mark.parametrize("protocol", sorted(UPDATES))
@pytest.mark.parametrize("depth", [2_000, 20_000])
def test_a_field_nested_past_the_recursion_limit_raises_nothing_out_of_decode(
    protocol, depth
):
    """msgspec skips a nested field recursively: nested past the interpreter's
    recursion limit, it raised ``RecursionError`` out of ``decode`` (and out of the
    dataflow) from the typed update way and the big-snapshot decoder. Now they leave
    it to the generic way, which says the JSON is invalid (``orjson`` stops at a depth
    of 1,024), with or without a number beyond a double beside it."""
    nested = "[" * depth + "]" * depth
    for token in (nested, f"[{nested}, 1e400]"):
        result = assert_alike(protocol, _with(UPDATES[protocol], token))
        assert result[:2] == ("error", "MalformedFrame")
        assert result[2].startswith("invalid JSON (")
    _assert_big_snapshot_refused(protocol, nested)


def _assert_big_snapshot_refused(protocol: str, token: str) -> None:
    """A snapshot big enough for the typed snapshot decoder, ``token`` added to it, is
    refused as invalid JSON."""
    bids, asks = frames.ladder(mid=50_000, levels=400)
    if protocol == "exchange":
        big = _with(frames.exchange_snapshot(bids=bids, asks=asks), token)
    else:
        big = _with(frames.at_snapshot(0, bids=bids, asks=asks), token)
    with pytest.raises(MalformedFrame, match=r"^invalid JSON \("):
        FrameDecoder(protocol, "test").decode(big)


@pytest.mark.parametrize("sequence", [2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30])
def test_the_second_reading_takes_integers_as_orjson_does(sequence):
    """The generic way's second reading (``json.loads``) makes a float of an integer
    beyond 64 bits, as ``orjson`` does: a sequence number gets the same verdict with or
    without a number beyond a double elsewhere in the frame (a gap up to 2**64 - 1, a
    non-integer beyond)."""
    plain = json.dumps(_at(sequence, GOOD))
    beside = _with(_at(sequence, GOOD), "1e400", "events", 0, "updates", 0)
    verdicts = [
        [
            str(part).partition("; frame: ")[0]
            for part in assert_alike("advanced-trade", f)
        ]
        for f in (plain, beside)
    ]
    assert verdicts[0] == verdicts[1]
    assert verdicts[0][1] == (
        "SequenceGap" if 0 <= sequence < 2**64 else "MalformedFrame"
    )
