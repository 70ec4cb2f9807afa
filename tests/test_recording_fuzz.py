"""Fuzz: random and mutated recording lines never make the reader or a replay raise.

Lines come from three generators: random bytes, byte-level mutations of real record
lines (Exchange and Advanced Trade), and structural mutations (a record's or a frame's
field replaced by arbitrary JSON). Each example is written as a recording and replayed by
driving the partitions directly (no Bytewax), every event also applied by the book step.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recording.format import parse_record, product_of_line
from recording.reader import Recording
from tests.support.recordings import (
    T0_NS,
    replay_by_hand,
    session_records,
    write_recording,
)

PRODUCTS = ["BTC-USD", "ETH-USD"]
EXCHANGE_LINES = [
    json.dumps(r, separators=(",", ":")).encode()
    for r in session_records(PRODUCTS, messages=12)
]


def _at_frame(seq: int, kind: str, side: str, price: str, size: str) -> str:
    return json.dumps(
        {
            "channel": "l2_data",
            "timestamp": "2026-01-01T00:00:00.000001Z",
            "sequence_num": seq,
            "events": [
                {
                    "type": kind,
                    "product_id": "BTC-USD",
                    "updates": [
                        {"side": side, "price_level": price, "new_quantity": size}
                    ],
                }
            ],
        }
    )


AT_LINES = [
    json.dumps(r, separators=(",", ":")).encode()
    for r in [
        {"t_ns": T0_NS, "product_id": "BTC-USD", "event": "connected"},
        {
            "t_ns": T0_NS,
            "product_id": "BTC-USD",
            "frame": _at_frame(0, "snapshot", "bid", "100.00", "1"),
        },
        {
            "t_ns": T0_NS,
            "product_id": "BTC-USD",
            "frame": _at_frame(1, "update", "offer", "101.00", "2"),
        },
        {
            "t_ns": T0_NS,
            "product_id": "BTC-USD",
            "frame": _at_frame(5, "update", "bid", "100.50", "3"),  # a gap
        },
    ]
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def byte_mutation(draw, lines: list[bytes]) -> bytes:
    line = bytearray(draw(st.sampled_from(lines)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, max(len(line) - 1, 0)))
        op = draw(st.sampled_from(["flip", "delete", "insert", "cut"]))
        if op == "flip" and line:
            line[pos] = draw(st.integers(0, 255))
        elif op == "delete" and line:
            del line[pos : pos + draw(st.integers(1, 8))]
        elif op == "insert":
            line[pos:pos] = draw(st.binary(max_size=8))
        elif op == "cut":
            del line[pos:]
    return bytes(line).replace(b"\n", b" ")


@st.composite
def field_mutation(draw, lines: list[bytes]) -> bytes:
    record = json.loads(draw(st.sampled_from(lines)))
    if "frame" in record and draw(st.booleans()):
        frame = json.loads(record["frame"])
        key = draw(st.sampled_from(sorted(frame) + ["extra"]))
        frame[key] = draw(json_values)
        record["frame"] = json.dumps(frame, allow_nan=True)
    else:
        key = draw(st.sampled_from(["t_ns", "product_id", "frame", "event", "x"]))
        record[key] = draw(json_values)
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    return json.dumps(record, separators=separators, allow_nan=True).encode()


def fuzzed_lines(lines: list[bytes]):
    one = st.one_of(
        st.sampled_from(lines),
        st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" ")),
        json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
        byte_mutation(lines),
        field_mutation(lines),
    )
    return st.lists(one, min_size=1, max_size=30)


FUZZ = settings(
    max_examples=40,  # each example writes and replays a file; the fast subset has 10 s
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_line_helpers_never_raise(line):
    product_of_line(line)
    record, why = parse_record(line)
    assert (record is None) == bool(why)


@FUZZ
@given(fuzzed_lines(EXCHANGE_LINES))
def test_exchange_replay_survives_any_lines(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_recording(Path(tmp) / "f.jsonl.gz", lines, PRODUCTS)
        list(Recording.open(path).records())
        replay_by_hand(path)


@FUZZ
@given(fuzzed_lines(AT_LINES))
def test_advanced_trade_replay_survives_any_lines(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_recording(
            Path(tmp) / "f.jsonl.gz", lines, PRODUCTS, protocol="advanced-trade"
        )
        list(Recording.open(path).records())
        replay_by_hand(path)


@FUZZ
@given(st.binary(min_size=1, max_size=400), st.integers(0, 400))
def test_damaged_compressed_data_never_raises(garbage, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_recording(Path(tmp) / "f.jsonl.gz", EXCHANGE_LINES, PRODUCTS)
        data = path.read_bytes()
        damaged = Path(tmp) / "d.jsonl.gz"
        keep = min(len(data), 60 + cut)
        damaged.write_bytes(data[:keep] + garbage)
        try:
            Recording.open(damaged)
        except ValueError:
            return  # refused at open, with a RecordingError: fine
        list(Recording.open(damaged).records())
        replay_by_hand(damaged)
