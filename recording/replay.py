"""Replay of a recording as a Bytewax source: one partition per product.

Layout. Each product is its own partition, named by its product id, so Bytewax places it
on the worker that also holds the product's book (round-robin over the sorted names, the
rule :mod:`service.placement` keys the book step by): under ``-w N`` or ``-p N`` no event
crosses a worker or a process. The partitions of one worker share one pass over the file
(a :class:`_WorkerReader` over a :class:`recording.reader.ProductReader`): it reads the
blocks of its own products and seeks past the others unread, so each of two processes
decompresses about half of a version 2 recording. A version 1 recording (one stream) is
decompressed whole by each worker's pass, each line's product found with a byte match at
its known place (no JSON parsing), or by parsing a line of another shape.

Decisions a replay makes differently from a live feed (a file cannot be asked again):

* a line that cannot be read (not JSON, JSON but not an object, no product, no frame) is
  skipped and counted; the run goes on;
* a frame that cannot be decoded, a recorded error reply, or an Advanced Trade sequence
  gap is skipped and counted, and the book goes on (a live run would resync from a new
  snapshot, which a recording does not have): books after such a frame may differ from
  the live run's. The book is reset only where the recording says a new connection began
  (``"event": "connected"``); a ``connected`` record in the middle of a stream (no
  snapshot seen since the previous one) is logged as stray;
* the report at the end says what was skipped and why;
* a replay that could never produce anything is refused at start with one line: a header
  that lists no products, or one whose protocol is not its frames' (the first
  :data:`SNIFF_FRAMES` frames of each product are looked at, within the file's first
  :data:`SNIFF_BYTES`: every one of the other protocol's shape). A frame of the other
  protocol met later is skipped and counted as such, and the report says when it was
  every frame of a product;
* REST audits recorded with the frames (``python -m recording --audit-interval``, see
  :mod:`recording.format`) become :class:`events.AuditStarted` and
  :class:`events.BookAudit` at their place in the product's stream, so the book step
  repeats the live run's comparisons and writes the same audit records (a book that
  drifted is not resynced: a file cannot be asked again, so its later audits are
  ``skipped`` until the recording's next snapshot). ``audits=False`` (the service's
  ``ORDERBOOK_AUDIT_INTERVAL=0``) leaves them out. An audit record that cannot be read
  is skipped and counted like a bad frame.

Recovery (``-r``). The resume state of a partition is ``{"next": i, "stream": s,
"counted": "per product"}``: the index of the next record of its product to emit and the
index where the product's current stream began (its last ``connected`` record, or 0),
both counting the product's own records. (A state saved by a version that counted every
product's records is not understood: that product is replayed from its start, logged.)
A resumed partition reads from ``s`` again, rebuilds its book from those records without emitting anything (the book state
Bytewax saves holds no levels), then emits the rebuilt book as one snapshot and goes on
from record ``i``. So a resumed replay writes no summary of the records before the resume
point again, except that the book's top at the resume point is summarised once more (with
the time of the summary it repeats), as any Bytewax output may be repeated around a
resume (at-least-once). A partition resumed at the end of the file emits nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from orjson import JSONDecodeError
from orjson import loads as _loads

from book_step import BookState, update_book
from coinbase.decode import FrameDecoder
from coinbase.errors import FeedError, MalformedFrame, SequenceGap
from common.logs import RateLimitedLog
from common.text import shown
from events import (
    AuditStarted,
    BookAudit,
    BookChanges,
    BookEvent,
    BookReset,
    BookSnapshot,
)
from recording.format import (
    AUDIT,
    AUDIT_REQUESTED,
    CONNECTED,
    PROTOCOLS,
    RecordingError,
    audit_of,
    frame_of,
    parse_record,
    protocol_of_frame,
)
from recording.reader import Chunk, ProductReader, Recording
from resync import ResyncRequests

log = logging.getLogger(__name__)

ResumeState = dict[str, Any]
COUNTED = "per product"
"""How a resume state counts (record indexes per product): a state counted otherwise is
not resumed from. The direct replay of tardis.dev files (:mod:`importers.direct`) counts
alike, so its states equal a replay of the files' conversion."""
SNIFF_FRAMES = 8
"""Frames of each product looked at before a replay starts, to check the protocol."""
SNIFF_BYTES = 8 * 2**20
"""How far into the file that look goes at most (compressed bytes): a few blocks of each
product. Measured on the benches' 200,000-message, 4-product recording (6.4 MB): 4 to
14 ms at start, as version 2 blocks or as one version 1 stream."""


