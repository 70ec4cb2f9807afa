"""Replay throughput by layout: one worker, two worker threads, two processes.

Builds a recording as ``bench_flow.py`` does (``tests.support.recordings.write_session``:
four products, a snapshot each, then ``--messages`` l2update frames), then runs the real command as a user does, in a
subprocess, for each layout:

    python -m bytewax.run dataflow:flow -w 1             (the baseline)
    python -m bytewax.run dataflow:flow -w 2
    python -m bytewax.testing dataflow:flow -p 2 -w 1

with ``ORDERBOOK_REPLAY``, threshold 0 and ``ORDERBOOK_OUTPUT=jsonl:FILE``. A figure is
messages in the recording / wall time of the command (start-up included), the median of
``--repeat`` runs, layouts interleaved so that a busy machine hurts them alike. Each is
printed beside the ``-w 1`` baseline of the same run. Every layout must give each product
the same summaries as the baseline.

Targets (issue 21): ``-w 1`` at least 150,000 messages a second, and ``-p 2 -w 1`` at
least 1.8x the messages/s of ``-w 1`` (on a 2-core machine), each the median of 5 runs.
``-w 2`` has no target: two threads of one process share one interpreter lock. Each
figure is also given per CPU second (the process's user + system time): on a machine
shared with other work, wall time says more about the neighbours than about the code.

What the figure depends on, besides the split itself: the recording is written in
version 2 blocks, so each process decompresses only its own products' half; and a process
waits for the lower ones to listen before Timely connects (``service/cluster.py``), so no
run pays Timely's 1-s connect retry: the bench counts those retries (``error connecting to
worker`` on the workers' output) and prints how many runs had one.

    python bench/bench_replay_scale.py [--messages 200000] [--changes-per-batch 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.flow import flow_env  # noqa: E402
from tests.support.recordings import write_session  # noqa: E402

LAYOUTS = {
    "-w 1": ["bytewax.run", "dataflow:flow", "-w", "1"],
    "-w 2": ["bytewax.run", "dataflow:flow", "-w", "2"],
    "-p 2 -w 1": ["bytewax.testing", "dataflow:flow", "-p", "2", "-w", "1"],
}
TARGET = 1.8
"""``-p 2 -w 1`` over ``-w 1`` (issue 21)."""
TARGET_RATE = 150_000
"""Messages a second of ``-w 1`` (issue 21)."""


RETRY = "error connecting to worker"


def run_layout(
    args: list[str], recording: Path, out: Path
) -> tuple[float, float, bool]:
    """Wall and CPU seconds of one run of the command, and whether Timely had to retry
    a connection; summaries are left in ``out``."""
    out.unlink(missing_ok=True)
    env = flow_env(
        ORDERBOOK_REPLAY=str(recording),
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_OUTPUT=f"jsonl:{out}",
    )
    cpu_before = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    retried = RETRY in done.stdout or RETRY in done.stderr
    return wall, _children_cpu() - cpu_before, retried


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summaries_by_product(out: Path) -> dict[str, list[str]]:
    by: dict[str, list[str]] = {}
    with out.open() as f:
        for line in f:
            by.setdefault(json.loads(line)["product_id"], []).append(line)
    return by


def main() -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--changes-per-batch", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recording = Path(tmp) / "session.jsonl.gz"
        messages, changes = write_session(
            recording, args.messages, args.changes_per_batch
        )
        walls: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        cpus: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        retries: dict[str, int] = dict.fromkeys(LAYOUTS, 0)
        baseline: dict[str, list[str]] | None = None
        identical = True
        for _ in range(args.repeat):
            for name, layout in LAYOUTS.items():
                out = Path(tmp) / "out.jsonl"
                wall, cpu, retried = run_layout(layout, recording, out)
                retries[name] += retried
                walls[name].append(wall)
                cpus[name].append(cpu)
                got = summaries_by_product(out)
                if baseline is None:
                    baseline = got
                elif got != baseline:
                    identical = False
                    print(f"  {name}: summaries differ from -w 1", file=sys.stderr)
    rates = {name: messages / statistics.median(w) for name, w in walls.items()}
    base = rates["-w 1"]
    summaries = sum(len(v) for v in (baseline or {}).values())
    print(
        f"replay of {messages:,} messages ({changes:,} level changes, "
        f"{args.changes_per_batch} per message, 4 products), threshold 0, jsonl to a "
        f"file: {summaries:,} summaries; median of {args.repeat} runs, start-up included"
    )
    for name, rate in rates.items():
        ratio = rate / base
        line = (
            f"  {name:<10} {rate:>9,.0f} msg/s  ({statistics.median(walls[name]):5.2f} s)"
            f"  {ratio:4.2f}x the -w 1 baseline of {base:,.0f} msg/s"
        )
        cpu = statistics.median(cpus[name])
        line += f"  cpu {cpu:5.2f} s ({messages / cpu:,.0f} msg per cpu s)"
        if name == "-w 1":
            line += f"   target >= {TARGET_RATE:,} msg/s {_mark(rate >= TARGET_RATE)}"
        if name == "-p 2 -w 1":
            line += f"   target >= {TARGET}x {_mark(ratio >= TARGET)}"
        print(line)
    print(f"  summaries identical per product in every layout: {_mark(identical)}")
    print(
        f"  runs of -p 2 that paid Timely's 1-s connect retry: "
        f"{retries['-p 2 -w 1']} of {args.repeat}"
    )
    print(
        f"  (load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
        "cores; the figures mean something only on an otherwise idle machine)"
    )
    return rates


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    main()
