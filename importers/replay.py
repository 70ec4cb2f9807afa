"""``ORDERBOOK_REPLAY`` for every format, one file or many, with a quality report.

:func:`open_replay` takes the files ``ORDERBOOK_REPLAY`` names (globs already expanded)
and returns the source the dataflow reads:

* **one recording of this project** is replayed as before by
  :class:`recording.replay.ReplaySource` (one partition per product, each worker reading
  only its products' blocks), measured on the way for the quality report (below);
* **tardis.dev files** (one or many) are read directly as one merged stream
  (:mod:`importers.direct`): no temporary recording;
* **anything else** (a cryptofeed capture, several files of mixed formats, own
  recordings included) is converted at start by :func:`importers.convert.convert`
  into a temporary version 2 recording (the files merged by receive time, one stream
  per product, a product's files of successive days one after the other, the quality
  report computed on the way), and that recording is replayed by the same
  ``ReplaySource``.

Why convert these rather than replay the merged stream directly. The conversion keeps
one replay path: the partitions, the placement of products on workers and processes,
the resume states of ``-r`` (record indexes: a conversion is deterministic, so the
recording made again after a restart has the same indexes), the protocol check and the
end-of-replay paragraph are the recording's own; and the replay must name its products
before it starts, which for a cryptofeed capture means parsing every frame. The cost is
the conversion before the first record and the disk space of the converted recording.
Measured with bench/bench_importers.py (100,004 messages of 4 products, the whole
``ORDERBOOK_REPLAY`` run through the dataflow, medians of rounds on this shared 2-core
machine): a tardis.dev .csv.gz converted first took 1.9-2.7x the time of the same
events replayed from this project's recording (2.41x in wall and CPU time, 5 rounds),
read directly 1.26x (rounds 1.11-1.28; see :mod:`importers.direct`); a cryptofeed v3
capture (Advanced Trade, converted) about 3x.
Convert once with ``python -m recording convert`` to replay the same files often.

Several processes (``-p N``) convert once. The temporary recording's place is keyed by
the inputs (each file's real path, size and modification time) and the products asked
for, under ``$TMPDIR/orderbook-replay-<uid>/`` (mode 0700). Every process holds a
shared ``flock`` on the key's lock file from before it looks for the recording to the
end of its replay; the first converts under a second, exclusive lock while the others
wait on it, then use its recording. The process that gets the first lock exclusively
once its partitions ended (no other process still reads) removes the recording. A
recording left by a killed run (the kernel drops a dead process's locks) is removed by
the next replay that finds it unlocked.

The quality report (:mod:`importers.quality`): per product, printed on stderr at the
end of every replay, when the process's last partition ends (each process prints its
own products, as the replay's own paragraph does), and written as JSON when ``report``
(``ORDERBOOK_REPLAY_REPORT``) names a file. For converted inputs it is the
conversion's report (rows skipped, resets with their reasons, files cut off), free
since it was computed while converting; for tardis.dev files read directly, the direct
pass's (light unless the JSON report is asked for, as below); the replay's own skips
are added. For one recording of this project it is
measured from the replayed events per partition: by default the light report
(:data:`LIGHT`: everything but crossed and locked episodes, within the noise of the
replay's time), the full one (:data:`FULL`) when the JSON report is asked for.
Under ``-p N`` every process merges its products into the one JSON file under a lock
(a file written before this process started is a previous run's, and is replaced).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import fcntl
import glob
import hashlib
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import sub
from pathlib import Path
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from common.text import shown
from events import AuditStarted, BookAudit, BookReset
from importers.convert import ConvertError, convert
from importers.detect import OWN_RECORDING, TARDIS_L2, ImportFormatError, detect
from importers.direct import DirectSource, NoBookData, direct_products
from importers.quality import ProductQuality, QualityReport, QualityTracker
from importers.stream import CONNECTION, START
from recording.format import RecordingError
from recording.reader import Recording
from recording.replay import ReplaySource
from resync import ResyncRequests

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Part of every key: bumped when a conversion of the same files would differ."""
CACHE_PREFIX = "orderbook-replay-"
REPORT_FILE = "report.json"
_OWN_RECORDINGS = "or a recording made by python -m recording"


class ReplayInputError(ValueError):
    """Inputs that cannot be replayed; the message is one line per problem."""


