"""Fuzz: random and mutated frames never make a decoder raise anything undocumented.

The decoders' contract is that a frame either decodes to events or raises one of the
documented feed exceptions, which the session turns into a skip, a resync or a permanent
stop. Anything else (``AttributeError``, ``KeyError``, ``TypeError``...) would escape into
Bytewax and kill the whole dataflow. Hypothesis feeds arbitrary text, arbitrary JSON, and
valid frames of both protocols with one field replaced by arbitrary JSON.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coinbase.decode import FrameDecoder
from coinbase.errors import CoinbaseError, FeedError
from events import BookChanges, BookReset, BookSnapshot
from tests.support import frames

DOCUMENTED = CoinbaseError
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["65000.01", "-1", "1e400", "NaN", "buy", "offer", "0", ""]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

VALID = {
    "exchange": [
        frames.exchange_snapshot(),
        frames.exchange_l2update(),
        frames.exchange_heartbeat(),
        frames.exchange_subscriptions(),
        frames.exchange_error("Failed to subscribe", "BTC-XYZ is not a valid product"),
    ],
    "advanced-trade": [
        frames.at_snapshot(0),
        frames.at_update(1),
        frames.at_heartbeats(2),
        frames.at_subscriptions(3),
    ],
}


def _decode(protocol: str, frame: str | bytes) -> None:
    decoder = FrameDecoder(protocol, "fuzz")
    try:
        events = decoder.decode(frame, 1)
    except DOCUMENTED:
        return
    for event in events:
        assert isinstance(event, (BookSnapshot, BookChanges, BookReset))


def _mutate(frame: object, path: list, value: object) -> object:
    """``frame`` with the element at ``path`` (keys/indices, as far as they go) replaced."""
    if not path or not isinstance(frame, (dict, list)) or not frame:
        return value
    key = path[0]
    if isinstance(frame, dict):
        keys = sorted(frame)
        chosen = keys[key % len(keys)] if isinstance(key, int) else key
        copy = dict(frame)
        copy[chosen] = _mutate(frame.get(chosen), path[1:], value)
        return copy
    index = key % len(frame) if isinstance(key, int) else 0
    copy = list(frame)
    copy[index] = _mutate(frame[index], path[1:], value)
    return copy


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_never_escapes(protocol, raw):
    _decode(protocol, raw)


@FUZZ
@given(st.sampled_from(sorted(VALID)), json_values)
def test_arbitrary_json_never_escapes(protocol, value):
    _decode(protocol, json.dumps(value))


@FUZZ
@given(
    st.sampled_from([(p, i) for p, fs in VALID.items() for i in range(len(fs))]),
    st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=5),
    json_values,
)
def test_mutated_valid_frames_never_escape(which, path, value):
    protocol, index = which
    mutated = _mutate(VALID[protocol][index], path, value)
    _decode(protocol, json.dumps(mutated))


def test_the_unmutated_frames_decode():
    """The fuzz starts from frames the decoder accepts, so mutations probe real paths."""
    for protocol, valid in VALID.items():
        decoder = FrameDecoder(protocol, "fuzz")
        for frame in valid:
            try:
                decoder.decode(json.dumps(frame), 1)
            except FeedError:
                assert frame.get("type") == "error"
