"""The book step's side of the REST audit (issue 19, docs/audit.md): pure, no sockets.

An :class:`events.AuditStarted` starts noting the prices the stream touches; the
:class:`events.BookAudit` that follows is compared with the book over the REST levels'
price range, touched prices left out; every result is one ``audit`` record through
every path of the flow.
"""

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from book_step import BookStep, EachEvent, SpreadFilter, UpdateBook, update_book
from dataflow import get_flow
from events import (
    BID,
    AuditStarted,
    BookAudit,
    BookChanges,
    BookReset,
    BookSnapshot,
)
from records import AuditRecord
from resync import ResyncRequests
from service.settings import Settings

P = "BTC-USD"
T = datetime(2026, 12, 4, 23, 0, tzinfo=UTC)
REQUESTED = 1_790_000_000_000_000_000
REPLIED = REQUESTED + 40_000_000
BIDS = [(D(100 - i), D(i + 1)) for i in range(10)]  # 100..91, best first
ASKS = [(D(101 + i), D(i + 1)) for i in range(10)]  # 101..110


def snapshot(bids=BIDS, asks=ASKS):
    return BookSnapshot(P, list(bids), list(asks), None, "sim", REQUESTED - 10**9)


def changes(*chs):
    return BookChanges(P, list(chs), T, "sim", REQUESTED + 1)


def started(requested=REQUESTED):
    return AuditStarted(P, "sim", requested)


def audit(bids=BIDS, asks=ASKS, levels=5, failure=None, requested=REQUESTED):
    """The REST book's top ``levels`` a side (all of them when the side has fewer)."""
    return BookAudit(
        P,
        "sim",
        [] if failure else list(bids)[:levels],
        [] if failure else list(asks)[:levels],
        levels,
        requested,
        REPLIED,
        failure,
        REPLIED + 10**9,
    )


def run(events, requests=None):
    state, out = None, []
    for event in events:
        state, record = update_book(state, event, requests)
        out.append(record)
    return state, out


def last_audit(events, requests=None) -> AuditRecord:
    _, out = run(events, requests)
    assert type(out[-1]) is AuditRecord
    return out[-1]


def test_a_clean_book_matches_and_asks_for_nothing():
    requests = ResyncRequests()
    record = last_audit([snapshot(), started(), audit()], requests)
    assert record.result == "match"
    assert record.compared == 10 and record.touched == 0 and record.mismatches == ()
    assert requests.pending() == {}
    assert record.requested == datetime.fromtimestamp(REQUESTED / 1e9, UTC)
    assert record.replied == datetime.fromtimestamp(REPLIED / 1e9, UTC)
    assert record.levels == 5 and record.feed == "sim" and record.product_id == P


def test_a_level_the_stream_touched_is_not_drift():
    # the REST book was taken before the stream's change of 99 arrived: the sizes
    # differ, but the stream touched 99 meanwhile, so the comparison leaves it out
    requests = ResyncRequests()
    record = last_audit(
        [snapshot(), started(), changes((BID, D(99), D(7))), audit()], requests
    )
    assert record.result == "match"
    assert record.touched == 1 and record.compared == 9
    assert requests.pending() == {}


def test_a_change_before_the_request_is_not_touched():
    # changed before AuditStarted: compared like any other level (and equal to REST)
    rest = [(D(100), D(1)), (D(99), D(7)), *BIDS[2:]]
    record = last_audit(
        [snapshot(), changes((BID, D(99), D(7))), started(), audit(bids=rest)]
    )
    assert record.result == "match" and record.touched == 0


