"""Synthetic recordings (``python -m recording`` format) and their replays, for the tests
and the benches.

:func:`write_session` is the benches' session (``bench/bench_flow.py``,
``bench/bench_replay_scale.py``) and the output tests' small recording: the local
exchange's market model, ~1,000 levels a side, written by the real writer.
:func:`session_records` is a smaller session (60 levels a side) as records, which
:func:`write_recording` writes line by line (version 1, so a test can damage exactly the
line it is about) and :func:`write_blocks` through the writer (version 2). Both sessions
are Exchange-feed frames 1 ms apart from :data:`T0`; :func:`replay` and
:func:`replay_by_hand` read a recording back.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bytewax.testing import TestingSink, run_main

from book_step import update_book
from dataflow import get_flow
from local_exchange.market import Market
from recording.replay import ReplaySource
from recording.writer import RecordingWriter
from service.settings import Settings
from tests.support.flow import by_product

PRODUCTS = ["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR"]
"""The four default products."""
T0_NS = 1_767_225_600_000_000_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)
"""2026-01-01 00:00 UTC, where both sessions begin (:data:`T0_NS` in nanoseconds)."""


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
    t = T0
    t_ns = T0_NS
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


def session_records(
    products=PRODUCTS, messages: int = 400, changes: int = 3, seed: int = 1
) -> list[dict]:
    """A session in the writer's record shape: connected + snapshot per product, updates."""
    market = Market(products, depth=60, changes_per_batch=changes, seed=seed)
    out: list[dict] = []
    for pid in products:
        out.append({"t_ns": T0_NS, "product_id": pid, "event": "connected"})
        bids, asks = market.snapshot(pid)
        frame = {"type": "snapshot", "product_id": pid, "asks": asks, "bids": bids}
        out.append({"t_ns": T0_NS, "product_id": pid, "frame": json.dumps(frame)})
    sides = {"bid": "buy", "ask": "sell"}
    for i in range(messages):
        pid = products[i % len(products)]
        t = T0 + timedelta(milliseconds=i + 1)
        frame = {
            "type": "l2update",
            "product_id": pid,
            "changes": [[sides[s], p, q] for s, p, q in market.next_batch(pid)],
            "time": t.isoformat().replace("+00:00", "Z"),
        }
        out.append(
            {
                "t_ns": T0_NS + (i + 1) * 1_000_000,
                "product_id": pid,
                "frame": json.dumps(frame),
            }
        )
    return out


def write_recording(path: Path, lines: list, products=PRODUCTS, protocol="exchange"):
    """Header, then each line: a dict as the writer writes it, str/bytes verbatim."""
    header = {
        "format": "coinbase-l2-recording",
        "version": 1,
        "protocol": protocol,
        "feed": protocol,
        "url": "test",
        "products": list(products),
        "started": "test",
    }
    with gzip.open(path, "wb") as f:
        f.write(json.dumps(header).encode() + b"\n")
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, separators=(",", ":"))
            if isinstance(line, str):
                line = line.encode()
            f.write(line + b"\n")
    return path


HEADER = {"protocol": "exchange", "feed": "exchange", "url": "test", "started": "test"}


def write_blocks(path: Path, records: list[dict], products=PRODUCTS, **limits) -> Path:
    """``records`` through the writer (version 2), with ``limits`` set on it."""
    writer = RecordingWriter(path, {**HEADER, "products": list(products)})
    for name, value in limits.items():
        setattr(writer, name, value)
    for r in records:
        if r.get("event") == "connected":
            writer.connected(r["product_id"], r["t_ns"])
        else:
            writer.frame(r["product_id"], r["frame"], r["t_ns"])
    writer.close()
    return path


def replay(
    path, runner=run_main, products=PRODUCTS, products_arg=None, **source_args
) -> dict:
    """Summaries by product of a replay; ``products_arg`` None replays every product."""
    out: list = []
    flow = get_flow(
        Settings(spread_threshold_pct=0),
        source=ReplaySource(
            path, products if products_arg is None else products_arg, **source_args
        ),
        products=products,
        sink=TestingSink(out),
    )
    runner(flow)
    return by_product([s.to_dict() for _, s in out])


def report_of(stderr: str, path: Path) -> str:
    """The replay report of ``path`` in ``stderr`` (the last one)."""
    reports = [
        x for x in stderr.splitlines() if x.startswith(f"replay of {path.name} ")
    ]
    assert reports, stderr[-2000:]
    return reports[-1]


def polled(parts: list, rounds: int, snapshot: bool = False) -> Iterator[tuple]:
    """``(product, event)`` of every partition, polled in turn to its end (each one's
    ``snapshot()`` taken after every poll with ``snapshot``); AssertionError when they
    have not all ended after ``rounds`` rounds."""
    live = list(parts)
    for _ in range(rounds):
        if not live:
            return
        for part in list(live):
            try:
                batch = part.next_batch()
            except StopIteration:
                live.remove(part)
                continue
            yield from batch
            if snapshot:
                part.snapshot()
    raise AssertionError("the replay never ended")


def replay_by_hand(path: Path) -> int:
    """Drive every partition of a replay to its end; apply every event; return events."""
    source = ReplaySource(path, progress=False)
    parts = [source.build_part("fuzz", p, None) for p in source.list_parts()]
    states: dict = {}
    events = 0
    for product, event in polled(parts, 10_000, snapshot=True):
        states[product], _ = update_book(states.get(product), event)
        events += 1
    return events
