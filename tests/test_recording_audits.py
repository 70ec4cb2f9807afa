"""REST audits in a recording (issue 19, item 6): the recorder records the REST books it
fetches, and a replay repeats the live run's audits from them."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from book_step import update_book
from coinbase.decode import FrameDecoder
from events import AuditStarted, BookAudit, BookSnapshot
from local_exchange.connections import Stats
from local_exchange.replay import ReplayServer
from local_exchange.server import LocalExchange
from recording.format import audit_of, audit_record, parse_record
from recording.reader import Recording
from recording.recorder import main as recorder_main
from recording.recorder import record
from recording.replay import ReplaySource
from recording.writer import RecordingWriter
from records import AuditRecord
from tests.support.flow import wait_until
from tests.support.recordings import HEADER, polled, session_records

PRODUCT = "BTC-USD"


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)  # as the book step writes it


LEVELS = 5


def _replayed(path: Path, **source_args) -> tuple[list[AuditRecord], list, dict]:
    """Every partition of a replay driven to its end through the book step: the audit
    records it wrote, every event, and the partitions' skipped counts."""
    source = ReplaySource(path, progress=False, **source_args)
    parts = [source.build_part("t", p, None) for p in source.list_parts()]
    states: dict = {}
    audits: list[AuditRecord] = []
    events: list = []
    for product, event in polled(parts, 100_000):
        events.append(event)
        states[product], out = update_book(states.get(product), event)
        if isinstance(out, AuditRecord):
            audits.append(out)
    skipped = {p.product: dict(p.skipped) for p in parts}
    return audits, events, skipped


def _book_after(records: list[dict]) -> tuple[list, list]:
    """The book of :data:`PRODUCT` after ``records``, as the replay builds it."""
    decoder = FrameDecoder("exchange", "t")
    state = None
    for r in records:
        if r.get("product_id") == PRODUCT and "frame" in r:
            for event in decoder.decode(r["frame"], r["t_ns"]):
                state, _ = update_book(state, event)
    book = state.book
    return list(book.levels("bid"))[:LEVELS], list(book.levels("ask"))[:LEVELS]


def _audit(bids, asks, requested_ns, t_ns, failure=None) -> BookAudit:
    return BookAudit(
        PRODUCT, "t", bids, asks, LEVELS, requested_ns, requested_ns + 5, failure, t_ns
    )


def _write(path: Path, records: list, audits: bool = True) -> Path:
    """``records`` (dicts as the writer writes them, or ("requested", t_ns), or a
    BookAudit) through the writer."""
    header = {**HEADER, "products": [PRODUCT]}
    if audits:
        header["audits"] = {"interval": 1.0, "levels": LEVELS}
    writer = RecordingWriter(path, header)
    for r in records:
        if isinstance(r, BookAudit):
            writer.audit(r, r.received_ns)
        elif isinstance(r, tuple):
            writer.audit_requested(PRODUCT, r[1])
        elif r.get("event") == "connected":
            writer.connected(r["product_id"], r["t_ns"])
        else:
            writer.frame(r["product_id"], r["frame"], r["t_ns"])
    writer.close()
    return path


def _session() -> list[dict]:
    return session_records([PRODUCT], messages=60, changes=2)


def test_an_audit_record_round_trips_exactly_with_the_rest_strings():
    bids = [
        (Decimal("65000.50000000"), Decimal("0.10")),
        (Decimal("64999"), Decimal("2")),
    ]
    asks = [(Decimal("65001.0"), Decimal("1.5E-7"))]
    event = _audit(bids, asks, 10, 20)
    line = audit_record(event, 20)
    record, _ = parse_record(line)
    assert record["audit"]["bids"][0] == ["65000.50000000", "0.10"]  # exact text
    assert record["t_ns"] == 20 and record["product_id"] == PRODUCT
    back = audit_of(record, PRODUCT, "t")
    assert back == event
    assert [str(p) for p, _ in back.bids] == ["65000.50000000", "64999"]
    failed = audit_of(
        parse_record(audit_record(_audit([], [], 10, 20, "HTTP 429"), 20))[0],
        PRODUCT,
        "t",
    )
    assert failed.failure == "HTTP 429" and failed.bids == [] and failed.asks == []


