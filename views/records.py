"""The records the views read, whatever their origin: a dataflow, JSON lines, Parquet.

Two kinds of record, both plain dicts with decimals as strings:

* a **summary** (``OrderBookSummary.to_dict()``): ``product_id``, ``time``, ``bid_price``,
  ``bid_size``, ``ask_price``, ``ask_size``, ``spread``, ``spread_pct``, ``mid``,
  ``imbalance``, ``microprice``, ``feed``; ``"type": "summary"`` is optional;
* a **depth** record: ``{"type": "depth", "product_id", "time", "feed", "bids":
  [["price", "size"], ...best first], "asks": [...], "mid", "bid_liquidity_10bps",
  "ask_liquidity_10bps"`` (and 50, 100), ``"imbalance"}``.

* an **audit** record (``records.AuditRecord.to_dict()``, ``"type": "audit"``): what
  the last comparison with the exchange's REST book found (``result``), see
  docs/audit.md; the views show its result and age.

A record without ``type`` is a summary when it has ``bid_price``, depth when it has
``bids``. Objects with a ``to_dict()`` (an ``OrderBookSummary``) are accepted too; the
dataflow's ``(received_ns, record)`` pairs are unpacked by the views' sinks.

Every value is checked where it enters: :func:`num` gives finite floats only (``inf``,
``NaN``, ``1e999`` are missing values, so no ``Infinity`` reaches a page's JSON) and
:func:`epoch_seconds` times between 1970 and the year 9999 only (what ``datetime`` and
matplotlib can draw; ``1e300`` is missing). Reading a file (:func:`read_records`) skips
and counts what is not a record, and names a file it cannot read in one line.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from common.text import shown

SUMMARY = "summary"
DEPTH = "depth"
AUDIT = "audit"
AUDIT_RESULTS = ("match", "drift", "skipped", "failed")
"""What an audit record's ``result`` may say; anything else is not shown."""
LIQUIDITY_BANDS = (10, 50, 100)
"""Basis points around mid of the depth records' ``*_liquidity_<N>bps`` fields."""
EPOCH_MAX = 253_402_300_799.0
"""9999-12-31T23:59:59Z: the last second ``datetime`` (and so matplotlib) can hold."""


def as_record(item: Any) -> dict | None:
    """A dict record from a dict or an object with ``to_dict()``; None otherwise."""
    if isinstance(item, dict):
        return item
    to_dict = getattr(item, "to_dict", None)
    if callable(to_dict):
        record = to_dict()
        return record if isinstance(record, dict) else None
    return None


def kind(record: dict) -> str | None:
    """``"summary"``, ``"depth"``, ``"audit"`` or None for anything else."""
    declared = record.get("type")
    if declared in (SUMMARY, DEPTH, AUDIT):
        return declared
    if declared is not None:
        return None
    if "bid_price" in record:
        return SUMMARY
    if "bids" in record and "asks" in record:
        return DEPTH
    return None


def num(value: Any) -> float | None:
    """A finite float from a decimal string or number; None for missing, unreadable or
    non-finite values (``"inf"``, ``"NaN"``, ``"1e999"``, an int of 400 digits)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        parsed = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return parsed if math.isfinite(parsed) else None


def epoch_seconds(value: Any) -> float | None:
    """Seconds since the epoch from an ISO-8601 time (``...Z``), a datetime or a number;
    None for anything else, and for times before 1970 or after the year 9999."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, datetime):
            seconds = value.timestamp()
        elif isinstance(value, (int, float)):
            seconds = float(value)
        elif hasattr(value, "timestamp"):  # pandas / pyarrow timestamps
            seconds = float(value.timestamp())
        elif isinstance(value, str):
            seconds = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        else:
            return None
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return seconds if 0.0 <= seconds <= EPOCH_MAX else None  # NaN fails both


def spread_bps(record: dict) -> float | None:
    """The spread in basis points of the ask (``spread_pct`` x 100, what the filter uses)."""
    pct = num(record.get("spread_pct"))
    return None if pct is None else num(pct * 100.0)


