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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

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


@dataclass
class Recording:
    """A recording's header; iterate its records with :meth:`records`."""

    path: Path
    header: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Recording:
        path = Path(path)
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                header = json.loads(f.readline())
        except (OSError, EOFError, ValueError) as exc:
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
        return cls(path, header)

    @property
    def products(self) -> list[str]:
        return list(self.header.get("products", []))

    @property
    def protocol(self) -> str:
        return self.header["protocol"]

    def records(self, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(index, record)`` for every record after the header, from index ``start``.

        A truncated tail (a recorder killed mid-write) ends the iteration quietly.
        """
        with gzip.open(self.path, "rb") as f:
            f.readline()
            index = -1
            try:
                for index, line in enumerate(f):
                    if index < start:
                        continue
                    try:
                        record = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        log.warning(
                            "%s: record %d is not JSON; skipped", self.path, index
                        )
                        continue
                    yield index, record
            except (EOFError, gzip.BadGzipFile, OSError) as exc:
                log.warning(
                    "%s: recording ends early after record %d (%s)",
                    self.path,
                    index,
                    exc,
                )
