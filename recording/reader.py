"""Reading a recording: its header, all its lines in file order, or only some products'.

:class:`Recording` checks the header. :class:`LineReader` gives every line in file order
(the local exchange serves a recording that way). :class:`ProductReader` gives the records
of some products and seeks past the blocks of the others without decompressing them: what a
replay partition needs, since a process holds only some products' books (see
:mod:`recording.format` for the layout and :mod:`recording.replay` for the use).

Damage never raises out of a reader. A truncated end (a recorder killed mid-write) ends the
reading with a warning, the partial last line dropped. A damaged block is skipped (its
records counted) and reading goes on at the next block, found by its signature; damage
inside a version 1 stream ends the reading there, as there is no next block to find.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from common.logs import RateLimitedLog
from recording.format import (
    BLOCK_SIGNATURE,
    FIXED_HEADER,
    GZIP_MAGIC,
    RecordingError,
    block_header_length,
    check_header,
    match_record_start,
    parse_block_header,
    parse_record,
)

log = logging.getLogger(__name__)

_CHUNK = 1 << 18
_GZIP = 16 + zlib.MAX_WBITS
_ANY_ZLIB = 32 + zlib.MAX_WBITS

Chunk = tuple[bytes, int, list[Any]]
"""``(product id, index of the first item, items)``; an item is a record's line (bytes)
or, for a line whose product had to be parsed to be found, the parsed record (a dict).
A record's index counts that product's records from 0, in the file's order."""


@dataclass
class Recording:
    """A recording's header; read its records with :meth:`records` or :meth:`products`."""

    path: Path
    header: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Recording:
        """Check the header; a file that is not a readable recording: RecordingError."""
        path = Path(path)
        try:
            with gzip.open(path, "rb") as f:
                header = orjson.loads(f.readline())
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise RecordingError(
                f"{path}: not a gzip JSON-lines recording ({exc})"
            ) from None
        return cls(path, check_header(header, str(path)))

    @property
    def products(self) -> list[str]:
        return list(self.header.get("products", []))

    @property
    def protocol(self) -> str:
        return self.header["protocol"]

    def lines(self) -> LineReader:
        """Every raw record line, in file order."""
        return LineReader(self.path)

    def of_products(self, starts: dict[str, int]) -> ProductReader:
        """The records of the products in ``starts``, each from the index given there."""
        return ProductReader(self.path, starts)

    def records(self, start: int = 0) -> Iterator[tuple[int, Any]]:
        """``(index, value)`` for every JSON line after the header, in file order, from
        index ``start`` (counting every product's lines).

        A value is normally a record (a dict) but may be any JSON value: callers check
        (the local exchange skips and counts the others). A line that is not JSON is
        skipped with a warning (at most one a second); a truncated tail ends the iteration
        with a warning.
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


class LineReader:
    """The raw lines of a recording after its header, as ``(index, bytes)``, file order.

    Decompresses in large chunks (cheaper than ``GzipFile`` line iteration) and follows
    every gzip member, marked or not. Counts what it could not read in :attr:`skipped`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.position = 0
        """Compressed bytes consumed so far."""
        self.skipped: Counter[str] = Counter()
        self.ended_early: str | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        index = -1  # the header is line -1
        rest = b""
        decompressor = zlib.decompressobj(_ANY_ZLIB)
        with open(self.path, "rb") as f:
            try:
                while chunk := f.read(_CHUNK):
                    self.position += len(chunk)
                    data = decompressor.decompress(chunk)
                    while decompressor.eof and decompressor.unused_data:
                        tail = decompressor.unused_data  # another gzip member
                        decompressor = zlib.decompressobj(_ANY_ZLIB)
                        data += decompressor.decompress(tail)
                    if not data:
                        continue
                    lines = (rest + data).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        if index >= 0:
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
            yield index, rest


