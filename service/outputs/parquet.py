"""``parquet:DIR``: the records as a Hive-partitioned Parquet history that survives a
hard kill (layout and column types for readers: see docs/outputs.md, "Parquet history").

Files are ``DIR/type=T/product_id=P/date=D/part-<worker>-<pid>-<id>-<seq>.parquet``
(``D``: the record's UTC date). Every worker of every process writes its own files
(worker index, process id and a random id in the name), so nothing clashes and no
locking is needed between writers.

**A hard kill loses at most the last** :data:`LOSS_BOUND_SECONDS` **(2 s) of rows.** A file
being written is a *journal* beside its future Parquet file, ``.part-...arrows``: its
rows in Arrow IPC stream format, appended one batch at a time, each with one ``write``,
so that it is readable up to its last complete batch at any moment the process may die
(``kill -9``, the OOM killer). A background thread appends what the sink has buffered
every :data:`FLUSH_SECONDS` (1 s), and a buffer of :data:`FLUSH_ROWS` is appended at once;
so a row is in the journal (the kernel's page cache: a dead process's writes are kept)
about a second after the sink got it. Measured with a real ``kill -9`` of the flow on
the simulated feed (~63 records/s, 2 workers, tests/test_outputs_parquet_crash.py, 3
runs on a 2-core machine shared with other work): every record in the JSON lines at a
given moment was readable from the journals 1.0-1.1 s later (the test's own reading
included), and the kill lost the last 51-53 records, 0.8 s of them; the next start
recovered all the others. A power failure or a kernel crash is not covered (nothing is
``fsync``-ed). Before journals, rows sat for up to 5 minutes in ``.parquet.inprogress``
files without a footer that no reader can open.

A file is rolled when its journal reaches :data:`ROLL_BYTES` or :data:`ROLL_SECONDS`,
when its date changes, when the run ends, and on SIGINT/SIGTERM (a closer registered with
:meth:`service.runtime.Shutdown.add_closer`): its journal is converted into the Parquet file
(row groups of :data:`ROW_GROUP_ROWS`), written under a hidden temporary name and renamed,
so a reader globbing ``*.parquet`` never sees a file without its footer, then the journal
is removed. Conversions run on the background thread, not the worker's. At the next
start (the first partition built in a process), :func:`recover` converts the journals
that dead writers left: a writer holds an exclusive ``flock`` on its journal for as long
as it lives, which the kernel drops however the process dies, so journals of writers
still running (other processes sharing the directory) are left alone. A journal whose
Parquet file already exists (a kill between the rename and the removal) is only removed:
no row is stored twice. Journals and temporary files have names that start with ``.``,
which Hive readers (DuckDB, pyarrow datasets, Spark) skip.

Types: ``time`` a UTC timestamp (microseconds); prices, sizes and every derived decimal
``decimal128(38, 18)``: Coinbase quotes prices and sizes with at most 8 decimal places
(``base_increment``/``quote_increment`` down to 1e-8), the derived fields carry at most
12 (microprice: the prices' scale + 4; spread_pct and imbalance: 10), and 20 integer
digits hold any price or notional. A value that does not fit (``1e-40``, ``1e25``) is
never rounded: the other rows of its batch are stored, and the run stops through the
output-failure path (one line naming the field and the value, status 1), with every
file finished. Depth levels are list columns (``list<struct<price, size>>``); an audit
record's mismatches are ``list<struct<side, price, ours, rest>>`` under ``type=audit``
(docs/audit.md). The
partition columns (``type``, ``product_id``, ``date``) live in the directory names, as
Hive readers (DuckDB ``hive_partitioning``, pyarrow/pandas/polars datasets) expect.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time as _time
import uuid
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from common.text import shown
from records import (
    DEPTH_BANDS_BPS,
    SUMMARY_DECIMALS,
    AuditRecord,
    OrderBookDepth,
    OrderBookSummary,
)
from service.outputs.registry import (
    OutputFailed,
    OutputKind,
    dir_targets,
    failure_line,
    writable_dir,
)
from service.runtime import Shutdown

log = logging.getLogger(__name__)

ROLL_BYTES = 160 * 1024 * 1024
"""Journal bytes (uncompressed Arrow) at which a file rolls. Its Parquet file is 2.5 to
3.8 times smaller (measured on bench_flow's session: summaries 2.5x, depth records of
10 levels 3.8x, snappy), 40-65 MB: about the 64 MB files rolled before journals."""
ROLL_SECONDS = 300.0
FLUSH_ROWS = 10_000
FLUSH_SECONDS = 1.0
"""How often the background thread appends what is buffered to the journals."""
LOSS_BOUND_SECONDS = 2.0
"""What a hard kill loses at most: rows the sink got in the last 2 s (a flush every
second, plus the time a flush takes on a loaded machine)."""
ROW_GROUP_ROWS = 100_000
"""Rows per Parquet row group, set when a journal is converted (so the 1 s flushes
do not make row groups of a few rows)."""
CLOSE_WAIT_SECONDS = 60.0
"""How long closing waits for the background thread's conversion before leaving the
journals to the next start's recovery."""
DECIMAL = (38, 18)
PREFIX = "part-"
JOURNAL_SUFFIX = ".arrows"
NEW_JOURNAL_SECONDS = 60.0
"""A journal being created (``.new``: locked, then renamed) older than this was left
by a writer killed in that instant, and is removed (it holds no row)."""