@dataclass
class PreparedReplay:
    """What :func:`prepare_replay` made of the inputs: the recording to replay, and for
    converted inputs the conversion's report and the lock that keeps the recording."""

    path: Path
    inputs: list[Path]
    formats: list[str] = field(default_factory=list)
    report: QualityReport | None = None
    summary: str | None = None
    _lock: tuple[int, Path, Path] | None = None
    """``(descriptor, lock file, directory)`` while a converted recording is in use."""
    _closing: threading.Lock = field(default_factory=threading.Lock)
    direct: bool = False
    """Replayed as read (:mod:`importers.direct`): no recording, nothing to remove."""

    @property
    def converted(self) -> bool:
        return self._lock is not None or self.report is not None

    def close(self) -> None:
        """Done with the converted recording: the last process to be done removes it
        (idempotent; nothing for a recording replayed as it is)."""
        with self._closing:
            held, self._lock = self._lock, None
        if held is not None:
            _release(*held)


def expand_replay(raw: str) -> tuple[list[Path], list[str]]:
    """The files of an ``ORDERBOOK_REPLAY`` value: comma-separated paths and globs (a
    glob's matches sorted); and a one-line problem for each entry that names nothing.
    A value that is itself the path of a file is that file (a name with a comma)."""
    from importers.inputs import expand

    text = raw.strip()
    if os.path.isfile(text):
        return [Path(text)], []
    return expand([entry.strip() for entry in text.split(",") if entry.strip()])


def prepare_replay(
    paths: Sequence[os.PathLike | str],
    products: Sequence[str] | None = None,
    *,
    progress: bool | None = None,
    root: os.PathLike | str | None = None,
) -> PreparedReplay:
    """The recording to replay for ``paths`` (see the module docstring); a conversion
    is keyed and shared under ``root`` (default ``$TMPDIR/orderbook-replay-<uid>``).
    :class:`ReplayInputError` for inputs that cannot be replayed, before any
    conversion: one line per file, naming what it looked like."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ReplayInputError("no file given")
    if len(paths) == 1:
        try:
            Recording.open(paths[0])
            return PreparedReplay(paths[0], paths)
        except RecordingError as own:
            _check_foreign(paths, own)
    else:
        _check_foreign(paths, None)
    if products is not None:
        products = sorted(set(products))
    return _shared_conversion(paths, products, progress, _cache_root(root))


def _check_foreign(paths: list[Path], own: RecordingError | None) -> None:
    problems = []
    for path in paths:
        try:
            detect(path)
        except ImportFormatError as exc:
            if exc.why != OWN_RECORDING:
                problems.append(f"{exc}, {_OWN_RECORDINGS}")
            elif own is not None:  # a recording of this project this version refused
                problems.append(shown(own))
            else:
                try:
                    Recording.open(path)
                except RecordingError as bad:
                    problems.append(shown(bad))
    if problems:
        raise ReplayInputError("\n".join(problems))


# -- the converted recording, shared by the processes of a run ------------------------------


def _cache_root(root: os.PathLike | str | None) -> Path:
    """A directory of this user's only: ``$TMPDIR/orderbook-replay-<uid>``; a private
    new one when that name is taken by someone else or by a link."""
    if root is not None:
        path = Path(root)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.gettempdir()) / f"{CACHE_PREFIX}{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & 0o077
    ):
        return path
    log.warning(
        "%s is not a private directory of this user: converting in a directory of this "
        "process only",
        path,
    )
    return Path(tempfile.mkdtemp(prefix=CACHE_PREFIX))


def cache_key(paths: Sequence[Path], products: Sequence[str] | None) -> str:
    """Same files (real path, size, modification time) and products: same key."""
    files = []
    for path in paths:
        info = path.stat()
        files.append([os.path.realpath(path), info.st_size, info.st_mtime_ns])
    data = {"version": CACHE_VERSION, "files": files, "products": products}
    return hashlib.sha256(orjson.dumps(data)).hexdigest()[:24]


def _recording_name(paths: list[Path]) -> str:
    """The converted recording's name, which the replay's paragraph shows."""
    more = f"+{len(paths) - 1}" if len(paths) > 1 else ""
    return f"{paths[0].name[:80]}{more}.replay.gz"


def _locked(path: Path, how: int) -> int:
    """A descriptor of ``path`` holding the ``flock`` ``how``, on the file that is at
    ``path`` now (one removed while this process waited is opened again)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, how)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _release(fd: int, lock: Path, directory: Path) -> None:
    """Let go of a converted recording; remove it when no other process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another process still replays it: it removes it when done
        os.close(fd)
        return
    try:
        shutil.rmtree(directory, ignore_errors=True)
        directory.with_suffix(".convert").unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                lock.unlink()
    finally:
        os.close(fd)


def _sweep(root: Path, keep: str) -> None:
    """Remove converted recordings that no process holds (left by killed runs)."""
    for lock in root.glob("*.lock"):
        if lock.stem == keep:
            continue
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        log.info("removing a converted recording no run uses: %s", root / lock.stem)
        _release(fd, lock, root / lock.stem)


def _shared_conversion(
    paths: list[Path],
    products: list[str] | None,
    progress: bool | None,
    root: Path,
) -> PreparedReplay:
    """Two locks per key. ``KEY.lock`` is held shared by every process that uses the
    recording, from before it looks for it to the end of its replay; removing it takes
    that lock exclusively, so it happens only when nobody uses it. ``KEY.convert`` is
    held exclusively while converting, so one process converts and the others wait
    (holding only their shared lock: an exclusive request on ``KEY.lock`` would wait
    for the end of the replays, which wait for this process)."""
    key = cache_key(paths, products)
    _sweep(root, key)
    lock, directory = root / f"{key}.lock", root / key
    fd = _locked(lock, fcntl.LOCK_SH)
    try:
        data = _load(directory)
        if data is None:
            converting = _locked(directory.with_suffix(".convert"), fcntl.LOCK_EX)
            try:
                data = _load(directory)  # made while this process waited?
                if data is None:
                    data = _converted(paths, products, progress, directory)
            finally:
                os.close(converting)
        if not data.pop("made here", False):
            log.info("replaying the conversion another process made: %s", directory)
        prepared = PreparedReplay(
            directory / data["recording"],
            paths,
            data["formats"],
            QualityReport.from_dict(data["report"]),
            data["summary"],
            (fd, lock, directory),
        )
    except BaseException:
        _release(fd, lock, directory)  # removed, unless another process uses it
        raise
    atexit.register(prepared.close)
    return prepared


def _load(directory: Path) -> dict[str, Any] | None:
    """A whole conversion's description, or None (none yet, or one cut off)."""
    try:
        return orjson.loads((directory / REPORT_FILE).read_bytes())
    except FileNotFoundError:
        return None