class ProductReader:
    """The records of some products, as :data:`Chunk` s, reading only their blocks.

    ``starts`` maps each wanted product to the index of its first record wanted: a block
    wholly before it is skipped unread too (a resumed replay). Lines of unmarked members
    (a version 1 recording) are all decompressed; each line's product is found by
    :func:`recording.format.match_record_start`, or by parsing a line of another shape.
    """

    def __init__(self, path: str | os.PathLike, starts: dict[str, int]) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.position = 0
        """Compressed bytes read or skipped so far."""
        self._starts = {p.encode(): start for p, start in starts.items()}
        self._counts = dict.fromkeys(self._starts, 0)
        self.blocks_read = 0
        self.blocks_skipped = 0
        self.skipped: Counter[str] = Counter()
        self.ended_early: str | None = None
        self._bad = RateLimitedLog(log)

    def __iter__(self) -> Iterator[Chunk]:
        header_pending = True  # the file's first line is the header
        with open(self.path, "rb") as f:
            position: int | None = 0
            while position is not None and position < self.size:
                self.position = position
                f.seek(position)
                first = f.read(FIXED_HEADER)
                length = block_header_length(first)
                marker = None
                if length is not None:
                    marker = parse_block_header(first + f.read(length - FIXED_HEADER))
                if marker is not None:
                    position = yield from self._block(f, position, marker)
                elif first[:3] == GZIP_MAGIC:
                    position = yield from self._member(f, position, header_pending)
                    header_pending = False
                else:
                    position = self._damaged(f, position, "data that is not a block")
            self.position = self.size if position is not None else self.position

    # -- marked blocks ------------------------------------------------------------------

    def _block(self, f, position: int, marker) -> Generator[Chunk, None, int | None]:
        product, records = marker.product, marker.records
        first = self._counts.get(product)
        if first is None or first + records <= self._starts[product]:
            if first is not None:
                self._counts[product] = first + records
            self.blocks_skipped += 1
            return position + marker.size
        f.seek(position)
        data = f.read(marker.size)
        self.blocks_read += 1
        if len(data) < marker.size:  # the file ends inside this block
            lines = self._salvage(data)
            self._end_early(f"the file ends inside a block of {product.decode()}")
            self._counts[product] = first + len(lines)
            if lines:
                yield product, first, lines
            return None
        try:
            text = zlib.decompress(data, _GZIP)
        except zlib.error as exc:
            self.skipped["records in damaged blocks"] += records
            self._counts[product] = first + records
            self._bad.warning(
                "%s: a block of %d %s records at byte %d is damaged (%s); skipped",
                self.path,
                records,
                product.decode(),
                position,
                exc,
            )
            return position + marker.size
        lines = text.split(b"\n")
        if not lines[-1]:
            lines.pop()
        self._counts[product] = first + max(records, len(lines))
        yield product, first, lines
        return position + marker.size

    def _salvage(self, data: bytes) -> list[bytes]:
        """The whole lines at the start of a cut-off block."""
        try:
            text = zlib.decompressobj(_GZIP).decompress(data)
        except zlib.error:
            text = b""
        lines = text.split(b"\n")
        if lines.pop():
            self.skipped["truncated last line"] += 1
        return lines

    # -- unmarked members ---------------------------------------------------------------

    def _member(
        self, f, position: int, header_pending: bool
    ) -> Generator[Chunk, None, int | None]:
        """Stream an unmarked gzip member; where the next member starts (None: the end)."""
        f.seek(position)
        decompressor = zlib.decompressobj(_GZIP)
        consumed = position
        rest = b""
        try:
            while not decompressor.eof:
                chunk = f.read(_CHUNK)
                if not chunk:
                    raise EOFError("compressed stream ends before its end marker")
                consumed += len(chunk)
                lines = (rest + decompressor.decompress(chunk)).split(b"\n")
                rest = lines.pop()
                if header_pending and lines:
                    lines = lines[1:]
                    header_pending = False
                yield from self._route(lines)
                self.position = consumed
        except (EOFError, zlib.error) as exc:
            if rest:
                self.skipped["truncated last line"] += 1
            return self._damaged(f, position, str(exc))
        if rest.strip() and not header_pending:
            yield from self._route([rest])
        return consumed - len(decompressor.unused_data)

    def _route(self, lines: list[bytes]) -> Iterator[Chunk]:
        found: dict[bytes, list[Any]] = {}
        counts = self._counts
        match = match_record_start
        for line in lines:
            start = match(line)
            if start is not None:
                product = start[1]
                if product in counts:
                    found.setdefault(product, []).append(line)
                continue
            if not line.strip():
                continue
            record, why = parse_record(line)
            if record is None:
                self._skip(why)
                continue
            product_id = record.get("product_id")
            if not isinstance(product_id, str):
                self._skip("a record without a product_id")
                continue
            product = product_id.encode()
            if product in counts:
                found.setdefault(product, []).append(record)
        for product, items in found.items():
            first = counts[product]
            counts[product] = first + len(items)
            yield product, first, items

    # -- damage -------------------------------------------------------------------------

    def _damaged(self, f, position: int, why: str) -> int | None:
        """The next block after damage at ``position``, or None (the reading ends)."""
        following = self._next_block(f, position + 1)
        if following is None:
            self._end_early(why)
            return None
        self.skipped["damaged stretches of the file"] += 1
        self._bad.warning(
            "%s: %s at byte %d; reading goes on at the next block, byte %d",
            self.path,
            why,
            position,
            following,
        )
        return following

    def _next_block(self, f, position: int) -> int | None:
        overlap = FIXED_HEADER + 2
        while position < self.size:
            f.seek(position)
            window = f.read(_CHUNK + overlap)
            for found in BLOCK_SIGNATURE.finditer(window):
                at = position + found.start()
                f.seek(at)
                first = f.read(FIXED_HEADER)
                length = block_header_length(first)
                if length is not None and parse_block_header(
                    first + f.read(length - FIXED_HEADER)
                ):
                    return at
            position += _CHUNK
        return None

    def _end_early(self, why: str) -> None:
        self.ended_early = why
        log.warning("%s: recording ends early (%s)", self.path, why)

    def _skip(self, why: str) -> None:
        self.skipped[why] += 1
        self._bad.warning("%s: a line is %s; skipped", self.path, why)
