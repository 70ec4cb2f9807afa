"""End-to-end throughput of the dataflow on one worker, against a plain Python loop.

A simulated session (Exchange-feed frames: a snapshot then l2update batches for each of the
four default products, ~1,000 levels a side) is written as a recording, then replayed as
fast as possible (1) through the real dataflow under ``run_main`` (replay source -> book
step -> spread filter -> sink) and (2) by a plain loop doing the same work without Bytewax
(read, decode, update the book, filter). Both include reading the gzip recording.

Targets (issue #5): >= 50,000 messages/s, and >= half the plain loop's rate. Measured
for 5 changes per message (the local exchange's default, a busy BTC-USD batch) and 3
(closer to the average live level2_batch message).

    python bench/bench_flow.py [--messages 200000] [--changes-per-batch 5,3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from book_step import SpreadFilter, update_book
from coinbase.decode import FrameDecoder
from dataflow import get_flow
from local_exchange.market import Market
from recording.format import Recording, RecordingWriter
from recording.replay import ReplaySource
from service.runtime import tune_garbage_collector
from service.settings import Settings

PRODUCTS = ["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR"]
THRESHOLD = Decimal(0)  # keep every summary: the most output work


def write_session(path: Path, messages: int, changes_per_batch: int) -> tuple[int, int]:
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


class _CountingSink(DynamicSink):
    def __init__(self) -> None:
        self.count = 0

    def build(self, step_id, worker_index, worker_count):
        sink = self

        class Part(StatelessSinkPartition):
            def write_batch(self, items):
                sink.count += len(items)

        return Part()


def run_dataflow(path: Path) -> tuple[float, int]:
    sink = _CountingSink()
    flow = get_flow(
        Settings(spread_threshold_pct=THRESHOLD),
        source=ReplaySource(path),
        products=PRODUCTS,
        sink=sink,
    )
    start = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - start, sink.count


def run_plain_loop(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    keep = SpreadFilter(THRESHOLD)
    decoders = {p: FrameDecoder("exchange", "replay") for p in PRODUCTS}
    states: dict = {}
    emitted = 0
    for _, record in Recording.open(path).records():
        frame = record.get("frame")
        if frame is None:
            continue
        for event in decoders[record["product_id"]].decode(frame, record["t_ns"]):
            state, summary = update_book(states.get(event.product_id), event)
            states[event.product_id] = state
            if keep((event.product_id, summary)) is not None:
                emitted += 1
    return time.perf_counter() - start, emitted


def measure(messages: int, changes_per_batch: int, repeat: int) -> dict:
    """Median of ``repeat`` runs of the dataflow and the plain loop, interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "session.jsonl.gz"
        messages, changes = write_session(path, messages, changes_per_batch)
        flow_runs, loop_runs = [], []
        for _ in range(repeat):
            flow_runs.append(run_dataflow(path))
            loop_runs.append(run_plain_loop(path))
    assert flow_runs[0][1] == loop_runs[0][1], "the flow and the loop disagree"
    flow_s = statistics.median(r[0] for r in flow_runs)
    loop_s = statistics.median(r[0] for r in loop_runs)
    return {
        "messages": messages,
        "changes": changes,
        "summaries": flow_runs[0][1],
        "flow_msgs_per_s": messages / flow_s,
        "flow_changes_per_s": changes / flow_s,
        "loop_msgs_per_s": messages / loop_s,
        "loop_changes_per_s": changes / loop_s,
        "flow_over_loop": loop_s / flow_s,
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument(
        "--changes-per-batch",
        default="5,3",
        help="comma-separated message sizes to measure (default 5,3)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tune_garbage_collector()  # as the service does at start (both runs get it)
    results = {}
    for size in (int(x) for x in args.changes_per_batch.split(",")):
        f = measure(args.messages, size, args.repeat)
        results[size] = f
        print(
            f"session of {size} changes/message: {f['messages']} messages, "
            f"{f['changes']} level changes, {f['summaries']} summaries "
            f"(median of {args.repeat} runs, one worker)"
        )
        print(
            f"  dataflow:   {f['flow_msgs_per_s']:>10,.0f} msg/s  "
            f"{f['flow_changes_per_s']:>10,.0f} changes/s   target >= 50,000 msg/s "
            f"{_mark(f['flow_msgs_per_s'] >= 50_000)}"
        )
        print(
            f"  plain loop: {f['loop_msgs_per_s']:>10,.0f} msg/s  "
            f"{f['loop_changes_per_s']:>10,.0f} changes/s"
        )
        print(
            f"  dataflow / plain loop: {f['flow_over_loop']:.2f}   target >= 0.50 "
            f"{_mark(f['flow_over_loop'] >= 0.5)}"
        )
    return results


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    main()