@pytest.mark.parametrize(
    ("audit", "why"),
    [
        ("x", "not an object"),
        ({"levels": 0, "requested_ns": 1, "replied_ns": 1}, "levels from 1"),
        ({"levels": 5, "requested_ns": "1", "replied_ns": 1}, "integer times"),
        (
            {"levels": 1, "requested_ns": 1, "replied_ns": 1, "bids": [], "asks": [1]},
            "not [price, size]",
        ),
        (
            {"levels": 1, "requested_ns": 1, "replied_ns": 1, "bids": [["-1", "1"]]},
            "REST book is bad",
        ),
        (
            {
                "levels": 1,
                "requested_ns": 1,
                "replied_ns": 1,
                "bids": [["1", "1"], ["0.5", "1"]],
                "asks": [],
            },
            "at most 1 levels",
        ),
        ({"levels": 1, "requested_ns": 1, "replied_ns": 1, "failure": 3}, "not text"),
    ],
)
def test_a_bad_audit_record_says_why_in_one_line(audit, why):
    got = audit_of({"t_ns": 1, "product_id": PRODUCT, "audit": audit}, PRODUCT, "t")
    assert isinstance(got, str) and why in got and "\n" not in got


def test_a_replay_repeats_the_recorded_audits_at_their_place(tmp_path):
    session = _session()
    first, second = session[:30], session[30:]
    bids, asks = _book_after(first)
    wrong = [(bids[2][0], bids[2][1] + 1), *bids[3:]]  # one level another size
    t = first[-1]["t_ns"]
    records = [
        *first,
        ("requested", t + 1),
        _audit(bids, asks, t + 1, t + 2),  # the book as it is: match
        ("requested", t + 3),
        _audit(bids[:2] + wrong, asks, t + 3, t + 4),  # drift at bids[2]
        ("requested", t + 5),
        _audit([], [], t + 5, t + 6, "timeout"),
        *second,
    ]
    audits, events, skipped = _replayed(_write(tmp_path / "a.jsonl.gz", records))
    assert skipped == {PRODUCT: {}}
    assert [a.result for a in audits] == ["match", "drift", "failed"]
    match, drift, failed = audits
    assert match.compared == 2 * LEVELS and match.touched == 0
    assert [(m[0], m[1], m[2], m[3]) for m in drift.mismatches] == [
        ("bid", bids[2][0], bids[2][1], bids[2][1] + 1)
    ]
    assert failed.reason == "timeout"
    assert match.requested.timestamp() * 1e9 == pytest.approx(t + 1, abs=1000)
    # the events in recorded order: frames, then the audits, then the frames after
    kinds = [type(e).__name__ for e in events]
    at = kinds.index("AuditStarted")
    assert kinds[at : at + 6] == ["AuditStarted", "BookAudit"] * 3
    assert all(k not in ("AuditStarted", "BookAudit") for k in kinds[at + 6 :])


def test_a_level_the_stream_touched_during_the_audit_is_not_compared(tmp_path):
    session = _session()
    first, during = session[:30], session[30:31]
    bids, asks = _book_after(first)
    t = first[-1]["t_ns"]
    after_bids, after_asks = _book_after(first + during)
    records = [
        *first,
        ("requested", t + 1),
        *during,  # touches some prices while the REST book is taken
        _audit(bids, asks, t + 1, t + 2),  # REST taken before that update
    ]
    audits, _, _ = _replayed(_write(tmp_path / "t.jsonl.gz", records))
    assert [a.result for a in audits] == ["match"], audits
    assert audits[0].touched > 0
    assert (bids, asks) != (after_bids, after_asks)  # the update did change the top


def test_audits_off_leave_the_recorded_audits_out(tmp_path):
    session = _session()
    bids, asks = _book_after(session)
    t = session[-1]["t_ns"]
    path = _write(
        tmp_path / "off.jsonl.gz",
        [*session, ("requested", t + 1), _audit(bids, asks, t + 1, t + 2)],
    )
    audits, events, skipped = _replayed(path, audits=False)
    assert audits == [] and skipped == {PRODUCT: {}}
    assert not any(isinstance(e, (AuditStarted, BookAudit)) for e in events)
    assert ReplaySource(path).recorded_audits
    assert not ReplaySource(
        _write(tmp_path / "none.jsonl.gz", session, False)
    ).recorded_audits


def test_a_bad_audit_record_is_skipped_and_counted_and_the_replay_goes_on(tmp_path):
    session = _session()
    t = session[-1]["t_ns"]
    path = _write(tmp_path / "bad.jsonl.gz", session)
    writer = RecordingWriter(path, None, append=True)
    writer._add(
        PRODUCT,
        json.dumps(
            {"t_ns": t + 1, "product_id": PRODUCT, "audit": {"levels": "x"}}
        ).encode()
        + b"\n",
    )
    writer.close()
    audits, events, skipped = _replayed(path)
    assert audits == []
    assert sum(isinstance(e, BookSnapshot) for e in events) == 1
    (why,) = skipped[PRODUCT]
    assert "levels from 1" in why


