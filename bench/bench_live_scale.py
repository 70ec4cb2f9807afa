"""Live scale-out: the highest message rate one and two processes keep up with.

Why: draining a backlog as fast as the sockets take it (what this bench measured before)
says how fast a layout catches up, not which live rate it can follow. A live feed is
paced: the question is the highest rate at which the service's output stays as fresh as
the input, and whether two processes raise it by the 1.7x the issue asks for.

The load: the bench writes a recording whose frames are spaced evenly, ``RECORDED_RATE``
messages a second over all products (round robin, one 3-change ``l2update`` each, every
frame's ``time`` equal to its recorded receive time ``t_ns``), and the local exchange
(``python -m local_exchange --replay FILE --speed N``, its own process) serves it at N
times that pace. Its pacing is one timer per subscription (a connection's products
merged by receive time), not per product: it sleeps until the next frame is due, then
queues every frame that is due, so it sends bursts about a millisecond apart (the event
loop's timer resolution). Checked with a bare websocket client reading 8 products: 29,991
msg/s received for 30,000 offered, 59,994 for 60,000, on schedule. Each rate of the
ladder gets its own recording of ``LOAD_SECONDS`` of load (a prefix of one generated
session), a fresh exchange (it plays a product once) and a fresh service, stopped once
every summary is in or the grace below has passed.

The service runs as a user runs it: ``python -m bytewax.run dataflow:flow -w 1``, or two
processes ``-i K -a "localhost:PA;localhost:PB" -w 1`` started here as
``bytewax.testing -p 2`` starts them but on free ports, with every top-of-book change
written to a jsonl file (threshold 0). The bench reads the file as it grows and notes
when each line appeared.

A layout *keeps up with* a rate when (a) every summary that an in-process replay of the
same recording writes arrives (at most ``DRAIN_GRACE_SECONDS`` after the load's end),
(b) the source never says it is behind (stderr: 10,000 events queued or the oldest 1 s
old, or a backlog dropped), and (c) the lag's p99 is at most ``LAG_P99_BOUND``. The lag
of a summary is how much later it appeared than the recording's pace says it should,
beyond the product's least such delay: ``seen - (time - T0) / speed``, minus that
quantity's minimum over the product. The minimum rather than the first summary is the
zero so that a slow first summary (the snapshot, a connection opened late) cannot hide
the others' lag; the lag of a service that keeps up stays flat and small, that of one
falling behind grows through the run. The *achieved* rate is the offered one times how
far through the recording the output got within ``LOAD_SECONDS`` (mean over products):
what the service delivered while the load was on, at most the offered rate.

The ladder: ``COARSE_STEP`` msg/s, twice that, ... until the first rate a layout does
not keep up with (or ``--max-rate``), then ``FINE_STEPS - 1`` rates between the last kept
and the first missed, again stopping at the first miss. The figure is the highest rate
kept up with, per layout; the target: two processes >= 1.7x one.

The machine: 2 cores shared by the local exchange, the service and this bench's reader,
so two service processes never have 2 whole cores; the cores each used during the load
are printed per rate. Near the knee a verdict can flip from one run to the next, so a rate
missed is run once more before the ladder stops there.

    python bench/bench_live_scale.py [--products 8] [--max-rate 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402
from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.testing import run_main  # noqa: E402
from process_stats import cpu_seconds  # noqa: E402

from dataflow import get_flow  # noqa: E402
from local_exchange.market import Market  # noqa: E402
from recording.replay import ReplaySource  # noqa: E402
from recording.writer import RecordingWriter  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.support.paced_load import (  # noqa: E402
    RECORDED_RATE,
    T0_NS,
    Tail,
    exited,
    free_ports,
    jsonl_service_env,
    lag_stats,
    product_lags,
    replay_exchange,
    start,
    stop,
    tail,
    update_ns,
)

BASES = ("BTC", "ETH", "SOL", "LTC", "ADA", "DOGE", "XRP", "DOT", "AVAX", "LINK")

LOAD_SECONDS = 5.0
"""Load per rate: long enough that a service short of the rate by 5% piles up
5% x 5 s = 250 ms of lag, the bound below."""
LAG_P99_BOUND = 0.250
"""Seconds. Far above the lag of a service that keeps up (socket-to-sink p99 1.2 ms at
1,000 msg/s, docs/benchmarks.md; plus this bench's 2-ms polling and the exchange's 1-ms bursts; on
2 cores shared by three busy processes, measured p99 4 to 65 ms at rates kept up with),
and far below the 1 s at which the source itself says it is behind."""
DRAIN_GRACE_SECONDS = 3.0
"""After the load's end, how long the summaries still missing may take to arrive."""
START_TIMEOUT = 60.0
"""Seconds from starting the service to its first summary (imports, cluster start-up)."""
POLL_SECONDS = 0.002
"""How often the bench reads the output file: the resolution of the lag."""
COARSE_STEP = 10_000
FINE_STEPS = 4
TARGET = 1.7
TARGET_PRODUCTS = 8
"""The issue's target is set for 8 products; other counts are measured without one."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAYOUTS = {
    1: ("one process", "bytewax.run dataflow:flow -w 1"),
    2: (
        "two processes",
        'bytewax.run dataflow:flow -i K -a "localhost:PA;localhost:PB" -w 1',
    ),
}
"""Processes: name, command (see :func:`service_commands`)."""


def product_list(n: int) -> list[str]:
    pairs = [f"{b}-{q}" for q in ("USD", "EUR", "GBP", "USDT", "BTC") for b in BASES]
    if n > len(pairs):
        raise SystemExit(f"--products: at most {len(pairs)}")
    return pairs[:n]


def _iso(t_ns: int) -> str:
    when = EPOCH + timedelta(microseconds=t_ns // 1_000)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ns(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1) * 1_000


@dataclass
class Session:
    """The generated session: a snapshot per product at ``T0_NS``, then ``updates``
    (product, frame text), one every ``1 / RECORDED_RATE`` s, products in turn."""

    products: list[str]
    snapshots: dict[str, str]
    updates: list[tuple[str, str]]

    @classmethod
    def generate(cls, products: list[str], messages: int) -> Session:
        market = Market(products, depth=500, changes_per_batch=3, seed=3)
        snapshots = {}
        for pid in products:
            bids, asks = market.snapshot(pid)
            # a time on the snapshot too, so that every summary carries recorded time
            snap = {"type": "snapshot", "product_id": pid, "bids": bids, "asks": asks}
            snapshots[pid] = json.dumps(snap | {"time": _iso(T0_NS)})
        sides = {"bid": "buy", "ask": "sell"}
        updates = []
        for i in range(messages):
            pid = products[i % len(products)]
            frame = {
                "type": "l2update",
                "product_id": pid,
                "changes": [[sides[s], p, q] for s, p, q in market.next_batch(pid)],
                "time": _iso(update_ns(i)),
            }
            updates.append((pid, json.dumps(frame)))
        return cls(products, snapshots, updates)

    def write(self, path: Path, messages: int) -> int:
        """A recording of the snapshots and the first ``messages`` updates; the
        recorded time of its last update."""
        header = {
            "protocol": "exchange",
            "feed": "exchange",
            "url": "bench",
            "products": self.products,
            "started": "bench",
        }
        writer = RecordingWriter(path, header)
        for pid in self.products:
            writer.connected(pid, T0_NS)
            writer.frame(pid, self.snapshots[pid], T0_NS)
        for i, (pid, text) in enumerate(self.updates[:messages]):
            writer.frame(pid, text, update_ns(i))
        writer.close()
        return update_ns(messages - 1)


class _Times(DynamicSink):
    """Collects the recorded time (ns) of every summary, per product."""

    def __init__(self) -> None:
        self.by_product: dict[str, list[int]] = {}

    def build(self, step_id, worker_index, worker_count):
        by_product = self.by_product

        class Part(StatelessSinkPartition):
            def write_batch(self, items):
                for _, s in items:  # (received_ns, record) pairs
                    by_product.setdefault(s.product_id, []).append(_ns(s.time))

        return Part()


def expected_summaries(path: Path, products: list[str]) -> dict[str, list[int]]:
    """Recorded times of the summaries a replay of ``path`` writes, per product. A
    prefix of the recording writes exactly those up to its last frame's time."""
    sink = _Times()
    settings = Settings(spread_threshold_pct=Decimal(0))
    run_main(
        get_flow(settings, source=ReplaySource(path), products=products, sink=sink)
    )
    return sink.by_product


