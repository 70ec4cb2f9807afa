"""Version 2 recordings: blocks of one product, read per product, damage contained.

The checks read files with the standard library's gzip as the independent reader, and
damage real files byte by byte: a block another process does not want is proven unread
by damaging it and seeing no trace of the damage.
"""

from __future__ import annotations

import gzip
import json
import logging
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recording.writer as writer_module
from recording.format import (
    BLOCK_SIGNATURE,
    FIXED_HEADER,
    block_header_length,
    encode_block,
    parse_block_header,
)
from recording.reader import Recording
from recording.writer import RecordingWriter
from tests.support.recordings import (
    HEADER,
    PRODUCTS,
    replay,
    replay_by_hand,
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
        replay_by_hand(damaged)


# -- markers and blocks that lie (issue 17: findings 6, 11, 17) ----------------------------


def forged(block: bytes, size: int) -> bytes:
    """``block`` with its marker's length replaced by ``size``, its header CRC
    recomputed: a marker no reader can tell from a real one by its checksum."""
    length = block_header_length(block[:FIXED_HEADER])
    head = bytearray(block[: length - 2])
    struct.pack_into("<I", head, FIXED_HEADER + 4, size)  # after "OB" and its length
    crc = struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    return bytes(head) + crc + block[length:]


@pytest.mark.parametrize(
    "claimed",
    [0xFFFF_FF00, lambda rest: rest + 100],  # ~4 GB; a few bytes past the file's end
    ids=["4-gb", "past-the-end"],
)
def test_a_block_claiming_an_impossible_length_is_skipped_counted_and_reading_goes_on(
    blocked, tmp_path, capsys, claimed
):
    data = blocked.read_bytes()
    btc = [(at, n) for at, p, n in blocks_of(blocked) if p == b"BTC-USD"]
    (at, lost), (following, _) = btc[len(btc) // 2], btc[len(btc) // 2 + 1]
    end = next(x for x, _, _ in blocks_of(blocked) if x > at)
    size = claimed(len(data) - at) if callable(claimed) else claimed
    lying = tmp_path / "lying.jsonl.gz"
    lying.write_bytes(data[:at] + forged(data[at:end], size) + data[end:])
    assert parse_block_header(lying.read_bytes()[at : at + 300]).size == size

    reader, items = read_product(lying, "BTC-USD")
    _, clean = read_product(blocked, "BTC-USD")
    assert reader.ended_early is None
    assert reader.skipped == {"blocks with an impossible length": 1}
    # every other block is read: the lying block's records alone are missing
    assert [x for _, x in items] == [x for i, x in clean if not at_block(i, btc, at)]
    assert following < len(data) and items[-1][1] == clean[-1][1]
    replay(lying)
    report = report_of(capsys.readouterr().err, lying)
    assert "1 blocks with an impossible length" in report and "nothing skipped" not in (
        report
    ), report
    assert lost > 0


def at_block(index: int, blocks: list[tuple[int, int]], at: int) -> bool:
    """Whether a product's record ``index`` is in its block starting at byte ``at``."""
    first = 0
    for start, records in blocks:
        if start == at:
            return first <= index < first + records
        first += records
    return False


def test_a_block_of_a_malformed_product_id_is_skipped_and_counted(
    tmp_path, capsys, caplog
):
    path = tmp_path / "hostile.jsonl.gz"
    records = session_records(messages=40)
    write_blocks(path, records)
    hostile = "../../../\x1b[31mX\nY"
    line = orjson.dumps({"t_ns": 1, "product_id": hostile, "frame": "{}"}) + b"\n"
    with path.open("ab") as f:
        f.write(encode_block(hostile, line, 1))
    write_blocks_after = RecordingWriter(path, None, append=True)
    tail = session_records(messages=8)[-4:]
    for r in tail:
        write_blocks_after.frame(r["product_id"], r["frame"], r["t_ns"] + 1)
    write_blocks_after.close()

    reader, items = read_product(path, "BTC-USD")
    assert reader.skipped == {"blocks of a malformed product id": 1}
    assert len(items) == sum(r["product_id"] == "BTC-USD" for r in records + tail)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recording.reader"):
        replay(path)
    report = report_of(capsys.readouterr().err, path)
    assert "1 blocks of a malformed product id" in report, report
    warned = [
        r.getMessage() for r in caplog.records if "not a product id" in r.getMessage()
    ]
    assert len(warned) == 1  # by the replay's pass; the look before it logs nothing
    assert "\x1b" not in warned[0] and "\n" not in warned[0] and "\\x1b" in warned[0]


# The peak is read from VmHWM, the high-water mark of this process's own memory since its
# exec. ru_maxrss is no good here: Linux carries it across exec from the forked copy of the
# parent, so late in a full run it reported pytest's own ~280 MB.
BOMB_SCRIPT = """
import json, sys
from recording.reader import Recording
reader = Recording.open(sys.argv[1]).of_products({"BTC-USD": 0, "ETH-USD": 0})
items = {}
for product, first, chunk in reader:
    items[product.decode()] = items.get(product.decode(), 0) + len(chunk)
print(json.dumps({
    "items": items,
    "skipped": dict(reader.skipped),
    "ended_early": reader.ended_early,
    "max_rss_mb": next(
        int(line.split()[1]) / 1024
        for line in open("/proc/self/status")
        if line.startswith("VmHWM:")
    ),
}))
"""


def bomb_member(product: str, size: int, level: int = 9) -> bytes:
    """A marked block whose ``size`` bytes of zeros compress about 1000 to 1: built a
    MiB at a time, so the test itself never holds the inflated text."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    piece = bytes(2**20)
    body = b"".join(compressor.compress(piece) for _ in range(size // 2**20))
    body += compressor.flush()
    crc = 0
    for _ in range(size // 2**20):
        crc = zlib.crc32(piece, crc)
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    template = encode_block(product, b"x\n", 1)  # its marker, with the bomb's length
    length = block_header_length(template[:FIXED_HEADER])
    return forged(template[:length] + body + trailer, length + len(body) + 8)


def run_reader(path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_gzip_bomb_block_is_skipped_as_damaged_in_bounded_memory(tmp_path):
    path = tmp_path / "bomb.jsonl.gz"
    records = session_records(["BTC-USD", "ETH-USD"], messages=20)
    write_blocks(path, records, ["BTC-USD", "ETH-USD"])
    with path.open("ab") as f:
        f.write(bomb_member("BTC-USD", 300 * 2**20))  # 300 MiB of zeros, ~300 KB
    write_blocks_after = RecordingWriter(path, None, append=True)
    write_blocks_after.frame("ETH-USD", records[-1]["frame"], 5)
    write_blocks_after.close()
    assert path.stat().st_size < 400_000

    got = run_reader(path)
    assert got["skipped"] == {"records in damaged blocks": 1}, got
    assert got["ended_early"] is None
    expected = sum(r["product_id"] == "ETH-USD" for r in records) + 1
    assert got["items"]["ETH-USD"] == expected  # the block after the bomb is read
    # 650 MB before the bound; now the block's text is held up to 64 MiB at most
    assert got["max_rss_mb"] < 250, got


@pytest.mark.slow
def test_a_version_1_line_longer_than_the_bound_is_skipped_in_bounded_memory(tmp_path):
    path = tmp_path / "long-line.jsonl.gz"
    records = session_records(["BTC-USD", "ETH-USD"], messages=20)
    write_recording(path, [], ["BTC-USD", "ETH-USD"])
    with gzip.open(path, "wb") as f:
        f.write(
            json.dumps(
                {
                    **HEADER,
                    "format": "coinbase-l2-recording",
                    "version": 1,
                    "products": ["BTC-USD", "ETH-USD"],
                }
            ).encode()
            + b"\n"
        )
        f.write(json.dumps(records[0], separators=(",", ":")).encode() + b"\n")
        f.write(b'{"t_ns":1,"product_id":"BTC-USD","frame":"')
        piece = b"x" * 2**20
        for _ in range(300):  # a 300 MiB line
            f.write(piece)
        f.write(b'"}\n')
        for r in records[1:]:
            f.write(json.dumps(r, separators=(",", ":")).encode() + b"\n")

    got = run_reader(path)
    assert got["skipped"] == {"lines longer than 64 MiB": 1}, got
    assert sum(got["items"].values()) == len(records)  # every line but the long one
    assert got["max_rss_mb"] < 250, got


def test_the_writer_never_writes_a_block_longer_than_a_reader_accepts(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(writer_module, "MAX_BLOCK_TEXT", 4096)
    path = tmp_path / "bounded.jsonl.gz"
    writer = RecordingWriter(path, {**HEADER, "products": ["BTC-USD"]})
    for n in range(20):
        writer.frame("BTC-USD", "x" * 1500, n)
    writer.frame("BTC-USD", "y" * 5000, 99)  # alone longer than a block: not written
    writer.close()
    assert writer.too_large == 1 and writer.frames == 20
    data = path.read_bytes()
    blocks = blocks_of(path)
    assert len(blocks) > 1
    for at, _, records in blocks:
        size = parse_block_header(data[at : at + 300]).size
        text = zlib.decompress(data[at : at + size], 16 + zlib.MAX_WBITS)
        assert len(text) <= 4096 and text.count(b"\n") == records
    assert sum(r for _, _, r in blocks) == 20
