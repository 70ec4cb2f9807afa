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

It then measures what depth records and the outputs cost (3 changes/message, every
summary kept): depth records of 10 levels every second of feed time against none, and
Parquet output against text output to a file, each beside its baseline with the target
(< 10% fewer messages per CPU second) and PASS or MISS. ``--costs-only`` skips the first part.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from book_step import SpreadFilter, update_book
from coinbase.decode import FrameDecoder
from dataflow import get_flow
from recording.reader import Recording
from recording.replay import ReplaySource
from service.outputs import OutputSpec
from service.runtime import tune_garbage_collector
from service.settings import Settings
from tests.support.recordings import PRODUCTS, write_session

THRESHOLD = Decimal(0)  # keep every summary: the most output work


class _CountingSink(DynamicSink):
    def __init__(self) -> None:
        self.count = 0

    def build(self, step_id, worker_index, worker_count):
        sink = self

        class Part(StatelessSinkPartition):
            def write_batch(self, items):
                sink.count += len(items)

        return Part()


def run_dataflow(path: Path, settings: Settings | None = None) -> tuple[float, int]:
    """Seconds and records; with ``settings.outputs`` the real outputs, else a counter."""
    settings = settings or Settings(spread_threshold_pct=THRESHOLD)
    sink = None if settings.outputs else _CountingSink()
    flow = get_flow(settings, source=ReplaySource(path), products=PRODUCTS, sink=sink)
    start = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - start, sink.count if sink else 0


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
    parser.add_argument("--costs-only", action="store_true")
    args = parser.parse_args()
    tune_garbage_collector()  # as the service does at start (both runs get it)
    results = {}
    sizes = [] if args.costs_only else args.changes_per_batch.split(",")
    for size in (int(x) for x in sizes):
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
    rates = measure_costs(args.messages, args.repeat)
    print_costs(rates, args.repeat)
    results["costs"] = rates
    return results


def measure_costs(messages: int, repeat: int) -> dict:
    """Median msg/s of each variant beside its baseline, runs interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "session.jsonl.gz"
        messages, _ = write_session(path, messages, 3)
        runs = 0

        def outputs(kind: str) -> Settings:
            nonlocal runs
            runs += 1  # a fresh file or directory for every run
            target = tmp / f"{kind}-{runs}"
            return Settings(
                spread_threshold_pct=THRESHOLD, outputs=(OutputSpec(kind, str(target)),)
            )

        variants = {
            "no depth": lambda: Settings(spread_threshold_pct=THRESHOLD),
            "depth 10 levels / 1 s": lambda: Settings(
                spread_threshold_pct=THRESHOLD, depth_levels=10, depth_interval=1.0
            ),
            "text to a file": lambda: outputs("text"),
            "parquet": lambda: outputs("parquet"),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeat):
            for name, settings in variants.items():
                # CPU seconds of the process (every thread, pyarrow's included): on a
                # shared machine far steadier than wall time, which other loads inflate
                start = time.process_time()
                run_dataflow(path, settings())
                times[name].append(time.process_time() - start)
    return {name: messages / statistics.median(t) for name, t in times.items()}


def print_costs(rates: dict, repeat: int) -> None:
    print(
        "cost of depth records and Parquet (3 changes/message, messages per CPU "
        f"second, median of {repeat})"
    )
    for variant, baseline in (
        ("depth 10 levels / 1 s", "no depth"),
        ("parquet", "text to a file"),
    ):
        cost = 1 - rates[variant] / rates[baseline]
        print(
            f"  {variant:<22} {rates[variant]:>9,.0f} msg/CPU-s   "
            f"{baseline:<15} {rates[baseline]:>9,.0f} msg/CPU-s   "
            f"cost {cost:6.1%}   target < 10% {_mark(cost < 0.10)}"
        )


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    main()
