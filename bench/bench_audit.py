"""What the REST audit (issue 19) costs the dataflow: audits every second against none.

bench_flow's session (4 products, ~1,000 levels a side, Exchange-feed messages 1 ms
apart: 250 messages a second per product) is decoded once into events; a copy gets,
per product and every ``--interval`` seconds of feed time, the audit's two events as
the fetch side puts them into the stream: an :class:`events.AuditStarted` when the
request goes out, and a :class:`events.BookAudit` carrying the true book's best
``--levels`` levels a side as they were when the reply came (``REPLY_MS`` later),
a settle window (``AUDIT_SETTLE_SECONDS``, 1 s) after the reply. So an audit is
pending about all the time, and every change message pays for noting its prices.

Both event lists go through the real dataflow under ``run_main`` (a source of the
decoded events -> book step -> spread filter -> a counting sink), runs interleaved,
in messages per CPU second (steadier than wall time on a busy machine), the best and
the median of ``--repeat`` runs each (on a machine shared with other work the best is
the steadier estimate of the work itself; the median says what a busy machine sees). Each path of the book step is measured: the plain fast path
(``UpdateBook``) and the book step with metrics (``BookStep``, what runs when the
metrics API, depth records or a view are on). Decoding is done beforehand, so the
flow's per-message work is smaller than the service's and the audit's share is
overstated, if anything. The run also checks that every audit of this clean feed
matches (zero drift): the bench is a test of the fair-comparison rule at 250
updates a second per product as well.

Target (issue 19): the flow with audits every second loses less than 5% at 4
products, 50 levels.

    python bench/bench_audit.py [--messages 200000] [--interval 1] [--levels 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main

from book_step import update_book
from coinbase.decode import FrameDecoder
from dataflow import get_flow
from events import ASK, BID, AuditStarted, BookAudit
from recording.reader import Recording
from records import AuditRecord
from service.runtime import tune_garbage_collector
from service.settings import Settings
from tests.support.recordings import PRODUCTS, write_session

THRESHOLD = Decimal(0)  # keep every summary: the most output work
REPLY_MS = 50
"""Feed-time milliseconds between a request and its reply."""
SETTLE_NS = 1_000_000_000
"""The fetch side's settle window after a reply (``AUDIT_SETTLE_SECONDS``)."""


class _CountingSink(DynamicSink):
    def __init__(self) -> None:
        self.count = 0
        self.audits: Counter = Counter()

    def build(self, step_id, worker_index, worker_count):
        sink = self

        class Part(StatelessSinkPartition):
            def write_batch(self, items):
                sink.count += len(items)
                for _, record in items:
                    if type(record) is AuditRecord:
                        sink.audits[record.result] += 1

        return Part()


def decoded_events(path: Path) -> list:
    """``(product_id, event)`` of the recording, in its order."""
    decoders = {p: FrameDecoder("exchange", "replay") for p in PRODUCTS}
    events = []
    for _, record in Recording.open(path).records():
        frame = record.get("frame")
        if frame is not None:
            pid = record["product_id"]
            events += [(pid, e) for e in decoders[pid].decode(frame, record["t_ns"])]
    return events


def with_audits(events: list, interval: float, levels: int) -> tuple[list, int]:
    """``events`` with each product's audit events interleaved in feed time, the REST
    book taken from a reference book kept beside; and how many audits."""
    states: dict = {}
    next_audit: dict[str, int] = {}
    replies: dict[str, tuple] = {}  # product -> (reply_ns, requested_ns)
    due: dict[str, tuple] = {}  # product -> (at_ns, BookAudit)
    out = []
    audits = 0
    for pid, event in events:
        t = event.received_ns
        if pid in due and t >= due[pid][0]:
            out.append((pid, due.pop(pid)[1]))
        if pid in replies and t >= replies[pid][0]:
            reply_ns, requested_ns = replies.pop(pid)
            book = states[pid].book
            audit = BookAudit(
                pid,
                event.feed,
                book.depth(BID, levels),
                book.depth(ASK, levels),
                levels,
                requested_ns,
                reply_ns,
                None,
                reply_ns + SETTLE_NS,
            )
            due[pid] = (reply_ns + SETTLE_NS, audit)
        if (
            pid in states
            and pid not in replies
            and pid not in due
            and t >= next_audit.get(pid, 0)
        ):
            out.append((pid, AuditStarted(pid, event.feed, t)))
            replies[pid] = (t + REPLY_MS * 1_000_000, t)
            next_audit[pid] = t + int(interval * 1e9)
            audits += 1
        states[pid], _ = update_book(states.get(pid), event)
        out.append((pid, event))
    return out, audits - len(replies) - len(due)  # the ones that reached the stream


def run_flow(events: list, metrics: bool) -> tuple[float, _CountingSink]:
    """CPU seconds of the whole process (every thread) for one run of the flow."""
    settings = Settings(spread_threshold_pct=THRESHOLD, metrics_enabled=metrics)
    sink = _CountingSink()
    flow = get_flow(
        settings, source=TestingSource(events), products=PRODUCTS, sink=sink
    )
    start = time.process_time()
    run_main(flow)
    return time.process_time() - start, sink


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--levels", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tune_garbage_collector()  # as the service does at start (every run gets it)
    return measure(args)


def measure(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "session.jsonl.gz"
        messages, changes = write_session(path, args.messages, 3)
        plain = decoded_events(path)
    audited, audits = with_audits(plain, args.interval, args.levels)
    print(
        f"{messages} messages ({changes} level changes) of {len(PRODUCTS)} products, "
        f"{audits} audits of {args.levels} levels a side (one per product every "
        f"{args.interval:g} s of feed time), {args.repeat} runs each, one worker"
    )
    results = {}
    for path_name, metrics in (("plain path", False), ("book step + metrics", True)):
        times: dict[str, list[float]] = {"audits off": [], "audits on": []}
        found: Counter = Counter()
        for _ in range(args.repeat):
            times["audits off"].append(run_flow(plain, metrics)[0])
            seconds, sink = run_flow(audited, metrics)
            times["audits on"].append(seconds)
            found = sink.audits
        for how, pick in (("best", min), ("median", statistics.median)):
            off = messages / pick(times["audits off"])
            on = messages / pick(times["audits on"])
            cost = 1 - on / off
            results[f"{path_name} {how}"] = {"off": off, "on": on, "cost": cost}
            print(
                f"  {path_name:<20} {how:<6} audits off {off:>9,.0f} msg/CPU-s   "
                f"audits on {on:>9,.0f} msg/CPU-s   cost {cost:6.1%}   target < 5% "
                f"{'PASS' if cost < 0.05 else 'MISS'}"
            )
        print(f"  {'':<20} results: {dict(found)}")
        if found.get("drift") or found.get("match", 0) != audits:
            print("  DRIFT OR MISSING AUDITS ON A CLEAN FEED: the rule is broken")
    return results


if __name__ == "__main__":
    main()
