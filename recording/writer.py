"""Writing a recording: the header, then blocks of one product's records (see
:mod:`recording.format`).

Records wait in a buffer per product. A product's buffer becomes a block when it holds
:attr:`RecordingWriter.BLOCK_BYTES`, and every buffer does at most
:attr:`RecordingWriter.FLUSH_SECONDS` after the last flush, so a recorder killed without
warning loses about a second, as when it wrote one gzip stream. 256 KiB blocks compress
almost as well as one stream (the deflate window is 32 KiB): 0.9% larger, measured on the
benches' recording.
"""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

from recording.format import (
    connected_record,
    encode_block,
    frame_record,
    header_record,
)


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
        self._file = open(self.path, "ab" if append else "wb")
        if header is not None:
            line = orjson.dumps(header_record(header)) + b"\n"
            compressor = zlib.compressobj(
                self.LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS
            )
            self._file.write(compressor.compress(line) + compressor.flush())
        self._buffers: dict[str, _Buffer] = {}
        self.frames = 0
        self.frame_bytes = 0
        self.blocks = 0
        self._last_flush = time.monotonic()

    def frame(
        self, product_id: str, frame: str | bytes, t_ns: int | None = None
    ) -> None:
        """One received frame, kept verbatim."""
        text = frame.decode() if isinstance(frame, bytes) else frame
        self._add(product_id, frame_record(product_id, text, t_ns or time.time_ns()))
        self.frames += 1
        self.frame_bytes += len(text)

    def connected(self, product_id: str, t_ns: int | None = None) -> None:
        """A (re)connection of ``product_id``: a replay resets its book here."""
        self._add(product_id, connected_record(product_id, t_ns or time.time_ns()))

    def _add(self, product_id: str, line: bytes) -> None:
        buffer = self._buffers.get(product_id)
        if buffer is None:
            buffer = self._buffers[product_id] = _Buffer()
        buffer.lines.append(line)
        buffer.size += len(line)
        buffer.records += 1
        if buffer.size >= self.BLOCK_BYTES:
            self._write_block(product_id, buffer)
        if time.monotonic() - self._last_flush > self.FLUSH_SECONDS:
            self.flush()

    def _write_block(self, product_id: str, buffer: _Buffer) -> None:
        block = encode_block(
            product_id, b"".join(buffer.lines), buffer.records, self.LEVEL
        )
        self._file.write(block)
        self.blocks += 1
        buffer.lines.clear()
        buffer.size = 0
        buffer.records = 0

    def flush(self) -> None:
        """Every waiting record to the file, as a block per product."""
        for product_id, buffer in self._buffers.items():
            if buffer.records:
                self._write_block(product_id, buffer)
        self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()