def test_a_corrupted_untouched_level_is_drift_and_resyncs_the_product(caplog):
    # our book missed an update of ask 103: REST says 9, we still hold 3
    rest_asks = [*ASKS[:2], (D(103), D(9)), *ASKS[3:]]
    requests = ResyncRequests()
    with caplog.at_level(logging.WARNING, logger="book_step"):
        record = last_audit([snapshot(), started(), audit(asks=rest_asks)], requests)
    assert record.result == "drift"
    assert record.mismatches == (("ask", D(103), D(3), D(9)),)
    assert P in requests.pending() and "audit" in requests.pending()[P]
    line = caplog.messages[-1]
    assert P in line and "ask 103: ours 3, REST 9" in line
    assert "unchanged for at least 1.0 s" in line and "snapshot 2.0 s ago" in line
    as_json = json.loads(record.to_json())
    assert as_json["type"] == "audit" and as_json["result"] == "drift"
    assert as_json["mismatches"] == [
        {"side": "ask", "price": "103", "ours": "3", "rest": "9"}
    ]
    assert AuditRecord.from_dict(as_json) == record
    assert "ask 103: ours 3, REST 9" in str(record)


def test_a_level_missing_on_either_side_is_drift():
    # REST has bid 98.5 we never got; we hold bid 97 that REST removed
    rest_bids = [BIDS[0], BIDS[1], (D("98.5"), D(4)), BIDS[2], *BIDS[4:]]
    record = last_audit([snapshot(), started(), audit(bids=rest_bids, levels=5)])
    assert record.result == "drift"
    assert record.mismatches == (
        ("bid", D("98.5"), D(0), D(4)),
        ("bid", D(97), D(4), D(0)),
    )


def test_a_stale_best_level_above_the_rest_book_is_drift():
    # our book kept a bid better than REST's best: the worst kind of drift
    record = last_audit([snapshot(), started(), audit(bids=BIDS[1:])])
    assert record.result == "drift"
    assert record.mismatches == (("bid", D(100), D(1), D(0)),)


def test_levels_beyond_the_rest_range_are_ignored():
    # REST gave the 5 levels asked: our levels below bid 96 / above ask 105 are not
    # compared, even where they differ from the rest of the REST book
    rest_bids = BIDS[:5]
    ours = [*BIDS[:5], (D(90), D(50))]  # 90 is beyond the range: never compared
    record = last_audit(
        [snapshot(bids=ours + BIDS[5:]), started(), audit(bids=rest_bids, levels=5)]
    )
    assert record.result == "match" and record.compared == 10


def test_fewer_levels_than_asked_compare_the_whole_side():
    # REST has 3 asks only while 5 were asked: that is its whole side, so our 4th and
    # 5th asks are levels REST does not have
    record = last_audit([snapshot(), started(), audit(asks=ASKS[:3], levels=5)])
    assert record.result == "drift"
    assert [m[1] for m in record.mismatches] == [D(104), D(105), *range(106, 111)]
    assert all(m[0] == "ask" and m[3] == 0 for m in record.mismatches)


@pytest.mark.parametrize(
    "between, reason",
    [
        (snapshot(), "a snapshot in between"),
        (BookReset(P, "reconnect", "sim"), "the book was dropped in between"),
    ],
)
def test_a_snapshot_or_reset_in_between_skips(between, reason):
    requests = ResyncRequests()
    events = [snapshot(), started(), between]
    if isinstance(between, BookReset):
        events.append(snapshot())
    record = last_audit([*events, audit(asks=ASKS[1:])], requests)
    assert record.result == "skipped" and record.reason == reason
    assert record.mismatches == () and requests.pending() == {}


def test_no_book_or_no_pending_request_skips():
    assert last_audit([started(), audit()]).reason == "no book"
    assert last_audit([snapshot(), audit()]).reason == "no pending request"
    # a reply to another request than the pending one
    record = last_audit([snapshot(), started(), audit(requested=REQUESTED + 1)])
    assert record.result == "skipped" and record.reason == "no pending request"


def test_one_audit_per_request():
    # the pending audit is used once: a second reply finds none
    _, out = run([snapshot(), started(), audit(), audit()])
    assert [r.result for r in out[2:]] == ["match", "skipped"]


def test_a_failure_is_failed_and_touches_nothing():
    requests = ResyncRequests()
    state, out = run([snapshot(), started(), audit(failure="HTTP 429")], requests)
    record = out[-1]
    assert record.result == "failed" and record.reason == "HTTP 429"
    assert state.audit is None and state.book is not None
    assert requests.pending() == {}


