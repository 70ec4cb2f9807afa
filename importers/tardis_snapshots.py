"""Depth records to tardis.dev ``book_snapshot_{N}_{interval}`` CSV files: the way out.

Tools that read tardis.dev's downloadable CSV files (backtesters, notebooks) then read
this service's books as they read tardis.dev's own. The columns are tardis.dev's::

    exchange,symbol,timestamp,local_timestamp,asks[0].price,asks[0].amount,
    bids[0].price,bids[0].amount,asks[1].price,...,bids[N-1].amount

times in µs since the epoch (UTC), numbers in shortest decimal form (``6421.5``), a
level the book does not have left empty. Files are gzip, one per product and UTC day,
named as tardis.dev names its downloads:
``coinbase_book_snapshot_25_1s_2026-06-01_BTC-USD.csv.gz``. The interval is the cadence
the records were made at (the caller's, e.g. the depth interval), only named here.

:func:`snapshot_row` is the pure part (a ``depth`` record, as
:meth:`records.OrderBookDepth.to_dict` makes it, to one row); :class:`TardisSnapshotWriter`
keeps one file open per product and starts the next at midnight UTC. A file that exists
already is appended to as a new gzip member (any gzip reader reads the members as one
text), its header not repeated, so a restarted service goes on with the day's file.
:func:`read_book_snapshots` reads such a file back.
"""

from __future__ import annotations

import gzip
import os
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from common.decimals import plain
from common.domain import is_product_id
from common.text import shown
from importers.stream import time_of_us

