"""The records the views read, whatever their origin: a dataflow, JSON lines, Parquet.

Two kinds of record, both plain dicts with decimals as strings:

* a **summary** (``OrderBookSummary.to_dict()``): ``product_id``, ``time``, ``bid_price``,
  ``bid_size``, ``ask_price``, ``ask_size``, ``spread``, ``spread_pct``, ``mid``,
  ``imbalance``, ``microprice``, ``feed``; ``"type": "summary"`` is optional;
* a **depth** record: ``{"type": "depth", "product_id", "time", "feed", "bids":
  [["price", "size"], ...best first], "asks": [...], "mid", "bid_liquidity_10bps",
  "ask_liquidity_10bps"`` (and 50, 100), ``"imbalance"}``.

A record without ``type`` is a summary when it has ``bid_price``, depth when it has
``bids``. Objects with a ``to_dict()`` (an ``OrderBookSummary``) are accepted too.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

SUMMARY = "summary"
DEPTH = "depth"
LIQUIDITY_BANDS = (10, 50, 100)
"""Basis points around mid of the depth records' ``*_liquidity_<N>bps`` fields."""


def as_record(item: Any) -> dict | None:
    """A dict record from a dict, an object with ``to_dict()``, or a pair whose second
    item is one (``(key, record)``, ``(received_ns, record)``)."""
    if isinstance(item, dict):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return as_record(item[1])
    to_dict = getattr(item, "to_dict", None)
    if callable(to_dict):
        record = to_dict()
        return record if isinstance(record, dict) else None
    return None


def kind(record: dict) -> str | None:
    """``"summary"``, ``"depth"`` or None for anything else."""
    declared = record.get("type")
    if declared in (SUMMARY, DEPTH):
        return declared
    if declared is not None:
        return None
    if "bid_price" in record:
        return SUMMARY
    if "bids" in record and "asks" in record:
        return DEPTH
    return None


def num(value: Any) -> float | None:
    """A float from a decimal string or number; None for missing or unreadable values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def epoch_seconds(value: Any) -> float | None:
    """Seconds since the epoch from an ISO-8601 time (``...Z``), a datetime or a number."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hasattr(value, "timestamp"):  # pandas / pyarrow timestamps
        try:
            return float(value.timestamp())
        except (TypeError, ValueError):
            return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def spread_bps(record: dict) -> float | None:
    """The spread in basis points of the ask (``spread_pct`` x 100, what the filter uses)."""
    pct = num(record.get("spread_pct"))
    return None if pct is None else pct * 100.0


def levels(record: dict, side: str) -> list[tuple[float, float]]:
    """``[(price, size), ...]`` best first of a depth record's ``"bids"`` or ``"asks"``."""
    raw = record.get(side) or ()
    if isinstance(raw, str):  # a Parquet column may hold the levels as JSON text
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    out = []
    for level in raw:
        try:
            price, size = float(level[0]), float(level[1])
        except (TypeError, ValueError, IndexError):
            continue
        out.append((price, size))
    return out


# -- reading recorded output ----------------------------------------------------------


def read_records(path: str | Path) -> Iterator[dict]:
    """Every record of a run's output: JSON lines (``.gz`` too) or Parquet (file or dir).

    Lines that are not JSON objects (a ``text`` output, a truncated last line) are
    skipped. Parquet needs ``pyarrow``.
    """
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        yield from _read_parquet(path)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def _read_parquet(path: Path) -> Iterator[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
        ) from None
    files: Iterable[Path] = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    found = False
    for file in files:
        found = True
        for row in pq.read_table(file).to_pylist():
            yield {k: v for k, v in row.items() if v is not None}
    if not found:
        raise SystemExit(f"{path}: no .parquet files in this directory")
