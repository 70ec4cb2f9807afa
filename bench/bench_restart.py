"""A cluster coming back: seconds until every book is rebuilt after a restart, N products.

Three members (``-i 0..2 -a ...``), each in a network namespace of its own
(``tests/support/netns.py``: needs root and ``ip``), the local exchange on the
namespaces' bridge, N products of 100 levels a side. For each N, per repeat:

* **baseline**: one process (``python -m bytewax.run dataflow:flow``, in the first
  namespace) started alone with the same N products: what any start costs;
* **cluster start**: the three members started together, each with a fresh recovery
  partition of its own (``-r``, ``-s 1 -b 0``): a restart without recovery state is
  exactly this;
* **cluster restart -r**: once every book's state is committed, ``kill -9`` of every
  member, and the three started again on the same store: each resumes its states, resets
  every book and rebuilds it from a fresh snapshot.

Each figure is the seconds from starting the processes to the last product's first
summary in the outputs (that summary is of the book built from a fresh snapshot); then
the market pauses and every product's last summary must equal the exchange's true top
(``ok``). Medians of the repeats, each beside the baseline of the same run; the machine
is shared, so compare the ratios.

    python bench/bench_restart.py [--counts 6,24,50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from local_exchange.server import LocalExchange  # noqa: E402
from tests.support import netns  # noqa: E402
from tests.support.flow import await_true_tops, flow_env, wait_until  # noqa: E402
from tests.support.recovery import (  # noqa: E402
    saved_book_states,
    split_store,
    state_product,
)

MEMBERS = 3
DEPTH = 100
TIMEOUT = 120.0
RECOVERY_ARGS = ("-s", "1", "-b", "0")


def products_of(count: int) -> list[str]:
    return [f"C{i:03d}-USD" for i in range(count)]


def _records(paths: list[Path]) -> list[dict]:
    out = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # a line being written
    return out


def _every_book(paths, products, procs) -> float:
    """Seconds waited until every product has a summary in ``paths``; raises when a
    process exits first."""
    started = time.monotonic()

    def all_there() -> bool:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a process exited ({proc.returncode})")
        return {r["product_id"] for r in _records(paths)} >= set(products)

    wait_until(all_there, TIMEOUT, "a summary of every product", poll=0.02)
    return time.monotonic() - started


def _true(exchange: LocalExchange, paths, products) -> bool:
    """Whether every product's last summary reaches the paused market's true top."""
    exchange.pause_market()
    try:
        await_true_tops(exchange, lambda: _records(paths), products)
        return True
    except AssertionError:
        return False
    finally:
        exchange.resume_market()


def one_repeat(lab: netns.NetLab, count: int, folder: Path) -> dict[str, tuple]:
    products = products_of(count)
    figures: dict[str, tuple] = {}
    with LocalExchange(
        products, depth=DEPTH, rate=5, seed=3, host=lab.host_address
    ) as exchange:
        env = flow_env(
            ORDERBOOK_FEED="exchange",
            ORDERBOOK_WS_URL=exchange.url(),
            ORDERBOOK_PRODUCTS=",".join(products),
            ORDERBOOK_SPREAD_THRESHOLD="0",
        )
        # baseline: one process, alone
        out = folder / "single.jsonl"
        with (folder / "single.log").open("w") as log:
            proc = lab.popen(
                0,
                ["bytewax.run", "dataflow:flow"],
                {**env, "ORDERBOOK_OUTPUT": f"jsonl:{out}"},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            took = _every_book([out], products, [proc])
            figures["baseline"] = (took, _true(exchange, [out], products))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)

        stores = split_store(folder / "recovery", MEMBERS)
        members = netns.start_cluster(
            lab, env, folder / "first", args=RECOVERY_ARGS, recovery=stores
        )
        paths = [m.out for m in members]
        took = _every_book(paths, products, [m.proc for m in members])
        figures["cluster start"] = (took, _true(exchange, paths, products))
        wait_until(
            lambda: (
                {state_product(k) for k in saved_book_states(*stores)} >= set(products)
            ),
            TIMEOUT,
            "a committed state of every book",
        )
        for m in members:
            m.kill()

        members = netns.start_cluster(
            lab, env, folder / "second", args=RECOVERY_ARGS, recovery=stores
        )
        paths = [m.out for m in members]
        try:
            took = _every_book(paths, products, [m.proc for m in members])
            resumed = all(
                f"{p}: resuming from recovery state"
                in "".join(m.stderr for m in members)
                for p in products
            )
            figures["cluster restart -r"] = (
                took,
                resumed and _true(exchange, paths, products),
            )
        finally:
            for m in members:
                m.kill()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="6,24,50")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    why = netns.unavailable()
    if why:
        sys.exit(f"bench_restart: network namespaces unavailable: {why}")
    print(
        f"{MEMBERS} members in network namespaces, {DEPTH} levels a side; medians of "
        f"{args.repeats}; load average {open('/proc/loadavg').read().split()[0]}"
    )
    print(
        f"{'products':>8}  {'what':<20} {'seconds':>8}  {'x baseline':>10}  books true"
    )
    for count in (int(c) for c in args.counts.split(",")):
        runs: dict[str, list] = {}
        for _ in range(args.repeats):
            with netns.NetLab(MEMBERS) as lab, tempfile.TemporaryDirectory() as tmp:
                for what, figure in one_repeat(lab, count, Path(tmp)).items():
                    runs.setdefault(what, []).append(figure)
        base = statistics.median(t for t, _ in runs["baseline"])
        for what, figures in runs.items():
            seconds = statistics.median(t for t, _ in figures)
            ok = "yes" if all(good for _, good in figures) else "NO"
            print(
                f"{count:>8}  {what:<20} {seconds:>8.2f}  {seconds / base:>10.2f}  {ok}"
            )


if __name__ == "__main__":
    main()