def _converted(
    paths: list[Path],
    products: list[str] | None,
    progress: bool | None,
    directory: Path,
) -> dict[str, Any]:
    """Convert into ``directory`` (under the key's conversion lock); the conversion's
    description, also written as ``report.json`` (last: its presence says the
    conversion is whole)."""
    report = directory / REPORT_FILE
    directory.mkdir(mode=0o700, exist_ok=True)
    for leftover in directory.iterdir():  # a conversion that was killed
        leftover.unlink()
    name = _recording_name(paths)
    log.info(
        "converting %d file%s for the replay into %s",
        len(paths),
        "s" if len(paths) != 1 else "",
        directory,
    )
    try:
        result = convert(
            [glob.escape(str(p)) for p in paths],
            directory / name,
            overwrite=True,
            progress=progress,
            products=products,
        )
    except ConvertError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        if exc.status != 1:
            raise ReplayInputError(str(exc)) from None
        of = f" of {', '.join(products)}" if products else ""
        raise ReplayInputError(
            f"no book data{of} in {len(paths)} file{'s' if len(paths) != 1 else ''}: "
            "nothing to replay"
        ) from None
    summary = result.summary("a temporary recording")
    log.info("%s", summary)
    data = {
        "recording": name,
        "formats": sorted({r.format for r in result.readers}),
        "summary": summary,
        "report": result.report.to_dict(),
    }
    partial = directory / f".{REPORT_FILE}.part"
    partial.write_bytes(orjson.dumps(data))
    os.replace(partial, report)  # its presence says the conversion is whole
    return {**data, "made here": True}


# -- the source -------------------------------------------------------------------------------