def service_commands(processes: int) -> list[list[str]]:
    """The layout's commands, as ``bytewax.testing -p N`` builds them, on free ports
    (``bytewax.testing`` always takes 2101 and up, which other runs may hold)."""
    run = [sys.executable, "-m", "bytewax.run", "dataflow:flow"]
    if processes == 1:
        return [[*run, "-w", "1"]]
    addresses = ";".join(f"localhost:{p}" for p in free_ports(processes))
    return [[*run, "-i", str(k), "-a", addresses, "-w", "1"] for k in range(processes)]


@dataclass
class Step:
    offered: float
    achieved: float
    lag_p50: float
    lag_p99: float
    got: int
    expected: int
    complete: bool
    """Each product wrote exactly the summaries the in-process replay writes."""
    behind: bool
    exchange_cores: float
    service_cores: float
    bench_cores: float

    @property
    def kept_up(self) -> bool:
        return self.complete and not self.behind and self.lag_p99 <= LAG_P99_BOUND

    def verdict(self) -> str:
        if self.kept_up:
            return "keeps up"
        why = []
        if not self.complete:
            why.append(f"{self.got:,} summaries, {self.expected:,} expected")
        if self.behind:
            why.append("source behind")
        if self.lag_p99 > LAG_P99_BOUND:
            why.append(f"lag p99 > {LAG_P99_BOUND * 1000:.0f} ms")
        return "MISSED: " + ", ".join(why)