_LIQUIDITY = tuple(
    f"{side}_liquidity_{bps}bps" for bps in DEPTH_BANDS_BPS for side in ("bid", "ask")
)


def schemas():
    import pyarrow as pa

    dec = pa.decimal128(*DECIMAL)
    ts = pa.timestamp("us", tz="UTC")
    level = pa.list_(pa.struct([("price", dec), ("size", dec)]))
    summary = pa.schema(
        [("time", ts), ("feed", pa.string())]
        + [(name, dec) for name in SUMMARY_DECIMALS]
    )
    depth = pa.schema(
        [("time", ts), ("feed", pa.string()), ("bids", level), ("asks", level)]
        + [("mid", dec)]
        + [(name, dec) for name in _LIQUIDITY]
        + [("imbalance", dec)]
    )
    audit = pa.schema(
        [
            ("time", ts),
            ("feed", pa.string()),
            ("result", pa.string()),
            ("levels", pa.int32()),
            ("compared", pa.int32()),
            ("touched", pa.int32()),
            (
                "mismatches",
                pa.list_(
                    pa.struct(
                        [
                            ("side", pa.string()),
                            ("price", dec),
                            ("ours", dec),
                            ("rest", dec),
                        ]
                    )
                ),
            ),
            ("reason", pa.string()),
            ("requested", ts),
            ("replied", ts),
        ]
    )
    return {"summary": summary, "depth": depth, "audit": audit}


def _levels(records: list, side: str) -> list:
    return [
        [{"price": p, "size": q} for p, q in levels]
        for levels in map(attrgetter(side), records)
    ]


def _liquidity(band: int, side: int):
    def column(records: list) -> list:
        return [r.liquidity[band][side] for r in records]

    return column


def _attribute(name: str):
    get = attrgetter(name)
    return lambda records: list(map(get, records))


_COLUMNS = {
    "summary": [_attribute(name) for name in ("time", "feed", *SUMMARY_DECIMALS)],
    "depth": [
        _attribute("time"),
        _attribute("feed"),
        lambda records: _levels(records, "bids"),
        lambda records: _levels(records, "asks"),
        _attribute("mid"),
        *(
            _liquidity(band, side)
            for band in range(len(DEPTH_BANDS_BPS))
            for side in (0, 1)
        ),
        _attribute("imbalance"),
    ],
    "audit": [
        *(_attribute(name) for name in ("time", "feed", "result")),
        *(_attribute(name) for name in ("levels", "compared", "touched")),
        lambda records: [
            [{"side": s, "price": p, "ours": o, "rest": r} for s, p, o, r in m]
            for m in map(attrgetter("mismatches"), records)
        ],
        *(_attribute(name) for name in ("reason", "requested", "replied")),
    ],
}
"""Per kind, one function per schema column: the column's values of a list of records
(built column by column at flush time: cheaper than a tuple per record)."""
_KINDS = {OrderBookSummary: "summary", OrderBookDepth: "depth", AuditRecord: "audit"}


def _build_table(pa, schema, kind: str, records: list):
    return pa.Table.from_arrays(
        [
            pa.array(column(records), type=field.type)
            for column, field in zip(_COLUMNS[kind], schema, strict=True)
        ],
        schema=schema,
    )


