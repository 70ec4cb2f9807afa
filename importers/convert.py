"""``python -m importers convert SOURCE... OUTPUT``: foreign market data to a recording.

Every SOURCE (a path or a glob) is detected from its content (:mod:`importers.detect`),
read by its importer (a recording of this project among them too:
:mod:`importers.recordings`), and all are merged by receive time into one version 2
recording (:mod:`recording.format`): the same file ``python -m recording`` writes, so
``ORDERBOOK_REPLAY=OUTPUT`` replays it through the same decoder and the local exchange
serves it (``--replay OUTPUT``).

The command refuses, in one line each and with exit status 2 before anything is written:
a source that names no file or that no importer reads (saying what it looked like), an
output whose directory does not exist, and an existing output unless ``--overwrite``.
A conversion that finds no book data at all writes nothing and ends with status 1.
Otherwise it ends with a summary and the quality report (:mod:`importers.quality`) on
stderr (``--report PATH`` writes the report as JSON too); damaged lines were skipped and
counted, and a file cut off mid-way was read up to where its data ends.

The recording is written beside OUTPUT under a temporary name and renamed into place at
the end, so an interrupted conversion never leaves a half-written recording under the
name asked for. Its header, which names the products, is written last (the products are
known only then): the records go to a body file first, then the header and the body are
joined (a copy of the compressed body, about 1% of a conversion's time).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from common.text import shown
from importers.quality import QualityReport, QualityTracker
from importers.sources import Reader, Router, lines_of, merged, open_sources
from importers.stream import Item
from recording.recorder import check_output
from recording.writer import RecordingWriter

log = logging.getLogger(__name__)

PROGRESS_EVERY = 5_000
"""Items between two updates of the progress bar."""


class ConvertError(ValueError):
    """A conversion that cannot run (``status`` 2) or found nothing to write (1); the
    message is one line per problem."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Conversion:
    """What a conversion did."""

    output: Path
    protocol: str
    products: list[str]
    frames: int
    resets: int
    rewritten: int
    seconds: float
    report: QualityReport
    readers: list[Reader]

    def summary(self, target: str | None = None) -> str:
        """One line; ``target`` names the output (default: its path)."""
        formats = sorted({r.format for r in self.readers})
        files = sum(len(lines_of(r)) for r in self.readers)
        rate = self.frames / self.seconds if self.seconds else 0.0
        text = (
            f"converted {files} file{'s' if files != 1 else ''} "
            f"({', '.join(formats)}) to {target or shown(self.output)}: {self.frames:,} "
            f"{self.protocol} frames of {len(self.products)} "
            f"product{'s' if len(self.products) != 1 else ''}, {self.resets:,} resets, "
            f"in {self.seconds:.2f} s ({rate:,.0f} frames/s)"
        )
        if self.rewritten:
            text += f"; {self.rewritten:,} frames re-serialized (split or renumbered)"
        return text + "."


def read_items(readers: list[Reader], router: Router | None = None) -> Iterator[Item]:
    """The items of all ``readers`` as the recording will hold them."""
    return (router or Router()).route(merged(readers))


def convert(
    sources: list[str],
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    products: Collection[str] | None = None,
) -> Conversion:
    """Convert ``sources`` to the recording ``output``; :class:`ConvertError` when it
    cannot start or finds nothing to write. ``products``: only these (the replay's
    ``ORDERBOOK_PRODUCTS``); None: every product the sources hold."""
    output = Path(output)
    readers, problems = open_sources(list(sources))
    if not problems and not readers:
        problems.append("no source given")
    problem = check_output(output, "overwrite" if overwrite else "new")
    if problem:
        problems.append(problem)
    if problems:
        raise ConvertError("\n".join(problems))
    started = time.perf_counter()
    router = Router()
    tracker = QualityTracker()
    body = _temporary(output, "body")
    try:
        writer = RecordingWriter(body, None, append=True)
        try:
            frames, resets, first_ns = _write(
                readers, router, tracker, writer, progress, products
            )
        finally:
            writer.close()
        if frames == 0:
            raise ConvertError(
                f"no book data in {len(readers)} source"
                f"{'s' if len(readers) != 1 else ''}: nothing written to "
                f"{shown(output)}",
                status=1,
            )
        products = sorted(tracker.products)
        _join(output, _header(router.protocol, products, first_ns, readers), body)
    finally:
        body.unlink(missing_ok=True)
    gather_skips(tracker, readers, router, products)
    return Conversion(
        output,
        router.protocol or "exchange",
        products,
        frames,
        resets,
        router.rewritten,
        time.perf_counter() - started,
        tracker.report(),
        readers,
    )


