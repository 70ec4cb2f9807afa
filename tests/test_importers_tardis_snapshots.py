"""Depth records to tardis.dev book_snapshot_N CSV files, read back as they were given."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta

import pytest

from importers.tardis_snapshots import (
    TardisSnapshotWriter,
    header,
    read_book_snapshots,
    snapshot_row,
)
from local_exchange.market import Market
from orderbook import OrderBook
from records import OrderBookDepth

MIDNIGHT = datetime(2026, 6, 2, tzinfo=UTC)


def _depth_records(products=("BTC-USD", "ETH-USD"), steps=40, levels=25):
    """Depth records of the market's books every 2 s across midnight UTC."""
    market = Market(list(products), depth=40, seed=5)
    books = {p: OrderBook(p) for p in products}
    records = []
    for step in range(steps):
        when = (
            MIDNIGHT
            - timedelta(seconds=40)
            + timedelta(seconds=2 * step, microseconds=17)
        )
        for product in products:
            market.next_batch(product)
            bids, asks = market.book(product)
            books[product].apply_snapshot(bids.items(), asks.items())
            depth = OrderBookDepth.from_book(books[product], levels, when, "sim")
            records.append(depth.to_dict())
    return records


def test_records_read_back_as_given_one_file_per_product_and_day(tmp_path):
    records = _depth_records()
    with TardisSnapshotWriter(tmp_path, levels=25, interval="2s") as writer:
        for record in records:
            assert writer.write(record)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "coinbase_book_snapshot_25_2s_2026-06-01_BTC-USD.csv.gz",
        "coinbase_book_snapshot_25_2s_2026-06-01_ETH-USD.csv.gz",
        "coinbase_book_snapshot_25_2s_2026-06-02_BTC-USD.csv.gz",
        "coinbase_book_snapshot_25_2s_2026-06-02_ETH-USD.csv.gz",
    ]
    read = [row for name in names for row in read_book_snapshots(tmp_path / name)]
    read.sort(key=lambda r: (r["time"], r["product_id"]))
    given = sorted(records, key=lambda r: (r["time"], r["product_id"]))
    assert len(read) == len(given) == 80
    for row, record in zip(read, given, strict=True):
        assert row["product_id"] == record["product_id"]
        assert row["time"] == datetime.fromisoformat(record["time"])
        assert row["bids"] == record["bids"]
        assert row["asks"] == record["asks"]
        assert len(row["bids"]) == 25
    with gzip.open(tmp_path / names[0], "rt") as f:
        assert f.readline().startswith(
            "exchange,symbol,timestamp,local_timestamp,asks[0].price,asks[0].amount,"
            "bids[0].price,bids[0].amount,asks[1].price"
        )


def test_missing_levels_stay_empty_and_numbers_are_in_shortest_form():
    record = {
        "type": "depth",
        "product_id": "BTC-USD",
        "time": "2026-06-01T00:00:00.000001Z",
        "bids": [["6421.50", "1.000"]],
        "asks": [["6422", "0.5"], ["6423.25", "2"]],
    }
    product, day, row = snapshot_row(record, 3)
    assert (product, day.isoformat()) == ("BTC-USD", "2026-06-01")
    assert row == (
        "coinbase,BTC-USD,1780272000000001,1780272000000001,"
        "6422,0.5,6421.5,1,6423.25,2,,,,,,"
    )
    assert len(header(3).split(",")) == len(row.split(","))


def test_records_that_cannot_be_rows_are_counted_not_written(tmp_path):
    with TardisSnapshotWriter(tmp_path, levels=2) as writer:
        good = _depth_records(("BTC-USD",), steps=1, levels=2)[0]
        assert writer.write(good)
        assert not writer.write({"type": "summary"})
        assert not writer.write({**good, "time": None})
        assert not writer.write({**good, "product_id": "../../etc"})
        assert not writer.write({**good, "bids": [["NaN", "1"]]})
    assert writer.skipped == {
        "not a depth record": 1,
        "no usable time": 1,
        "a bad product id": 1,
        "a bad number": 1,
    }
    assert writer.rows == 1
    assert [p.name for p in tmp_path.iterdir()] == [
        "coinbase_book_snapshot_2_1s_2026-06-01_BTC-USD.csv.gz"
    ]


def test_a_restarted_writer_appends_to_the_days_file_without_a_second_header(tmp_path):
    records = _depth_records(("BTC-USD",), steps=4, levels=5)
    for part in (records[:2], records[2:]):
        with TardisSnapshotWriter(tmp_path, levels=5) as writer:
            for record in part:
                writer.write(record)
    (path,) = tmp_path.iterdir()
    rows = list(read_book_snapshots(path))
    assert [r["bids"] for r in rows] == [r["bids"] for r in records]


@pytest.mark.parametrize(
    "kwargs",
    [{"levels": 0}, {"levels": "25"}, {"interval": "1 s"}, {"exchange": "Coin/base"}],
)
def test_bad_settings_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        TardisSnapshotWriter(tmp_path, **kwargs)
    with pytest.raises(ValueError, match="does not exist"):
        TardisSnapshotWriter(tmp_path / "nope")
