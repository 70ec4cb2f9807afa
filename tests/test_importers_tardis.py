"""tardis.dev incremental_book_L2 CSV to a recording: the replayed books are the true ones.

Each fixture is written from the local exchange's market (its true books known), converted
with :func:`importers.convert.convert`, and replayed with the project's own replay
partitions; every product's top 25 levels must equal the truth.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from events import BID
from importers.convert import convert
from importers.tardis import BEFORE_SNAPSHOT, DAMAGED, NOT_A_PRODUCT, TardisReader
from tests.support.foreign_files import (
    assert_books_are_the_truth,
    market_session,
    replayed_books,
    tardis_rows,
    write_tardis,
)


def _assert_books_are_the_truth(recording, session):
    books, counts = assert_books_are_the_truth(recording, session)
    assert set(books) == set(session.truth)
    return books, counts


@pytest.mark.parametrize("name", ["book.csv.gz", "book.csv"])
def test_a_tardis_file_replays_to_the_true_books(tmp_path, name):
    session = market_session(("BTC-USD", "ETH-USD", "SOL-USD"), batches=120)
    source = write_tardis(tmp_path / name, session)
    result = convert([str(source)], tmp_path / "out.gz", progress=False)
    assert result.protocol == "exchange"
    assert result.products == ["BTC-USD", "ETH-USD", "SOL-USD"]
    assert result.frames == 3 * 121  # a snapshot and 120 messages each
    _assert_books_are_the_truth(tmp_path / "out.gz", session)


def test_rows_before_a_products_first_snapshot_are_skipped_and_counted(tmp_path):
    session = market_session(("BTC-USD",), batches=40)
    early = [
        "coinbase,BTC-USD,1780012700000000,1780012700000000,false,bid,64000.5,3",
        "coinbase,BTC-USD,1780012700000000,1780012700000000,false,ask,66000,1",
        "coinbase,BTC-USD,1780012700000001,1780012700000001,false,bid,64000.25,2",
    ]
    source = write_tardis(
        tmp_path / "b.csv", session, rows=early + tardis_rows(session)
    )
    result = convert([str(source)], tmp_path / "out.gz", progress=False)
    quality = {p.product_id: p for p in result.report.products}["BTC-USD"]
    assert quality.skipped[BEFORE_SNAPSHOT] == 3
    _assert_books_are_the_truth(tmp_path / "out.gz", session)


def test_a_new_snapshot_replaces_the_book_it_does_not_merge_into_it(tmp_path):
    """A level only the old book had (a far bid at 1.5) is gone after the snapshot."""
    session = market_session(("BTC-USD",), batches=30)
    rows = tardis_rows(session)
    stray = "coinbase,BTC-USD,1780012771000000,1780012771000000,false,bid,1.5,9"
    bids, asks = session.truth["BTC-USD"]
    t = "1780012772000000"
    snapshot = [
        f"coinbase,BTC-USD,{t},{t},true,bid,{p},{s}" for p, s in bids.items()
    ] + [f"coinbase,BTC-USD,{t},{t},true,ask,{p},{s}" for p, s in asks.items()]
    source = write_tardis(tmp_path / "b.csv", session, rows=[*rows, stray, *snapshot])
    result = convert([str(source)], tmp_path / "out.gz", progress=False)
    books, _ = _assert_books_are_the_truth(tmp_path / "out.gz", session)
    assert Decimal("1.5") not in books["BTC-USD"].bids
    quality = result.report.products[0]
    assert quality.resets == {"new snapshot": 1}
    assert quality.snapshots == 2


def test_prices_are_compared_as_decimals_never_as_text(tmp_path):
    rows = [
        "coinbase,BTC-USD,1780000000000000,1780000000000000,true,bid,6421.5,1",
        "coinbase,BTC-USD,1780000000000000,1780000000000000,true,bid,6421,4",
        "coinbase,BTC-USD,1780000000000000,1780000000000000,true,ask,6422,2",
        "coinbase,BTC-USD,1780000000000000,1780000000000000,true,ask,6423.75,2",
        # the same levels in other forms: one level each, never a second one
        "coinbase,BTC-USD,1780000000100000,1780000000100000,false,bid,6421.50,3",
        "coinbase,BTC-USD,1780000000200000,1780000000200000,false,ask,6423.7500,0",
        "coinbase,BTC-USD,1780000000300000,1780000000300000,false,bid,6421.0,0.000",
    ]
    source = write_tardis(tmp_path / "b.csv", None, rows=rows)
    convert([str(source)], tmp_path / "out.gz", progress=False)
    books, _ = replayed_books(tmp_path / "out.gz")
    assert books["BTC-USD"].bids == {Decimal("6421.5"): Decimal(3)}
    assert books["BTC-USD"].asks == {Decimal("6422"): Decimal(2)}


def test_damaged_rows_are_skipped_and_counted_and_the_rest_is_kept(tmp_path):
    session = market_session(("BTC-USD", "ETH-USD"), batches=60)
    rows = tardis_rows(session)
    t = rows[-1].split(",")[3]
    damaged = [
        f"coinbase,BTC-USD,{t},{t},false,bid,abc,1",
        f"coinbase,BTC-USD,{t},{t},false,bid,NaN,1",
        f"coinbase,BTC-USD,{t},{t},false,bid,-5,1",
        f"coinbase,BTC-USD,{t},{t},false,bid,100,Infinity",
        f"coinbase,BTC-USD,{t},{t},false,buy,100,1",
        # outside the service's number domain (common/domain.py): the decoder would
        # refuse them at replay, so the importer skips them where it reads them
        f"coinbase,BTC-USD,{t},{t},false,bid,1e20,1",
        f"coinbase,BTC-USD,{t},{t},false,ask,100,1e-40",
        f"coinbase,ETH-USD,{t},{t},maybe,bid,100,1",
        f"coinbase,ETH-USD,{t},not-a-time,false,bid,100,1",
    ]
    unreadable = [
        "coinbase,BTC-USD,1,2,3",
        "\x00\x01garbage",
        "coinbase,btc usd,1,1,false,bid,1,1",
    ]
    middle = len(rows) // 2
    source = write_tardis(
        tmp_path / "b.csv.gz",
        session,
        rows=rows[:middle] + damaged + unreadable + rows[middle:],
    )
    result = convert([str(source)], tmp_path / "out.gz", progress=False)
    quality = {p.product_id: p for p in result.report.products}
    assert quality["BTC-USD"].skipped[DAMAGED] == 7
    assert quality["ETH-USD"].skipped[DAMAGED] == 2
    assert result.report.skipped == {DAMAGED: 2, NOT_A_PRODUCT: 1}
    _assert_books_are_the_truth(tmp_path / "out.gz", session)


def test_snapshot_rows_that_go_on_in_a_later_message_add_levels(tmp_path):
    rows = [
        "coinbase,BTC-USD,1780000000000000,1780000000000000,true,bid,100,1",
        "coinbase,BTC-USD,1780000000000000,1780000000000000,true,ask,101,1",
        # the snapshot goes on: still is_snapshot=true, so not a new snapshot
        "coinbase,BTC-USD,1780000000000005,1780000000000005,true,bid,99,2",
        "coinbase,BTC-USD,1780000000000005,1780000000000005,true,ask,102,2",
        "coinbase,BTC-USD,1780000000100000,1780000000100000,false,bid,98,5",
    ]
    source = write_tardis(tmp_path / "b.csv", None, rows=rows)
    result = convert([str(source)], tmp_path / "out.gz", progress=False)
    books, _ = replayed_books(tmp_path / "out.gz")
    book = books["BTC-USD"]
    assert sorted(book.bids) == [Decimal(98), Decimal(99), Decimal(100)]
    assert sorted(book.asks) == [Decimal(101), Decimal(102)]
    assert result.report.products[0].resets == {}


def test_the_reader_yields_items_in_receive_order_with_exact_times(tmp_path):
    session = market_session(("BTC-USD", "ETH-USD"), batches=20)
    source = write_tardis(tmp_path / "b.csv", session)
    items = list(TardisReader(source))
    times = [item.t_ns for item in items]
    assert times == sorted(times)
    assert items[0].event.received_ns == session.events[0][0]
    update = next(i for i in items if i.event.__class__.__name__ == "BookChanges")
    # the exchange's time (0.5 ms before the receive time) is the frame's time
    assert update.t_ns == 1_780_012_770_001_002_000
    assert update.frame().endswith('"time":"2026-05-28T23:59:30.000502Z"}')


def test_crlf_a_bom_blank_lines_and_small_blocks_read_as_plain_lines(
    tmp_path, monkeypatch
):
    """The reader decodes a block of lines at a time: CRLF endings, a byte-order mark
    before the header, blank lines, bytes that are no UTF-8 and messages cut by a
    block's end (16-byte blocks here) give the items and counts of a plain file."""
    session = market_session(("BTC-USD", "ETH-USD"), batches=30)
    rows = tardis_rows(session)
    t = rows[-1].split(",")[3]
    rows.insert(len(rows) // 2, f"coinbase,BTC-USD,{t},{t},false,bid,1\xe9,1")
    plain = write_tardis(tmp_path / "plain.csv", session, rows=rows)
    expected = TardisReader(plain)
    want = [(i.t_ns, i.product_id, i.event) for i in expected]
    data = plain.read_bytes().replace("\xe9".encode(), b"\xe9")  # latin-1: no UTF-8
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(b"\n \r\n\xef\xbb\xbf" + data.replace(b"\n", b"\r\n") + b"\r\n")
    monkeypatch.setattr("importers.inputs._CHUNK", 16)
    reader = TardisReader(crlf)
    assert [(i.t_ns, i.product_id, i.event) for i in reader] == want
    assert reader.skipped == expected.skipped == {("BTC-USD", DAMAGED): 1}
    assert reader.rows == expected.rows == len(rows)


def test_a_time_of_digits_int_cannot_read_is_a_damaged_message(tmp_path):
    """``"²".isdigit()`` is true but ``int("²")`` raises: such a local_timestamp is
    damaged (its message's rows counted), not a crash of the whole reader."""
    rows = [
        "coinbase,BTC-USD,1780000000000000,1780000000000000,true,bid,100,1",
        "coinbase,BTC-USD,1780000000000000,1780000000000000,true,ask,101,1",
        "coinbase,BTC-USD,1780000000000001,178000000000000\u00b2,false,bid,99,2",
        "coinbase,BTC-USD,1780000000000001,178000000000000\u00b2,false,ask,102,2",
        "coinbase,BTC-USD,1780000000000002,1780000000000002,false,bid,98,5",
    ]
    reader = TardisReader(write_tardis(tmp_path / "b.csv", None, rows=rows))
    items = list(reader)
    assert [type(i.event).__name__ for i in items] == ["BookSnapshot", "BookChanges"]
    assert items[1].event.changes == [(BID, Decimal(98), Decimal(5))]
    assert reader.skipped == {("BTC-USD", DAMAGED): 2}