def gather_skips(tracker, readers, router, products) -> None:
    """What the readers and the router skipped, ignored and found cut off, into the
    report (skips of products left out by ``products`` left out)."""
    wanted = (lambda product: True) if products is None else products.__contains__
    for reader in readers:
        for (product, why), n in reader.skipped.items():
            if product is None or wanted(product):
                tracker.skip(product, why, n)
        for kind, n in getattr(reader, "ignored", {}).items():
            tracker.ignored[kind] += n
        for lines in lines_of(reader):
            if lines.ended_early:
                tracker.ended_early.append((shown(lines.path.name), lines.ended_early))
    for (product, why), n in router.skipped.items():
        if product is None or wanted(product):
            tracker.skip(product, why, n)


def _write(
    readers, router, tracker, writer, progress, products=None
) -> tuple[int, int, int | None]:
    frames = resets = 0
    first_ns = None
    bar = Progress(readers) if _show_progress(progress) else None
    add = tracker.add
    items = read_items(readers, router)
    if products is not None:
        wanted = frozenset(products)
        items = (item for item in items if item.product_id in wanted)
    try:
        for n, item in enumerate(items, 1):
            if first_ns is None:
                first_ns = item.t_ns
            if item.text is None and item.is_reset:
                writer.connected(item.product_id, item.t_ns)
                resets += 1
            else:
                writer.frame(item.product_id, item.frame(), item.t_ns)
                frames += 1
            add(item)
            if bar is not None and n % PROGRESS_EVERY == 0:
                bar.update(frames)
    finally:
        if bar is not None:
            bar.close(frames)
    return frames, resets, first_ns


def _header(protocol, products, first_ns, readers) -> dict:
    started = (
        datetime.fromtimestamp(first_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if first_ns
        else None
    )
    return {
        "protocol": protocol or "exchange",
        "feed": protocol or "exchange",
        "url": "",
        "products": products,
        "started": started,
        "imported": [
            {"file": lines.path.name, "format": reader.format}
            for reader in readers
            for lines in lines_of(reader)
        ],
    }


def _temporary(output: Path, what: str) -> Path:
    handle, name = tempfile.mkstemp(
        prefix=f".{output.name}.", suffix=f".{what}", dir=output.parent
    )
    os.close(handle)
    return Path(name)


def _join(output: Path, header: dict, body: Path) -> None:
    """The header's gzip member, then the body's blocks, renamed to ``output``."""
    whole = _temporary(output, "part")
    try:
        RecordingWriter(whole, header).close()
        with open(whole, "ab") as out, open(body, "rb") as data:
            shutil.copyfileobj(data, out, 1 << 20)
        os.replace(whole, output)
    finally:
        whole.unlink(missing_ok=True)


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


class Progress:
    """A rich progress bar over the compressed bytes of every source, on stderr."""

    def __init__(self, readers: list[Reader], label: str = "convert") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self.files = [lines for reader in readers for lines in lines_of(reader)]
        self.t0 = time.perf_counter()
        self.progress = Progress(
            TextColumn(label),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[frames]:,} frames  {task.fields[rate]:,.0f}/s"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
        )
        self.task = self.progress.add_task(
            label, total=sum(f.size for f in self.files) or 1, frames=0, rate=0.0
        )
        self.progress.start()

    def update(self, frames: int) -> None:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(
            self.task,
            completed=sum(f.position for f in self.files),
            frames=frames,
            rate=frames / wall,
        )

    def close(self, frames: int) -> None:
        self.update(frames)
        self.progress.stop()


def main(
    argv: list[str] | None = None, prog: str = "python -m importers convert"
) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Convert tardis.dev incremental_book_L2 CSV files, cryptofeed captures "
            "(2.x raw files, v3 .jsonl.zst) of Coinbase and recordings of this project "
            "to one recording that ORDERBOOK_REPLAY replays, merged by receive time. "
            "Formats are detected from content."
        ),
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="files or globs")
    parser.add_argument("output", metavar="OUTPUT", help="the recording to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it exists"
    )
    parser.add_argument(
        "--report", metavar="PATH", help="also write the quality report as JSON"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    args = parser.parse_args(argv)
    report_path = Path(args.report) if args.report else None
    if report_path is not None and not report_path.parent.is_dir():
        print(
            f"--report: directory '{shown(report_path.parent)}' does not exist",
            file=sys.stderr,
        )
        return 2
    try:
        result = convert(
            args.sources, args.output, overwrite=args.overwrite, progress=args.progress
        )
    except ConvertError as exc:
        print(str(exc), file=sys.stderr)
        return exc.status
    print(result.summary(), file=sys.stderr)
    print(result.report.to_text(), file=sys.stderr)
    if report_path is not None:
        data = {"summary": result.summary(), **result.report.to_dict()}
        report_path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    return 0