def _why_not(pa, schema, kind: str, record) -> str:
    """Which field of ``record`` Arrow refused, its value, and Arrow's reason."""
    for column, field in zip(_COLUMNS[kind], schema, strict=True):
        value = column([record])
        try:
            pa.array(value, type=field.type)
        except Exception as exc:
            shown_value = shown(value[0] if len(value) == 1 else value)
            return f"{field.name} {shown_value} does not fit {field.type} ({exc})"
    return "refused by Arrow"


class _Journal:
    """A file being written: its journal, locked by this process until converted."""

    __slots__ = ("fd", "final", "opened", "path", "size")

    def __init__(self, path: Path, final: Path, fd: int, size: int) -> None:
        self.path = path
        self.final = final
        self.fd = fd
        self.size = size
        self.opened = _time.monotonic()


class _Buffer:
    __slots__ = ("journal", "rows")

    def __init__(self) -> None:
        self.rows: list = []
        self.journal: _Journal | None = None


def _journal_name(final: Path) -> Path:
    return final.with_name("." + final.name.removesuffix(".parquet") + JOURNAL_SUFFIX)


def _final_name(journal: Path) -> Path:
    return journal.with_name(journal.name[1:].removesuffix(JOURNAL_SUFFIX) + ".parquet")


def read_journal(pa, source) -> tuple:
    """The schema and every complete batch of a journal (None: not even a schema):
    what recovery converts, and what a hard kill at this moment would leave."""
    try:
        reader = pa.ipc.open_stream(source)
    except (pa.ArrowInvalid, OSError):
        return None, []
    batches = []
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError):
            break  # the batch a hard kill cut short: every one before it is whole
    return reader.schema, batches


