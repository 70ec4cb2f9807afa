"""``tardis:DIR`` (service/outputs/tardis.py): a replay of a recording made by this
project, written out as tardis.dev book_snapshot files, reads back as the run's depth
records; refused at start when depth records are off; rows readable at once."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from bytewax.testing import run_main

from dataflow import get_flow
from importers.tardis_snapshots import read_book_snapshots
from orderbook import OrderBook
from records import OrderBookDepth
from service.outputs import build_sink
from service.runtime import Shutdown
from service.settings import ConfigError, Settings
from tests.support.flow import read_jsonl

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "sample.jsonl.gz"


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "ORDERBOOK_REPLAY": str(SAMPLE),
        "ORDERBOOK_SPREAD_THRESHOLD": "0",
        "ORDERBOOK_OUTPUT": f"jsonl:{tmp_path / 'records.jsonl'},tardis:{tmp_path / 't'}",
        "ORDERBOOK_DEPTH_LEVELS": "5",
        "ORDERBOOK_DEPTH_INTERVAL": "1",
        **more,
    }


def test_a_recording_written_through_tardis_reads_back_as_its_depth_records(tmp_path):
    run_main(get_flow(Settings.from_env(_env(tmp_path))))
    depth = [r for r in read_jsonl(tmp_path / "records.jsonl") if r["type"] == "depth"]
    assert len(depth) > 100
    files = sorted((tmp_path / "t").iterdir())
    products = sorted({r["product_id"] for r in depth})
    days = sorted({r["time"][:10] for r in depth})
    assert [f.name for f in files] == [
        f"coinbase_book_snapshot_5_1s_{day}_{product}.csv.gz"
        for day in days
        for product in products
    ]
    rows = [row for f in files for row in read_book_snapshots(f)]
    key = lambda r: (r["product_id"], r["time"])  # noqa: E731
    given = sorted(
        (
            {
                "product_id": r["product_id"],
                "time": datetime.fromisoformat(r["time"]),
                "bids": r["bids"],
                "asks": r["asks"],
            }
            for r in depth
        ),
        key=key,
    )
    read = sorted(
        ({k: row[k] for k in ("product_id", "time", "bids", "asks")} for row in rows),
        key=key,
    )
    assert read == given
    assert all(row["exchange"] == "coinbase" for row in rows)


@pytest.mark.parametrize(
    ("more", "why"),
    [
        ({"ORDERBOOK_DEPTH_LEVELS": "0"}, "ORDERBOOK_DEPTH_LEVELS is 0 (off)"),
        ({"ORDERBOOK_DEPTH_INTERVAL": "0.0005"}, "whole milliseconds"),
    ],
)
def test_refused_at_start_in_one_line_when_it_cannot_write(tmp_path, more, why):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(_env(tmp_path, **more))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("ORDERBOOK_OUTPUT: output 'tardis:")
    assert why in message


def _tardis_partition(tmp_path: Path, **more: str):
    (spec,) = [
        s
        for s in Settings.from_env(_env(tmp_path, **more)).outputs
        if s.kind == "tardis"
    ]
    return build_sink(spec, Shutdown()).build("output", 0, 1)


@pytest.mark.parametrize(
    ("interval", "name"),
    [("0", "0ms"), ("0.1", "100ms"), ("1", "1s"), ("2.5", "2500ms"), ("60", "1m")],
)
def test_the_depth_cadence_names_the_files(tmp_path, interval, name):
    part = _tardis_partition(tmp_path, ORDERBOOK_DEPTH_INTERVAL=interval)
    try:
        part.write_batch([_depth_record(0)])
    finally:
        part.close()
    (path,) = (tmp_path / "t").iterdir()
    assert path.name == f"coinbase_book_snapshot_5_{name}_2026-06-02_BTC-USD.csv.gz"


def _depth_record(step: int) -> OrderBookDepth:
    book = OrderBook("BTC-USD")
    book.apply_snapshot(
        [(Decimal(100 - i), Decimal(1 + step)) for i in range(8)],
        [(Decimal(101 + i), Decimal(2)) for i in range(8)],
    )
    when = datetime(2026, 6, 2, 12, tzinfo=UTC) + timedelta(seconds=step)
    return OrderBookDepth.from_book(book, 5, when, "replay")


def test_every_batch_is_readable_at_once_without_closing(tmp_path):
    """A hard kill loses at most the batch being written: each batch is flushed."""
    part = _tardis_partition(tmp_path)
    try:
        summary = OrderBook("BTC-USD")
        summary.apply_snapshot([(Decimal(1), Decimal(1))], [(Decimal(2), Decimal(1))])
        part.write_batch([_depth_record(0), summary.summary()])  # no summary row
        part.write_batch([_depth_record(1), _depth_record(2)])
        (path,) = (tmp_path / "t").iterdir()
        # what a reader gets from the file as it is, its gzip member not finished
        text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(path.read_bytes())
        lines = text.decode().splitlines()
        assert lines[0].startswith("exchange,symbol,timestamp,local_timestamp,")
        assert [line.split(",")[4] for line in lines[1:]] == ["101"] * 3
        assert [line.split(",")[7] for line in lines[1:]] == ["1", "2", "3"]
    finally:
        part.close()
    assert len(list(read_book_snapshots(path))) == 3
