"""``parquet:DIR``: the records as a Hive-partitioned Parquet history.

Layout::

    DIR/type=summary/product_id=BTC-USD/date=2026-11-29/part-<worker>-<pid>-<id>-<seq>.parquet
    DIR/type=depth/product_id=BTC-USD/date=2026-11-29/part-...parquet

``date`` is the record's (UTC) date. Every worker of every process writes its own
files (worker index, process id and a random id in the name), so nothing clashes and
no locking is needed across processes. A file is written as ``*.parquet.inprogress``
and renamed to ``*.parquet`` when closed: a reader globbing ``*.parquet`` never sees a
file without its footer, even after ``kill -9``. A file is closed (rolled) when it
reaches :data:`ROLL_BYTES` or :data:`ROLL_SECONDS`, when its date changes, and on
SIGINT/SIGTERM (a closer registered with :func:`service.runtime.register_closer`) or
when the run ends. Rows are buffered and written as one row group every
:data:`FLUSH_ROWS` rows or :data:`FLUSH_SECONDS`, whichever comes first.

Types: ``time`` a UTC timestamp (microseconds); prices, sizes and every derived decimal
``decimal128(38, 18)``: Coinbase quotes prices and sizes with at most 8 decimal places
(``base_increment``/``quote_increment`` down to 1e-8), the derived fields carry at most
12 (microprice: the prices' scale + 4; spread_pct and imbalance: 10), and 20 integer
digits hold any price or notional; a value that did not fit would raise, never round.
Depth levels are list columns (``list<struct<price, size>>``). The partition columns
(``type``, ``product_id``, ``date``) live in the directory names, as Hive readers
(DuckDB ``hive_partitioning``, pyarrow/pandas/polars datasets) expect.
"""

from __future__ import annotations

import os
import threading
import time as _time
import uuid
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from records import DEPTH_BANDS_BPS, OrderBookDepth, OrderBookSummary
from service.outputs.registry import OutputKind, register
from service.runtime import register_closer, unregister_closer

ROLL_BYTES = 64 * 1024 * 1024
ROLL_SECONDS = 300.0
FLUSH_ROWS = 10_000
FLUSH_SECONDS = 5.0
DECIMAL = (38, 18)

_SUMMARY_DECIMALS = (
    "bid_price",
    "bid_size",
    "ask_price",
    "ask_size",
    "spread",
    "spread_pct",
    "mid",
    "imbalance",
    "microprice",
)
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
        + [(name, dec) for name in _SUMMARY_DECIMALS]
    )
    depth = pa.schema(
        [("time", ts), ("feed", pa.string()), ("bids", level), ("asks", level)]
        + [("mid", dec)]
        + [(name, dec) for name in _LIQUIDITY]
        + [("imbalance", dec)]
    )
    return {"summary": summary, "depth": depth}


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
    "summary": [_attribute(name) for name in ("time", "feed", *_SUMMARY_DECIMALS)],
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
}
"""Per kind, one function per schema column: the column's values of a list of records
(built column by column at flush time: cheaper than a tuple per record)."""
_KINDS = {OrderBookSummary: "summary", OrderBookDepth: "depth"}


class _OpenFile:
    __slots__ = ("final", "opened", "path", "rows", "writer")

    def __init__(self, path: Path, final: Path, writer) -> None:
        self.path = path
        self.final = final
        self.writer = writer
        self.opened = _time.monotonic()
        self.rows = 0