def run_step(
    session: Session,
    times: dict[str, list[int]],
    processes: int,
    rate: float,
    tmp: Path,
) -> Step:
    """Serve ``LOAD_SECONDS`` of the session at ``rate`` msg/s to one layout."""
    messages = round(rate * LOAD_SECONDS)
    recording = tmp / "step.jsonl.gz"
    last_ns = session.write(recording, messages)
    expected = {p: sum(t <= last_ns for t in ts) for p, ts in times.items()}
    speed = rate / RECORDED_RATE
    out = tmp / "out.jsonl"
    out.unlink(missing_ok=True)
    exchange, port = replay_exchange(recording, speed, tmp / "exchange.log")
    env = jsonl_service_env(f"ws://127.0.0.1:{port}/", session.products, out)
    logs = [tmp / f"service-{k}.log" for k in range(processes)]
    service: list[subprocess.Popen] = []
    try:
        for command, log in zip(service_commands(processes), logs, strict=True):
            service.append(start(command, log, env))
        arrivals, cpu = _read_output(out, sum(expected.values()), [exchange, *service])
    except RuntimeError as exc:
        tails = "".join(log.read_text()[-2000:] for log in logs)
        raise RuntimeError(f"{exc}\n{tails}") from None
    finally:
        stop([*service, exchange])
    behind = any("behind" in log.read_text() for log in logs)
    return _measure(arrivals, expected, speed, rate, behind, cpu)


def _read_output(
    out: Path, expected: int, procs: list[subprocess.Popen]
) -> tuple[Tail, list[float]]:
    """The output as it grows, until every expected line is in, the grace after the
    load has passed, or the service has exited (the exchange is ``procs[0]``); and the
    cores each process, then this bench, used from the first line to the end."""
    before: list[float] = []

    def mark() -> None:
        before[:] = [cpu_seconds(p.pid) for p in procs] + [time.process_time()]

    seen = tail(
        out,
        expected=expected,
        running=lambda: not all(map(exited, procs[1:])),
        start_timeout=START_TIMEOUT,
        after_first=LOAD_SECONDS + DRAIN_GRACE_SECONDS,
        poll=POLL_SECONDS,
        on_first=mark,
    )
    elapsed = time.monotonic() - seen.first
    after = [cpu_seconds(p.pid) for p in procs] + [time.process_time()]
    return seen, [(a - b) / elapsed for a, b in zip(after, before, strict=False)]