def _convert(journal: Path, final: Path) -> int:
    """Journal -> Parquet file (under a hidden temporary name, then renamed), then the
    journal removed; the number of rows. A failure leaves the journal to recover."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    if os.path.getsize(journal):
        with pa.memory_map(str(journal)) as source:
            schema, batches = read_journal(pa, source)
            rows = sum(batch.num_rows for batch in batches)
            if rows:
                temporary = final.with_name(f".{final.name}.tmp")
                try:
                    with pq.ParquetWriter(
                        str(temporary), schema, compression="snappy"
                    ) as writer:
                        writer.write_table(
                            pa.Table.from_batches(batches, schema),
                            row_group_size=ROW_GROUP_ROWS,
                        )
                    os.replace(temporary, final)
                except BaseException:
                    temporary.unlink(missing_ok=True)
                    raise
    journal.unlink()
    return rows


def recover(root: Path) -> tuple[int, int]:
    """Turn the journals that dead writers left under ``root`` into Parquet files.

    Returns (Parquet files written, rows). A journal whose writer lives (its ``flock``
    is held) is left alone; one whose Parquet file exists is only removed.
    """
    files = rows = 0
    root = Path(root)
    for journal in sorted(root.glob(f"type=*/product_id=*/date=*/.{PREFIX}*")):
        name = journal.name
        if not (
            name.endswith(JOURNAL_SUFFIX) or name.endswith(JOURNAL_SUFFIX + ".new")
        ):
            continue
        try:
            fd = os.open(journal, os.O_RDONLY)
        except FileNotFoundError:
            continue  # another process recovered it meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            try:
                if os.stat(journal).st_ino != os.fstat(fd).st_ino:
                    continue  # replaced meanwhile
            except FileNotFoundError:
                continue
            if name.endswith(".new"):  # a writer killed while creating it
                if _time.time() - os.fstat(fd).st_mtime > NEW_JOURNAL_SECONDS:
                    journal.unlink()  # (a fresh one may not be locked yet)
                continue
            final = _final_name(journal)
            if final.exists():  # converted, then killed before the removal
                journal.unlink()
                continue
            converted = _convert(journal, final)
            files += converted > 0
            rows += converted
        finally:
            os.close(fd)
    return files, rows


class ParquetPartition(StatelessSinkPartition):
    """One worker's files: one open journal per (type, product, date) at most."""

    def __init__(
        self,
        root: Path,
        worker_index: int,
        shutdown: Shutdown,
        *,
        label: str = "parquet",
        roll_bytes: int = ROLL_BYTES,
        roll_seconds: float = ROLL_SECONDS,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        import pyarrow as pa

        self._pa = pa
        self._schemas = schemas()
        self._root = root
        self._shutdown = shutdown
        self._label = label
        self._prefix = f"{PREFIX}{worker_index}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._roll_bytes = roll_bytes
        self._roll_seconds = roll_seconds
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._buffers: dict[tuple, _Buffer] = {}
        """By (type, product id, UTC date)."""
        self._rolled: list[_Journal] = []
        """Journals to convert into Parquet files (by the background thread)."""
        # Re-entrant: the signal handler's closer may run on this very thread.
        self._lock = threading.RLock()
        self._converting = threading.Lock()
        self._closed = False
        self._refused = None
        """Records Arrow refused (an OutputFailed), raised at the end of the call."""
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._background, name=f"parquet-{worker_index}", daemon=True
        )
        self._thread.start()
        shutdown.add_closer(self.close)

    def write_batch(self, items: list) -> None:
        with self._lock:
            if self._closed:
                return
            buffers = self._buffers
            for record in items:
                kind = _KINDS[type(record)]
                t = record.time or datetime.now(UTC)
                if t.tzinfo is not UTC:
                    t = t.astimezone(UTC)
                key = (kind, record.product_id, t.date())
                buffer = buffers.get(key)
                if buffer is None:
                    buffer = buffers[key] = _Buffer()
                    self._roll_older_days(key)
                buffer.rows.append(record)
                if len(buffer.rows) >= self._flush_rows:
                    self._flush(key, buffer)
            self._raise_refused()

    # -- the background thread: flushes every FLUSH_SECONDS, rolls, converts ----------

    def _background(self) -> None:
        while not self._stop.wait(self._flush_seconds):
            try:
                self._tick()
                self._convert_rolled()
            except Exception as exc:  # the output-failure path, as for the worker
                self._shutdown.failed(failure_line(self._label, exc))

    def _tick(self) -> None:
        with self._lock:
            if self._closed:
                return
            now = _time.monotonic()
            for key, buffer in self._buffers.items():
                if buffer.rows:
                    self._flush(key, buffer)
                journal = buffer.journal
                if journal is not None and now - journal.opened >= self._roll_seconds:
                    self._roll(buffer)
            self._raise_refused()

    def _raise_refused(self) -> None:
        """Once the whole batch is stored: the records Arrow refused stop the run."""
        refused, self._refused = self._refused, None
        if refused is not None:
            raise refused

    def _convert_rolled(self, timeout: float = -1) -> None:
        if not self._converting.acquire(timeout=timeout):
            return  # the other thread is stuck converting: recovery finishes them
        failed = None
        try:
            while True:
                with self._lock:
                    if not self._rolled:
                        break
                    journal = self._rolled.pop(0)
                try:  # each on its own: one failing leaves the others converted
                    _convert(journal.path, journal.final)
                except Exception as exc:
                    failed = failed or exc  # its journal stays, for recovery
                finally:
                    os.close(journal.fd)  # converted or not: the lock goes
        finally:
            self._converting.release()
        if failed is not None:
            raise failed

    # -- under self._lock -------------------------------------------------------------

    def _roll_older_days(self, key: tuple) -> None:
        """A new date for a (type, product): that pair's earlier files are complete."""
        for other in [k for k in self._buffers if k[:2] == key[:2] and k != key]:
            buffer = self._buffers.pop(other)
            if buffer.rows:
                self._flush(other, buffer)
            self._roll(buffer)

    def _roll(self, buffer: _Buffer) -> None:
        if buffer.journal is not None:
            self._rolled.append(buffer.journal)
            buffer.journal = None

    def _flush(self, key: tuple, buffer: _Buffer) -> None:
        """Append the buffered rows to the journal as one batch. Rows Arrow refuses are
        left out and kept in ``_refused``: the caller raises it once the others are
        stored (the rest of a batch, the other files)."""
        kind = key[0]
        pa, schema = self._pa, self._schemas[kind]
        records, refused = buffer.rows, None
        try:
            table = _build_table(pa, schema, kind, records)
        except Exception:  # a value Arrow cannot store (ArrowInvalid, OverflowError..)
            good, bad = [], []
            for record in records:
                try:
                    _build_table(pa, schema, kind, [record])
                    good.append(record)
                except Exception:
                    bad.append(record)
            if not bad:  # not a value: the whole batch failed (a bug)
                raise
            table = _build_table(pa, schema, kind, good) if good else None
            first = bad[0]
            refused = OutputFailed(
                f"{len(bad)} record(s) cannot be stored in Parquet, the first: "
                f"{kind} of {shown(first.product_id)} at {first.time}: "
                f"{_why_not(pa, schema, kind, first)}"
            )
        if table is not None:
            if buffer.journal is None:
                buffer.journal = self._open(key, schema)
            self._append(buffer.journal, table)
        buffer.rows = []
        if buffer.journal is not None and buffer.journal.size >= self._roll_bytes:
            self._roll(buffer)
        if refused is not None and self._refused is None:
            self._refused = refused

    def _open(self, key: tuple, schema) -> _Journal:
        kind, product, day = key[0], key[1], key[2].isoformat()
        directory = (
            self._root / f"type={kind}" / f"product_id={product}" / f"date={day}"
        )
        directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        final = directory / f"{self._prefix}-{self._seq:06d}.parquet"
        path = _journal_name(final)
        # Created and locked under another name, then renamed: recovery never sees
        # a journal of this live process unlocked.
        new = path.with_name(path.name + ".new")
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = schema.serialize()
            _write_all(fd, header)
            os.rename(new, path)
        except BaseException:
            os.close(fd)
            new.unlink(missing_ok=True)
            raise
        return _Journal(path, final, fd, header.size)

    def _append(self, journal: _Journal, table) -> None:
        data = b"".join(batch.serialize() for batch in table.to_batches())
        try:
            _write_all(journal.fd, data)
        except OSError:
            try:  # no half batch left behind: the journal stays readable to its end
                os.ftruncate(journal.fd, journal.size)
            except OSError:
                pass
            raise
        journal.size += len(data)

    def close(self) -> None:
        """Store what is buffered and finish every file (idempotent)."""
        if not self._lock.acquire(timeout=5):
            return  # a worker is stuck inside a write: its journals are recovered
        failed = None
        try:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            for key, buffer in self._buffers.items():
                try:  # each file on its own: one failing leaves the others complete
                    if buffer.rows:
                        self._flush(key, buffer)
                except Exception as exc:
                    failed = failed or exc
                self._roll(buffer)
            self._buffers.clear()
            failed, self._refused = failed or self._refused, None
        finally:
            self._lock.release()
        try:
            self._convert_rolled(timeout=CLOSE_WAIT_SECONDS)
        except Exception as exc:
            failed = failed or exc
        self._shutdown.remove_closer(self.close)
        if failed is not None:
            raise failed


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:  # a regular file takes it all at once, bar a signal or a full disk
        view = view[os.write(fd, view) :]


