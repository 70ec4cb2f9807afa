"""``ORDERBOOK_REPLAY`` reads every format, one file or many (importers/replay.py): the
real dataflow replays foreign files as it replays their converted recording, merges
daily files and products in receive order, writes the quality report, refuses a file of
no format in one line, and removes its temporary recording at the end."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from bytewax.testing import TestingSink, run_main

from dataflow import get_flow
from importers.convert import convert
from importers.replay import (
    ReplayInputError,
    cache_key,
    prepare_replay,
)
from recording.reader import Recording
from service.settings import ConfigError, Settings
from tests.support.flow import FlowProcess, by_product, flow_env, read_jsonl
from tests.support.foreign_files import (
    DAY_NS,
    MarketSession,
    market_session,
    top,
    write_cryptofeed_capture,
    write_cryptofeed_raw,
    write_recording,
    write_tardis,
    write_tardis_days,
)

PRODUCTS = ("BTC-USD", "ETH-USD")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The temporary recordings' place: under the test's own directory."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture(scope="module")
def session() -> MarketSession:
    return market_session(PRODUCTS, batches=80)


@pytest.fixture(scope="module")
def two_days() -> MarketSession:
    """150 batches per product 200 ms apart from 30 s before midnight: two UTC days."""
    return market_session(PRODUCTS, batches=150, step_ns=200_000_000)


def _summaries(replay: str, **env: str) -> dict[str, list[dict]]:
    """Every summary of the real dataflow replaying ``replay``, by product."""
    out: list = []
    settings = Settings.from_env(
        {"ORDERBOOK_REPLAY": replay, "ORDERBOOK_SPREAD_THRESHOLD": "0", **env}
    )
    run_main(get_flow(settings, sink=TestingSink(out)))
    return by_product([record.to_dict() for _, record in out])


def _assert_final_tops_are_true(summaries, session: MarketSession) -> None:
    for product, (bids, asks) in session.truth.items():
        best_bids, best_asks = top(bids, asks, 1)
        last = summaries[product][-1]
        assert Decimal(last["bid_price"]) == best_bids[0][0], product
        assert Decimal(last["ask_price"]) == best_asks[0][0], product


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*"))


@pytest.mark.parametrize("kind", ["tardis", "cryptofeed raw", "cryptofeed v3"])
def test_each_foreign_format_replays_as_its_converted_recording(
    tmp_path, cache, session, kind
):
    if kind == "tardis":
        write_tardis(tmp_path / "day.csv.gz", session)
        replay = str(tmp_path / "day.csv.gz")
    elif kind == "cryptofeed raw":
        write_cryptofeed_raw(tmp_path, session)  # rotated into COINBASE.ws.28.0, .1, .2
        replay = str(tmp_path / "COINBASE.ws.28.*")
    else:
        write_cryptofeed_capture(tmp_path / "COINBASE.jsonl.zst", session)
        replay = str(tmp_path / "COINBASE.jsonl.zst")
    converted = tmp_path / "converted.gz"
    convert([replay], converted, progress=False)

    direct = _summaries(replay)
    assert direct == _summaries(str(converted))
    assert set(direct) == set(PRODUCTS)
    assert all(len(v) > 20 for v in direct.values())
    _assert_final_tops_are_true(direct, session)
    if kind == "tardis":  # replayed as read (importers/direct.py): nothing converted
        assert _leftovers(cache) == []
    else:
        assert _leftovers(cache) == [f"orderbook-replay-{os.getuid()}"], (
            "the temporary recording is removed at the end"
        )


def test_daily_files_of_several_products_merge_in_receive_order(
    tmp_path, cache, two_days
):
    paths = write_tardis_days(tmp_path, two_days)
    assert len(paths) == 4, "a file per product and day"
    report = tmp_path / "report.json"
    summaries = _summaries(
        str(tmp_path / "coinbase_incremental_book_L2_*.csv.gz"),
        ORDERBOOK_REPLAY_REPORT=str(report),
    )
    _assert_final_tops_are_true(summaries, two_days)
    midnight = two_days.events[-1][0] // DAY_NS * DAY_NS
    for product in PRODUCTS:
        # A summary's time is the exchange's: 0.5 ms before the receive time for the
        # updates of these files, the receive time for snapshots.
        times = [datetime.fromisoformat(s["time"]) for s in summaries[product]]
        assert all(
            later >= earlier - timedelta(milliseconds=0.5)
            for earlier, later in zip(times, times[1:], strict=False)
        ), "a product's records in receive order, the first day's file first"
        assert times[0] < _time(midnight) < times[-1], "both days replayed"
    data = json.loads(report.read_text())
    assert [p["product_id"] for p in data["products"]] == list(PRODUCTS)
    for quality in data["products"]:
        assert quality["resets"] == {"next file": 1}, "the next day's file takes over"
        assert quality["snapshots"] == 2
    assert data["formats"] == ["tardis-incremental-l2"]
    assert len(data["inputs"]) == 4


def _time(t_ns: int) -> datetime:
    return datetime.fromtimestamp(t_ns // 10**9, UTC)


def test_recordings_of_successive_days_are_merged_like_foreign_files(
    tmp_path, cache, two_days
):
    """A recording of this project among several files: read, merged, taken over."""
    midnight = two_days.events[-1][0] // DAY_NS * DAY_NS
    first = MarketSession(PRODUCTS, [e for e in two_days.events if e[0] < midnight])
    second = MarketSession(PRODUCTS, [e for e in two_days.events if e[0] >= midnight])
    write_recording(tmp_path / "day1.gz", first)
    write_recording(tmp_path / "day2.gz", second)
    report = tmp_path / "report.json"
    summaries = _summaries(
        f"{tmp_path / 'day1.gz'},{tmp_path / 'day2.gz'}",
        ORDERBOOK_REPLAY_REPORT=str(report),
    )
    _assert_final_tops_are_true(summaries, two_days)
    data = json.loads(report.read_text())
    assert [q["resets"] for q in data["products"]] == [{"next file": 1}] * 2


def test_the_report_of_a_recording_says_what_the_conversion_of_the_same_data_says(
    tmp_path, cache, session
):
    """One recording of this project is replayed as it is and measured on the way; its
    report agrees with the report of the same events read from a tardis.dev file."""
    write_recording(tmp_path / "own.gz", session)
    write_tardis(tmp_path / "t.csv.gz", session)
    own, foreign = tmp_path / "own.json", tmp_path / "foreign.json"
    for path, report in ((tmp_path / "own.gz", own), (tmp_path / "t.csv.gz", foreign)):
        assert _summaries(str(path), ORDERBOOK_REPLAY_REPORT=str(report))
    mine, theirs = json.loads(own.read_text()), json.loads(foreign.read_text())
    assert mine["formats"] == ["recording"] and mine["conversion"] is None
    fields = (
        "product_id",
        "first_ns",
        "last_ns",
        "frames",
        "snapshots",
        "changes",
        "crossed_episodes",
        "locked_episodes",
        "longest_silence_seconds",
        "longest_silence_from",
        "skipped",
    )
    assert [{k: q[k] for k in fields} for q in mine["products"]] == [
        {k: q[k] for k in fields} for q in theirs["products"]
    ]
    assert mine["products"][0]["frames"] == 81


def test_a_file_of_no_format_is_refused_in_one_line_before_anything_runs(
    tmp_path, cache, session
):
    write_tardis(tmp_path / "day.csv.gz", session)
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\x1b[2J there\n")
    settings = Settings.from_env(
        {"ORDERBOOK_REPLAY": f"{tmp_path / 'day.csv.gz'},{junk}"}
    )
    with pytest.raises(ConfigError) as refused:
        get_flow(settings)
    message = str(refused.value)
    assert "\n" not in message and "\x1b" not in message
    assert message.startswith("ORDERBOOK_REPLAY: ")
    assert "notes.txt: not importable: text starting 'hello" in message
    assert "or a recording made by python -m recording" in message
    assert _leftovers(cache) == [], "nothing converted"


def test_a_cut_off_download_ends_its_replay_cleanly_with_the_count(
    tmp_path, cache, session, capsys
):
    whole = write_tardis(tmp_path / "whole.csv.gz", session).read_bytes()
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) * 2 // 3])
    report = tmp_path / "report.json"
    summaries = _summaries(
        str(tmp_path / "cut.csv.gz"), ORDERBOOK_REPLAY_REPORT=str(report)
    )
    assert set(summaries) == set(PRODUCTS)
    data = json.loads(report.read_text())
    assert [e["file"] for e in data["ended_early"]] == ["cut.csv.gz"]
    assert data["skipped"], "the partial last row is counted"
    printed = capsys.readouterr().err
    assert "quality of the replay:" in printed
    assert "cut.csv.gz ends early" in printed


def test_one_conversion_is_shared_and_the_last_holder_removes_it(
    tmp_path, session, caplog
):
    source = write_tardis(tmp_path / "day.csv.gz", session)
    root = tmp_path / "cache"
    with caplog.at_level("INFO", logger="importers.replay"):
        first = prepare_replay([source], root=root)
        second = prepare_replay([source], root=root)  # another process's turn
    converting = [r for r in caplog.records if r.getMessage().startswith("converting")]
    assert len(converting) == 1
    assert first.path == second.path and first.path.exists()
    assert first.report.to_dict() == second.report.to_dict()
    first.close()
    assert second.path.exists(), "kept while another holder replays it"
    second.close()
    assert not second.path.exists() and list(root.iterdir()) == []
    # other files, or other products: another conversion
    assert cache_key([source], None) != cache_key([source], ["BTC-USD"])


def test_a_conversion_left_by_a_killed_run_is_removed_by_the_next(tmp_path, session):
    source = write_tardis(tmp_path / "day.csv.gz", session)
    root = tmp_path / "cache"
    root.mkdir()
    (root / "0123abcd.lock").touch()
    (root / "0123abcd").mkdir()
    (root / "0123abcd" / "x.replay.gz").write_bytes(b"left")
    held = root / "feedbeef.lock"  # a live run's: locked, kept
    held.touch()
    (root / "feedbeef").mkdir()
    fd = os.open(held, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        prepared = prepare_replay([source], root=root)
        assert not (root / "0123abcd").exists()
        assert (root / "feedbeef").exists()
        prepared.close()
    finally:
        os.close(fd)


def test_products_narrow_what_is_converted(tmp_path, cache, session):
    write_tardis(tmp_path / "day.csv.gz", session)
    narrowed = _summaries(str(tmp_path / "day.csv.gz"), ORDERBOOK_PRODUCTS="ETH-USD")
    assert set(narrowed) == {"ETH-USD"}
    with pytest.raises(ReplayInputError, match="no book data of SOL-USD in 1 file"):
        prepare_replay([tmp_path / "day.csv.gz"], ["SOL-USD"], root=cache)
    with pytest.raises(ConfigError) as refused:
        _summaries(str(tmp_path / "day.csv.gz"), ORDERBOOK_PRODUCTS="ETH-USD,SOL-USD")
    assert str(refused.value) == (
        "ORDERBOOK_REPLAY: no book data of SOL-USD in the 1 file (ORDERBOOK_PRODUCTS)"
    )
    assert _leftovers(cache) == [], "tardis.dev files are replayed as read"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tardis", "cryptofeed raw"])
def test_two_processes_replay_and_report_every_product(tmp_path, two_days, kind):
    """Under ``-p 2``: tardis.dev files are read directly by each process (each keeps
    its own products); a cryptofeed capture is converted once, by one process, and
    both replay that recording. Each process prints its products' quality; the JSON
    report holds them all."""
    if kind == "tardis":
        write_tardis_days(tmp_path, two_days)
        replay = str(tmp_path / "coinbase_incremental_book_L2_*.csv.gz")
    else:
        write_cryptofeed_raw(tmp_path, two_days)
        replay = str(tmp_path / "COINBASE.ws.28.*")
    out, report, cache = tmp_path / "p2.jsonl", tmp_path / "r.json", tmp_path / "tmp"
    cache.mkdir()
    env = flow_env(
        ORDERBOOK_REPLAY=replay,
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_OUTPUT=f"jsonl:{out}",
        ORDERBOOK_REPLAY_REPORT=str(report),
        TMPDIR=str(cache),
    )
    flow = FlowProcess(["bytewax.testing", "dataflow:flow", "-p", "2"], env)
    assert flow.finish(timeout=120) == 0, flow.stderr[-3000:]
    if kind == "tardis":
        assert "converting" not in flow.stderr
        assert flow.stderr.count("tardis.dev files, read directly (") == 2
    else:
        assert flow.stderr.count("converting 3 files for the replay") == 1, flow.stderr
        assert "replaying the conversion another process made" in flow.stderr
    records = by_product(read_jsonl(out))
    _assert_final_tops_are_true(records, two_days)
    data = json.loads(report.read_text())
    assert [q["product_id"] for q in data["products"]] == list(PRODUCTS), (
        "each process's products merged into the one report"
    )
    if kind == "tardis":
        assert all(q["resets"] == {"next file": 1} for q in data["products"])
    assert flow.stderr.count("quality of the replay:") == 2
    expected = [] if kind == "tardis" else [f"orderbook-replay-{os.getuid()}"]
    assert _leftovers(cache) == expected, "the temporary recording is removed"


def test_a_conversion_made_again_is_the_same_recording(tmp_path, two_days):
    """Resume states (``-r``) count records: a run resumed after the temporary
    recording was removed converts again and must find the same records."""
    paths = write_tardis_days(tmp_path, two_days)
    made = []
    for root in ("one", "two"):
        prepared = prepare_replay(paths, root=tmp_path / root)
        made.append(list(Recording.open(prepared.path).records()))
        made.append(Recording.open(prepared.path).header)
        prepared.close()
    assert made[0] == made[2] and made[1] == made[3]
    assert len(made[0]) > 300


@pytest.mark.slow
def test_the_service_refuses_a_file_of_no_format_in_one_line(tmp_path):
    junk = tmp_path / "prices.bin"
    junk.write_bytes(b"\x00\x01binary\xff" * 10)
    flow = FlowProcess(
        ["bytewax.run", "dataflow:flow"],
        flow_env(ORDERBOOK_REPLAY=str(junk), TMPDIR=str(tmp_path)),
    )
    assert flow.finish(timeout=120) != 0
    lines = flow.stderr.strip().splitlines()
    assert len(lines) == 1, flow.stderr[-3000:]
    assert lines[0].startswith("orderbook: ORDERBOOK_REPLAY: ")
    assert "prices.bin: not importable: binary data" in lines[0]
    assert flow.stdout == ""


def _light_report_as_full(replay: str, tmp_path, capsys) -> list[str]:
    """Replay ``replay`` with the light quality report, then with the full one
    (``ORDERBOOK_REPLAY_REPORT`` to ``tmp_path/r.json``); assert every product's line
    is the same but for the crossed and locked episodes, and return the light lines."""
    capsys.readouterr()
    assert _summaries(replay)
    light = capsys.readouterr().err
    assert _summaries(replay, ORDERBOOK_REPLAY_REPORT=str(tmp_path / "r.json"))
    full = capsys.readouterr().err

    def report(err: str, drop: str) -> list[str]:
        lines = err.split("quality of the replay:\n", 1)[1].splitlines()
        return [line.replace(drop, "") for line in lines[: len(PRODUCTS)]]

    light_lines = report(
        light, "; crossed or locked not measured (ORDERBOOK_REPLAY_REPORT measures it)"
    )
    assert light_lines == report(full, "; never crossed; never locked")
    return light_lines


def test_every_replay_of_a_recording_ends_with_its_quality_report(
    tmp_path, cache, two_days, capsys
):
    """Without ``ORDERBOOK_REPLAY_REPORT`` the report is the light one (no crossed or
    locked episodes, measured per batch): every other figure is the full report's."""
    recording = tmp_path / "two-days.gz"
    convert([str(p) for p in write_tardis_days(tmp_path, two_days)], recording)
    light_lines = _light_report_as_full(str(recording), tmp_path, capsys)
    assert all("1 reset (1 connection)" in line for line in light_lines)
    assert all("longest silence 0.4 s" in line for line in light_lines)