def _measure(
    arrivals: Tail,
    expected: dict[str, int],
    speed: float,
    rate: float,
    behind: bool,
    cpu: list[float],
) -> Step:
    """Lag and achieved rate from what was seen when (see the module docstring)."""
    lags = product_lags(
        (
            (
                when,
                record["product_id"],
                (_ns(datetime.fromisoformat(record["time"])) - T0_NS) / 1e9,
            )
            for when, record in arrivals.records(orjson.loads)
        ),
        speed,
    )
    # How far through the recording each product's output got in the load's
    # LOAD_SECONDS (counted from the schedule's start as its least delayed summary
    # places it), as a fraction of the whole: the pace the service kept while loaded.
    # Never above 1, whatever the summaries' clumping or a slow first one.
    kept = [
        max(due for due, lag in product if lag + due <= LOAD_SECONDS) / LOAD_SECONDS
        for product in lags.values()
    ]
    figures = lag_stats(lags)
    return Step(
        offered=rate,
        achieved=rate * statistics.fmean(kept) if kept else 0.0,
        lag_p50=figures.p50,
        lag_p99=figures.p99,
        got=sum(map(len, lags.values())),
        expected=sum(expected.values()),
        complete=all(len(lags.get(p, ())) == n for p, n in expected.items()),
        behind=behind,
        exchange_cores=cpu[0] if cpu else 0.0,
        service_cores=sum(cpu[1:-1]),
        bench_cores=cpu[-1] if cpu else 0.0,
    )


def ladder(measure, max_rate: float) -> float:
    """The highest rate kept up with: coarse steps up to the first miss, then finer
    ones between the last rate kept and that miss (0 if none was kept). A rate missed is
    tried once more before the ladder stops there: near the knee one stall (another
    process of the machine, a collection) can flip a single run, and stopping at it
    would understate the layout."""

    def kept(rate: float) -> bool:
        return measure(rate) or measure(rate)

    best = 0.0
    rate = COARSE_STEP
    while rate <= max_rate:
        if not kept(rate):
            break
        best, rate = rate, rate + COARSE_STEP
    else:
        return best
    fine = (rate - best) / FINE_STEPS
    for _ in range(1, FINE_STEPS):
        if not kept(best + fine):
            break
        best += fine
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=8)
    parser.add_argument(
        "--max-rate",
        type=float,
        default=100_000,
        help="top of the ladder, msg/s over all products",
    )
    args = parser.parse_args()
    products = product_list(args.products)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        session = Session.generate(products, round(args.max_rate * LOAD_SECONDS))
        session.write(tmp / "session.jsonl.gz", len(session.updates))
        times = expected_summaries(tmp / "session.jsonl.gz", products)
        print(
            f"{len(products)} products, l2update frames of 3 changes, threshold 0, jsonl "
            f"to a file; the local exchange (its own process) replays a recording paced "
            f"at {RECORDED_RATE:,} msg/s with --speed rate/{RECORDED_RATE:,}, "
            f"{LOAD_SECONDS:g} s of load per rate"
        )
        print(
            f"keeps up = every summary arrives, the source never says 'behind', "
            f"lag p99 <= {LAG_P99_BOUND * 1000:.0f} ms; ladder: steps of "
            f"{COARSE_STEP:,} msg/s up to {args.max_rate:,.0f}, then "
            f"{COARSE_STEP // FINE_STEPS:,} after the last rate kept up with"
        )
        best: dict[int, float] = {}
        for processes, (name, command) in LAYOUTS.items():
            print(f"{name}: {command}")

            def measure(rate: float, processes: int = processes) -> bool:
                step = run_step(session, times, processes, rate, tmp)
                print(
                    f"  offered {step.offered:6,.0f}  achieved {step.achieved:6,.0f} "
                    f"msg/s  lag p50 {step.lag_p50 * 1000:6.1f}  p99 "
                    f"{step.lag_p99 * 1000:6.1f} ms  cores: exchange "
                    f"{step.exchange_cores:.2f} service {step.service_cores:.2f} "
                    f"bench {step.bench_cores:.2f}  {step.verdict()}",
                    flush=True,
                )
                return step.kept_up

            best[processes] = ladder(measure, args.max_rate)
    print("highest rate kept up with:")
    base = best[1]
    for processes, (name, _) in LAYOUTS.items():
        line = f"  {name:<14} {best[processes]:7,.0f} msg/s"
        if best[processes] >= args.max_rate:
            line += " (the ladder's top: at least)"
        if processes == 1:
            line += "  (the baseline)"
        else:
            ratio = best[processes] / base if base else 0.0
            line += f"  {ratio:.2f}x the one-process baseline of {base:,.0f} msg/s"
            if len(products) == TARGET_PRODUCTS:
                verdict = "PASS" if ratio >= TARGET else "MISS"
                line += f"   target >= {TARGET}x  {verdict}"
            else:
                line += f"   (the target is for {TARGET_PRODUCTS} products)"
        print(line)
    print(
        f"  (the local exchange shares the machine's {os.cpu_count()} cores with the "
        f"service and this bench; load average at the end {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
