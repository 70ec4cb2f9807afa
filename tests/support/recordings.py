"""Synthetic recordings (``python -m recording`` format), for the tests and the benches.

:func:`write_session` is the benches' session (``bench/bench_flow.py``,
``bench/bench_replay_scale.py``) and the output tests' small recording: the local
exchange's market model, ~1,000 levels a side, Exchange-feed frames 1 ms apart.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from local_exchange.market import Market
from recording.writer import RecordingWriter

PRODUCTS = ["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR"]
"""The four default products."""


def write_session(path: Path, messages: int, changes_per_batch: int) -> tuple[int, int]:
    """A snapshot per product, then ``messages`` l2updates of ``changes_per_batch``
    changes, round-robin over :data:`PRODUCTS`. Returns (frames, changes) written."""
    market = Market(PRODUCTS, depth=1000, changes_per_batch=changes_per_batch, seed=1)
    writer = RecordingWriter(
        path,
        {
            "protocol": "exchange",
            "feed": "exchange",
            "url": "sim",
            "products": PRODUCTS,
            "started": "bench",
        },
    )
    t = datetime(2026, 1, 1, tzinfo=UTC)
    t_ns = 1_767_225_600_000_000_000
    for pid in PRODUCTS:
        writer.connected(pid, t_ns)
        bids, asks = market.snapshot(pid)
        frame = {"type": "snapshot", "product_id": pid, "asks": asks, "bids": bids}
        writer.frame(pid, json.dumps(frame), t_ns)
    sides = {"bid": "buy", "ask": "sell"}
    changes = 0
    for i in range(messages):
        pid = PRODUCTS[i % len(PRODUCTS)]
        batch = market.next_batch(pid)
        t += timedelta(microseconds=1000)
        t_ns += 1_000_000
        frame = {
            "type": "l2update",
            "product_id": pid,
            "changes": [[sides[s], p, q] for s, p, q in batch],
            "time": t.isoformat().replace("+00:00", "Z"),
        }
        writer.frame(pid, json.dumps(frame), t_ns)
        changes += len(batch)
    writer.close()
    return messages + len(PRODUCTS), changes
