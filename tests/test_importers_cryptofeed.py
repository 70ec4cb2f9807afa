"""cryptofeed captures of Coinbase (2.x raw files, v3 .jsonl.zst) to recordings.

Fixtures are written from the local exchange's market (true books known): a 2.x capture
of one Exchange-feed connection rotated into three files, and a v3 capture of one
Advanced Trade connection carrying two products, some frames holding both. Converted and
replayed through the project's replay partitions, every product's top 25 levels equal the
truth; resets follow connections, sequence gaps and malformed frames.
"""

from __future__ import annotations

import json

import orjson

from importers.convert import convert
from importers.cryptofeed import DAMAGED, MALFORMED_FRAMES, CaptureReader
from importers.stream import SKIP_BEFORE_SNAPSHOT
from recording.reader import Recording
from tests.support.foreign_files import (
    assert_books_are_the_truth,
    capture_records,
    cryptofeed_raw_lines,
    market_session,
    replayed_books,
    top,
    write_cryptofeed_capture,
    write_cryptofeed_raw,
)

PRODUCTS = ("BTC-USD", "ETH-USD")


def _quality(result):
    return {p.product_id: p for p in result.report.products}


# -- 2.x raw ------------------------------------------------------------------------------


def test_a_rotated_2x_capture_replays_to_the_true_books_frames_kept_verbatim(tmp_path):
    session = market_session(PRODUCTS, batches=120)
    lines = cryptofeed_raw_lines(session)
    paths = write_cryptofeed_raw(tmp_path, session, lines=lines, files=3)
    # given out of order: the rotation number orders them, not the argument order
    sources = [str(p) for p in reversed(paths)]
    result = convert(sources, tmp_path / "out.gz", progress=False)
    assert result.protocol == "exchange"
    assert result.frames == 2 * 121
    assert result.report.ignored["ticker"] > 0
    assert result.report.ignored["heartbeat"] > 0
    assert result.report.ignored["http replies"] == 1
    assert_books_are_the_truth(tmp_path / "out.gz", session)
    recorded = {
        value["frame"]
        for _, value in Recording.open(tmp_path / "out.gz").records()
        if "frame" in value
    }
    received = {line.split(": ", 1)[1] for line in lines if line[:1].isdigit()}
    assert recorded <= received, "a frame was not kept byte for byte"


def test_a_connection_line_resets_the_books_of_its_connection(tmp_path):
    first = market_session(PRODUCTS, batches=40, seed=1)
    second = market_session(
        PRODUCTS, batches=40, seed=2, start_ns=first.events[-1][0] + 10**9
    )
    lines = cryptofeed_raw_lines(first)
    again = cryptofeed_raw_lines(second)
    stale_update = f"{again[1].split(' <-> ')[1]}: " + json.dumps(
        {
            "type": "l2update",
            "product_id": "BTC-USD",
            "changes": [["buy", "1.5", "9"]],
            "time": "2026-05-29T00:00:00Z",
        }
    )
    # the second connection: its connect line, an update before any snapshot, then
    # its own snapshots and updates (a new market: nothing of the first book remains)
    paths = write_cryptofeed_raw(
        tmp_path, first, lines=lines + again[1:2] + [stale_update] + again[2:], files=1
    )
    result = convert([str(paths[0])], tmp_path / "out.gz", progress=False)
    quality = _quality(result)
    for product in PRODUCTS:
        assert quality[product].resets == {"connection": 1}
    assert quality["BTC-USD"].skipped[SKIP_BEFORE_SNAPSHOT] == 1
    assert_books_are_the_truth(tmp_path / "out.gz", second)


def test_a_malformed_book_frame_resets_only_its_product(tmp_path):
    session = market_session(PRODUCTS, batches=30)
    lines = cryptofeed_raw_lines(session)
    t = lines[-1].split(": ", 1)[0]
    bad = json.dumps(
        {"type": "l2update", "product_id": "ETH-USD", "changes": [["buy", "abc", "1"]]}
    )
    paths = write_cryptofeed_raw(
        tmp_path, session, lines=[*lines, f"{t}: {bad}", "not a capture line"], files=1
    )
    result = convert([str(paths[0])], tmp_path / "out.gz", progress=False)
    quality = _quality(result)
    assert quality["ETH-USD"].resets == {"malformed": 1}
    assert quality["ETH-USD"].skipped[MALFORMED_FRAMES] == 1
    assert quality["BTC-USD"].resets == {}
    assert result.report.skipped == {DAMAGED: 1}
    books, _ = replayed_books(tmp_path / "out.gz")
    assert not books["ETH-USD"].live, (
        "a book after a malformed frame must not be served"
    )
    bids, asks = session.truth["BTC-USD"]
    assert top(books["BTC-USD"].bids, books["BTC-USD"].asks) == top(bids, asks)


# -- v3 .jsonl.zst (Advanced Trade) --------------------------------------------------------