def other_protocol(protocol: str) -> str:
    return next(p for p in PROTOCOLS if p != protocol)


def wrong_protocol(protocol: str) -> str:
    """The reason a frame of the other protocol is skipped, as the report says it."""
    return f"frames of the {other_protocol(protocol)} protocol (the header says {protocol})"


class _WorkerReader:
    """One pass over the file for the partitions of one worker (one thread).

    Chunks of records (``(index of the first, records)``, as the reader gives them) go
    to per-product queues; a partition whose queue is empty pulls the next chunk of the
    file. Every partition of the worker is polled in turn by Bytewax, so the queues stay
    short; reading pauses while any queue holds more than ``MAX_QUEUED`` records.
    (A queue of chunks, not of ``(index, record)`` pairs: no tuple and no deque
    operation per record. With :meth:`ReplayPartition._record`'s inline path, reading
    and decoding went from 5.8-5.9 to 5.3-5.5 µs a message, in process, on the
    benches' 200,000-message recording.)
    """

    PULL_LINES = 2000
    MAX_QUEUED = 50_000

    def __init__(self, recording: Recording, worker: str) -> None:
        self.recording = recording
        self.worker = worker
        self.queues: dict[bytes, deque[tuple[int, list[Any]]]] = {}
        self.queued: dict[bytes, int] = {}
        """Records in each product's queue."""
        self.parts: list[ReplayPartition] = []
        self.started = False
        self.done = False
        self.reader: ProductReader | None = None
        self._chunks: Iterator[Chunk] = iter(())
        self.skipped: Counter[str] = Counter()
        self.t0 = 0.0
        self.progress = None
        self.show_progress = False

    def register(self, part: ReplayPartition) -> None:
        self.queues[part.product.encode()] = deque()
        self.queued[part.product.encode()] = 0
        self.parts.append(part)

    def pull(self) -> bool:
        """Read some records into the queues; False when the file is exhausted or paused."""
        if self.done:
            return False
        if not self.started:
            self.started = True
            self.t0 = time.perf_counter()
            self.reader = self.recording.of_products(
                {p.product: p.read_from for p in self.parts}
            )
            self._chunks = iter(self.reader)
            self.progress = _progress_task(self)
        queued = self.queued
        if any(n > self.MAX_QUEUED for n in queued.values()):
            return False
        queues = self.queues
        n = 0
        for product, first, items in self._chunks:
            queues[product].append((first, items))
            queued[product] += len(items)
            n += len(items)
            if n >= self.PULL_LINES:
                self._show_progress()
                return True
        self.done = True
        self.skipped.update(self.reader.skipped)
        self._show_progress()
        return n > 0

    def _show_progress(self) -> None:
        if self.progress is not None:
            self.progress.update(self)

    def finished(self) -> None:
        """Called by each partition at its end; the last one reports for the worker."""
        if all(p.ended for p in self.parts):
            if self.progress is not None:
                self.progress.close(self)
                self.progress = None
            try:  # one write: print() writes the newline apart, and the reports of
                # two processes ending together on one stderr were seen run together
                sys.stderr.write(replay_report(self) + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr closed: the run must still end well
                pass


def replay_report(reader: _WorkerReader) -> str:
    """One paragraph: what this worker's pass over the recording did."""
    stats: Counter[str] = Counter()
    skipped: Counter[str] = Counter(reader.skipped)
    for part in reader.parts:
        stats.update(part.stats)
        skipped.update(part.skipped)
    wall = max(time.perf_counter() - reader.t0, 1e-9) if reader.started else 0.0
    rate = stats["frames"] / wall if wall else 0.0
    products = ", ".join(p.product for p in reader.parts)
    text = (
        f"replay of {reader.recording.path.name} ({products}; {reader.worker}): "
        f"{stats['frames']:,} frames read, {stats['snapshots']:,} snapshots and "
        f"{stats['changes']:,} level changes sent to the books, "
        f"{stats['resets']:,} resets at recorded reconnections, "
        f"in {wall:.2f} s ({rate:,.0f} frames/s)"
    )
    if reader.reader is not None and reader.reader.blocks_skipped:
        text += (
            f"; {reader.reader.blocks_read:,} blocks read, "
            f"{reader.reader.blocks_skipped:,} passed unread"
        )
    if stats["audits"]:
        text += f"; {stats['audits']:,} recorded REST audits replayed"
    if stats["stray connected records"]:
        text += (
            f"; {stats['stray connected records']:,} stray 'connected' records (a reset "
            "with updates but no snapshot after it)"
        )
    if stats["resumed"]:
        text += (
            f"; resumed: {stats['warmup']:,} records re-read to rebuild the books, "
            "not emitted again"
        )
    if skipped:
        reasons = ", ".join(f"{n:,} {why}" for why, n in skipped.most_common())
        text += (
            f"; skipped {sum(skipped.values()):,}: {reasons}. Books after a skipped "
            "frame may differ from the live run's"
        )
    else:
        text += "; nothing skipped"
    if reader.reader is not None and reader.reader.ended_early:
        text += f"; the file ends early ({reader.reader.ended_early})"
    unreadable = [p.product for p in reader.parts if p.all_frames_of_other_protocol()]
    if unreadable:
        protocol = reader.recording.protocol
        text += (
            f"; every frame of {', '.join(unreadable)} is of the "
            f"{other_protocol(protocol)} protocol but the header says {protocol}: the "
            "header's protocol is likely wrong, nothing of them was replayed"
        )
    return text + "."


class ReplayPartition(StatefulSourcePartition[tuple[str, Any], ResumeState]):
    """One product's events in file order, as fast as the dataflow takes them.

    Items: ``(product_id, event)``, one per event; or, with a ``key`` (the dataflow's
    routing key, see :meth:`ReplaySource.key_by`), ONE item ``(key, [events])`` per
    poll (at most :attr:`BATCH` events), the shape of the live source's items, so that
    Bytewax's work per item and per step is paid once per poll, not once per event.
    """

    BATCH = 500

    def __init__(
        self,
        reader: _WorkerReader,
        product: str,
        protocol: str,
        feed: str,
        resume: ResumeState | None,
        key: str | None = None,
        audits: bool = True,
    ) -> None:
        self.product = product
        self.key = key
        self._audits = audits
        self._protocol = protocol
        self._feed = feed
        self._decoder = FrameDecoder(protocol, feed)
        self._other_protocol = other_protocol(protocol)
        self._wrong_protocol = wrong_protocol(protocol)
        self._bad = RateLimitedLog(log)
        self.stats: Counter[str] = Counter()
        """What the partition did (read by the reports): up to date after each poll."""
        self._frames = 0
        self._changes = 0
        """The hot path's two counts, added to ``stats`` at the end of each poll."""
        self.skipped: Counter[str] = Counter()
        self.ended = False
        self._awaiting_snapshot_since: int | None = None
        self._last_summary = None
        if resume is not None and not valid_resume(resume):
            log.warning(
                "%s: a resume state this version does not understand (%.80r): replaying "
                "the product from its start",
                product,
                resume,
            )
            resume = None
        if resume is None:
            self._next = 0
            self._stream = 0
            self._emit_from = 0
            self._shadow: BookState | None = None
            self._pending: list[BookEvent] = [BookReset(product, "replay start", feed)]
        else:
            self._next = resume["next"]
            self._stream = resume["stream"]
            self._emit_from = resume["next"]
            # quiet: the book step logs nothing of this book while it is rebuilt
            self._shadow = BookState(product, feed, quiet=True)
            self._pending = []
            self.stats["resumed"] = 1
        self.read_from = self._stream
        self._reader = reader
        reader.register(self)
        self._product_key = product.encode()
        self._queue = reader.queues[self._product_key]
        self._chunk: list[Any] = []
        """The records being emitted (a chunk of the queue), from ``_first`` on:
        ``_pos`` is the next one's place in it."""
        self._first = 0
        self._pos = 0

    # -- the partition ------------------------------------------------------------------

    def next_batch(self) -> list[tuple[str, Any]]:
        batch, self._pending = self._pending, []
        limit = self.BATCH
        while len(batch) < limit:
            items, pos = self._chunk, self._pos
            if pos >= len(items):
                if not self._take_chunk():
                    break
                continue
            first = self._first
            if self._shadow is None and first + pos >= self._emit_from:
                # the common way: every record left in the chunk is emitted
                record, end = self._record, len(items)
                while pos < end and len(batch) < limit:
                    record(first + pos, items[pos], batch)
                    pos += 1
                self._pos = pos
                self._next = first + pos
                continue
            self._resuming(first + pos, items[pos], batch)
            self._pos = pos + 1
        self._count()
        if batch:
            return self._items(batch)
        if self._reader.done and not self._queue and self._pos >= len(self._chunk):
            self._end()
        return batch

    def _resuming(self, index: int, line: Any, batch: list) -> None:
        """One record of a resumed partition: before the resume point it rebuilds the
        book unsaid; at it, the rebuilt book goes first."""
        if index < self.read_from:
            return
        self._next = index + 1
        if index < self._emit_from:
            self._warm_up(index, line)
            return
        if self._shadow is not None:
            batch.append(self._rebuilt_book())
        self._record(index, line, batch)

    def _end(self) -> None:
        if self._shadow is not None:  # resumed at the end: nothing follows
            self._rebuilt_book()  # (only for the report's counts)
        if not self.ended:
            self.ended = True
            self._reader.finished()
        raise StopIteration

    def _take_chunk(self) -> bool:
        """The next chunk of this product's records becomes the current one; False when
        there is none now (the file is read to its end, or reading is paused); True
        also when a pull gave this product nothing yet (ask again)."""
        queue = self._queue
        if not queue:
            pulled = self._reader.pull()
            if not queue:
                return pulled
        self._first, self._chunk = queue.popleft()
        self._pos = 0
        self._reader.queued[self._product_key] -= len(self._chunk)
        return True

    def _items(self, events: list[BookEvent]) -> list[tuple[str, Any]]:
        """One ``(key, events)`` item when keyed, else ``(product_id, event)`` each."""
        if self.key is not None:
            return [(self.key, events)]
        product = self.product
        return [(product, event) for event in events]

    def snapshot(self) -> ResumeState:
        if self._shadow is not None:  # still rebuilding: the resume point stands
            resume_at = max(self._next, self._emit_from)
        else:
            resume_at = self._next
        return {"next": resume_at, "stream": self._stream, "counted": COUNTED}

    # -- one record ---------------------------------------------------------------------

    def _record(self, index: int, line: Any, out: list) -> None:
        """Append the events of one record (a line, or a record parsed to route it).

        The hot path of a replay, once per record: the line parsed here (not through
        :func:`recording.format.parse_record`, which gives the reason of a failure),
        the decoder called here (its failures handled by :meth:`_decode_failed`),
        and the counters kept in attributes, not a ``Counter`` (see
        :class:`_WorkerReader` for what it saved with the queue of chunks)."""
        if type(line) is bytes:
            try:
                record = _loads(line)
            except JSONDecodeError:
                record = None
            if type(record) is not dict:
                self._skip(index, parse_record(line)[1])
                return
        else:
            record = line
        frame = record.get("frame")
        if type(frame) is not str or record.get("event") == CONNECTED:
            self._not_a_frame(index, record, out)
            return
        t_ns = record.get("t_ns")
        if type(t_ns) is not int or t_ns < 0:
            t_ns = 0
        self._frames += 1
        try:
            events = self._decoder.decode(frame, t_ns)
        except Exception as exc:
            events = self._decode_failed(index, frame, t_ns, exc)
        product = self.product
        for event in events:
            if event.product_id != product:
                continue
            if type(event) is BookChanges:
                self._changes += len(event.changes)
                if self._awaiting_snapshot_since is not None:
                    self._stray_connected()
            elif type(event) is BookSnapshot:
                self.stats["snapshots"] += 1
                self._awaiting_snapshot_since = None
            out.append(event)

    def _not_a_frame(self, index: int, record: dict, out: list) -> None:
        """A record without a frame: a (re)connection, a REST audit, or unreadable."""
        event = record.get("event")
        if event == CONNECTED:
            self._stream = index
            self._awaiting_snapshot_since = index
            self._decoder = FrameDecoder(self._protocol, self._feed)
            self.stats["resets"] += 1
            out.append(BookReset(self.product, "reconnected", self._feed))
        elif event == AUDIT_REQUESTED or AUDIT in record:
            self._audit(index, record, out)
        elif "event" in record:
            self._skip(index, f"an unknown event {shown(repr(event), 40)}")
        else:
            self._skip(index, "a record without a frame")

    def _audit(self, index: int, record: dict, out: list) -> None:
        """A recorded REST audit, as the live source put it into the stream."""
        if not self._audits:
            return
        self.stats["audit events"] += 1
        if AUDIT not in record:
            t_ns = record.get("t_ns")
            if type(t_ns) is not int or t_ns < 0:
                self._skip(index, "an audit request without an integer t_ns")
                return
            out.append(AuditStarted(self.product, self._feed, t_ns))
            return
        event = audit_of(record, self.product, self._feed)
        if isinstance(event, str):
            self._skip(index, event)
            return
        self.stats["audits"] += 1
        out.append(event)

    def _stray_connected(self) -> None:
        """Updates follow a ``connected`` record with no snapshot: not a real reconnection."""
        self.stats["stray connected records"] += 1
        log.warning(
            "%s: record %d says a new connection began, but updates follow it with no "
            "snapshot (a stray 'connected' record): the book was reset there and waits "
            "for the next snapshot in the recording",
            self.product,
            self._awaiting_snapshot_since,
        )
        self._awaiting_snapshot_since = None

    def _decode_failed(
        self, index: int, frame: str, t_ns: int, exc: Exception
    ) -> list[BookEvent]:
        """The events of a frame the decoder raised ``exc`` on: none (the frame is
        skipped and counted), or, after a sequence gap, the frame's own."""
        if isinstance(exc, MalformedFrame):
            if protocol_of_frame(frame) == self._other_protocol:
                self._skip(index, self._wrong_protocol, exc)
            else:
                self._skip(index, "a malformed frame", exc)
        elif isinstance(exc, SequenceGap):
            # Messages are missing from the recording: say so, keep the frame's data.
            self.skipped["sequence gaps (messages missing from the recording)"] += 1
            self._bad.warning("%s: record %d: %s", self.product, index, exc)
            decoder = self._decoder
            decoder.next_sequence = exc.got
            try:
                return decoder.decode(frame, t_ns)
            except Exception as again:  # a replay must go on
                self._skip(index, "a malformed frame", again)
        elif isinstance(exc, FeedError):
            self._skip(index, "a recorded error reply", exc)
        else:  # a replay must go on
            self._skip(index, "a frame the decoder failed on", exc)
        return []

    def _count(self) -> None:
        """The hot path's counts into ``stats``: once a poll, not once a record."""
        if self._frames:
            self.stats["frames"] += self._frames
            self._frames = 0
        if self._changes:
            self.stats["changes"] += self._changes
            self._changes = 0

    def all_frames_of_other_protocol(self) -> bool:
        """Every frame read was of the other protocol (and there were some)."""
        frames = self.stats["frames"]
        return frames > 0 and self.skipped[self._wrong_protocol] == frames

    def _skip(self, index: int, why: str, exc: Exception | None = None) -> None:
        self.skipped[why] += 1
        detail = f": {shown(exc, 240)}" if exc is not None else ""
        self._bad.warning(
            "%s: record %d is %s; skipped%s", self.product, index, why, detail
        )

    # -- resume -------------------------------------------------------------------------

    def _warm_up(self, index: int, line: Any) -> None:
        """A record before the resume point: rebuild the book from it, emit nothing."""
        events: list = []
        self._record(index, line, events)
        for event in events:
            if type(event) is AuditStarted or type(event) is BookAudit:
                continue  # audited before the resume point: its record was written
            self._shadow, summary = update_book(self._shadow, event)
            if summary is not None:
                self._last_summary = summary
        self.stats["warmup"] += 1

    def _rebuilt_book(self) -> BookEvent:
        """The book rebuilt up to the resume point, as one event for the book step."""
        state, self._shadow = self._shadow, None
        self._frames = self._changes = 0
        for key in (
            "frames",
            "changes",
            "snapshots",
            "resets",
            "audits",
            "audit events",
        ):
            self.stats.pop(key, None)
        if state is None or state.book is None:
            return BookReset(self.product, "resumed", self._feed)
        book = state.book
        last = self._last_summary
        summary_time = last.time if last is not None and state.last_top else None
        event = BookSnapshot(
            self.product,
            list(book.levels("bid")),
            list(book.levels("ask")),
            summary_time,
            self._feed,
        )
        return event


def valid_resume(resume: Any) -> bool:
    """A resume state this replay (or :mod:`importers.direct`) can continue from."""
    return (
        isinstance(resume, dict)
        and resume.get("counted") == COUNTED
        and type(resume.get("next")) is int
        and type(resume.get("stream")) is int
        and 0 <= resume["stream"] <= resume["next"]
    )


# -- progress ------------------------------------------------------------------------------


class _Progress:
    """One rich progress bar per worker reading the file, on stderr when it is a terminal."""

    _lock = threading.Lock()
    _shared: _Progress | None = None

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[frames]:,} frames  {task.fields[rate]:,.0f}/s"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self.tasks: dict[int, Any] = {}
        self.progress.start()

    @classmethod
    def task_for(cls, reader: _WorkerReader) -> _Progress:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            shared = cls._shared
            shared.tasks[id(reader)] = shared.progress.add_task(
                f"replay {reader.worker}",
                total=reader.reader.size,
                frames=0,
                rate=0.0,
            )
        return shared

    def update(self, reader: _WorkerReader) -> None:
        frames = sum(p.stats["frames"] + p.stats["warmup"] for p in reader.parts)
        wall = max(time.perf_counter() - reader.t0, 1e-9)
        self.progress.update(
            self.tasks[id(reader)],
            completed=reader.reader.position,
            frames=frames,
            rate=frames / wall,
        )

    def close(self, reader: _WorkerReader) -> None:
        self.update(reader)
        with self._lock:
            self.tasks.pop(id(reader), None)
            if not self.tasks:
                self.progress.stop()
                type(self)._shared = None