def open_replay(
    paths: Sequence[os.PathLike | str],
    products: Sequence[str] | None = None,
    *,
    report: os.PathLike | str | None = None,
    feed: str = "replay",
    progress: bool | None = None,
    root: os.PathLike | str | None = None,
    direct: bool = True,
    audits: bool = True,
) -> tuple[FixedPartitionedSource, PreparedReplay]:
    """The replay's source and what was prepared for it (call its ``close`` at the
    end, or leave it to the process's exit). ``report``: where the quality report's
    JSON goes. ``direct``: tardis.dev files are replayed as they are read
    (:mod:`importers.direct`); False converts them first, as other formats are.
    ``audits``: replay the REST audits a recording holds (False:
    ``ORDERBOOK_AUDIT_INTERVAL=0``). Raises :class:`ReplayInputError` or
    :class:`recording.format.RecordingError`."""
    paths = [Path(p) for p in paths]
    if direct and paths and all(_is_tardis(p) for p in paths):
        try:
            chosen = direct_products(paths, list(products) if products else None)
        except NoBookData as exc:
            raise ReplayInputError(str(exc)) from None
        prepared = PreparedReplay(paths[0], paths, [TARDIS_L2], direct=True)
        source = DirectSource(paths, chosen, feed, progress, report is not None)
        return ReportingSource(source, prepared, report), prepared
    prepared = prepare_replay(paths, products, progress=progress, root=root)
    try:
        if prepared.converted and products:
            held = Recording.open(prepared.path).products
            missing = [p for p in products if p not in held]
            if missing:
                raise ReplayInputError(
                    f"no book data of {', '.join(missing)} in the "
                    f"{len(prepared.inputs)} file"
                    f"{'s' if len(prepared.inputs) != 1 else ''} (ORDERBOOK_PRODUCTS)"
                )
        source = ReplaySource(
            prepared.path,
            list(products) if products else None,
            feed,
            progress,
            audits=audits,
        )
    except BaseException:
        prepared.close()
        raise
    return ReportingSource(source, prepared, report), prepared


def _is_tardis(path: Path) -> bool:
    try:
        return detect(path).format == TARDIS_L2
    except (ImportFormatError, OSError):
        return False


_NO_STATS: Counter = Counter()


class ReportingSource(FixedPartitionedSource):
    """The replay's partitions, unchanged, and the quality report when the process's
    last one ends (see the module docstring)."""

    def __init__(
        self,
        inner: ReplaySource,
        prepared: PreparedReplay,
        report: os.PathLike | str | None,
    ) -> None:
        self.inner = inner
        self.prepared = prepared
        self.report_path = Path(report) if report is not None else None
        self.started_ns = time.time_ns()
        self._parts: list[_ReportingPartition] = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_parts"] = []
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def products(self) -> list[str]:
        return self.inner.products

    @property
    def recorded_audits(self) -> bool:
        """The replayed recording says it holds REST audits (see
        :attr:`recording.replay.ReplaySource.recorded_audits`)."""
        return bool(getattr(self.inner, "recorded_audits", False))

    @property
    def resync_requests(self) -> ResyncRequests:
        """The replay's resync channel, for the flow's book step (never taken)."""
        return self.inner.resync_requests

    def key_by(self, keys: dict[str, str]) -> None:
        """Items keyed as the flow's book step wants them, one per product per poll
        (:meth:`recording.replay.ReplaySource.key_by`), when the replay can: the flow
        then needs no routing step."""
        key_by = getattr(self.inner, "key_by", None)
        if key_by is not None:
            key_by(keys)
            self.keyed = True

    keyed = False
    """Whether the inner replay hands ``(key, [events])`` items (after :meth:`key_by`)."""

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any
    ) -> _ReportingPartition:
        inner = self.inner.build_part(step_id, for_part, resume_state)
        if self.prepared.converted or self.prepared.direct:
            track = None  # the report comes with the conversion or the direct pass
        else:
            track = FULL if self.report_path is not None else LIGHT
        part = _ReportingPartition(self, inner, for_part, track)
        with self._lock:
            self._parts.append(part)
        return part

    def _ended(self) -> None:
        with self._lock:
            if not all(p.ended for p in self._parts) or not self._parts:
                return
            parts, self._parts = self._parts, []
        try:
            report = self._report(parts)
            _write_stderr(report.to_text())
            if self.report_path is not None:
                self._write_json(report)
        except Exception as exc:  # a report must never stop the run from ending well
            log.warning("the quality report could not be written: %s", shown(exc))
        finally:
            self.prepared.close()

    def _report(self, parts: list[_ReportingPartition]) -> QualityReport:
        """This process's products; the report's whole-run lines from the process
        that holds the first product (so that ``-p N`` says them once)."""
        mine = {p.product: p for p in parts}
        converted = self.prepared.report
        if self.prepared.direct:
            converted = self.inner.quality_report()
        first = min(self.inner.products) in mine
        if converted is not None:
            found = {q.product_id: q for q in converted.products}
            qualities = {
                p: copy.deepcopy(found.get(p) or ProductQuality(p)) for p in mine
            }
        else:
            qualities = {product: part.quality() for product, part in mine.items()}
        for product, part in mine.items():
            qualities[product].skipped.update(getattr(part.inner, "skipped", {}))
        if converted is not None and first:
            return QualityReport(
                [qualities[p] for p in sorted(qualities)],
                Counter(converted.skipped),
                Counter(converted.ignored),
                list(converted.ended_early),
            )
        return QualityReport(
            [qualities[p] for p in sorted(qualities)], Counter(), Counter(), []
        )

    def _write_json(self, report: QualityReport) -> None:
        data = {
            "inputs": [str(p) for p in self.prepared.inputs],
            "formats": self.prepared.formats or ["recording"],
            "conversion": self.prepared.summary,
            **report.to_dict(),
        }
        merge_report_json(self.report_path, data, self.started_ns)


