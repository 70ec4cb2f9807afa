"""tardis.dev files replayed as they are read: one merged stream, no temporary recording.

Why. Converting first (:mod:`importers.replay`) reads the files, builds a frame's text
for every message, compresses it into a recording, then the replay reads that recording
again and decodes every frame: measured with bench/bench_importers.py (100,004 messages
of 4 products, whole ``ORDERBOOK_REPLAY`` runs, 5 interleaved rounds), a tardis.dev
.csv.gz converted first replayed in 2.41x the time of the same events from this
project's recording, though reading the CSV alone costs 1.0-1.2x the recording's read.
Here the events the importer builds go to the books directly: 1.26x (rounds
1.11-1.28, wall and CPU time alike). Once the recording's own replay got faster (typed
decoding, keyed items) that was 1.42x of its CPU time; the reader's single loop over
the rows (:meth:`importers.tardis.TardisReader._items`) and the events passed on as
the reader built them (below) brought it to 1.16-1.19x (bench_importers --repeat 3,
three runs each, medians); against main's still faster replay of 002b050, 1.53x before
and 1.21-1.31x after.

When. :func:`importers.replay.open_replay` uses this source whenever every file is a
tardis.dev ``incremental_book_L2`` file (``direct=False`` converts them, as before).
Under ``-p N`` every process reads every file and keeps its own products' items: more
CPU in all than a conversion shared by the processes, but no process waits for a
conversion before its first event. Under ``-r`` a partition saves the states a replay
of the converted recording would (the index of the product's next item and of its
last reset: a conversion numbers the same items the same way) and resumes from them
(below). cryptofeed captures are still converted first: their products are known only
by parsing every frame, and a replay must name its products before it starts.

How. The dataflow must know the products before it starts (they place the books): a
scan of the files' text finds the symbols with a snapshot
(:func:`importers.tardis.snapshot_symbols`, about a tenth of reading the rows). Then,
per worker, one pass over every file: :func:`importers.sources.open_sources` readers
merged by receive time, made one stream per product by the same
:class:`importers.sources.Router` a conversion uses, items of the worker's products
queued per partition (the others dropped), each partition emitting its product's events
as a replay of the converted recording would: a reset at the start, a reset
("reconnected") where the recording would hold a ``connected`` record, the snapshot
and updates with the replay's feed and the receive time. A quality tracker sees every
item on the way, so the quality report is the conversion's; crossed and locked episodes
are measured only for the full report (``ORDERBOOK_REPLAY_REPORT``): following each
product's best prices costs about 15% of a replay's CPU time (bench_importers, 100,004
messages), as much as the rest of what this source adds to a replay of a recording.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from book_step import BookState, update_book
from events import BookChanges, BookEvent, BookReset, BookSnapshot, book_changes
from importers.convert import PROGRESS_EVERY, Progress, gather_skips
from importers.quality import QualityReport, QualityTracker
from importers.sources import Router, merged, open_sources
from importers.tardis import TardisReader, snapshot_symbols
from recording.replay import COUNTED, ThreadPasses, valid_resume
from resync import ResyncRequests

log = logging.getLogger(__name__)


class NoBookData(ValueError):
    """The files hold no snapshot of any product asked for (one line)."""


def direct_products(paths: list[Path], products: list[str] | None) -> list[str]:
    """The products a direct replay of ``paths`` serves: those asked for, or every
    product with a snapshot; :class:`NoBookData` when one asked for has none."""
    found: set[str] = set()
    for path in paths:
        found |= snapshot_symbols(path)
    files = f"{len(paths)} file{'s' if len(paths) != 1 else ''}"
    if products:
        missing = [p for p in products if p not in found]
        if missing:
            raise NoBookData(
                f"no book data of {', '.join(missing)} in the {files} "
                "(ORDERBOOK_PRODUCTS)"
            )
        return list(dict.fromkeys(products))
    if not found:
        raise NoBookData(f"no book data in {files}: nothing to replay")
    return sorted(found)


class _WorkerPass:
    """One pass over every file for the partitions of one worker (one thread)."""

    PULL_ITEMS = 2000
    MAX_QUEUED = 50_000

    def __init__(
        self,
        paths: list[Path],
        show_progress: bool,
        episodes: bool = True,
        feed: str | None = None,
    ) -> None:
        self.paths = paths
        self.feed = feed
        """The replay's feed, given to the tardis readers' events (None: theirs)."""
        self.show_progress = show_progress
        self.queues: dict[str, deque] = {}
        self.parts: list[DirectPartition] = []
        self.started = False
        self.done = False
        self.tracker = QualityTracker(episodes)
        self.t0 = 0.0
        self.items = 0
        self._items: Any = iter(())
        self._readers: list = []
        self._router = Router()
        self._bar: Progress | None = None

    def register(self, part: DirectPartition) -> None:
        self.queues[part.product] = deque()
        self.parts.append(part)

    def _start(self) -> None:
        self.started = True
        self.t0 = time.perf_counter()
        readers, problems = open_sources([glob.escape(str(p)) for p in self.paths])
        if problems:  # checked at start: a file removed or changed since
            log.error("the replay cannot read its files: %s", "; ".join(problems))
            readers = []
        if self.feed is not None:
            for reader in readers:
                if isinstance(reader, TardisReader):
                    reader.feed = self.feed
        self._readers = readers
        self._items = self._router.route(merged(readers))
        if self.show_progress and readers:
            try:
                self._bar = Progress(readers, "replay")
            except Exception as exc:  # a progress bar must never stop a replay
                log.warning("no progress bar: %s", exc)

    def pull(self) -> bool:
        """Queue some items of this worker's products; False when the files are
        exhausted or reading pauses (a queue is long)."""
        if self.done:
            return False
        if not self.started:
            self._start()
        queues = self.queues
        if any(len(q) > self.MAX_QUEUED for q in queues.values()):
            return False
        add = self.tracker.add_event
        n = 0
        for item in self._items:
            queue = queues.get(item.product_id)
            if queue is None:
                continue  # another worker's product
            add(item.product_id, item.event, item.t_ns)
            queue.append(item)
            n += 1
            if n >= self.PULL_ITEMS:
                self._progress(n)
                return True
        self.done = True
        self._progress(n)
        if self._bar is not None:
            self._bar.close(self.items)
            self._bar = None
        gather_skips(self.tracker, self._readers, self._router, list(queues))
        return n > 0

    def _progress(self, n: int) -> None:
        before, self.items = self.items, self.items + n
        if self._bar is not None and before // PROGRESS_EVERY != (
            self.items // PROGRESS_EVERY
        ):
            self._bar.update(self.items)

    def finished(self) -> None:
        """Called by each partition at its end; the last one says what was read."""
        if all(p.ended for p in self.parts):
            stats: Counter[str] = Counter()
            for part in self.parts:
                stats.update(part.stats)
            wall = max(time.perf_counter() - self.t0, 1e-9)
            files = len(self.paths)
            text = (
                f"replay of {files} tardis.dev file{'s' if files != 1 else ''}, read "
                f"directly ({', '.join(p.product for p in self.parts)}; process "
                f"{os.getpid()}): {stats['frames']:,} frames, {stats['snapshots']:,} "
                f"snapshots and {stats['changes']:,} level changes sent to the books, "
                f"{stats['resets']:,} resets, in {wall:.2f} s "
                f"({stats['frames'] / wall:,.0f} frames/s)."
            )
            try:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr closed: the run must still end well
                pass


class DirectPartition(StatefulSourcePartition[tuple[str, BookEvent], dict]):
    """One product's events, as a replay of the converted recording emits them; its
    resume state counts the product's items, as that recording's records. A resumed
    partition reads from the start of the stream in use at the resume point, rebuilds
    the book from it without emitting anything, then emits that book as one snapshot
    (as :class:`recording.replay.ReplayPartition` does)."""

    BATCH = 500

    def __init__(
        self, reader: _WorkerPass, product: str, feed: str, resume: Any
    ) -> None:
        self.product = product
        self.feed = feed
        self.ended = False
        self.stats: Counter[str] = Counter()
        self._next = 0
        self._stream = 0
        self._emit_from = 0
        self._shadow: BookState | None = None
        self._last_summary = None
        self._pending = [(product, BookReset(product, "replay start", feed))]
        if resume is not None and not valid_resume(resume):
            log.warning(
                "%s: a resume state this version does not understand (%.80r): "
                "replaying the product from its start",
                product,
                resume,
            )
            resume = None
        if resume is not None:
            self._stream, self._emit_from = resume["stream"], resume["next"]
            self._shadow = BookState(product, feed, quiet=True)
            self._pending = []
        self._reader = reader
        reader.register(self)
        self._queue = reader.queues[product]
        self.key: str | None = None
        """Set by :meth:`DirectSource.key_by`: each poll is then ONE item
        ``(key, [events])``, the live source's and the replay's shape."""

    def next_batch(self) -> list[tuple[str, BookEvent]]:
        batch, self._pending = self._pending, []
        queue = self._queue
        while len(batch) < self.BATCH:
            if not queue:
                if not self._reader.pull():
                    if queue:
                        continue
                    break
                continue
            item = queue.popleft()
            index = self._next
            self._next = index + 1
            if index < self._emit_from:
                if index >= self._stream:
                    self._warm_up(item)
                continue
            if self._shadow is not None:
                batch.append(self._rebuilt_book())
            self._event(index, item, batch)
        if batch:
            if self.key is not None:
                return [(self.key, [event for _, event in batch])]
            return batch
        if self._reader.done and not queue:
            if not self.ended:
                self.ended = True
                self._reader.finished()
            raise StopIteration
        return batch

    def _event(self, index: int, item, out: list) -> None:
        product, feed, stats = self.product, self.feed, self.stats
        event = item.event
        kind = type(event)
        if kind is BookChanges:
            stats["changes"] += len(event.changes)
            if (
                event.feed != feed
                or event.received_ns != item.t_ns
                or event.product_id != product
            ):  # (a tardis reader's events are the replay's already: kept as they are)
                event = book_changes(
                    product, event.changes, event.time, feed, item.t_ns
                )
        elif kind is BookSnapshot:
            stats["snapshots"] += 1
            event = BookSnapshot(
                product, event.bids, event.asks, event.time, feed, item.t_ns
            )
        else:  # a reset: a "connected" record in the converted recording
            self._stream = index
            stats["resets"] += 1
            out.append((product, BookReset(product, "reconnected", feed)))
            return
        stats["frames"] += 1
        out.append((product, event))

    def _warm_up(self, item) -> None:
        events: list = []
        self._event(self._next - 1, item, events)
        for _, event in events:
            self._shadow, summary = update_book(self._shadow, event)
            if summary is not None:
                self._last_summary = summary

    def _rebuilt_book(self) -> tuple[str, BookEvent]:
        state, self._shadow = self._shadow, None
        self.stats.clear()
        self.stats["resumed"] = 1
        if state is None or state.book is None:
            return self.product, BookReset(self.product, "resumed", self.feed)
        last = self._last_summary
        summary_time = last.time if last is not None and state.last_top else None
        book = state.book
        event = BookSnapshot(
            self.product,
            list(book.levels("bid")),
            list(book.levels("ask")),
            summary_time,
            self.feed,
        )
        return self.product, event

    def snapshot(self) -> dict:
        resume_at = self._next
        if self._shadow is not None:  # still rebuilding: the resume point stands
            resume_at = max(self._next, self._emit_from)
        return {"next": resume_at, "stream": self._stream, "counted": COUNTED}


class DirectSource(FixedPartitionedSource[tuple[str, BookEvent], dict]):
    """tardis.dev files as a finite Bytewax source, a partition per product (see the
    module docstring). ``products``: from :func:`direct_products`."""

    def __init__(
        self,
        paths: list[Path],
        products: list[str],
        feed: str = "replay",
        progress: bool | None = None,
        episodes: bool = True,
    ) -> None:
        self.paths = list(paths)
        self.episodes = episodes
        """Measure crossed and locked episodes (the full quality report)."""
        self.products = list(products)
        self.feed = feed
        self.progress = progress
        self.resync_requests = ResyncRequests()
        self._passes = ThreadPasses()

    def list_parts(self) -> list[str]:
        return sorted(self.products)

    def _pass_for_this_worker(self) -> _WorkerPass:
        return self._passes.for_this_thread(self._new_pass)

    def _new_pass(self) -> _WorkerPass:
        show = sys.stderr.isatty() if self.progress is None else self.progress
        return _WorkerPass(self.paths, show, self.episodes, self.feed)

    keys: dict[str, str] | None = None

    def key_by(self, keys: dict[str, str]) -> None:
        """Hand each partition's poll as ONE item ``(keys[product], [events])`` (a
        product missing from ``keys``: keyed by its id), for partitions built after
        this call, as :meth:`recording.replay.ReplaySource.key_by`: the dataflow then
        needs no routing step."""
        self.keys = dict(keys)

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any
    ) -> DirectPartition:
        part = DirectPartition(
            self._pass_for_this_worker(), for_part, self.feed, resume_state
        )
        if self.keys is not None:
            part.key = self.keys.get(for_part, for_part)
        return part

    def quality_report(self) -> QualityReport:
        """The report of this process's passes (each of its own products)."""
        passes = self._passes.all()
        products = {}
        whole = QualityReport([], Counter(), Counter(), [])
        for number, one in enumerate(passes):
            report = one.tracker.report()
            for quality in report.products:
                if quality.product_id in one.queues:
                    products[quality.product_id] = quality
            if number == 0:  # each pass read every file: the whole-run lines once
                whole.skipped, whole.ignored = report.skipped, report.ignored
                whole.ended_early = report.ended_early
        whole.products = [products[p] for p in sorted(products)]
        return whole