def _progress_task(reader: _WorkerReader) -> _Progress | None:
    if not reader.show_progress:
        return None
    try:
        return _Progress.task_for(reader)
    except Exception as exc:  # a progress bar must never stop a replay
        log.warning("no progress bar: %s", exc)
        return None


def _check_protocol(recording: Recording, products: list[str]) -> None:
    """Refuse a recording whose header names the other protocol than its frames.

    A replay decodes every frame with the header's protocol: with the wrong one, every
    frame is skipped and the run produces nothing (it ended with status 0 and no hint).
    The first :data:`SNIFF_FRAMES` frames of each product decide: a product whose frames
    are all of the other protocol's shape is refused (one the look did not reach is
    checked as it is replayed, and the report says so).
    """
    protocol = recording.protocol
    other = other_protocol(protocol)
    seen = {p.encode(): Counter() for p in products}
    wanted = set(seen)
    reader = recording.of_products(dict.fromkeys(products, 0), quiet=True)
    with contextlib.closing(iter(reader)) as chunks:
        for product, _, items in chunks:
            tally = seen[product]
            for item in items:
                if tally.total() >= SNIFF_FRAMES:
                    break
                frame = frame_of(item)
                if frame is not None:
                    tally[protocol_of_frame(frame)] += 1
            if tally.total() >= SNIFF_FRAMES:
                wanted.discard(product)
            if not wanted or reader.position > SNIFF_BYTES:
                break
    wrong = [p.decode() for p, t in seen.items() if t[other] and not t[protocol]]
    if wrong:
        raise RecordingError(
            f"{recording.path}: the header says protocol {protocol}, but the frames of "
            f"{', '.join(wrong)} are {other} frames: nothing of them could be replayed "
            "(a header edited by hand, or frames of another recording?)"
        )