FULL, LIGHT = "full", "light"
"""How a replay of one recording of this project measures its products' quality.

``light`` (the default, printed at the end of every replay): counts, time range,
resets, longest silence, skips; the receive times of each batch read with list and
``map`` operations, the counts taken from the replay's own. Measured with
bench/bench_importers.py (100,004 messages, 5 interleaved rounds): within the noise (the
replay without any report took 0.92-1.10x its time).
``full`` (``ORDERBOOK_REPLAY_REPORT`` set): crossed and locked episodes as well, for
which the tracker keeps each product's best prices (a dict and a heap per side, every
level change applied once more): about 20% of a replay's CPU time (1.15-1.22x the
light report's in 5 rounds; the book-based tracker before it cost about 30%)."""


class _ReportingPartition(StatefulSourcePartition):
    """A replay partition, its batches passed on as they are; measured on the way
    (``track``: :data:`FULL`, :data:`LIGHT` or None)."""

    def __init__(
        self, source: ReportingSource, inner: Any, product: str, track: str | None
    ) -> None:
        self.source = source
        self.inner = inner
        self.product = product
        self.ended = False
        self.tracker = QualityTracker() if track == FULL else None
        self.light = track == LIGHT
        self._last_ns: int | None = None
        self._first_ns: int | None = None
        self._frames = 0
        self._resets = 0
        self._silence = 0
        self._silence_from: int | None = None

    def next_batch(self) -> list:
        try:
            batch = self.inner.next_batch()
        except StopIteration:
            if not self.ended:
                self.ended = True
                self.source._ended()
            raise
        if batch and (self.light or self.tracker is not None):
            if self.source.keyed:  # (key, [events]) items: one per product and poll
                events = batch[0][1] if len(batch) == 1 else _events_of(batch)
            else:  # (product_id, event) items
                events = [event for _, event in batch]
            if self.inner_stats.get("audit events"):  # the quality of the frames only
                events = [
                    e
                    for e in events
                    if type(e) is not AuditStarted and type(e) is not BookAudit
                ]
            if self.light:
                self._measure(events)
            else:
                self._track(events)
        return batch

    @property
    def inner_stats(self) -> Counter:
        """The replay partition's counts (a recording's REST audits among them)."""
        return getattr(self.inner, "stats", _NO_STATS)

    def _track(self, events: list) -> None:
        add = self.tracker.add_event
        for event in events:
            product = event.product_id
            if type(event) is BookReset:
                if self._last_ns is None:
                    continue  # the replay's start: no book yet
                reason = CONNECTION if event.reason == "reconnected" else START
                t_ns = self._last_ns
                event = BookReset(product, reason, event.feed, t_ns)
            else:
                t_ns = event.received_ns or self._last_ns or 0
                self._last_ns = t_ns
            add(product, event, t_ns)

    def _measure(self, events: list) -> None:
        """The light report's figures of one poll's events (see :data:`LIGHT`): what
        :meth:`_track` finds but crossed and locked episodes."""
        times = [event.received_ns for event in events]
        if times.count(0):  # resets (and frames without a time): rare, one by one
            times = []
            seen = self._last_ns is not None or self._frames > 0  # a frame before
            for event in events:
                if type(event) is BookReset:
                    if seen and event.reason == "reconnected":
                        self._resets += 1
                    continue
                seen = True
                if event.received_ns:
                    times.append(event.received_ns)
                else:
                    self._frames += 1
            if not times:
                return
        self._frames += len(times)
        last = self._last_ns
        if last is None:
            self._first_ns = times[0]
        elif times[0] - last > self._silence:
            self._silence, self._silence_from = times[0] - last, last
        if len(times) > 1:
            gaps = list(map(sub, times[1:], times))
            longest = max(gaps)
            if longest > self._silence:
                self._silence = longest
                self._silence_from = times[gaps.index(longest)]
        self._last_ns = times[-1]

    def quality(self) -> ProductQuality:
        """This partition's product as measured (an empty one when not measured)."""
        if self.tracker is not None and self.tracker.products:
            return self.tracker.report().products[0]
        quality = ProductQuality(self.product)
        if self.light:
            stats = getattr(self.inner, "stats", {})
            quality.first_ns, quality.last_ns = self._first_ns, self._last_ns
            quality.frames = self._frames
            quality.snapshots = stats.get("snapshots", 0)
            quality.changes = stats.get("changes", 0)
            if self._resets:
                quality.resets[CONNECTION] = self._resets
            quality.longest_silence_ns = self._silence
            quality.silence_from_ns = self._silence_from
            quality.episodes_measured = False
        return quality

    def next_awake(self):
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