def test_the_local_exchange_serving_a_recording_passes_audit_records_by(tmp_path):
    session = _session()
    bids, asks = _book_after(session)
    t = session[-1]["t_ns"]
    path = _write(
        tmp_path / "served.jsonl.gz",
        [*session, ("requested", t + 1), _audit(bids, asks, t + 1, t + 2)],
    )
    stats = Stats()
    served = ReplayServer(path, None, stats)
    assert served.products == (PRODUCT,)
    assert stats.snapshot().get("replay_records_skipped", 0) == 0


def test_the_replay_says_it_has_no_rest_books_only_without_recorded_audits(
    tmp_path, caplog
):
    from coinbase.rest import REPLAY_NO_AUDITS
    from service.inputs import build_source, log_resumes
    from service.settings import Settings

    class Shutdown:
        def failed(self, message: str) -> None:
            raise AssertionError(message)

        def add_closer(self, closer: object) -> None:
            pass

    session = _session()
    with_audits = _write(tmp_path / "with.jsonl.gz", session)
    without = _write(tmp_path / "without.jsonl.gz", session, audits=False)
    said = []
    for path, interval in [
        (without, None),
        (without, "0"),
        (with_audits, None),
        (with_audits, "5"),
    ]:
        env = {"ORDERBOOK_REPLAY": str(path)}
        if interval is not None:
            env["ORDERBOOK_AUDIT_INTERVAL"] = interval
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            source, _ = build_source(Settings.from_env(env), Shutdown())
            # said when the run starts (its first partition), not when it is built
            assert REPLAY_NO_AUDITS not in [r.getMessage() for r in caplog.records]
            started = log_resumes(source)
            for part in started.list_parts():
                started.build_part("input", part, None).close()
        messages = [r.getMessage() for r in caplog.records]
        said.append(messages.count(REPLAY_NO_AUDITS))
        assert source.inner.audits == (interval != "0")
    assert said == [1, 0, 0, 0]


# -- the recorder against the local exchange ----------------------------------------------


@pytest.mark.slow
def test_a_recording_with_audits_replays_to_the_audits_its_rest_books_imply(tmp_path):
    """Recorded with audits every 0.5 s against the local exchange; a silent corruption
    injected after two audits. The replay's book step finds exactly the level injected,
    and every audit before it matches (the exchange's clean stream never drifts)."""
    path = tmp_path / "audited.jsonl.gz"

    async def main(exchange: LocalExchange):
        stop = asyncio.Event()
        task = asyncio.create_task(
            record(path, [PRODUCT], url=exchange.url(), stop=stop, audit_interval=0.5)
        )
        await asyncio.to_thread(
            wait_until, lambda: len(exchange.rest_requests()) >= 2, 30, "two audits"
        )
        corruption = await asyncio.to_thread(exchange.corrupt, PRODUCT, "wrong_size")
        sent = len(exchange.rest_requests())
        await asyncio.to_thread(
            wait_until,
            lambda: len(exchange.rest_requests()) >= sent + 3,
            30,
            "three audits after the corruption",
        )
        stop.set()
        return await task, corruption

    with LocalExchange([PRODUCT], depth=50, rate=20) as exchange:
        totals, corruption = asyncio.run(main(exchange))
    recording = Recording.open(path)
    assert recording.header["audits"] == {"interval": 0.5, "levels": 50}
    recorded = [r for _, r in recording.records() if "audit" in r]
    assert totals["audits"] >= 5 and len(recorded) >= 4
    audits, _, skipped = _replayed(path)
    assert skipped == {PRODUCT: {}}
    # one audit record per recorded REST book, with its recorded times
    assert len(audits) == len(recorded)
    assert [(a.requested, a.replied) for a in audits] == [
        (_utc(r["audit"]["requested_ns"]), _utc(r["audit"]["replied_ns"]))
        for r in recorded
    ]
    results = [a.result for a in audits]
    assert "drift" in results, results
    first_drift = results.index("drift")
    assert results[:first_drift] and set(results[:first_drift]) == {"match"}
    # no resync in a replay: later audits wait for a snapshot that never comes
    assert set(results[first_drift + 1 :]) <= {"skipped"}
    drift = audits[first_drift]
    assert [tuple(m) for m in drift.mismatches] == [
        (
            corruption.side,
            corruption.price,
            corruption.client_size,
            corruption.true_size,
        )
    ]