def test_no_pending_audit_keeps_no_touched_prices():
    state, _ = run([snapshot(), changes((BID, D(99), D(7)))])
    assert state.audit is None


def test_audit_records_pass_every_path_of_the_book_step():
    events = [snapshot(), started(), audit(asks=ASKS[1:])]
    spread = SpreadFilter(D(50))  # a threshold no summary here passes
    plain, step = EachEvent(UpdateBook()), EachEvent(BookStep(levels=5))
    plain_out, step_out = [], []
    s1 = s2 = None
    for event in events:
        s1, due = plain(s1, [event])
        plain_out.extend(r for _, r in spread.timed((P, due)))
        s2, due = step(s2, [event])
        step_out.extend(r for _, r in spread.records((P, due)))
    assert [type(r).__name__ for r in plain_out] == ["AuditRecord"]
    assert [type(r).__name__ for r in step_out] == ["OrderBookDepth", "AuditRecord"]
    assert plain_out[0].result == step_out[1].result == "drift"


@pytest.mark.parametrize("depth_levels", [0, 5])
def test_audit_records_reach_the_flows_sink(depth_levels):
    """Both paths of the dataflow (plain, and book step with depth) carry them."""
    events = [snapshot(), started(), audit(asks=ASKS[1:])]
    out = []
    settings = Settings.from_env(
        {
            "ORDERBOOK_SPREAD_THRESHOLD": "50",
            "ORDERBOOK_DEPTH_LEVELS": str(depth_levels),
        }
    )
    flow = get_flow(
        settings,
        source=TestingSource([(P, e) for e in events]),
        products=[P],
        sink=TestingSink(out),
    )
    run_main(flow)
    audits = [r for _, r in out if type(r) is AuditRecord]
    assert [a.result for a in audits] == ["drift"]


def drifted() -> AuditRecord:
    return last_audit(
        [snapshot(), started(), audit(bids=BIDS[1:], asks=[(D(101), D(5)), *ASKS[1:]])]
    )


def test_the_metrics_count_audits_by_result_and_drifted_levels():
    from service import metrics

    product = "AUD-USD"
    records = [
        AuditRecord(product, T, "match", 5, compared=10),
        AuditRecord(product, T, "failed", 5, reason="timeout"),
        AuditRecord(
            product,
            T,
            "drift",
            5,
            compared=10,
            mismatches=(("bid", D(1), D(2), D(3)), ("ask", D(4), D(0), D(1))),
        ),
    ]
    metrics.sink_observer()([(0, r) for r in records])
    assert metrics.AUDITS.labels(product, "match")._value.get() == 1
    assert metrics.AUDITS.labels(product, "failed")._value.get() == 1
    assert metrics.AUDITS.labels(product, "drift")._value.get() == 1
    assert metrics.AUDIT_DRIFT_LEVELS.labels(product)._value.get() == 2
    assert metrics.SUMMARIES.labels(product, "")._value.get() == 0  # not a summary


def test_text_and_jsonl_show_an_audit_record():
    from service.outputs.streams import format_jsonl, format_text

    record = drifted()
    assert json.loads(format_jsonl(record))["mismatches"] == [
        {"side": "bid", "price": "100", "ours": "1", "rest": "0"},
        {"side": "ask", "price": "101", "ours": "1", "rest": "5"},
    ]
    line = format_text(record)
    assert line.startswith("BTC-USD  audit drift: 11 levels compared, 2 differ")
    assert "bid 100: ours 1, REST 0" in line and line.endswith("[sim]")


