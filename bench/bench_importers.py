"""The importers against this project's own recording: the same events in each format.

Builds one session of the local exchange's market (``--messages`` update messages over
four products, ``--changes-per-batch`` level changes each, a 1,000-level snapshot of each
product first) and writes it in every format:

* this project's recording (version 2 blocks): the baseline;
* tardis.dev ``incremental_book_L2`` CSV, gzip;
* a cryptofeed 2.x raw capture (Exchange feed, one connection, text);
* a cryptofeed v3 capture (Advanced Trade, one connection, zstd JSON lines), and, as its
  own baseline, the recording it converts to (Advanced Trade frames cost the decoder
  more than Exchange ones, in a replay of a recording as in an import).

Two figures per format, the median of ``--repeat`` runs, formats interleaved so that a
busy machine hurts them alike:

* read: the book events out of the file, as a replay gets them. The baseline is the
  replay's own path (:class:`recording.replay.ReplaySource` partitions, file to decoded
  events); an importer's is file to the items the converter writes (decoded or built
  events, resets, one stream per product);
* convert: ``python -m importers convert`` into a recording (reading, the quality
  report's books, writing), in process.

Then the whole replay the service runs, ``ORDERBOOK_REPLAY`` through the real dataflow
(``run_main``, every summary kept), the kinds interleaved in each of ``--repeat``
rounds, medians: this project's recording as the service replays it (the baseline: its
light quality report included), without any report, and with the full report
(``ORDERBOOK_REPLAY_REPORT``); the tardis CSV as the service replays it (read directly,
:mod:`importers.direct`) and converted first (as before); the cryptofeed v3 capture
(converted at start into a temporary recording, :mod:`importers.replay`).

Each read figure is printed beside the baseline's read time, each replay beside the
baseline replay. Target: the tardis CSV's ``ORDERBOOK_REPLAY`` within 1.5x of the
recording's.

    python bench/bench_importers.py [--messages 100000] [--changes-per-batch 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from importers.convert import convert, read_items  # noqa: E402
from importers.sources import open_sources  # noqa: E402
from recording.replay import ReplaySource  # noqa: E402
from tests.support.foreign_files import (  # noqa: E402
    market_session,
    write_cryptofeed_capture,
    write_cryptofeed_raw,
    write_recording,
    write_tardis,
)

PRODUCTS = ("BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR")
TARGET = 1.5


def read_recording(path: Path) -> int:
    """Events out of our recording through the replay partitions (no Bytewax run)."""
    source = ReplaySource(path, progress=False)
    events = 0
    for part in [source.build_part("bench", p, None) for p in source.list_parts()]:
        while True:
            try:
                events += len(part.next_batch())
            except StopIteration:
                break
    return events


def read_foreign(paths: list[Path]) -> int:
    readers, problems = open_sources([str(p) for p in paths])
    assert not problems, problems
    return sum(1 for _ in read_items(readers))


def replay_seconds(paths: list[Path], how: str = "default", tmp: Path | None = None):
    """``ORDERBOOK_REPLAY=paths`` through the real dataflow, start to end: wall and CPU
    seconds of this process (the CPU time is the steadier figure on a shared machine:
    other processes' load lengthens the wall time, not it). ``how``:
    ``default`` (as the service runs it), ``no report`` (a recording's partitions
    alone, no quality report), ``json report`` (``ORDERBOOK_REPLAY_REPORT`` set: the
    full report), ``converted`` (foreign files converted first, never read directly)."""
    from bytewax.testing import TestingSink, run_main

    from dataflow import get_flow
    from importers.replay import open_replay
    from service.settings import Settings

    out: list = []
    start, cpu = time.perf_counter(), time.process_time()
    report = tmp / "report.json" if how == "json report" else None
    settings = Settings(
        replay=tuple(paths), spread_threshold_pct=Decimal(0), replay_report=report
    )
    source = None
    prepared = None
    if how == "no report":
        source = ReplaySource(paths[0], progress=False)
    elif how == "converted":
        source, prepared = open_replay(paths, direct=False, progress=False)
    if source is None:
        run_main(get_flow(settings, sink=TestingSink(out)))
    else:
        run_main(
            get_flow(
                settings, source=source, products=source.products, sink=TestingSink(out)
            )
        )
    if prepared is not None:
        prepared.close()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--changes-per-batch", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        session = market_session(
            PRODUCTS,
            batches=args.messages // len(PRODUCTS),
            depth=1000,
            changes_per_batch=args.changes_per_batch,
            snapshot_each_day=False,
            seed=1,
        )
        raw_dir = root / "raw"
        raw_dir.mkdir()
        files = {
            "recording (baseline)": [write_recording(root / "rec.gz", session)],
            "tardis CSV .gz": [write_tardis(root / "book.csv.gz", session)],
            "cryptofeed 2.x raw": write_cryptofeed_raw(raw_dir, session, files=1),
            "cryptofeed v3 .zst": [
                write_cryptofeed_capture(root / "COINBASE.jsonl.zst", session)
            ],
        }
        # the same Advanced Trade frames as a recording of ours: the fair baseline of
        # the v3 capture (Advanced Trade frames cost the decoder more than Exchange ones)
        convert(
            [str(files["cryptofeed v3 .zst"][0])], root / "rec-at.gz", progress=False
        )
        files = {
            "recording (baseline)": files["recording (baseline)"],
            "tardis CSV .gz": files["tardis CSV .gz"],
            "cryptofeed 2.x raw": files["cryptofeed 2.x raw"],
            "recording, AT frames": [root / "rec-at.gz"],
            "cryptofeed v3 .zst": files["cryptofeed v3 .zst"],
        }
        changes = sum(len(d) for _, _, k, d in session.events if k == "changes")
        print(
            f"{len(session.events):,} messages ({changes:,} level changes, "
            f"{args.changes_per_batch} per message, {len(PRODUCTS)} products, "
            f"1,000-level snapshots) written in every format in "
            f"{time.perf_counter() - t0:.1f} s; median of {args.repeat} runs",
            file=sys.stderr,
        )
        reads: dict[str, list[float]] = {name: [] for name in files}
        converts: dict[str, list[float]] = {name: [] for name in files}
        counted: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, paths in files.items():
                start = time.perf_counter()
                if name.startswith("recording"):
                    counted[name] = read_recording(paths[0])
                else:
                    counted[name] = read_foreign(paths)
                reads[name].append(time.perf_counter() - start)
                if name.startswith("recording"):
                    continue
                out = root / "out.gz"
                start = time.perf_counter()
                convert([str(p) for p in paths], out, overwrite=True, progress=False)
                converts[name].append(time.perf_counter() - start)
        base = statistics.median(reads["recording (baseline)"])
        messages = len(session.events)
        print(
            f"{'format':<22} {'MB':>6} {'read s':>7} {'x base':>7} {'msg/s':>9} "
            f"{'convert s':>9} {'x base':>7}"
        )
        for name, paths in files.items():
            size = sum(p.stat().st_size for p in paths) / 1e6
            read = statistics.median(reads[name])
            line = (
                f"{name:<22} {size:>6.1f} {read:>7.2f} {read / base:>6.2f}x "
                f"{messages / read:>9,.0f}"
            )
            if converts[name]:
                conv = statistics.median(converts[name])
                line += f" {conv:>9.2f} {conv / base:>6.2f}x"
            print(line)
        # As the service runs (dataflow.py: service.runtime.tune_garbage_collector):
        # what lives now (the session, the files' names...) frozen out of the
        # collector's scans, young objects collected every 100,000 allocations. Without
        # it every full collection walks the 100,000-message session this process still
        # holds, which costs a replay by its allocations: more for the events a direct
        # read builds than for the lines of a recording.
        from service.runtime import tune_garbage_collector

        tune_garbage_collector()
        replays: dict[str, list[tuple[float, float]]] = {}
        runs = (
            ("recording (baseline)", "recording (baseline)", "default"),
            ("recording, no report", "recording (baseline)", "no report"),
            ("recording, JSON report", "recording (baseline)", "json report"),
            ("tardis CSV .gz", "tardis CSV .gz", "default"),
            ("tardis, converted first", "tardis CSV .gz", "converted"),
            ("cryptofeed v3 .zst", "cryptofeed v3 .zst", "default"),
        )
        for _ in range(args.repeat):
            for label, name, how in runs:
                seconds = replay_seconds(files[name], how, root)
                replays.setdefault(label, []).append(seconds)
        print(
            f"{'ORDERBOOK_REPLAY of':<24} {'wall s':>7} {'x base':>7} {'CPU s':>7} "
            f"{'x base':>7}   (base: the recording as the service replays it, light "
            "quality report included; medians; CPU ratio of each round)"
        )
        base_runs = replays["recording (baseline)"]
        ratio = {}
        for name, runs_of in replays.items():
            wall = statistics.median(w for w, _ in runs_of)
            cpu = statistics.median(c for _, c in runs_of)
            base_wall = statistics.median(w for w, _ in base_runs)
            base_cpu = statistics.median(c for _, c in base_runs)
            ratio[name] = (wall / base_wall, cpu / base_cpu)
            rounds = ", ".join(
                f"{c / bc:.2f}"
                for (_, c), (_, bc) in zip(runs_of, base_runs, strict=True)
            )
            print(
                f"{name:<24} {wall:>7.2f} {wall / base_wall:>6.2f}x {cpu:>7.2f} "
                f"{cpu / base_cpu:>6.2f}x   ({rounds})"
            )
        wall_ratio, cpu_ratio = ratio["tardis CSV .gz"]
        verdict = "meets" if max(wall_ratio, cpu_ratio) <= TARGET else "MISSES"
        print(
            f"ORDERBOOK_REPLAY of the tardis CSV: {wall_ratio:.2f}x the recording's wall "
            f"time, {cpu_ratio:.2f}x its CPU time ({verdict} the {TARGET}x target)"
        )
        tardis = statistics.median(reads["tardis CSV .gz"]) / base
        print(
            f"tardis CSV read: {tardis:.2f}x the recording's read time; items read: "
            f"{counted}"
        )


if __name__ == "__main__":
    main()