class _Buffer:
    __slots__ = ("file", "first", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.first = 0.0
        self.file: _OpenFile | None = None


class ParquetPartition(StatelessSinkPartition):
    """One worker's files: one open file per (type, product, date) at most."""

    def __init__(
        self,
        root: Path,
        worker_index: int,
        *,
        roll_bytes: int = ROLL_BYTES,
        roll_seconds: float = ROLL_SECONDS,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self._pq = pa, pq
        self._schemas = schemas()
        self._root = root
        self._prefix = f"part-{worker_index}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._roll_bytes = roll_bytes
        self._roll_seconds = roll_seconds
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._buffers: dict[tuple, _Buffer] = {}
        """By (type, product id, UTC date)."""
        # Re-entrant: the signal handler's closer may run on this very thread.
        self._lock = threading.RLock()
        self._closed = False
        self._next_sweep = 0.0
        register_closer(self.close)

    def write_batch(self, items: list) -> None:
        with self._lock:
            if self._closed:
                return
            now = _time.monotonic()
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
                    self._close_older_days(key)
                if not buffer.rows:
                    buffer.first = now
                buffer.rows.append(record)
                if len(buffer.rows) >= self._flush_rows:
                    self._flush(key, buffer, now)
            if now >= self._next_sweep:  # time-based flushes and rolls, once a second
                self._next_sweep = now + 1.0
                for key, buffer in buffers.items():
                    if buffer.rows and now - buffer.first >= self._flush_seconds:
                        self._flush(key, buffer, now)
                    file = buffer.file
                    if file is not None and now - file.opened >= self._roll_seconds:
                        self._finish(buffer)

    def _close_older_days(self, key: tuple) -> None:
        """A new date for a (type, product): that pair's earlier files are complete."""
        for other in [k for k in self._buffers if k[:2] == key[:2] and k != key]:
            buffer = self._buffers.pop(other)
            self._flush(other, buffer)
            self._finish(buffer)

    def _flush(self, key: tuple, buffer: _Buffer, now: float = 0.0) -> None:
        kind = key[0]
        schema = self._schemas[kind]
        records = buffer.rows
        columns = [column(records) for column in _COLUMNS[kind]]
        table = self._pa.Table.from_arrays(
            [
                self._pa.array(col, type=field.type)
                for col, field in zip(columns, schema, strict=True)
            ],
            schema=schema,
        )
        if buffer.file is None:
            buffer.file = self._open(key, schema)
        buffer.file.writer.write_table(table)
        buffer.file.rows += len(buffer.rows)
        buffer.rows = []
        if os.path.getsize(buffer.file.path) >= self._roll_bytes:
            self._finish(buffer)

    def _open(self, key: tuple, schema) -> _OpenFile:
        kind, product, day = key[0], key[1], key[2].isoformat()
        directory = (
            self._root / f"type={kind}" / f"product_id={product}" / f"date={day}"
        )
        directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        final = directory / f"{self._prefix}-{self._seq:06d}.parquet"
        path = final.with_name(final.name + ".inprogress")
        writer = self._pq.ParquetWriter(str(path), schema, compression="snappy")
        return _OpenFile(path, final, writer)

    def _finish(self, buffer: _Buffer) -> None:
        file, buffer.file = buffer.file, None
        if file is not None:
            file.writer.close()
            os.replace(file.path, file.final)

    def close(self) -> None:
        """Write what is buffered and finish every open file (idempotent)."""
        if not self._lock.acquire(timeout=5):
            return  # a worker is stuck inside a write: leave its .inprogress file
        try:
            if self._closed:
                return
            self._closed = True
            failed = None
            for key, buffer in self._buffers.items():
                try:  # each file on its own: one failing leaves the others complete
                    if buffer.rows:
                        self._flush(key, buffer)
                    self._finish(buffer)
                except OSError as exc:
                    failed = failed or exc
            self._buffers.clear()
            if failed is not None:
                raise failed
        finally:
            self._lock.release()
            unregister_closer(self.close)


class ParquetSink(DynamicSink):
    def __init__(self, root: Path, **options) -> None:
        self.root = Path(root)
        self.options = options

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> ParquetPartition:
        return ParquetPartition(self.root, worker_index, **self.options)


def check_dir(arg: str | None) -> str:
    """A directory that exists or can be created, and that takes a file."""
    import pyarrow  # noqa: F401 - refuse at start when pyarrow is missing

    path = Path(arg)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{arg} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"x")
    finally:
        probe.unlink(missing_ok=True)
    return arg


register(
    OutputKind(
        "parquet",
        build=lambda arg: ParquetSink(Path(arg)),
        arg="required",
        help="parquet:DIR",
        check=check_dir,
    )
)