@pytest.mark.slow  # the Parquet partition runs a flushing thread
def test_parquet_stores_audit_records_under_their_own_type(tmp_path):
    from service.outputs.parquet import ParquetSink
    from service.outputs.tardis import TardisSink
    from service.runtime import Shutdown
    from tests.support.outputs import parquet_records

    records = [
        drifted(),
        last_audit([snapshot(), started(), audit(failure="HTTP 500")]),
    ]
    part = ParquetSink(tmp_path / "pq", Shutdown()).build("out", 0, 1)
    part.write_batch(records)
    part.close()
    assert list(
        (tmp_path / "pq").glob("type=audit/product_id=BTC-USD/date=*/*.parquet")
    )
    stored = sorted(parquet_records(tmp_path / "pq"), key=lambda r: r["result"])
    expected = sorted((r.to_dict() for r in records), key=lambda r: r["result"])
    assert stored == expected
    (tmp_path / "tardis").mkdir()
    tardis = TardisSink(tmp_path / "tardis", 5, 1.0, Shutdown()).build("out", 0, 1)
    tardis.write_batch(records)  # depth records only: audits are not its business
    tardis.close()
    assert not list((tmp_path / "tardis").rglob("*"))


def test_the_views_show_each_products_last_audit_result_and_age():
    import io

    from rich.console import Console

    from views.live import LiveView, text_line
    from views.state import MarketBoard

    board = MarketBoard([P, "ETH-USD"])
    book = snapshot()
    _, out = run([book, started(), audit(asks=ASKS[1:])])
    summary, record = out[0], out[-1]
    board.update([summary])
    before = board.row(P)
    assert before["audit"] is None and before["audit_age"] is None
    assert board.update([record, {"type": "audit", "product_id": P, "result": "<b>"}])
    row = board.row(P)
    assert row["audit"] is None  # an unknown result is never shown
    board.update([record])
    row = board.row(P)
    assert row["audit"] == "drift" and 0 <= row["audit_age"] < 60
    assert row["updates"] == before["updates"]  # an audit is no market update
    assert row["state"] == before["state"]
    assert "audit drift 0.0s" in text_line(row)
    assert "audit" not in text_line(board.row("ETH-USD"))
    console = Console(file=io.StringIO(), width=250, force_terminal=False)
    console.print(LiveView(board, stream=io.StringIO())._table(board.rows()))
    table = console.file.getvalue()
    assert "audit" in table and "drift 0.0s" in table


def test_a_rest_book_that_never_comes_stops_the_noting(monkeypatch):
    import book_step

    monkeypatch.setattr(book_step, "MAX_NOTED", 3)
    monkeypatch.setattr(book_step, "STATUS_INTERVAL", 0.0)  # checked with the status
    many = [changes((BID, D(90 + i), D(1))) for i in range(7)]
    state, out = run([snapshot(), started(), *many])
    assert len(state.audit.touched) <= 4
    record = last_audit([snapshot(), started(), *many, audit()])
    assert record.result == "skipped" and "more than 3 prices" in record.reason


def test_one_drift_is_counted_once_until_the_fresh_snapshot():
    wrong = [*ASKS[:2], (D(103), D(9)), *ASKS[3:]]
    _, out = run(
        [snapshot(), started(), audit(asks=wrong), started(), audit(asks=wrong)]
    )
    assert out[2].result == "drift"
    assert out[4].result == "skipped" and "awaiting the fresh snapshot" in out[4].reason
    _, out = run(
        [snapshot(), started(), audit(asks=wrong), snapshot(), started(), audit()]
    )
    assert out[-1].result == "match"


def test_the_book_steps_metrics_take_audit_events_for_no_market_data():
    from service.metrics import MESSAGES, SNAPSHOTS, BookMetrics

    product = "MET-USD"
    metrics, state = BookMetrics(), None
    step = BookStep(metrics=metrics)
    for event in [snapshot(), started(), audit(), changes((BID, D(99), D(7)))]:
        event = type(event)(**{**_fields(event), "product_id": product})
        state, _ = step(state, event)
    assert SNAPSHOTS.labels(product, "sim")._value.get() == 1
    assert MESSAGES.labels(product, "sim")._value.get() == 2  # snapshot + changes


def _fields(event) -> dict:
    return {name: getattr(event, name) for name in event.__slots__}
