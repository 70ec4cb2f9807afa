"""Replay of recordings: per-product partitions, bad lines and frames, resume, report.

Recordings here are synthetic (the local exchange's market model, Exchange-feed frames,
written line by line by ``tests.support.recordings``), so each test can damage exactly the
line it is about.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from decimal import Decimal as D

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, cluster_main, run_main

import book_step
import recording.replay as replay_module
from common.logs import RateLimitedLog
from dataflow import get_flow
from events import BID, BookChanges, BookSnapshot
from recording.format import RecordingError, product_of_line
from recording.reader import Recording
from recording.replay import COUNTED, ReplaySource
from service.placement import bytewax_worker_for_key, routing_keys
from service.settings import Settings
from tests.support.flow import FlowProcess, by_product, flow_env, read_jsonl
from tests.support.recordings import (
    PRODUCTS,
    T0,
    T0_NS,
    replay,
    report_of,
    session_records,
    write_blocks,
    write_recording,
)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "clean.jsonl.gz"
    return write_recording(path, session_records())


# -- 1. a partition per product, on its book's worker --------------------------------------


def test_each_product_is_read_by_the_worker_that_holds_its_book(clean):
    source = ReplaySource(clean)
    parts = source.list_parts()
    assert sorted(parts) == sorted(PRODUCTS)
    keys = routing_keys(PRODUCTS)
    for workers in (1, 2, 3, 4):
        for product in PRODUCTS:
            # Bytewax: partitions round-robin over sorted names; keys by hash
            assert sorted(parts).index(product) % workers == bytewax_worker_for_key(
                keys[product], workers
            ), (product, workers)


def test_other_products_lines_are_skipped_before_any_json_parsing(clean, monkeypatch):
    parsed: list[bytes] = []
    real = replay_module._loads  # the replay's own JSON parsing of a record's line

    def counting(line):
        parsed.append(line)
        return real(line)

    monkeypatch.setattr(replay_module, "_loads", counting)
    got = replay(clean, products=["ETH-EUR"], products_arg=None)
    assert set(got) == {"ETH-EUR"}
    assert parsed and all(product_of_line(line) == b"ETH-EUR" for line in parsed)
    assert len(parsed) == sum(
        1 for r in session_records() if r["product_id"] == "ETH-EUR"
    )


def test_older_recordings_without_the_compact_layout_replay_the_same(clean, tmp_path):
    loose = [
        json.dumps(dict(reversed(list(r.items()))))  # other key order, spaces
        for r in session_records()
    ]
    old = write_recording(tmp_path / "old.jsonl.gz", loose)
    assert replay(old) == replay(clean)


@pytest.mark.slow
def test_one_and_two_workers_in_process_give_identical_summaries(clean):
    single = replay(clean)
    assert set(single) == set(PRODUCTS) and all(len(v) > 10 for v in single.values())
    two = replay(clean, lambda f: cluster_main(f, [], 0, worker_count_per_proc=2))
    assert two == single


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    """The clean session as the writer writes it (version 2), in 8 KiB blocks."""
    path = tmp_path_factory.mktemp("blocked") / "blocked.jsonl.gz"
    return write_blocks(path, session_records(), BLOCK_BYTES=8192)


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_w1_w2_and_p2_commands_give_identical_summaries_per_product(
    version, clean, blocked, tmp_path
):
    recording = clean if version == 1 else blocked
    results = {}
    for name, args in {
        "-w 1": ["bytewax.run", "dataflow:flow", "-w", "1"],
        "-w 2": ["bytewax.run", "dataflow:flow", "-w", "2"],
        "-p 2": ["bytewax.testing", "dataflow:flow", "-p", "2", "-w", "1"],
    }.items():
        out = tmp_path / f"{name.replace(' ', '')}.jsonl"
        env = flow_env(
            ORDERBOOK_REPLAY=str(recording),
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
        )
        flow = FlowProcess(args, env)
        assert flow.finish(timeout=120) == 0, flow.stderr[-3000:]
        results[name] = by_product(read_jsonl(out))
        assert "Traceback" not in flow.stderr
    assert results["-w 1"] == replay(clean)
    assert results["-w 2"] == results["-w 1"]
    assert results["-p 2"] == results["-w 1"]
    reports = [x for x in flow.stderr.splitlines() if x.startswith("replay of")]
    assert len(reports) == 2, flow.stderr[-3000:]  # one per process of -p 2
    if version == 2:  # each process passed the other's blocks unread
        assert all("passed unread" in r for r in reports), reports


# -- 2. bad lines never crash a replay ------------------------------------------------------

BAD_LINES = [
    b"[1,2,3]",
    b'"x"',
    b"null",
    b"42",
    b"{not json",
    b'{"t_ns":1}',
    b"\xff\xfe",
]


def test_lines_that_are_not_records_are_skipped_counted_and_reported(
    clean, tmp_path, capsys
):
    records = session_records()
    lines: list = records[:20] + BAD_LINES + records[20:]
    damaged = write_recording(tmp_path / "damaged.jsonl.gz", lines)
    got = replay(damaged)
    report = capsys.readouterr().err.splitlines()[-1]
    assert got == replay(clean)
    assert f"skipped {len(BAD_LINES)}:" in report, report
    assert "2 not JSON" in report
    assert (
        "4 JSON but not an object" in report
        and "1 a record without a product_id" in report
    )
    # the generic reader (the local exchange's) gives every JSON value, never raises
    kept = [r for _, r in Recording.open(damaged).records()]
    assert kept == records[:20] + [[1, 2, 3], "x", None, 42, {"t_ns": 1}] + records[20:]


def test_a_truncated_recording_replays_up_to_its_last_whole_line(
    clean, tmp_path, capsys
):
    data = clean.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    got = replay(cut)
    full = replay(clean)
    for product in PRODUCTS:
        assert got[product] == full[product][: len(got[product])]
    assert "the file ends early" in capsys.readouterr().err


# -- 3. one malformed frame does not silence a product -------------------------------------


def _frame_of(record: dict) -> dict:
    return json.loads(record["frame"])


def test_a_malformed_frame_is_skipped_and_the_book_goes_on(tmp_path, capsys):
    records = session_records()
    # a BTC-USD update late in the session whose price cannot be read
    i = max(
        i
        for i, r in enumerate(records[:200])
        if r["product_id"] == "BTC-USD" and "frame" in r
    )
    bad = dict(records[i])
    frame = _frame_of(bad)
    frame["changes"][0][1] = "not-a-price"
    bad["frame"] = json.dumps(frame)
    without = write_recording(
        tmp_path / "without.jsonl.gz", records[:i] + records[i + 1 :]
    )
    damaged = write_recording(
        tmp_path / "damaged.jsonl.gz", records[:i] + [bad] + records[i + 1 :]
    )
    got, expected = replay(damaged), replay(without)
    after = [s for s in got["BTC-USD"] if s["time"] > frame["time"]]
    assert len(after) > 20  # before: nothing after the bad frame
    assert got == expected
    report = report_of(capsys.readouterr().err, damaged)
    assert "1 a malformed frame" in report and "may differ from the live run" in report


def test_a_connected_record_resets_the_book_and_a_stray_one_is_logged(
    tmp_path, caplog, capsys
):
    records = session_records()
    i = 150
    stray = {"t_ns": records[i]["t_ns"], "product_id": "ETH-USD", "event": "connected"}
    damaged = write_recording(
        tmp_path / "stray.jsonl.gz", records[:i] + [stray] + records[i:]
    )
    with caplog.at_level("WARNING", logger="recording.replay"):
        got = replay(damaged)
    full = replay(write_recording(tmp_path / "full.jsonl.gz", records))
    # the book is reset there, as the recording says; with no snapshot after it,
    # ETH-USD emits nothing more, and that is reported
    assert len(got["ETH-USD"]) < len(full["ETH-USD"])
    assert got["ETH-USD"] == full["ETH-USD"][: len(got["ETH-USD"])]
    assert any("stray 'connected' record" in r.getMessage() for r in caplog.records)
    assert "1 stray 'connected' records" in report_of(capsys.readouterr().err, damaged)
    assert got["BTC-USD"] == full["BTC-USD"]


# -- 4. a resumed replay goes on after the last record it emitted --------------------------


class _Crash(RuntimeError):
    pass


class _CrashingSink(TestingSink):
    """Keeps what it is given, then fails the run once it holds ``after`` items."""

    def __init__(self, out: list, after: int) -> None:
        super().__init__(out)
        self.after = after

    def build(self, step_id, worker_index, worker_count):
        part = super().build(step_id, worker_index, worker_count)
        out, after = self._ls, self.after

        class Crashing(type(part)):
            def write_batch(self, items):
                if len(out) >= after:
                    raise _Crash("the run dies here")
                super().write_batch(items)

        part.__class__ = Crashing
        return part


@pytest.mark.parametrize("version", [1, 2])
def test_a_resumed_replay_continues_after_the_last_record_it_emitted(
    version, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(replay_module.ReplayPartition, "BATCH", 10)
    monkeypatch.setattr(replay_module._WorkerReader, "PULL_LINES", 40)
    records = session_records(messages=800)
    if version == 1:
        path = write_recording(tmp_path / "r.jsonl.gz", records)
    else:  # small blocks: a resumed reader passes the early ones unread
        path = write_blocks(tmp_path / "r.jsonl.gz", records, BLOCK_BYTES=4096)
    full = replay(path)
    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    recovery = RecoveryConfig(str(db), backup_interval=timedelta(0))

    def run(sink):
        flow = get_flow(
            Settings(spread_threshold_pct=0),
            source=ReplaySource(path),
            products=PRODUCTS,
            sink=sink,
        )
        run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)

    first: list = []
    with pytest.raises(Exception, match="error writing output batch"):
        run(_CrashingSink(first, after=200))
    second: list = []
    run(TestingSink(second))
    before = by_product([s.to_dict() for _, s in first])
    after = by_product([s.to_dict() for _, s in second])
    total = sum(len(v) for v in full.values())
    assert 0 < sum(len(v) for v in after.values()) < total - 150
    for product in PRODUCTS:
        f, a, b = full[product], before.get(product, []), after[product]
        assert a == f[: len(a)], product
        assert b == f[len(f) - len(b) :], product  # a tail of the full run ...
        assert len(a) + len(b) >= len(f), product  # ... that misses nothing
        assert len(a) + len(b) <= len(f) + 12, product  # at most a batch again
    assert "records re-read to rebuild the books" in report_of(
        capsys.readouterr().err, path
    )


def test_a_resumed_partition_rebuilds_its_book_quietly_and_silences_nobody_else(
    tmp_path, caplog, monkeypatch
):
    """The rebuild before the resume point logs nothing of its own book (here: crossed,
    then valid again); another worker's book step, logging in the middle of that
    rebuild on its own thread, is heard as ever (it was silenced: the rebuild disabled
    the whole process's ``book_step`` logger)."""
    update = {"type": "l2update", "product_id": "BTC-USD", "time": T0.isoformat()}
    frames = [
        {"type": "snapshot", "product_id": "BTC-USD", "bids": [["100", "1"]],
         "asks": [["101", "1"]]},
        {**update, "changes": [["buy", "102", "1"]]},  # crossed
        {**update, "changes": [["buy", "102", "0"]]},  # valid again
        {**update, "changes": [["buy", "99", "1"]]},  # the resume point
    ]  # fmt: skip
    records = [{"t_ns": T0_NS, "product_id": "BTC-USD", "event": "connected"}]
    records += [
        {"t_ns": T0_NS + n, "product_id": "BTC-USD", "frame": json.dumps(frame)}
        for n, frame in enumerate(frames)
    ]
    path = write_recording(tmp_path / "r.jsonl.gz", records, products=["BTC-USD"])
    monkeypatch.setattr(book_step, "_bad_book_log", RateLimitedLog(book_step.log))

    def other_worker() -> None:
        snap = BookSnapshot("ETH-USD", [(D(100), D(1))], [(D(101), D(1))], None, "x")
        state, _ = book_step.update_book(None, snap)
        book_step.update_book(
            state, BookChanges("ETH-USD", [(BID, D(102), D(1))], None, "x")
        )

    rebuild = replay_module.update_book
    heard: list[bool] = []

    def rebuilding(*args):
        if len(heard) == 3:  # in the middle of the rebuild, once
            thread = threading.Thread(target=other_worker)
            thread.start()
            thread.join(10)
        heard.append(True)
        return rebuild(*args)

    monkeypatch.setattr(replay_module, "update_book", rebuilding)
    resume = {"next": 4, "stream": 0, "counted": "per product"}
    part = ReplaySource(path, progress=False).build_part("in", "BTC-USD", resume)
    with caplog.at_level(logging.DEBUG, logger="book_step"):
        batch = part.next_batch()
    lines = [r.getMessage() for r in caplog.records if r.name == "book_step"]
    assert part.stats["warmup"] == 4 and len(heard) >= 4
    assert [line for line in lines if line.startswith("ETH-USD: book is crossed")]
    assert not [line for line in lines if line.startswith("BTC-USD")], lines
    rebuilt = batch[0][1]  # the book at the resume point, then the record after it
    assert isinstance(rebuilt, BookSnapshot) and rebuilt.bids == [(D(100), D(1))]


# -- 5. progress bar and report --------------------------------------------------------------


def test_a_replay_ends_with_a_report_on_stderr(clean, capsys):
    replay(clean)
    report = report_of(capsys.readouterr().err, clean)
    changes = sum(
        len(_frame_of(r)["changes"])
        for r in session_records()
        if "frame" in r and '"l2update"' in r["frame"]
    )
    for part in (
        "(BTC-EUR, BTC-USD, ETH-EUR, ETH-USD;",
        "404 frames read",
        f"4 snapshots and {changes:,} level changes sent to the books",
        "4 resets at recorded reconnections",
        "frames/s)",
        "nothing skipped.",
    ):
        assert part in report, (part, report)


@pytest.mark.slow
def test_two_workers_report_each_for_its_own_products(clean, capsys):
    replay(clean, lambda f: cluster_main(f, [], 0, worker_count_per_proc=2))
    err = capsys.readouterr().err
    reports = sorted(x for x in err.splitlines() if x.startswith("replay of clean"))
    assert len(reports) == 2, err
    assert "(BTC-EUR, ETH-EUR;" in reports[0] and "(BTC-USD, ETH-USD;" in reports[1]
    assert all("202 frames read" in r for r in reports)


def test_the_progress_bar_shows_frames_percent_rate_and_time_left(clean, capsys):
    replay(clean, progress=True)
    err = capsys.readouterr().err
    assert "100%" in err and "404 frames" in err and "/s" in err, err
    assert "0:00:00" in err or "-:--:--" in err  # the time left column


def test_no_progress_bar_when_stderr_is_not_a_terminal(clean, capsys):
    replay(clean)
    err = capsys.readouterr().err
    assert "100%" not in err and "━" not in err


@pytest.mark.slow
def test_a_finished_replay_run_again_with_recovery_writes_nothing(clean, tmp_path):
    """The command a user runs: ``-r`` on a replay that already ran to its end."""
    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    runs = []
    for n in (1, 2):
        out = tmp_path / f"run{n}.jsonl"
        env = flow_env(
            ORDERBOOK_REPLAY=str(clean),
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
        )
        args = ["bytewax.run", "dataflow:flow", "-r", str(db), "-s", "0", "-b", "0"]
        flow = FlowProcess(args, env)
        assert flow.finish(timeout=120) == 0, flow.stderr[-3000:]
        runs.append(by_product(read_jsonl(out)))
    first, second = runs
    assert first == replay(clean)
    assert second == {}
    assert "records re-read to rebuild the books" in flow.stderr


def test_a_resume_state_of_an_older_version_replays_the_product_from_its_start(
    clean, caplog
):
    """Older versions counted every product's records: such a state is not reused."""
    source = ReplaySource(clean, progress=False)
    fresh = source.build_part("in", "BTC-USD", None).next_batch()
    old_state = {"next": 40, "stream": 0}
    with caplog.at_level("WARNING", logger="recording.replay"):
        part = ReplaySource(clean, progress=False).build_part(
            "in", "BTC-USD", old_state
        )
    assert "does not understand" in caplog.text and "BTC-USD" in caplog.text
    assert part.next_batch() == fresh  # from the start, a reset first
    assert part.snapshot()["counted"] == "per product"


# -- 6. replays that could never produce anything, hostile ids (issue 17: 11, 27) ----------


def _at_records(products=PRODUCTS) -> list[dict]:
    """Advanced Trade frames (a snapshot each, then updates), in the writer's shape."""
    out: list[dict] = []
    for n, pid in enumerate(products * 3):
        kind = "snapshot" if n < len(products) else "update"
        frame = {
            "channel": "l2_data",
            "timestamp": "2026-01-01T00:00:00.000001Z",
            "sequence_num": n,
            "events": [
                {
                    "type": kind,
                    "product_id": pid,
                    "updates": [
                        {
                            "side": "bid",
                            "price_level": f"{100 + n}",
                            "new_quantity": "1",
                        }
                    ],
                }
            ],
        }
        out.append({"t_ns": T0_NS + n, "product_id": pid, "frame": json.dumps(frame)})
    return out


@pytest.mark.parametrize(
    ("header", "frames", "other"),
    [("advanced-trade", "exchange", "exchange"), ("exchange", "at", "advanced-trade")],
)
def test_a_replay_whose_header_names_the_other_protocol_is_refused_at_start(
    tmp_path, header, frames, other
):
    records = session_records() if frames == "exchange" else _at_records()
    path = write_recording(tmp_path / "other.jsonl.gz", records, protocol=header)
    with pytest.raises(RecordingError) as refused:
        ReplaySource(path)
    message = str(refused.value)
    assert "\n" not in message
    assert f"the header says protocol {header}" in message, message
    assert f"are {other} frames" in message and "BTC-USD" in message, message


def test_a_replay_whose_header_lists_no_products_is_refused_at_start(tmp_path):
    path = write_recording(tmp_path / "none.jsonl.gz", session_records(), products=[])
    with pytest.raises(RecordingError, match="lists no products: nothing to replay"):
        ReplaySource(path)


def test_frames_of_the_other_protocol_past_the_first_look_are_counted_and_reported(
    tmp_path, capsys, monkeypatch
):
    """The look at start covers each product's first frames; a product whose frames
    start later in a big file is caught as it is replayed, and the report says so."""
    monkeypatch.setattr(replay_module, "SNIFF_FRAMES", 0)  # as if beyond the look
    path = write_recording(
        tmp_path / "late.jsonl.gz", _at_records(["BTC-USD"]), products=["BTC-USD"]
    )
    assert replay(path, products=["BTC-USD"]) == {}
    report = report_of(capsys.readouterr().err, path)
    assert "skipped 3: 3 frames of the advanced-trade protocol (the header says " in (
        report
    ), report
    assert "every frame of BTC-USD is of the advanced-trade protocol" in report, report


@pytest.mark.parametrize(
    "hostile",
    ["../../../tmp/x", "\x1b[31mBTC-USD", "BTC-USD\nERROR forged line"],
    ids=["path", "ansi", "newline"],
)
def test_a_recording_whose_header_has_a_malformed_product_id_is_refused_in_one_line(
    tmp_path, hostile
):
    path = write_recording(
        tmp_path / "hostile.jsonl.gz", session_records(), [*PRODUCTS, hostile]
    )
    for open_it in (Recording.open, ReplaySource):
        with pytest.raises(RecordingError) as refused:
            open_it(path)
        message = str(refused.value)
        assert "not a product id" in message, message
        assert "\n" not in message and "\x1b" not in message, message


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no products", "other protocol", "hostile id"])
def test_the_service_ends_a_replay_that_could_never_produce_anything_in_one_line(
    tmp_path, case
):
    path = tmp_path / "never.jsonl.gz"
    if case == "no products":
        write_recording(path, session_records(), products=[])
    elif case == "other protocol":
        write_recording(path, session_records(), protocol="advanced-trade")
    else:
        write_recording(path, session_records(), [*PRODUCTS, "../../x\x1b[2J"])
    flow = FlowProcess(
        ["bytewax.run", "dataflow:flow"],
        flow_env(ORDERBOOK_REPLAY=str(path), ORDERBOOK_SPREAD_THRESHOLD="0"),
    )
    assert flow.finish(timeout=120) != 0, flow.stderr[-3000:]
    lines = flow.stderr.strip().splitlines()
    assert len(lines) == 1, flow.stderr[-3000:]
    assert lines[0].startswith("orderbook: ORDERBOOK_REPLAY: "), lines
    assert "\x1b" not in flow.stderr and flow.stdout == ""


# -- 7. one item per product per poll, the live source's shape (issue 21) ------------------


def _drain(part) -> list:
    items = []
    while True:
        try:
            items += part.next_batch()
        except StopIteration:
            return items


@pytest.mark.parametrize("resume", [None, {"next": 9, "stream": 0, "counted": COUNTED}])
def test_a_keyed_replay_hands_each_poll_as_one_item_of_the_same_events(clean, resume):
    """``key_by`` (what a dataflow that takes ``(key, [events])`` items calls): each
    poll is ONE item keyed by the routing key, holding exactly the events, in order,
    that the per-event items of an unkeyed replay hold (a resumed one too)."""
    plain = ReplaySource(clean, progress=False)
    per_event = _drain(plain.build_part("in", "BTC-USD", resume))
    keyed_source = ReplaySource(clean, progress=False)
    keyed_source.key_by({"BTC-USD": "BTC-USD~7", "ETH-USD": "ETH-USD~1"})
    part = keyed_source.build_part("in", "BTC-USD", resume)
    part.BATCH = 25  # several polls
    items = _drain(part)
    assert len(items) > 1
    assert all(key == "BTC-USD~7" and 0 < len(events) <= 25 for key, events in items)
    assert [e for _, events in items for e in events] == [e for _, e in per_event]
    assert all(product == "BTC-USD" for product, _ in per_event)
    # a product the keys do not name is keyed by its id
    other = keyed_source.build_part("in", "BTC-EUR", None).next_batch()
    assert [key for key, _ in other] == ["BTC-EUR"]
