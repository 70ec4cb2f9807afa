"""Live scale-out: messages a second that one and two processes carry from real sockets.

The load comes from the local exchange (its own process) serving a pre-made recording as
fast as the sockets take it, so the generator costs little CPU (it sends stored text) and
the service is the bottleneck. The service runs as a user runs it, ``python -m
bytewax.testing dataflow:flow -p N -w 1`` with every top-of-book change written to a file;
the bench first replays the same recording from the file to learn how many summaries the
run must write, then times each live layout from its first record to its last.

A layout "keeps up with" a message rate if it sustains it with no backlog drop (the
source resyncs a product more than 100,000 events behind; such a run is reported as
lossy): the figure is the sustained rate, messages/s. On this 2-core machine the local
exchange shares the cores with the service, so two processes have about 1.5 cores, not 2.

    python bench/bench_live_scale.py [--products 8] [--messages 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.testing import run_main  # noqa: E402

from dataflow import get_flow  # noqa: E402
from local_exchange.market import Market  # noqa: E402
from recording.replay import ReplaySource  # noqa: E402
from recording.writer import RecordingWriter  # noqa: E402
from service.settings import Settings  # noqa: E402

BASES = ("BTC", "ETH", "SOL", "LTC", "ADA", "DOGE", "XRP", "DOT", "AVAX", "LINK")


def product_list(n: int) -> list[str]:
    pairs = [f"{b}-{q}" for q in ("USD", "EUR", "GBP", "USDT", "BTC") for b in BASES]
    return pairs[:n]


def write_recording(path: Path, products: list[str], per_product: int) -> int:
    """A session: a snapshot per product, then ``per_product`` 3-change batches each."""
    market = Market(products, depth=500, changes_per_batch=3, seed=3)
    header = {
        "protocol": "exchange",
        "feed": "exchange",
        "url": "bench",
        "products": products,
        "started": "bench",
    }
    writer = RecordingWriter(path, header)
    t = datetime(2026, 1, 1, tzinfo=UTC)
    t_ns = 1_767_225_600_000_000_000
    for pid in products:
        writer.connected(pid, t_ns)
        bids, asks = market.snapshot(pid)
        snap = {"type": "snapshot", "product_id": pid, "bids": bids, "asks": asks}
        writer.frame(pid, json.dumps(snap), t_ns)
    sides = {"bid": "buy", "ask": "sell"}
    for _ in range(per_product):
        for pid in products:
            t += timedelta(microseconds=100)
            t_ns += 100_000
            frame = {
                "type": "l2update",
                "product_id": pid,
                "changes": [[sides[s], p, q] for s, p, q in market.next_batch(pid)],
                "time": t.isoformat().replace("+00:00", "Z"),
            }
            writer.frame(pid, json.dumps(frame), t_ns)
    writer.close()
    return per_product * len(products)


class _Count(DynamicSink):
    def __init__(self) -> None:
        self.by_product: Counter[str] = Counter()

    def build(self, step_id, worker_index, worker_count):
        counts = self.by_product

        class Part(StatelessSinkPartition):
            def write_batch(self, items):
                counts.update(s.product_id for s in items)

        return Part()


def expected_summaries(path: Path, products: list[str]) -> Counter[str]:
    sink = _Count()
    settings = Settings(spread_threshold_pct=Decimal(0))
    run_main(
        get_flow(settings, source=ReplaySource(path), products=products, sink=sink)
    )
    return sink.by_product


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_live(
    path: Path, products: list[str], processes: int, expected: int, timeout: float
) -> tuple[float, int, bool]:
    """(seconds from first to last record, records, lossy) for one live layout."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "local_exchange", "--port", str(port), "--replay", path],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = Path(tempfile.mkdtemp()) / "live.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERBOOK_")}
    env.update(
        ORDERBOOK_PRODUCTS=",".join(products),
        ORDERBOOK_WS_URL=f"ws://127.0.0.1:{port}/",
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_OUTPUT=f"jsonl:{out}",
    )
    log = Path(tempfile.mkdtemp()) / "flow.log"
    try:
        _wait_for_port(port, server)
        with log.open("w") as err:
            # its own process group: bytewax.testing starts the worker processes as
            # children, and stopping the parent alone would leave them running
            flow = subprocess.Popen(
                [sys.executable, "-m", "bytewax.testing", "dataflow:flow"]
                + ["-p", str(processes), "-w", "1"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        first = last = None
        seen = 0
        deadline = time.monotonic() + timeout
        with _opened(out, deadline) as f:
            while seen < expected and time.monotonic() < deadline:
                chunk = f.read()
                if chunk:
                    now = time.monotonic()
                    first = first or now
                    last = now
                    seen += chunk.count("\n")
                else:
                    time.sleep(0.005)
        os.killpg(flow.pid, signal.SIGTERM)
        flow.wait(timeout=30)
        try:
            os.killpg(flow.pid, signal.SIGKILL)  # any worker that outlived its parent
        except ProcessLookupError:
            pass
    finally:
        server.terminate()
        server.wait(timeout=30)
    lossy = "behind" in log.read_text()
    return (last or 0) - (first or 0), seen, lossy


def _wait_for_port(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the local exchange exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the local exchange did not start listening")


class _opened:
    """Opens ``path`` once it exists (the service creates it on its first record)."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path, self.deadline = path, deadline

    def __enter__(self):
        while not self.path.exists():
            if time.monotonic() > self.deadline:
                raise RuntimeError("the service wrote nothing")
            time.sleep(0.01)
        self.f = self.path.open()
        return self.f

    def __exit__(self, *exc) -> None:
        self.f.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=8)
    parser.add_argument("--messages", type=int, default=20_000, help="per product")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    products = product_list(args.products)
    path = Path(tempfile.mkdtemp()) / "live-scale.jsonl.gz"
    messages = write_recording(path, products, args.messages)
    expected = sum(expected_summaries(path, products).values())
    print(
        f"{len(products)} products, {messages:,} messages (3 changes each), "
        f"{expected:,} summaries expected"
    )
    rates = {}
    for processes in (1, 2):
        seconds, seen, lossy = run_live(
            path, products, processes, expected, args.timeout
        )
        rate = messages / seconds if seconds else 0.0
        rates[processes] = rate
        note = "  (lossy: backlog dropped)" if lossy else ""
        complete = "" if seen >= expected else f"  (only {seen:,} of {expected:,})"
        print(
            f"-p {processes} -w 1: {rate:10,.0f} msg/s over {seconds:.2f} s{complete}{note}"
        )
    ratio = rates[2] / rates[1] if rates[1] else 0.0
    verdict = "PASS" if ratio >= 1.7 else "MISS"
    print(f"two processes / one process = {ratio:.2f}  (target >= 1.7)  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