def test_a_v3_capture_replays_to_the_true_books_split_and_renumbered(tmp_path):
    session = market_session(PRODUCTS, batches=120)
    records = capture_records(session)
    heartbeats = sum('"heartbeats"' in r.get("data", "") for r in records)
    shared = sum(r.get("data", "").count('"product_id"') == 2 for r in records)
    assert heartbeats and shared, "the fixture has heartbeats and two-product frames"
    source = write_cryptofeed_capture(tmp_path / "COINBASE.jsonl.zst", session)
    result = convert([str(source)], tmp_path / "out.gz", progress=False)
    assert result.protocol == "advanced-trade"
    assert Recording.open(tmp_path / "out.gz").protocol == "advanced-trade"
    assert result.report.ignored == {"heartbeats": heartbeats, "subscriptions": 1}
    _, counts = assert_books_are_the_truth(tmp_path / "out.gz", session)
    # the replay's own decoder checked every product's numbering: no gap anywhere
    for product in PRODUCTS:
        assert counts[product]["stats"]["frames"] == 121
    for _, value in Recording.open(tmp_path / "out.gz").records():
        if "frame" in value:
            frame = orjson.loads(value["frame"])
            assert {e["product_id"] for e in frame["events"]} == {value["product_id"]}


def test_binary_payloads_of_a_v3_capture_are_read(tmp_path):
    session = market_session(PRODUCTS, batches=40)
    source = write_cryptofeed_capture(tmp_path / "c.jsonl.zst", session, binary_every=3)
    convert([str(source)], tmp_path / "out.gz", progress=False)
    assert_books_are_the_truth(tmp_path / "out.gz", session)


def test_a_sequence_gap_resets_every_book_of_the_connection(tmp_path):
    session = market_session(PRODUCTS, batches=40)
    records = capture_records(session)
    del records[40]  # one message lost on the connection
    source = write_cryptofeed_capture(
        tmp_path / "c.jsonl.zst", session, records=records
    )
    result = convert([str(source)], tmp_path / "out.gz", progress=False)
    quality = _quality(result)
    for product in PRODUCTS:
        assert quality[product].resets == {"gap": 1}
        assert quality[product].skipped[SKIP_BEFORE_SNAPSHOT] > 0
    books, _ = replayed_books(tmp_path / "out.gz")
    assert not any(book.live for book in books.values()), (
        "after a gap and no new snapshot, no book may be served"
    )


def test_a_connect_record_resets_and_a_new_snapshot_restores(tmp_path):
    first = market_session(PRODUCTS, batches=30, seed=3)
    second = market_session(
        PRODUCTS, batches=30, seed=4, start_ns=first.events[-1][0] + 10**9
    )
    records = capture_records(first) + capture_records(second)
    source = write_cryptofeed_capture(tmp_path / "c.jsonl.zst", first, records=records)
    result = convert([str(source)], tmp_path / "out.gz", progress=False)
    for product in PRODUCTS:
        assert _quality(result)[product].resets == {"connection": 1}
    assert_books_are_the_truth(tmp_path / "out.gz", second)


def test_damaged_v3_records_are_skipped_and_counted(tmp_path):
    session = market_session(PRODUCTS, batches=30)
    source = write_cryptofeed_capture(tmp_path / "c.jsonl", session, compress=False)
    lines = source.read_text().splitlines()
    lines[5:5] = [
        "{not json",
        "[1, 2]",
        '{"t": "recv", "conn": "C", "ts": "x", "data": "{}"}',
    ]
    source.write_text("\n".join(lines) + "\n")
    reader = CaptureReader(source)
    items = list(reader)
    assert items
    assert reader.skipped == {(None, DAMAGED): 3}


def test_an_error_reply_first_does_not_decide_the_connections_protocol(tmp_path):
    session = market_session(PRODUCTS, batches=20)
    records = capture_records(session)
    error = {"type": "error", "message": "rate limit"}
    records.insert(
        2,
        {
            "conn": records[0]["conn"],
            "ts": records[2]["ts"],
            "t": "recv",
            "data": json.dumps(error),
        },
    )
    records[0] = {**records[0], "addr": "wss://elsewhere.example"}  # no hint
    source = write_cryptofeed_capture(
        tmp_path / "c.jsonl.zst", session, records=records
    )
    result = convert([str(source)], tmp_path / "out.gz", progress=False)
    assert result.report.ignored["error replies"] == 1
    assert_books_are_the_truth(tmp_path / "out.gz", session)


def test_a_capture_of_another_exchange_is_read_no_further(tmp_path):
    session = market_session(PRODUCTS, batches=5)
    source = write_cryptofeed_capture(tmp_path / "c.jsonl", session, compress=False)
    lines = source.read_text().splitlines()
    header = json.loads(lines[0])
    lines[0] = json.dumps({**header, "exchange": "BINANCE"})
    source.write_text("\n".join(lines) + "\n")
    reader = CaptureReader(source)
    assert list(reader) == []
    assert reader.skipped == {(None, "captures of another exchange than Coinbase"): 1}
