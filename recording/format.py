"""Recordings of raw feed frames: the recorder, the reader, and a replay source for Bytewax.

Format (gzip-compressed JSON lines, documented in the README):

* line 1, a header: ``{"format": "coinbase-l2-recording", "version": 1, "protocol":
  "exchange"|"advanced-trade", "feed": ..., "url": ..., "products": [...], "started": ISO}``;
* then one line per received frame: ``{"t_ns": <time.time_ns() at receive>, "product_id":
  <the product of the connection it came on>, "frame": <the frame's text exactly as
  received>}``;
* and one line per (re)connection: ``{"t_ns": ..., "product_id": ..., "event":
  "connected"}``, so that a replay knows the stream starts afresh there (Advanced Trade
  sequence numbers restart, a new snapshot follows).

Frames are kept as the exact text received, so a replay exercises the real parsers.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service.logs import RateLimitedLog

log = logging.getLogger(__name__)

FORMAT = "coinbase-l2-recording"
VERSION = 1
CONNECTED = "connected"


class RecordingError(ValueError):
    """The file is not a recording this version can read."""


# --- writing ---------------------------------------------------------------------------


class RecordingWriter:
    """Appends frames to a new recording; flushes the gzip stream at most once a second."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self._file = gzip.open(self.path, "wt", encoding="utf-8", compresslevel=6)
        self._write({"format": FORMAT, "version": VERSION, **header})
        self.frames = 0
        self.frame_bytes = 0
        self._last_flush = time.monotonic()

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def frame(
        self, product_id: str, frame: str | bytes, t_ns: int | None = None
    ) -> None:
        text = frame.decode() if isinstance(frame, bytes) else frame
        self._write(
            {"t_ns": t_ns or time.time_ns(), "product_id": product_id, "frame": text}
        )
        self.frames += 1
        self.frame_bytes += len(text)
        if time.monotonic() - self._last_flush > 1.0:
            self._file.flush()
            self._last_flush = time.monotonic()

    def connected(self, product_id: str, t_ns: int | None = None) -> None:
        self._write(
            {
                "t_ns": t_ns or time.time_ns(),
                "product_id": product_id,
                "event": CONNECTED,
            }
        )

    def close(self) -> None:
        self._file.close()


# --- reading ---------------------------------------------------------------------------

_CHUNK = 1 << 18
_RECORD_START = re.compile(rb'\{"t_ns":\d{1,20},"product_id":"([^"\\]{1,80})"')
match_record_start = _RECORD_START.match
"""``match_record_start(line)[1]`` is the product id of a line the writer wrote."""


def product_of_line(line: bytes) -> bytes | None:
    """The product id of a record line written by :class:`RecordingWriter`, without parsing.

    The writer puts ``t_ns`` then ``product_id`` first: ``{"t_ns":123,"product_id":"X",``.
    A line of any other shape (an older or hand-made recording, damage) gives None, and
    the caller parses it. An unescaped ``"product_id":"`` cannot occur inside the
    ``frame`` string (its quotes are escaped there), and is only accepted right after a
    plain integer ``t_ns`` at the start of the line, so a match is the record's own key.
    """
    found = match_record_start(line)
    return found[1] if found is not None else None


def parse_record(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """``(record, "")`` for a line holding a JSON object, else ``(None, why)``."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, "not JSON"
    if type(record) is not dict:
        return None, "JSON but not an object"
    return record, ""


class LineReader:
    """The raw lines of a recording after its header, as ``(index, bytes)``.

    Decompresses in large chunks (cheaper than ``GzipFile`` line iteration) and tracks
    how much of the compressed file it has consumed, for a progress bar. A truncated or
    damaged tail (a recorder killed mid-write) ends the iteration with a warning; the
    partial last line is dropped. Counts what it could not read in :attr:`skipped`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.position = 0
        """Compressed bytes consumed so far."""
        self.lines = 0
        self.skipped: Counter[str] = Counter()
        self.ended_early: str | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        index = -1  # the header is line -1
        rest = b""
        decompressor = zlib.decompressobj(zlib.MAX_WBITS | 32)
        with open(self.path, "rb") as f:
            try:
                while True:
                    chunk = f.read(_CHUNK)
                    self.position += len(chunk)
                    if not chunk:
                        break
                    data = decompressor.decompress(chunk)
                    while decompressor.eof and decompressor.unused_data:
                        tail = decompressor.unused_data  # another gzip member
                        decompressor = zlib.decompressobj(zlib.MAX_WBITS | 32)
                        data += decompressor.decompress(tail)
                    if not data:
                        continue
                    lines = (rest + data).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        if index >= 0:
                            self.lines += 1
                            yield index, line
                        index += 1
                if not decompressor.eof:
                    raise EOFError("compressed stream ends before its end marker")
            except (EOFError, zlib.error, OSError) as exc:
                self.ended_early = str(exc)
                if rest:
                    self.skipped["truncated last line"] += 1
                rest = b""
                log.warning(
                    "%s: recording ends early after record %d (%s)",
                    self.path,
                    index - 1,
                    exc,
                )
        if rest.strip() and index >= 0:
            self.lines += 1
            yield index, rest


@dataclass
class Recording:
    """A recording's header; iterate its records with :meth:`records`."""

    path: Path
    header: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Recording:
        path = Path(path)
        try:
            with gzip.open(path, "rb") as f:
                header = orjson.loads(f.readline())
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise RecordingError(
                f"{path}: not a gzip JSON-lines recording ({exc})"
            ) from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise RecordingError(f"{path}: first line is not a {FORMAT} header")
        if header.get("version") != VERSION:
            raise RecordingError(
                f"{path}: version {header.get('version')!r}, expected {VERSION}"
            )
        if header.get("protocol") not in ("exchange", "advanced-trade"):
            raise RecordingError(f"{path}: unknown protocol {header.get('protocol')!r}")
        products = header.get("products", [])
        if not isinstance(products, list) or not all(
            isinstance(p, str) for p in products
        ):
            raise RecordingError(f"{path}: header 'products' is not a list of ids")
        return cls(path, header)

    @property
    def products(self) -> list[str]:
        return list(self.header.get("products", []))

    @property
    def protocol(self) -> str:
        return self.header["protocol"]

    def lines(self) -> LineReader:
        """The raw record lines, for readers that filter before parsing."""
        return LineReader(self.path)

    def records(self, start: int = 0) -> Iterator[tuple[int, Any]]:
        """``(index, value)`` for every JSON line after the header, from index ``start``.

        A value is normally a record (a dict) but may be any JSON value: callers check
        (the replay source and the local exchange skip and count the others). A line
        that is not JSON is skipped with a warning (at most one a second); a truncated
        tail ends the iteration with a warning.
        """
        bad = RateLimitedLog(log)
        for index, line in self.lines():
            if index < start or not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad.warning("%s: record %d is not JSON; skipped", self.path, index)
                continue
            yield index, value