def _events_of(batch: list) -> list:
    return [event for _, events in batch for event in events]


def _write_stderr(text: str) -> None:
    try:  # one write: the lines of two processes ending together stay whole
        sys.stderr.write(f"quality of the replay:\n{text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: the run must still end well
        pass


def merge_report_json(path: Path, data: dict[str, Any], started_ns: int) -> None:
    """Write ``data`` (a report's JSON) to ``path``, merged with the products another
    process of this run wrote there (a file written since ``started_ns``, of the same
    inputs); a file of an earlier run is replaced. Under a ``flock`` of ``path``; the
    new text is written beside it and renamed over it."""
    fd = _locked(path, fcntl.LOCK_EX)
    try:
        with open(path, "rb") as f:
            text = f.read()
        try:
            previous = orjson.loads(text) if text.strip() else None
        except orjson.JSONDecodeError:
            previous = None
        if (
            isinstance(previous, dict)
            and previous.get("written_ns", 0) >= started_ns
            and previous.get("inputs") == data["inputs"]
        ):
            data = _merged(previous, data)
        data["written_ns"] = time.time_ns()
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        partial.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(partial, path)
    finally:
        os.close(fd)


def _merged(previous: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    products = {p["product_id"]: p for p in previous.get("products", [])}
    products.update((p["product_id"], p) for p in data["products"])
    merged = dict(data)
    merged["products"] = [products[p] for p in sorted(products)]
    for key in ("skipped", "ignored_frames", "ended_early"):
        merged[key] = data[key] or previous.get(key) or data[key]
    return merged


# -- the local exchange's --replay ------------------------------------------------------------


def recording_to_serve(raw: str, *, progress: bool | None = None) -> Path:
    """The recording ``python -m local_exchange --replay RAW`` serves: RAW itself when it
    is one recording of this project; else RAW's files (comma-separated paths and globs,
    as ``ORDERBOOK_REPLAY`` takes them) converted into a temporary recording, removed
    when the process exits, with the conversion's summary and quality report on stderr.
    :class:`ReplayInputError` (one line) for what cannot be served.

    Why convert rather than refuse: the local exchange serves recorded frames to its
    clients (the service, or any Coinbase client) as the exchange sent them; a
    conversion is what makes a tardis.dev file or a cryptofeed capture such frames, and
    a user who has one would otherwise have to run ``python -m recording convert``
    first and remove its output after. The exchange holds a served recording in memory
    whole, as before.
    """
    paths, missing = expand_replay(raw)
    if missing:
        raise ReplayInputError("; ".join(missing))
    if not paths:
        raise ReplayInputError("no file given")
    if len(paths) == 1:
        try:
            Recording.open(paths[0])
            return paths[0]
        except RecordingError as own:
            problem = own
    else:
        problem = None
    try:
        _check_foreign(paths, problem)
    except ReplayInputError as exc:
        raise ReplayInputError("; ".join(str(exc).splitlines())) from None
    directory = Path(tempfile.mkdtemp(prefix="local-exchange-replay-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    output = directory / _recording_name(paths)
    try:
        result = convert(
            [glob.escape(str(p)) for p in paths],
            output,
            overwrite=True,
            progress=progress,
        )
    except ConvertError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise ReplayInputError("; ".join(str(exc).splitlines())) from None
    _write_stderr_text(
        f"{result.summary('a temporary recording to serve')}\n"
        f"quality of the data:\n{result.report.to_text()}\n"
    )
    return output


def _write_stderr_text(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
