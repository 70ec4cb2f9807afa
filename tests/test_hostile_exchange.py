"""The whole service against a hostile exchange: nothing a feed sends stops the dataflow,
floods stderr, leaks raw text into a log or an output, or grows memory without bound.

Property-style: each seed draws other attack scripts (tests/support/hostile_exchange.py:
extreme numbers, forged ids, binary, invalid and nested JSON, floods, frames over the
size limit), one script per connection; every script ends with a sentinel snapshot, so
the run must reach the clean connection after them with correct books, then stop cleanly on SIGTERM.
Time is bounded by the waits below, memory by the process's peak RSS.
"""

from __future__ import annotations

import re
import signal
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common.domain import is_product_id
from tests.support.flow import FlowProcess, flow_env, read_jsonl
from tests.support.hostile_exchange import HostileExchange

PRODUCTS = ["BTC-USD", "ETH-USD"]
MAX_MESSAGE_BYTES = 1 << 20
"""The client's frame limit in this test; the server's over-limit frames are 4 MiB."""
PEAK_RSS_BOUND_MB = 600
"""Measured peak of a clean run of this test: about 150 MB; 1 MB ids, 100,000-deep JSON
and 4 MiB frames must not take it anywhere near this."""
STDERR_BOUND = 400_000
"""Characters of stderr for the whole run: 3 floods of 5,000 malformed updates logged
line by line would be megabytes; rate-limited, tens of kilobytes."""


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def _finite_positive(text: str) -> bool:
    value = Decimal(text)
    return value.is_finite() and value >= 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_the_flow_survives_a_hostile_exchange(tmp_path, seed):
    out = tmp_path / "out.jsonl"
    parquet_dir = tmp_path / "parquet"
    with HostileExchange(seed, PRODUCTS, scripts=4) as exchange:
        flow = FlowProcess(
            ["bytewax.run", "dataflow:flow"],
            flow_env(
                ORDERBOOK_FEED="exchange",
                ORDERBOOK_WS_URL=exchange.url,
                ORDERBOOK_PRODUCTS=",".join(PRODUCTS),
                ORDERBOOK_SPREAD_THRESHOLD="0",
                ORDERBOOK_OUTPUT=f"jsonl:{out},parquet:{parquet_dir}",
                ORDERBOOK_MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES),
            ),
        )
        last = exchange.sentinel_bid(len(exchange.scripts))

        def every_book_at_the_last_sentinel() -> bool:
            tops = {r["product_id"]: r["bid_price"] for r in read_jsonl(out)}
            return all(tops.get(p) == last for p in PRODUCTS)

        try:
            flow.wait_for(
                every_book_at_the_last_sentinel, 120, "every book at the last sentinel"
            )
            peak = _peak_rss_mb(flow.proc.pid)
            assert flow.proc.poll() is None, "the flow ended"
            status = flow.stop(signal.SIGTERM)
        finally:
            flow.stop(signal.SIGKILL)

    assert exchange.connections > len(exchange.scripts)
    assert {"huge", "flood"} <= set(exchange.attacks_sent)
    assert status == 0, flow.stderr[-3000:]
    assert "Traceback" not in flow.stderr and "panicked" not in flow.stderr
    assert "\x1b" not in flow.stderr, "a raw escape reached the log"
    assert not re.search(r"^2026-01-01 00:00:00 ERROR forged", flow.stderr, re.M)
    assert len(flow.stderr) < STDERR_BOUND, f"{len(flow.stderr)} characters of stderr"
    assert peak < PEAK_RSS_BOUND_MB, f"peak RSS {peak:.0f} MB"

    records = read_jsonl(out)
    assert records
    for record in records:
        assert is_product_id(record["product_id"]) and record["product_id"] in PRODUCTS
        for key in ("bid_price", "bid_size", "ask_price", "ask_size"):
            assert _finite_positive(record[key]), record
    # Parquet: files only inside its directory, every row readable and in the domain
    assert not (tmp_path.parent / "owned").exists()
    files = sorted(parquet_dir.rglob("*.parquet"))
    assert files, "no Parquet file"
    assert all(parquet_dir in f.parents for f in files)
    rows = sum(pq.read_table(f).num_rows for f in files)
    assert rows == len(records)