class ThreadPasses:
    """The passes over a replay's input, one per Bytewax worker thread.

    Bytewax builds every partition of a worker on that worker's thread, before it reads
    any: the partitions built on one thread share one pass over the input. A pass that
    has started already is never joined (a later run on the thread gets a new one).
    Used by :class:`ReplaySource` and ``importers.direct.DirectSource``. A copy
    (``pickle``, ``copy.deepcopy``) starts with no pass: passes belong to the process
    that reads.
    """

    def __init__(self) -> None:
        self._by_thread: dict[int, Any] = {}
        self._all: list = []
        self._lock = threading.Lock()

    def for_this_thread(self, make: Callable[[], Any]) -> Any:
        """This thread's pass: ``make()``'s, made if it has none or it has ``started``."""
        thread = threading.get_ident()
        with self._lock:
            found = self._by_thread.get(thread)
            if found is None or found.started:
                found = self._by_thread[thread] = make()
                self._all.append(found)
        return found

    def all(self) -> list:
        """Every pass made in this process, in the order made."""
        with self._lock:
            return list(self._all)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class ReplaySource(FixedPartitionedSource[tuple[str, Any], ResumeState]):
    """A recording as a finite Bytewax source: a partition per product, ends at the end.

    ``progress``: show a progress bar on stderr; None (default) shows it when stderr is
    a terminal. ``resync_requests`` is the flow's resync channel (:mod:`resync`; a new
    one by default): a file cannot be asked again, so its requests are never taken (the
    book waits for the recording's next snapshot, as it would without one).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        products: list[str] | None = None,
        feed: str = "replay",
        progress: bool | None = None,
        resync_requests: ResyncRequests | None = None,
        audits: bool = True,
    ) -> None:
        self.recording = Recording.open(path)
        self.audits = audits
        """Replay the REST audits the recording holds (see the module docstring)."""
        recorded = self.recording.products
        if products is None:
            if not recorded:
                raise RecordingError(
                    f"{self.recording.path}: its header lists no products: nothing to "
                    "replay"
                )
            self.products = recorded
        else:
            missing = [p for p in products if p not in recorded]
            if missing:
                raise RecordingError(
                    f"{self.recording.path} has no {', '.join(missing)}; "
                    f"it recorded {', '.join(recorded) or 'nothing'}"
                )
            self.products = list(dict.fromkeys(products))
        _check_protocol(self.recording, self.products)
        self.feed = feed
        self.progress = progress
        self.resync_requests = resync_requests or ResyncRequests()
        self._readers = ThreadPasses()
        self.keys: dict[str, str] | None = None
        """Set by :meth:`key_by`: the partitions' items are then ``(key, [events])``."""

    @property
    def recorded_audits(self) -> bool:
        """The header says the recorder recorded REST audits (an ``audits`` field).
        A recording appended to with audits keeps its first header: its audits are
        replayed all the same."""
        return bool(self.recording.header.get("audits"))

    def key_by(self, keys: dict[str, str]) -> None:
        """Hand each product's events as ONE item ``(keys[product], [events])`` per
        poll (a product missing from ``keys``: keyed by its id), for partitions built
        after this call: the shape of the live source's items, which a dataflow that
        calls this handles, so it needs no routing step. Without this call the items
        stay ``(product_id, event)``, one per event."""
        self.keys = dict(keys)

    def list_parts(self) -> list[str]:
        return sorted(self.products)

    def _reader_for_this_worker(self) -> _WorkerReader:
        return self._readers.for_this_thread(self._new_reader)

    def _new_reader(self) -> _WorkerReader:
        reader = _WorkerReader(self.recording, f"process {os.getpid()}")
        reader.show_progress = (
            sys.stderr.isatty() if self.progress is None else self.progress
        )
        return reader

    def build_part(
        self, step_id: str, for_part: str, resume_state: ResumeState | None
    ) -> ReplayPartition:
        return ReplayPartition(
            self._reader_for_this_worker(),
            for_part,
            self.recording.protocol,
            self.feed,
            resume_state,
            None if self.keys is None else self.keys.get(for_part, for_part),
            self.audits,
        )
