"""``python -m importers convert``: many files merged by receive time into one recording;
refusals in one line before anything is written; cut-off files end cleanly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from importers.convert import ConvertError, convert, main, read_items
from importers.sources import open_sources
from recording.reader import Recording
from tests.support.foreign_files import (
    DAY_NS,
    MarketSession,
    assert_books_are_the_truth,
    market_session,
    replayed_books,
    top,
    write_cryptofeed_capture,
    write_recording,
    write_tardis,
    write_tardis_days,
)

PRODUCTS = ("BTC-USD", "ETH-USD")


@pytest.fixture(scope="module")
def two_days():
    """150 batches per product 200 ms apart from 30 s before midnight: two UTC days."""
    return market_session(PRODUCTS, batches=150, step_ns=200_000_000)


def test_daily_files_of_several_products_merge_into_one_recording(tmp_path, two_days):
    paths = write_tardis_days(tmp_path, two_days)
    assert len(paths) == 4, "a file per product and day"
    glob = str(tmp_path / "coinbase_incremental_book_L2_*.csv.gz")
    result = convert([glob], tmp_path / "out.gz", progress=False)
    assert result.products == list(PRODUCTS)
    _, counts = assert_books_are_the_truth(tmp_path / "out.gz", two_days)
    quality = {p.product_id: p for p in result.report.products}
    for product in PRODUCTS:
        # the second day's file takes over with its own snapshot
        assert quality[product].resets == {"next file": 1}
        assert quality[product].snapshots == 2
        assert counts[product]["stats"]["resets"] == 2  # start, next file
    # every record of a product in receive order in the file; across products the
    # merge is in receive order too
    per_product: dict[str, list[int]] = {}
    for _, record in Recording.open(tmp_path / "out.gz").records():
        per_product.setdefault(record["product_id"], []).append(record["t_ns"])
    assert all(times == sorted(times) for times in per_product.values())
    readers, problems = open_sources([glob])
    assert not problems
    items = list(read_items(readers))
    times = [item.t_ns for item in items]
    assert times == sorted(times)
    assert [i.product_id for i in items[:4]] == [
        "BTC-USD",
        "BTC-USD",
        "ETH-USD",
        "ETH-USD",
    ]
    assert {i.product_id for i in items[-6:]} == set(PRODUCTS), "products interleave"


def test_the_same_hours_in_two_files_never_interleave_into_one_book(tmp_path):
    session = market_session(PRODUCTS, batches=60)
    first = write_tardis(tmp_path / "a.csv.gz", session)
    second = write_tardis(tmp_path / "b.csv", session)
    result = convert([str(first), str(second)], tmp_path / "out.gz", progress=False)
    quality = {p.product_id: p for p in result.report.products}
    for product in PRODUCTS:
        assert quality[product].skipped["updates from an overlapping source"] == 60
    books, _ = replayed_books(tmp_path / "out.gz")
    for product, (bids, asks) in session.truth.items():
        assert top(books[product].bids, books[product].asks) == top(bids, asks)


def test_one_protocol_per_recording_the_other_counted(tmp_path):
    session = market_session(PRODUCTS, batches=20)
    tardis = write_tardis(tmp_path / "a.csv", session)
    later = market_session(PRODUCTS, batches=20, start_ns=session.events[-1][0] + 10**9)
    capture = write_cryptofeed_capture(tmp_path / "c.jsonl.zst", later)
    result = convert([str(tardis), str(capture)], tmp_path / "out.gz", progress=False)
    assert result.protocol == "exchange"
    quality = {p.product_id: p for p in result.report.products}
    assert quality["BTC-USD"].skipped["advanced-trade frames (not exchange)"] == 21
    assert_books_are_the_truth(tmp_path / "out.gz", session)


@pytest.mark.parametrize("name", ["a.csv.gz", "COINBASE.jsonl.zst"])
def test_a_cut_off_file_ends_cleanly_with_what_it_held(tmp_path, name):
    session = market_session(PRODUCTS, batches=600, depth=40)
    whole = tmp_path / name
    if name.endswith(".zst"):
        write_cryptofeed_capture(whole, session)
    else:
        write_tardis(whole, session)
    full = convert([str(whole)], tmp_path / "full.gz", progress=False)
    data = whole.read_bytes()
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(data[: len(data) * 6 // 10])
    result = convert([str(cut)], tmp_path / "out.gz", progress=False)
    assert 0 < result.frames < full.frames
    assert result.report.ended_early and result.report.ended_early[0][0] == cut.name
    assert "ends early" in result.report.to_text()
    books, counts = replayed_books(tmp_path / "out.gz")
    assert all(book.live for book in books.values())
    assert not any(c["skipped"] for c in counts.values())


def test_the_command_refuses_in_one_line_each_and_writes_nothing(tmp_path, capsys):
    session = market_session(("BTC-USD",), batches=5)
    good = write_tardis(tmp_path / "a.csv", session)
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    out = tmp_path / "out.gz"
    status = main([str(good), str(other), str(tmp_path / "none-*.csv"), str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 2
    assert "notes.txt: not importable: text starting 'hello'" in err[1]
    assert "none-*.csv' matches no file" in err[0]
    assert not out.exists()
    assert list(tmp_path.glob(".out.gz*")) == [], "no temporary file left behind"

    assert main([str(good), str(tmp_path / "missing-dir" / "out.gz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    out.write_text("keep me")
    assert main([str(good), str(out)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_the_command_writes_a_recording_and_a_json_report(tmp_path, capsys):
    session = market_session(PRODUCTS, batches=30)
    source = write_tardis(tmp_path / "a.csv.gz", session)
    out = tmp_path / "out.gz"
    out.write_text("old")
    report = tmp_path / "report.json"
    status = main([str(source), str(out), "--overwrite", "--report", str(report)])
    assert status == 0
    err = capsys.readouterr().err
    assert "converted 1 file (tardis-incremental-l2)" in err
    assert "BTC-USD: 2026-05-28T23:59:30.000001Z to" in err
    data = json.loads(report.read_text())
    assert [p["product_id"] for p in data["products"]] == list(PRODUCTS)
    assert data["products"][0]["frames"] == 31
    header = Recording.open(out).header
    assert header["products"] == list(PRODUCTS)
    assert header["protocol"] == "exchange"
    assert header["imported"] == [
        {"file": "a.csv.gz", "format": "tardis-incremental-l2"}
    ]
    assert_books_are_the_truth(out, session)


def test_a_conversion_without_book_data_ends_with_status_1_and_no_file(
    tmp_path, capsys
):
    source = tmp_path / "a.csv"
    source.write_text(
        "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n"
        "coinbase,BTC-USD,1,1,false,bid,1,1\n"  # an update before any snapshot
    )
    assert main([str(source), str(tmp_path / "out.gz")]) == 1
    assert "no book data in 1 source" in capsys.readouterr().err
    assert not (tmp_path / "out.gz").exists()
    with pytest.raises(ConvertError):
        convert([], tmp_path / "out.gz")


@pytest.mark.slow
@pytest.mark.parametrize("package", ["importers", "recording"])
def test_python_dash_m_package_convert_runs_the_command(tmp_path, package):
    """``python -m recording convert`` is the same command as ``python -m importers
    convert``."""
    session = market_session(("BTC-USD",), batches=3)
    source = write_tardis(tmp_path / "a.csv", session)
    done = subprocess.run(
        [sys.executable, "-m", package, "convert", str(source), str(tmp_path / "o.gz")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "converted 1 file (tardis-incremental-l2)" in done.stderr
    assert Recording.open(tmp_path / "o.gz").products == ["BTC-USD"]


@pytest.mark.slow
def test_python_dash_m_recording_convert_has_its_own_usage():
    usage = subprocess.run(
        [sys.executable, "-m", "recording", "convert", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert usage.stdout.startswith("usage: python -m recording convert")


def test_recordings_of_this_project_are_merged_with_the_other_files(tmp_path):
    """A recording among the sources is read like the others (its products' blocks
    merged by receive time), and a tardis.dev file of the next day takes over."""
    session = market_session(PRODUCTS, batches=150, step_ns=200_000_000)
    midnight = session.events[-1][0] // DAY_NS * DAY_NS
    first = MarketSession(PRODUCTS, [e for e in session.events if e[0] < midnight])
    second = MarketSession(PRODUCTS, [e for e in session.events if e[0] >= midnight])
    write_recording(tmp_path / "day1.gz", first)
    write_tardis(tmp_path / "day2.csv", second)
    result = convert(
        [str(tmp_path / "day1.gz"), str(tmp_path / "day2.csv")],
        tmp_path / "out.gz",
        progress=False,
    )
    assert sorted({r.format for r in result.readers}) == [
        "recording",
        "tardis-incremental-l2",
    ]
    quality = {p.product_id: p for p in result.report.products}
    assert all(quality[p].resets == {"next file": 1} for p in PRODUCTS)
    assert sum(q.frames for q in quality.values()) == len(session.events)
    assert_books_are_the_truth(tmp_path / "out.gz", session)
