"""Outputs failing for real, in a process of their own (the failure path ends the process
with ``os._exit``): a record Parquet cannot store, any exception from an output, a FIFO
with a waiting reader (issue 17, findings 3 and 18)."""

from __future__ import annotations

import json
import os
import select
import textwrap
import threading

import pytest

from tests.support.flow import FlowProcess, flow_env, read_jsonl, run_script
from tests.support.outputs import canonical, parquet_records, small_recording

pytestmark = pytest.mark.slow

_RECORDS = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    from records import OrderBookSummary
    from service.outputs import FanOutSink, fan_out, parse_outputs
    from service.runtime import SHUTDOWN

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    good = [
        OrderBookSummary.from_top(
            "BTC-USD", Decimal(100 + i), Decimal("1.5"), Decimal(101 + i),
            Decimal("2"), t0 + timedelta(seconds=i), "sim",
        )
        for i in range(60)
    ]
    timed = lambda records: [(0, r) for r in records]  # the dataflow's pairs
    """
)


@pytest.mark.parametrize("field, value", [("bid_size", "1e-40"), ("ask_price", "1e25")])
def test_a_record_parquet_cannot_store_stops_the_run_in_one_line_keeping_earlier_rows(
    tmp_path, field, value
):
    """Finding 3: a value outside decimal128(38, 18) made pyarrow raise ArrowInvalid,
    which the fan-out did not catch: a Rust panic, SIGABRT, no Parquet file at all.
    Now: the output-failure path (one line naming the output, the field and the value,
    status 1), and every other record of the run readable in Parquet."""
    out, pq = tmp_path / "a.jsonl", tmp_path / "pq"
    script = _RECORDS + textwrap.dedent(
        """
        field, value, outputs = sys.argv[1:4]
        bad = replace(good[50], **{field: Decimal(value)})
        items = good[:50] + [bad] + good[51:]
        flow = Dataflow("t")
        records = op.input("in", flow, TestingSource(timed(items), batch_size=10))
        op.output("out", records, fan_out(parse_outputs(outputs).specs, SHUTDOWN))
        run_main(flow)
        """
    )
    proc = run_script(script, field, value, f"jsonl:{out},parquet:{pq}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "panic" not in proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if "failed, stopping" in ln]
    assert len(failed) == 1, proc.stderr[-3000:]
    assert f"output parquet:{pq}" in failed[0] and field in failed[0]
    written = read_jsonl(out)
    assert len(written) == 60
    kept = canonical(parquet_records(pq))
    assert set(canonical(written[:50])) <= set(kept)  # every earlier row is readable
    assert set(kept) == set(canonical(written[:50] + written[51:]))
    assert not list(pq.rglob("*.inprogress")) and not list(pq.rglob(".*.arrows"))


def test_any_exception_an_output_raises_stops_the_run_in_one_line(tmp_path):
    """Finding 3, the fan-out's part: not only OSError; any exception of an output is
    an output failure, handled by the one path (one line, the others closed, status 1)."""
    pq = tmp_path / "pq"
    script = _RECORDS + textwrap.dedent(
        """
        from bytewax.outputs import DynamicSink, StatelessSinkPartition

        class Broken(StatelessSinkPartition):
            def write_batch(self, items):
                raise TypeError("an unexpected bug in an output")

        class BrokenSink(DynamicSink):
            def build(self, step_id, worker_index, worker_count):
                return Broken()

        parquet = fan_out(parse_outputs(sys.argv[1]).specs, SHUTDOWN).outputs
        outputs = parquet + [("broken", BrokenSink())]
        flow = Dataflow("t")
        records = op.input("in", flow, TestingSource(timed(good), batch_size=10))
        op.output("out", records, FanOutSink(outputs, SHUTDOWN))
        run_main(flow)
        """
    )
    proc = run_script(script, f"parquet:{pq}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "panic" not in proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if "failed, stopping" in ln]
    assert len(failed) == 1, proc.stderr[-3000:]
    assert "output broken failed" in failed[0]
    assert "TypeError: an unexpected bug in an output" in failed[0]
    assert len(parquet_records(pq)) == 10  # the other output's rows: closed, readable


class _FifoReader:
    """A reader already waiting on a FIFO, like ``cat FIFO``: it reads until the last
    writer closes (end of file), then closes its end."""

    def __init__(self, path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                select.select([self.fd], [], [])  # data, or every writer gone
                try:
                    chunk = os.read(self.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                self.data += chunk
        finally:
            os.close(self.fd)


def test_a_fifo_with_a_waiting_reader_gets_every_record(tmp_path):
    """Finding 18: the start check's open and close gave the reader its end of file; the
    sink's open then blocked forever, silently."""
    recording = small_recording(tmp_path / "session.jsonl.gz", 500)
    fifo, copy = tmp_path / "fifo", tmp_path / "copy.jsonl"
    os.mkfifo(fifo)
    reader = _FifoReader(fifo)
    env = flow_env(
        ORDERBOOK_REPLAY=str(recording),
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_OUTPUT=f"jsonl:{fifo},jsonl:{copy}",
    )
    flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
    assert flow.finish(timeout=60) == 0, flow.stderr[-3000:]
    reader.thread.join(timeout=30)
    assert not reader.thread.is_alive()  # the reader saw the end when the run ended
    got = [json.loads(line) for line in reader.data.decode().splitlines()]
    assert got and got == read_jsonl(copy)
