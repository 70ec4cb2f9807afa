"""Soak: 20 products at a high rate for 10 minutes; does the service's memory stay flat?

Starts the local exchange in this process and the real service (``python -m bytewax.run
dataflow:flow``) as a subprocess reading it, every top-of-book change written to a file,
and samples the service's resident memory (``VmRSS``) at 1, 5 and 10 minutes. After the
warm-up (books built, caches filled) the 10-minute figure must be within 10% of the
5-minute one: a leak of a few bytes per message shows up as steady growth.

    python bench/bench_soak.py                 # 20 products x 100 batches/s, 10 minutes
    python bench/bench_soak.py --minutes 2     # a quick look (samples at 1, 2)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from process_stats import rss_mib  # noqa: E402

from local_exchange.server import LocalExchange  # noqa: E402
from tests.support.flow import flow_env  # noqa: E402

PRODUCTS = [
    f"{base}-{quote}"
    for base in (
        "BTC",
        "ETH",
        "SOL",
        "LTC",
        "ADA",
        "DOGE",
        "XRP",
        "DOT",
        "AVAX",
        "LINK",
    )
    for quote in ("USD", "EUR")
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0, help="batches/s/product")
    parser.add_argument("--depth", type=int, default=1000)
    args = parser.parse_args()

    marks = sorted({m for m in (1.0, 5.0, args.minutes) if m <= args.minutes})
    out = Path(tempfile.mkdtemp()) / "soak.jsonl"
    with LocalExchange(PRODUCTS, depth=args.depth, rate=args.rate, seed=7) as exchange:
        env = flow_env(
            ORDERBOOK_PRODUCTS=",".join(PRODUCTS),
            ORDERBOOK_WS_URL=exchange.url(),
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        samples: dict[float, float] = {}
        try:
            for mark in marks:
                while time.monotonic() - started < mark * 60:
                    if proc.poll() is not None:
                        print(f"the service exited early with status {proc.returncode}")
                        return 1
                    time.sleep(1.0)
                samples[mark] = rss_mib(proc.pid)
                lines = sum(1 for _ in out.open()) if out.exists() else 0
                print(
                    f"{mark:5.1f} min: RSS {samples[mark]:7.1f} MiB, "
                    f"{lines:,} records written",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        updates = exchange.stats["frames_sent"].get("l2update", 0)
        elapsed = time.monotonic() - started
    print(
        f"{len(PRODUCTS)} products x {args.rate:g} batches/s requested, "
        f"{updates / elapsed / len(PRODUCTS):.0f} delivered per product"
    )
    if 5.0 in samples and args.minutes > 5.0:
        growth = samples[args.minutes] / samples[5.0]
        verdict = "PASS" if growth <= 1.10 else "MISS"
        print(
            f"RSS at {args.minutes:g} min / RSS at 5 min = {growth:.3f} "
            f"(target <= 1.10)  {verdict}"
        )
    out.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
