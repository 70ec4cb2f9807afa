"""Writing a recording: the header, then blocks of one product's records (see
:mod:`recording.format`).

Records wait in a buffer per product. A product's buffer becomes a block when it holds
:attr:`RecordingWriter.BLOCK_BYTES`, and every buffer does at most
:attr:`RecordingWriter.FLUSH_SECONDS` after the last flush, so a recorder killed without
warning loses about a second, as when it wrote one gzip stream. 256 KiB blocks compress
almost as well as one stream (the deflate window is 32 KiB): 0.9% larger, measured on the
benches' recording.

A block never holds more than :data:`~recording.format.MAX_BLOCK_TEXT` bytes, what a
reader accepts: a buffer about to pass it is written first, and a record longer than it
alone is not written (counted in :attr:`RecordingWriter.too_large`, logged).

Write errors (a full disk, a file too large) are raised as :class:`OSError`; after one,
the writer writes nothing more, and :meth:`RecordingWriter.close` closes the file
without raising: what reached it stays readable (a reader sees a cut-off end).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

from events import BookAudit
from recording.format import (
    MAX_BLOCK_TEXT,
    audit_record,
    audit_requested_record,
    connected_record,
    encode_block,
    frame_record,
    header_record,
)

log = logging.getLogger(__name__)


class _Buffer:
    __slots__ = ("lines", "records", "size")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.size = 0
        self.records = 0


class RecordingWriter:
    """Appends records to a recording: a new one (``header``) or an existing one
    (``header=None``, ``append=True``: blocks are added after what the file holds).

    Not thread-safe: one writer is used from one thread (the recorder's event loop).
    """

    BLOCK_BYTES = 1 << 18
    FLUSH_SECONDS = 1.0
    LEVEL = 6

    def __init__(
        self,
        path: str | os.PathLike,
        header: dict[str, Any] | None,
        *,
        append: bool = False,
    ) -> None:
        if (header is None) != append:
            raise ValueError("give a header for a new recording, or append=True")
        self.path = Path(path)
        self.failed: OSError | None = None
        """The write error that stopped this writer, if one did."""
        self._buffers: dict[str, _Buffer] = {}
        self.frames = 0
        self.frame_bytes = 0
        self.blocks = 0
        self.too_large = 0
        self.audits = 0
        """REST audit requests recorded."""
        """Records not written: alone longer than a block may be."""
        self._last_flush = time.monotonic()
        self._file = open(self.path, "ab" if append else "wb")
        if header is not None:
            line = orjson.dumps(header_record(header)) + b"\n"
            compressor = zlib.compressobj(
                self.LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS
            )
            try:  # a write error shows here, at start, not a second later
                self._write(compressor.compress(line) + compressor.flush())
                self._guarded(self._file.flush)
            except OSError:
                self.close()
                raise

    def frame(
        self, product_id: str, frame: str | bytes, t_ns: int | None = None
    ) -> None:
        """One received frame, kept verbatim."""
        text = frame.decode() if isinstance(frame, bytes) else frame
        if self._add(
            product_id, frame_record(product_id, text, t_ns or time.time_ns())
        ):
            self.frames += 1
            self.frame_bytes += len(text)

    def connected(self, product_id: str, t_ns: int | None = None) -> None:
        """A (re)connection of ``product_id``: a replay resets its book here."""
        self._add(product_id, connected_record(product_id, t_ns or time.time_ns()))

    def audit_requested(self, product_id: str, t_ns: int) -> None:
        """A REST audit's request of ``product_id`` left at ``t_ns``."""
        self._add(product_id, audit_requested_record(product_id, t_ns))
        self.audits += 1

    def audit(self, event: BookAudit, t_ns: int | None = None) -> None:
        """The REST book (or failure) answering the product's last request."""
        self._add(event.product_id, audit_record(event, t_ns or time.time_ns()))

    def _add(self, product_id: str, line: bytes) -> bool:
        if self.failed is not None:
            raise self.failed
        if len(line) > MAX_BLOCK_TEXT:
            self.too_large += 1
            log.warning(
                "%s: a record of %s of %d bytes is longer than a block may be "
                "(%d bytes); not written",
                self.path,
                product_id,
                len(line),
                MAX_BLOCK_TEXT,
            )
            return False
        buffer = self._buffers.get(product_id)
        if buffer is None:
            buffer = self._buffers[product_id] = _Buffer()
        if buffer.size + len(line) > MAX_BLOCK_TEXT:
            self._write_block(product_id, buffer)
        buffer.lines.append(line)
        buffer.size += len(line)
        buffer.records += 1
        if buffer.size >= self.BLOCK_BYTES:
            self._write_block(product_id, buffer)
        if time.monotonic() - self._last_flush > self.FLUSH_SECONDS:
            self.flush()
        return True

    def _write_block(self, product_id: str, buffer: _Buffer) -> None:
        block = encode_block(
            product_id, b"".join(buffer.lines), buffer.records, self.LEVEL
        )
        buffer.lines.clear()
        buffer.size = 0
        buffer.records = 0
        self._write(block)
        self.blocks += 1

    def _write(self, data: bytes) -> None:
        self._guarded(self._file.write, data)

    def _guarded(self, call, *args) -> None:
        if self.failed is not None:
            raise self.failed
        try:
            call(*args)
        except OSError as exc:
            self.failed = exc
            raise

    def flush(self) -> None:
        """Every waiting record to the file, as a block per product."""
        for product_id, buffer in self._buffers.items():
            if buffer.records:
                self._write_block(product_id, buffer)
        self._guarded(self._file.flush)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Write what waits and close; after a write error, only close (never raises
        for that error again: it was raised once, where it happened)."""
        if self._file.closed:
            return
        try:
            if self.failed is None:
                self.flush()
        finally:
            try:
                self._file.close()
            except OSError:  # the failed write's bytes, still buffered: fail again
                if self.failed is None:
                    raise
