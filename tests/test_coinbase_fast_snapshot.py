"""The typed fast path for big snapshots agrees with the generic parser, frame for frame."""

from __future__ import annotations

import json

import pytest

import coinbase.fast_snapshot as snapshot_decode
from coinbase.decode import FrameDecoder
from coinbase.errors import MalformedFrame, SequenceGap

LEVELS = 3000  # enough for the frames to exceed snapshot_decode.MIN_FRAME_BYTES


def _levels(start: int, step: int) -> list[list[str]]:
    return [
        [f"{start + step * i}.{i % 100:02d}", f"0.{i + 1:08d}"] for i in range(LEVELS)
    ]


BIDS = _levels(60000, -1)
ASKS = _levels(60001, 1)


def exchange_frame(bids=BIDS, asks=ASKS) -> str:
    return json.dumps(
        {"type": "snapshot", "product_id": "BTC-USD", "asks": asks, "bids": bids}
    )


def at_frame(bids=BIDS, asks=ASKS, sequence=0) -> str:
    updates = [
        {
            "side": side,
            "event_time": "2026-08-09T21:05:48.170326Z",
            "price_level": p,
            "new_quantity": s,
        }
        for side, levels in (("bid", bids), ("offer", asks))
        for p, s in levels
    ]
    return json.dumps(
        {
            "channel": "l2_data",
            "client_id": "",
            "timestamp": "2026-08-09T21:05:48.483587501Z",
            "sequence_num": sequence,
            "events": [
                {"type": "snapshot", "product_id": "BTC-USD", "updates": updates}
            ],
        }
    )


def _decode_both(protocol: str, frame: str, monkeypatch):
    fast = FrameDecoder(protocol, "t").decode(frame)
    with monkeypatch.context() as m:
        m.setattr(snapshot_decode, "MIN_FRAME_BYTES", 10**12)  # generic path only
        generic = FrameDecoder(protocol, "t").decode(frame)
    return fast, generic


@pytest.mark.parametrize("make", [exchange_frame, at_frame])
def test_fast_and_generic_paths_give_the_same_snapshot(make, monkeypatch):
    frame = make()
    assert len(frame) > snapshot_decode.MIN_FRAME_BYTES
    protocol = "exchange" if make is exchange_frame else "advanced-trade"
    assert snapshot_decode.decode_exchange_snapshot(
        frame
    ) or snapshot_decode.decode_advanced_trade_snapshot(frame)
    fast, generic = _decode_both(protocol, frame, monkeypatch)
    assert fast == generic
    (snap,) = fast
    assert len(snap.bids) == len(snap.asks) == LEVELS


@pytest.mark.parametrize(
    "bad_level, why",
    [
        (["60000.00", "-1"], "bad size"),
        (["60000.00", "abc"], "not a decimal"),
        (["0", "1"], "bad price"),
        (["NaN", "1"], "NaN|not a decimal"),
        ([60000.0, "1"], "JSON strings"),
        # issue 17: the number domain (findings 1, 2, 3) on the typed fast path too
        (["1e20", "1"], "not below 1E"),
        (["60000.00", "1e-999999999"], "more than 14 decimals"),
        (["60000.00", "1e-40"], "more than 14 decimals"),
        (["1e25", "1"], "not below 1E"),
        (["60000.000000000000001", "1"], "more than 14 decimals"),
    ],
)
@pytest.mark.parametrize("make", [exchange_frame, at_frame])
def test_a_bad_level_falls_back_and_is_reported_precisely(make, bad_level, why):
    protocol = "exchange" if make is exchange_frame else "advanced-trade"
    frame = make(bids=[*BIDS[:-1], bad_level])
    assert snapshot_decode.decode_exchange_snapshot(frame) is None
    assert snapshot_decode.decode_advanced_trade_snapshot(frame) is None
    with pytest.raises(MalformedFrame, match=why):
        FrameDecoder(protocol, "t").decode(frame)


def test_the_fast_path_checks_advanced_trade_sequence_numbers():
    decoder = FrameDecoder("advanced-trade", "t")
    decoder.decode(at_frame(sequence=0))
    with pytest.raises(SequenceGap):
        decoder.decode(at_frame(sequence=5))


@pytest.mark.parametrize("make", [exchange_frame, at_frame])
@pytest.mark.parametrize("bad_id", ["../../..", "BTC-USD\nforged", "\x1b[2JBTC-USD"])
def test_finding_11_a_big_snapshot_of_a_bad_product_id_is_malformed(make, bad_id):
    protocol = "exchange" if make is exchange_frame else "advanced-trade"
    frame = make().replace('"BTC-USD"', json.dumps(bad_id))
    assert len(frame) > snapshot_decode.MIN_FRAME_BYTES
    assert snapshot_decode.decode_exchange_snapshot(frame) is None
    assert snapshot_decode.decode_advanced_trade_snapshot(frame) is None
    with pytest.raises(MalformedFrame, match="bad product id") as info:
        FrameDecoder(protocol, "t").decode(frame)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_the_fast_path_takes_the_domain_edges_like_the_generic_one(monkeypatch):
    """Values at the domain's edges (and zeros written any way) stay on the fast path."""
    edges = [["99999999999999.99999999999999", "0E-40"], ["1E-14", "1E+13"]]
    for make, protocol in ((exchange_frame, "exchange"), (at_frame, "advanced-trade")):
        frame = make(bids=[*BIDS[:-2], *edges])
        assert (
            snapshot_decode.decode_exchange_snapshot(frame)
            or snapshot_decode.decode_advanced_trade_snapshot(frame)
        ) is not None
        fast, generic = _decode_both(protocol, frame, monkeypatch)
        assert fast == generic
