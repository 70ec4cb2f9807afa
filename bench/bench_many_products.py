"""Many products on one process: threads, connections, memory and start-up time.

Starts the local exchange (in this process) with N products and the service
(``python -m bytewax.run dataflow:flow``, one process, one worker) reading all of them,
then reports, once every product has written its first summary: the seconds that took,
the service's threads (``/proc/PID/status``), its resident memory, and the connections
the local exchange holds open. Coinbase allows 8 unauthenticated messages a second per
IP, so start-up is bounded below by the connections and subscribe messages the service
must pace (7.5 a second each): with one connection per product, 300 products took at
least 300 / 7.5 = 40 s; with up to 32 products per Exchange connection and one subscribe
message per connection (``coinbase.session.PRODUCTS_PER_CONNECTION``), 10 connections
and 10 messages, paced side by side: 10 / 7.5 = 1.3 s.

    python bench/bench_many_products.py [--counts 4,50,300]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from process_stats import proc_status  # noqa: E402

from coinbase.multiplex import PRODUCTS_PER_CONNECTION  # noqa: E402
from local_exchange.server import LocalExchange  # noqa: E402
from tests.support.flow import flow_env  # noqa: E402

BASES = [f"C{i:03d}" for i in range(300)]


def measure(count: int, timeout: float) -> dict[str, float]:
    products = [f"{base}-USD" for base in BASES[:count]]
    out = Path(tempfile.mkdtemp()) / "many.jsonl"
    with LocalExchange(products, depth=50, rate=2, seed=5) as exchange:
        env = flow_env(
            ORDERBOOK_PRODUCTS=",".join(products),
            ORDERBOOK_WS_URL=exchange.url(),
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seen: set[str] = set()
        offset = 0
        try:
            while len(seen) < count:
                if time.monotonic() - started > timeout:
                    raise RuntimeError(
                        f"{len(seen)} of {count} products after {timeout} s"
                    )
                if proc.poll() is not None:
                    raise RuntimeError(f"the service exited ({proc.returncode})")
                if out.exists():
                    with out.open() as f:
                        f.seek(offset)
                        chunk = f.read()
                    complete = chunk[: chunk.rfind("\n") + 1]
                    offset += len(complete.encode())
                    for line in complete.splitlines():
                        seen.add(json.loads(line)["product_id"])
                time.sleep(0.05)
            startup = time.monotonic() - started
            result = {
                "startup_s": startup,
                "threads": proc_status(proc.pid, "Threads"),
                "rss_mib": proc_status(proc.pid, "VmRSS") / 1024,
                "connections": exchange.stats["connections_open"],
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return result


def pacing_floor(count: int) -> float:
    """Seconds the pacers need at least: one connection and one message per group."""
    return math.ceil(count / PRODUCTS_PER_CONNECTION["exchange"]) / 7.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="4,50,300")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    print("products  start-up (s)  pacing floor (s)  threads  connections  RSS (MiB)")
    for count in (int(c) for c in args.counts.split(",")):
        r = measure(count, args.timeout)
        print(
            f"{count:8d}  {r['startup_s']:12.1f}  {pacing_floor(count):16.1f}  "
            f"{r['threads']:7d}  {r['connections']:11d}  {r['rss_mib']:9.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