def test_a_direct_replay_resumes_where_a_replay_of_its_conversion_would(
    tmp_path, two_days, monkeypatch
):
    """The direct partitions save the converted recording's resume states (the
    product's item index and last reset's), and a partition resumed mid-file rebuilds
    the book and goes on to the true book."""
    from importers.direct import DirectPartition, DirectSource, direct_products
    from orderbook import OrderBook
    from recording.replay import ReplayPartition, ReplaySource

    paths = write_tardis_days(tmp_path, two_days)
    monkeypatch.setattr(DirectPartition, "BATCH", 20)
    monkeypatch.setattr(ReplayPartition, "BATCH", 20)
    products = direct_products(paths, None)
    assert products == list(PRODUCTS)

    def drain(part) -> tuple[list, list]:
        events, states = [], []
        while True:
            try:
                events += [event for _, event in part.next_batch()]
            except StopIteration:
                return events, states
            states.append(part.snapshot())

    direct = {
        p: drain(DirectSource(paths, products).build_part("s", p, None))
        for p in products
    }
    # keyed as the dataflow asks (`key_by`): one item a poll, the same events
    keyed_source = DirectSource(paths, products)
    keyed_source.key_by({products[0]: products[0] + "~7"})
    part = keyed_source.build_part("s", products[0], None)
    items = []
    while True:
        try:
            items += part.next_batch()
        except StopIteration:
            break
    assert len(items) > 1 and {key for key, _ in items} == {products[0] + "~7"}
    assert [e for _, events in items for e in events] == direct[products[0]][0]
    converted = tmp_path / "converted.gz"
    convert([str(p) for p in paths], converted)
    for product in products:
        _, states = drain(ReplaySource(converted).build_part("s", product, None))
        assert direct[product][1][-1] == states[-1]
        middle = direct[product][1][len(direct[product][1]) // 2]
        assert 0 < middle["stream"] < middle["next"], (
            "resumed after the next file's reset"
        )
        resumed, _ = drain(
            DirectSource(paths, products).build_part("s", product, middle)
        )
        assert type(resumed[0]).__name__ == "BookSnapshot", "the rebuilt book first"
        for events in (direct[product][0], resumed):
            book = OrderBook(product)
            for event in events:
                if type(event).__name__ == "BookSnapshot":
                    book.apply_snapshot(event.bids, event.asks)
                elif type(event).__name__ == "BookChanges":
                    book.apply_changes(event.changes)
                else:
                    book.clear()
            bids, asks = two_days.truth[product]
            assert top(dict(book.bids), dict(book.asks)) == top(bids, asks), product
            assert dict(book.bids) == bids and dict(book.asks) == asks


def test_a_direct_replay_reports_episodes_only_when_the_full_report_is_asked(
    tmp_path, cache, two_days, capsys
):
    """tardis.dev files read directly: the light report by default (as for a
    recording), the full one, crossed and locked episodes included, with
    ``ORDERBOOK_REPLAY_REPORT``; every other figure the same."""
    replay = ",".join(str(p) for p in write_tardis_days(tmp_path, two_days))
    light_lines = _light_report_as_full(replay, tmp_path, capsys)
    assert all("1 reset (1 next file)" in line for line in light_lines)
    data = json.loads((tmp_path / "r.json").read_text())
    assert [q["crossed_episodes"] for q in data["products"]] == [0, 0]