@pytest.mark.slow
def test_the_recorder_command_records_audits_and_says_how_many(tmp_path, capsys):
    """From the command line, the first REST reply not JSON: recorded as the failure,
    replayed as a ``failed`` audit; the later books with the levels asked."""
    out = tmp_path / "cli.jsonl.gz"
    with LocalExchange([PRODUCT], depth=20, rate=20) as exchange:
        exchange.rest_errors("not_json", 1)
        status = recorder_main(
            [
                str(out),
                "--products",
                PRODUCT,
                "--url",
                exchange.url(),
                "--duration",
                "3",
                "--audit-interval",
                "0.5",
                "--audit-levels",
                "3",
            ]
        )
    assert status == 0
    said = capsys.readouterr().out
    assert " REST audits to " in said, said
    books = [r["audit"] for _, r in Recording.open(out).records() if "audit" in r]
    assert len(books) >= 2 and all(b["levels"] == 3 for b in books)
    assert books[0]["failure"] == "not JSON" and "bids" not in books[0]
    assert all(len(b["bids"]) == len(b["asks"]) == 3 for b in books[1:])
    audits, _, _ = _replayed(out)
    assert (audits[0].result, audits[0].reason) == ("failed", "not JSON")
    assert {a.result for a in audits[1:]} == {"match"}
    with pytest.raises(SystemExit):
        recorder_main([str(tmp_path / "x.jsonl.gz"), "--audit-levels", "0"])


def test_the_service_replays_recorded_audits_to_its_outputs_and_reports_frames_only(
    tmp_path, capsys
):
    """The real dataflow: the audit records reach the outputs, and the quality report
    (light and full) counts the recording's frames, not its audit events."""
    from bytewax.testing import TestingSink, run_main

    from dataflow import get_flow
    from service.settings import Settings

    session = _session()
    bids, asks = _book_after(session)
    t = session[-1]["t_ns"]
    path = _write(
        tmp_path / "flow.jsonl.gz",
        [*session, ("requested", t + 1), _audit(bids, asks, t + 1, t + 2)],
    )
    frames = sum("frame" in r for r in session)
    for report in (None, tmp_path / "q.json"):
        out: list = []
        env = {"ORDERBOOK_REPLAY": str(path), "ORDERBOOK_SPREAD_THRESHOLD": "0"}
        if report is not None:
            env["ORDERBOOK_REPLAY_REPORT"] = str(report)
        run_main(get_flow(Settings.from_env(env), sink=TestingSink(out)))
        audits = [r.to_dict() for _, r in out if isinstance(r, AuditRecord)]
        assert [(a["result"], a["compared"]) for a in audits] == [("match", 2 * LEVELS)]
        err = capsys.readouterr().err
        assert f"; {frames} frames (" in err, err
    assert json.loads(report.read_text())["products"][0]["frames"] == frames


def test_a_resumed_replay_does_not_audit_again_before_its_resume_point(tmp_path):
    """Audits before the resume point were written by the run that saved it: the warm-up
    rebuilds the book without them (the rebuilt book's summary keeps the time of the
    last summary, not of an audit); those after it are compared as usual."""
    session = _session()
    first, second = session[:30], session[30:]
    t1, t2 = first[-1]["t_ns"], second[-1]["t_ns"]
    b1, a1 = _book_after(first)
    b2, a2 = _book_after(session)
    decoder, state, last_summary = FrameDecoder("exchange", "t"), None, None
    for r in first[1:]:
        for event in decoder.decode(r["frame"], r["t_ns"]):
            state, summary = update_book(state, event)
            last_summary = summary or last_summary
    records = [
        *first,
        ("requested", t1 + 1000),
        _audit(b1, a1, t1 + 1000, t1 + 500_000),
        *second,
        ("requested", t2 + 1),
        _audit(b2, a2, t2 + 1, t2 + 2),
    ]
    path = _write(tmp_path / "resume.jsonl.gz", records)
    resume_at = len(first) + 2  # the first audit's two records are before it
    source = ReplaySource(path, progress=False)
    part = source.build_part(
        "t", PRODUCT, {"next": resume_at, "stream": 0, "counted": "per product"}
    )
    state, results, events = None, [], []
    for _, event in polled([part], 100_000):
        events.append(event)
        state, out = update_book(state, event)
        if isinstance(out, AuditRecord):
            results.append((out.result, out.requested))
    assert results == [("match", _utc(t2 + 1))]
    assert type(events[0]) is BookSnapshot and events[0].time == last_summary.time