_recovered: set[str] = set()
_recovered_lock = threading.Lock()


def recover_once(root: Path) -> None:
    """:func:`recover` at the first partition a process builds for ``root``."""
    with _recovered_lock:
        key = os.path.realpath(root)
        if key in _recovered:
            return
        _recovered.add(key)
        if not os.path.isdir(root):
            return
        files, rows = recover(root)
    if files:
        log.warning(
            "parquet: recovered %d rows into %d files from the journals a hard kill "
            "left in %s",
            rows,
            files,
            root,
        )


class ParquetSink(DynamicSink):
    def __init__(
        self, root: Path, shutdown: Shutdown, label: str = "parquet", **options
    ) -> None:
        self.root = Path(root)
        self.shutdown = shutdown
        self.label = label
        self.options = options

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> ParquetPartition:
        recover_once(self.root)
        return ParquetPartition(
            self.root, worker_index, self.shutdown, label=self.label, **self.options
        )


def check_dir(arg: str | None) -> str:
    """A directory that exists or can be created, and that takes a file."""
    import pyarrow  # noqa: F401 - refuse at start when pyarrow is missing

    return writable_dir(arg)


PARQUET = OutputKind(
    "parquet",
    build=lambda arg, shutdown: ParquetSink(
        Path(arg), shutdown, label=f"parquet:{arg}"
    ),
    arg="required",
    help="parquet:DIR",
    check=check_dir,
    targets=dir_targets,
)