_INTERVAL = re.compile(r"0ms|[1-9]\d{0,8}(ms|s|m)")
_EXCHANGE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
MAX_LEVELS = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UnwritableRecord(ValueError):
    """A record that cannot be a row; ``reason`` is its short kind (for counting)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def interval_name(seconds: float) -> str:
    """tardis.dev's name of a snapshot cadence: ``1s``, ``100ms``, ``1m``; ``0ms`` for
    a snapshot at every change. ValueError for a cadence of no whole milliseconds."""
    ms = round(seconds * 1000)
    if not 0 <= ms < 10**9 or abs(seconds * 1000 - ms) > 1e-6:
        raise ValueError(
            f"a depth interval of {seconds:g} s has no tardis.dev name: it takes whole "
            "milliseconds (0.1, 1, 60...)"
        )
    if ms == 0:
        return "0ms"
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def header(levels: int) -> str:
    """The CSV header of ``levels`` levels a side."""
    columns = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(levels):
        columns += [
            f"asks[{i}].price",
            f"asks[{i}].amount",
            f"bids[{i}].price",
            f"bids[{i}].amount",
        ]
    return ",".join(columns)


def _us(time: datetime) -> int:
    delta = time.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _number(text: Any, what: str) -> str:
    try:
        value = Decimal(text) if isinstance(text, str) else None
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value < 0:
        raise UnwritableRecord(
            "a bad number", f"{what} '{shown(text, 40)}' is not a decimal number >= 0"
        )
    return plain(value)


def snapshot_row(
    record: dict[str, Any],
    levels: int,
    exchange: str = "coinbase",
    local_time: datetime | None = None,
) -> tuple[str, date, str]:
    """``(product, UTC day, CSV row)`` of a ``depth`` record; UnwritableRecord
    for a record that cannot be one (another type, no time, a bad product or number).

    ``local_time`` is the receive time for ``local_timestamp`` (the record's time when
    None: a depth record carries one time only)."""
    if not isinstance(record, dict) or record.get("type") != "depth":
        raise UnwritableRecord("not a depth record")
    product = record.get("product_id")
    if not is_product_id(product):
        raise UnwritableRecord("a bad product id", shown(product, 40))
    try:
        time = datetime.fromisoformat(record["time"])
    except (KeyError, TypeError, ValueError):
        raise UnwritableRecord("no usable time", product) from None
    if time.tzinfo is None:
        time = time.replace(tzinfo=UTC)
    stamp = _us(time)
    local = _us(local_time) if local_time is not None else stamp
    sides = []
    for name in ("asks", "bids"):
        side = record.get(name)
        if not isinstance(side, list):
            raise UnwritableRecord("bad levels", f"{product}: '{name}' is not a list")
        sides.append(side)
    cells = [exchange, product, str(stamp), str(local)]
    for i in range(levels):
        for side, name in zip(sides, ("ask", "bid"), strict=True):
            if i < len(side):
                level = side[i]
                if not isinstance(level, list | tuple) or len(level) != 2:
                    raise UnwritableRecord(
                        "bad levels",
                        f"{product}: {name} level {i} is not [price, size]",
                    )
                cells += [_number(level[0], "price"), _number(level[1], "size")]
            else:
                cells += ["", ""]
    return product, time.astimezone(UTC).date(), ",".join(cells)


class TardisSnapshotWriter:
    """Writes depth records as tardis.dev ``book_snapshot_{levels}_{interval}`` files
    in ``directory`` (see the module docstring). Not thread-safe: one writer, one
    thread. A record that cannot be written is counted in :attr:`skipped` by reason."""

    def __init__(
        self,
        directory: str | os.PathLike,
        levels: int = 25,
        interval: str = "1s",
        exchange: str = "coinbase",
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"directory '{shown(self.directory)}' does not exist")
        if type(levels) is not int or not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"levels={levels!r}: expected an int in 1..{MAX_LEVELS}")
        if not isinstance(interval, str) or not _INTERVAL.fullmatch(interval):
            raise ValueError(
                f"interval='{shown(interval, 20)}': expected a cadence such as 100ms, "
                "1s or 1m"
            )
        if not isinstance(exchange, str) or not _EXCHANGE.fullmatch(exchange):
            raise ValueError(
                f"exchange='{shown(exchange, 40)}': expected a lower-case tardis.dev "
                "exchange id such as coinbase"
            )
        self.levels = levels
        self.interval = interval
        self.exchange = exchange
        self.header = header(levels)
        self._open: dict[str, tuple[date, Any]] = {}
        self.rows = 0
        self.files: list[Path] = []
        self.skipped: Counter[str] = Counter()

    def path_for(self, product: str, day: date) -> Path:
        return self.directory / (
            f"{self.exchange}_book_snapshot_{self.levels}_{self.interval}_"
            f"{day.isoformat()}_{product}.csv.gz"
        )

    def write(self, record: dict[str, Any], local_time: datetime | None = None) -> bool:
        """One record to its product's file of its day; False (counted) if skipped."""
        try:
            product, day, row = snapshot_row(
                record, self.levels, self.exchange, local_time
            )
        except UnwritableRecord as exc:
            self.skipped[exc.reason] += 1
            return False
        handle = self._file(product, day)
        handle.write(row.encode() + b"\n")
        self.rows += 1
        return True

    def _file(self, product: str, day: date):
        current = self._open.get(product)
        if current is not None and current[0] == day:
            return current[1]
        if current is not None:
            current[1].close()
        path = self.path_for(product, day)
        new = not path.exists() or path.stat().st_size == 0
        handle = gzip.open(path, "ab")
        if new:
            handle.write(self.header.encode() + b"\n")
            self.files.append(path)
        self._open[product] = (day, handle)
        return handle

    def flush(self) -> None:
        """What was written so far readable by any gzip reader (a sync flush of each
        open file: a killed process loses only what followed)."""
        for _, handle in self._open.values():
            handle.flush()

    def close(self) -> None:
        for _, handle in self._open.values():
            handle.close()
        self._open.clear()

    def __enter__(self) -> TardisSnapshotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_book_snapshots(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The rows of a ``book_snapshot_N`` file as ``{"exchange", "product_id", "time",
    "local_time", "bids", "asks"}`` (times as datetimes, levels as ``[price, size]``
    text, best first, the empty cells of missing levels left out)."""
    with gzip.open(path, "rt", newline="") as f:
        columns = f.readline().rstrip("\n").split(",")
        levels = (len(columns) - 4) // 4
        for line in f:
            cells = line.rstrip("\n").split(",")
            asks, bids = [], []
            for i in range(levels):
                ask_p, ask_s, bid_p, bid_s = cells[4 + 4 * i : 8 + 4 * i]
                if ask_p:
                    asks.append([ask_p, ask_s])
                if bid_p:
                    bids.append([bid_p, bid_s])
            yield {
                "exchange": cells[0],
                "product_id": cells[1],
                "time": time_of_us(int(cells[2])),
                "local_time": time_of_us(int(cells[3])),
                "bids": bids,
                "asks": asks,
            }
