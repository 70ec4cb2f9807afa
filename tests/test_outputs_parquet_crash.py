"""Parquet output after a hard kill (``kill -9``, the OOM killer): what was written more
than a few seconds before is recovered at the next start (issue 17, finding 8).

Files still open are written as journals in Arrow IPC stream format, readable up to their
last complete batch; a start turns the journals of dead writers into Parquet files.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.support.flow import FlowProcess, flow_env, read_jsonl
from tests.support.outputs import (
    canonical,
    journal_records,
    parquet_records,
    sim_flow_to_jsonl_and_parquet,
    small_recording,
)


@pytest.mark.slow
def test_a_hard_kill_loses_at_most_the_last_seconds_of_parquet_rows(tmp_path):
    """A real flow writing JSON lines and Parquet is killed with SIGKILL; a new start
    (a replay into the same directory) recovers the journals; DuckDB then reads every
    record that the JSON lines held a few seconds before the kill.

    Before: every row since the last roll (up to 5 minutes) sat in ``.inprogress`` files
    without a footer, unreadable, and nothing recovered them."""
    from service.outputs.parquet import LOSS_BOUND_SECONDS

    out, pq = tmp_path / "a.jsonl", tmp_path / "pq"
    flow = sim_flow_to_jsonl_and_parquet(out, pq)
    flow.wait_for(lambda: len(read_jsonl(out)) >= 300, 60, "300 records")
    # Every record the outputs were given by now (the fan-out writes the JSON lines
    # first) must reach a journal within the bound, while the run goes on.
    before = set(canonical(read_jsonl(out)))
    start = time.monotonic()

    def durable() -> bool:
        return before <= set(canonical(journal_records(pq) + parquet_records(pq)))

    flow.wait_for(durable, 60, "the records to reach the journals")
    took = time.monotonic() - start
    assert flow.stop(signal.SIGKILL) == -signal.SIGKILL
    written = set(canonical(read_jsonl(out)))
    assert list(pq.rglob(".part-*.arrows")), "the kill left no journal to recover"

    again = FlowProcess(
        ["bytewax.run", "dataflow:flow"],
        flow_env(
            ORDERBOOK_REPLAY=str(small_recording(tmp_path / "s.jsonl.gz", 200)),
            ORDERBOOK_OUTPUT=f"parquet:{pq}",
        ),
    )
    assert again.finish(timeout=60) == 0, again.stderr[-3000:]
    assert "recovered" in again.stderr
    assert not list(pq.rglob(".part-*")) and not list(pq.rglob("*.inprogress"))
    kept = [r for r in parquet_records(pq) if r["feed"] == "sim"]
    recovered = set(canonical(kept))
    assert len(recovered) == len(kept)  # no row twice
    assert before <= recovered <= written
    # generous: the bound is about a second; a loaded machine must not fail this
    assert took < LOSS_BOUND_SECONDS + 15, took


def _summaries(schema, n: int, start: int = 0) -> list[dict]:
    """Rows of the summary ``schema``: a time, a feed, and every decimal column."""
    import pyarrow as pa

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    decimals = [f.name for f in schema if pa.types.is_decimal(f.type)]
    return [
        {
            "time": t0 + timedelta(seconds=i),
            "feed": "sim",
            **{name: Decimal(i) + Decimal("0.5") for name in decimals},
        }
        for i in range(start, start + n)
    ]


def _journal(root, name: str = ".part-0-1-abcd1234-000001.arrows"):
    """A journal as a killed writer leaves it: three batches of 10 rows, in the
    layout and format of the sink."""
    import pyarrow as pa

    from service.outputs.parquet import schemas

    schema = schemas()["summary"]
    directory = root / "type=summary" / "product_id=BTC-USD" / "date=2026-01-01"
    directory.mkdir(parents=True)
    journal = directory / name
    with pa.OSFile(str(journal), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
        for b in range(3):
            w.write_table(pa.Table.from_pylist(_summaries(schema, 10, 10 * b), schema))
    return journal


def test_a_journal_cut_mid_batch_is_recovered_up_to_its_last_complete_batch(
    tmp_path,
):
    """A kill in the middle of a write leaves half a batch: the batches before it are
    recovered, the journal is replaced by a Parquet file readers see."""
    from service.outputs.parquet import recover

    journal = _journal(tmp_path)
    size = journal.stat().st_size
    os.truncate(journal, size - 100)  # the third batch cut short
    assert recover(tmp_path) == (1, 20)
    rows = parquet_records(tmp_path)
    assert sorted(r["bid_price"] for r in rows) == sorted(
        str(Decimal(i) + Decimal("0.5")) for i in range(20)
    )
    assert not list(tmp_path.rglob(".part-*"))
    assert [p.name for p in tmp_path.rglob("*.parquet")] == [
        "part-0-1-abcd1234-000001.parquet"
    ]


def test_recovery_leaves_alone_a_journal_its_writer_still_holds(tmp_path):
    """Several processes may share one directory: a journal locked by a live writer
    is not touched by another process's start."""
    from service.outputs.parquet import recover

    journal = _journal(tmp_path)
    fd = os.open(journal, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert recover(tmp_path) == (0, 0)
        assert journal.exists() and not list(tmp_path.rglob("*.parquet"))
    finally:
        os.close(fd)
    assert recover(tmp_path) == (1, 30)


def test_a_journal_already_converted_is_removed_not_recovered_twice(tmp_path):
    """A kill between the rename of the finished Parquet file and the removal of its
    journal: the next start removes the journal, and no row is there twice."""
    from service.outputs.parquet import recover

    journal = _journal(tmp_path)
    copy = journal.read_bytes()
    assert recover(tmp_path) == (1, 30)
    journal.write_bytes(copy)
    assert recover(tmp_path) == (0, 0)
    assert not journal.exists() and len(parquet_records(tmp_path)) == 30