def levels(record: dict, side: str) -> list[tuple[float, float]]:
    """``[(price, size), ...]`` best first of a depth record's ``"bids"`` or ``"asks"``."""
    raw = record.get(side) or ()
    if isinstance(raw, str):  # a Parquet column may hold the levels as JSON text
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    out = []
    if not isinstance(raw, (list, tuple)):
        return out
    for level in raw:
        try:
            price, size = num(level[0]), num(level[1])
        except (TypeError, IndexError, KeyError):
            continue
        if price is not None and size is not None:
            out.append((price, size))
    return out


# -- reading recorded output ----------------------------------------------------------


class UnreadableFile(ValueError):
    """A file of a run's output that cannot be read (or read to its end); one line."""


@dataclass
class ReadReport:
    """What reading a run's output skipped, for the reader to say in a line or two."""

    skipped: Counter = field(default_factory=Counter)
    """Reason -> lines or records skipped (not JSON, not UTF-8, a bad product id...)."""
    errors: list[str] = field(default_factory=list)
    """One line per file that could not be read, or not to its end."""

    def skipped_line(self) -> str | None:
        """``skipped 3: 2 lines not JSON, 1 summaries without a finite mid``; None when
        nothing was skipped."""
        if not self.skipped:
            return None
        return f"skipped {sum(self.skipped.values()):,}: " + ", ".join(
            f"{n:,} {why}" for why, n in self.skipped.most_common()
        )


def read_records(path: str | Path, report: ReadReport | None = None) -> Iterator[dict]:
    """Every record of a run's output: JSON lines (``.gz`` too) or Parquet (file or dir).

    Lines that are not JSON objects (a ``text`` output, a truncated last line) or not
    UTF-8 are skipped and counted in ``report.skipped``. A file that cannot be read (not
    gzip, a truncated gzip, a corrupt Parquet file) ends its part of the reading with a
    line in ``report.errors`` (the records before the damage are kept), or, without a
    report, :class:`UnreadableFile`.
    """
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        files = _read_parquet(path, report)
    else:
        files = _read_lines(path, report)
    try:
        yield from files
    except UnreadableFile as exc:
        if report is None:
            raise
        report.errors.append(str(exc))


def _read_lines(path: Path, report: ReadReport | None) -> Iterator[dict]:
    skipped = report.skipped if report is not None else Counter()
    gz = path.suffix == ".gz"
    count = 0
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as lines:
            for raw in lines:
                count += 1
                record = _json_object(raw, skipped)
                if record is not None:
                    yield record
    except (OSError, EOFError, zlib.error) as exc:
        what = "a readable gzip file" if gz else "readable"
        where = f" after {count:,} lines" if count else ""
        raise UnreadableFile(
            f"{shown(path)}: not {what}{where} ({shown(exc)})"
        ) from None


def _json_object(raw: bytes, skipped: Counter) -> dict | None:
    line = raw.strip()
    if not line:
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        skipped["lines not UTF-8"] += 1
        return None
    if not text.startswith("{"):
        skipped["lines not JSON"] += 1
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        skipped["lines not JSON"] += 1
        return None
    if not isinstance(record, dict):
        skipped["lines not JSON"] += 1
        return None
    return record


def _read_parquet(path: Path, report: ReadReport | None) -> Iterator[dict]:
    import pyarrow as pa  # here: reading JSON lines does not load it (0.2 s)
    import pyarrow.parquet as pq

    try:
        files: Iterable[Path] = (
            sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
        )
    except OSError as exc:
        raise UnreadableFile(f"{shown(path)}: not readable ({shown(exc)})") from None
    found = False
    for file in files:
        found = True
        try:
            rows = pq.read_table(file).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as exc:
            problem = UnreadableFile(
                f"{shown(file)}: not a readable Parquet file ({shown(exc)})"
            )
            if report is None:
                raise problem from None
            report.errors.append(str(problem))  # a directory's other files go on
            continue
        for row in rows:
            yield {k: v for k, v in row.items() if v is not None}
    if not found:
        raise UnreadableFile(f"{shown(path)}: no .parquet files in this directory")
