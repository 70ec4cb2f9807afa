"""Version 2 recordings: blocks of one product, read per product, damage contained.

The checks read files with the standard library's gzip as the independent reader, and
damage real files byte by byte: a block another process does not want is proven unread
by damaging it and seeing no trace of the damage.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recording.writer as writer_module
from recording.format import BLOCK_SIGNATURE, parse_block_header
from recording.reader import Recording
from recording.writer import RecordingWriter
from tests.test_recording_fuzz import _replay_by_hand
from tests.test_recording_replay import (
    HEADER,
    PRODUCTS,
    replay,
    report_of,
    session_records,
    write_blocks,
    write_recording,
)


def blocks_of(path: Path) -> list[tuple[int, bytes, int]]:
    """``(offset, product, records)`` of every block in the file, by their markers."""
    data = path.read_bytes()
    found = []
    for match in BLOCK_SIGNATURE.finditer(data):
        marker = parse_block_header(data[match.start() : match.start() + 300])
        if marker is not None:
            found.append((match.start(), marker.product, marker.records))
    return found


def read_product(path: Path, product: str, start: int = 0):
    reader = Recording.open(path).of_products({product: start})
    items = [(i, x) for _, first, xs in reader for i, x in enumerate(xs, first)]
    return reader, items


@pytest.fixture(scope="module")
def blocked(tmp_path_factory) -> Path:
    # 8 KiB blocks: a few dozen blocks from 400 updates
    path = tmp_path_factory.mktemp("blocks") / "v2.jsonl.gz"
    return write_blocks(path, session_records(), BLOCK_BYTES=8192)


def test_any_gzip_reader_reads_a_version_2_recording_whole(blocked):
    with gzip.open(blocked, "rb") as f:
        header, *lines = f.read().splitlines()
    assert json.loads(header)["version"] == 2
    records = [json.loads(x) for x in lines]
    written = session_records()
    for product in PRODUCTS:  # each product's records in the order written
        assert [r for r in records if r["product_id"] == product] == [
            r for r in written if r["product_id"] == product
        ]
    assert len(records) == len(written)
    # and every record sits in a block marked with its product
    assert {p.decode() for _, p, _ in blocks_of(blocked)} == set(PRODUCTS)
    assert sum(n for _, _, n in blocks_of(blocked)) == len(written)


def test_a_reader_of_one_product_never_decompresses_the_others(blocked, tmp_path):
    data = bytearray(blocked.read_bytes())
    others = [(at, p) for at, p, _ in blocks_of(blocked) if p != b"ETH-EUR"]
    assert len(others) >= 6
    for at, _ in others:  # ruin the compressed body of every other product's block
        for i in range(at + 60, at + 90):
            data[i] ^= 0xFF
    ruined = tmp_path / "ruined.jsonl.gz"
    ruined.write_bytes(bytes(data))
    reader, items = read_product(ruined, "ETH-EUR")
    assert reader.skipped == {} and reader.ended_early is None
    assert reader.blocks_skipped == len(others)
    _, clean_items = read_product(blocked, "ETH-EUR")
    assert items == clean_items
    assert [orjson.loads(x) for _, x in items] == [
        r for r in session_records() if r["product_id"] == "ETH-EUR"
    ]
    assert [i for i, _ in items] == list(range(len(items)))


def test_a_version_2_recording_replays_as_its_version_1_twin(blocked, tmp_path):
    v1 = write_recording(tmp_path / "v1.jsonl.gz", session_records())
    assert replay(blocked) == replay(v1)


def test_a_damaged_block_is_skipped_counted_and_reading_goes_on(
    blocked, tmp_path, capsys
):
    data = bytearray(blocked.read_bytes())
    btc = [(at, n) for at, p, n in blocks_of(blocked) if p == b"BTC-USD"]
    at, lost = btc[len(btc) // 2]
    for i in range(at + 60, at + 70):
        data[i] ^= 0xFF
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(bytes(data))
    reader, items = read_product(damaged, "BTC-USD")
    _, clean = read_product(blocked, "BTC-USD")
    assert reader.skipped == {"records in damaged blocks": lost}
    assert len(items) == len(clean) - lost
    assert set(items) < set(clean)  # the same records, with the same indexes
    assert items[-1] == clean[-1]  # blocks after the damage were read
    got = replay(damaged)
    report = report_of(capsys.readouterr().err, damaged)
    assert f"{lost} records in damaged blocks" in report, report
    full = replay(blocked)
    for product in ("ETH-USD", "BTC-EUR", "ETH-EUR"):
        assert got[product] == full[product]


def test_a_block_with_a_damaged_marker_is_passed_and_the_next_one_found(
    blocked, tmp_path
):
    data = bytearray(blocked.read_bytes())
    eth = [at for at, p, _ in blocks_of(blocked) if p == b"ETH-USD"]
    data[eth[1] + 14] ^= 0xFF  # inside the marker: its header CRC no longer matches
    damaged = tmp_path / "marker.jsonl.gz"
    damaged.write_bytes(bytes(data))
    reader, items = read_product(damaged, "ETH-USD")
    _, clean = read_product(blocked, "ETH-USD")
    assert reader.skipped == {"damaged stretches of the file": 1}
    # the block's records are lost, those after it read (a lost block's records are
    # not counted: later indexes shift, alike in every read of the same file)
    assert items[0] == clean[0] and items[-1][1] == clean[-1][1]
    assert len(items) < len(clean)


def test_a_cut_off_version_2_recording_gives_every_whole_record_before_the_cut(
    blocked, tmp_path
):
    data = blocked.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    for product in PRODUCTS:
        reader, items = read_product(cut, product)
        _, clean = read_product(blocked, product)
        assert items == clean[: len(items)] and items, product
        if reader.ended_early is not None:
            assert "ends inside a block" in reader.ended_early


def test_a_resumed_reader_skips_blocks_before_its_start_unread(blocked):
    _, clean = read_product(blocked, "BTC-EUR")
    start = len(clean) * 3 // 4
    reader, items = read_product(blocked, "BTC-EUR", start)
    assert reader.blocks_skipped > len(PRODUCTS) - 1  # the others', and early ones
    assert items == clean[len(clean) - len(items) :]
    assert items[0][0] <= start  # from a block holding the start, by its index


def test_records_reach_the_file_within_the_flush_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module.RecordingWriter, "FLUSH_SECONDS", 0.0)
    path = tmp_path / "live.jsonl.gz"
    writer = RecordingWriter(path, {**HEADER, "products": PRODUCTS})
    writer.connected("BTC-USD", 1)
    writer.frame("BTC-USD", '{"type":"heartbeat"}', 2)
    # still open, as when the recorder is killed: both records are on disk
    got = [r for _, r in Recording.open(path).records()]
    assert [r.get("event") or r.get("frame") for r in got] == [
        "connected",
        '{"type":"heartbeat"}',
    ]
    writer.close()


def test_appending_to_a_version_1_recording_adds_blocks_read_with_the_rest(tmp_path):
    records = session_records(messages=40)
    path = write_recording(tmp_path / "old.jsonl.gz", records[:30])
    writer = RecordingWriter(path, None, append=True)
    for r in records[30:]:
        writer.frame(r["product_id"], r["frame"], r["t_ns"])
    writer.close()
    for product in PRODUCTS:
        _, items = read_product(path, product)
        assert [orjson.loads(x) if isinstance(x, bytes) else x for _, x in items] == [
            r for r in records if r["product_id"] == product
        ]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6
    )
)
def test_damage_anywhere_in_a_version_2_recording_never_raises(blocked, flips):
    data = bytearray(blocked.read_bytes())
    first_block = blocks_of(blocked)[0][0]  # the header's member stays readable
    for at, mask in flips:
        data[first_block + at % (len(data) - first_block)] ^= mask
    with tempfile.TemporaryDirectory() as tmp:
        damaged = Path(tmp) / "d.jsonl.gz"
        damaged.write_bytes(bytes(data))
        list(Recording.open(damaged).records())
        for product in PRODUCTS:
            read_product(damaged, product)
        _replay_by_hand(damaged)
