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

Memory is bounded whatever the file holds. Data is inflated :data:`_PIECE` bytes at a
time (``zlib`` ``max_length``), never a whole member at once: a block that inflates to
more than :data:`~recording.format.MAX_BLOCK_TEXT`, or to more lines than its marker
says, is damaged (a gzip bomb), and a line of a version 1 stream longer than
:data:`~recording.format.MAX_LINE_BYTES` is skipped and counted. A block whose marker
claims an impossible length (more than a block can hold, or past the end of the file
while another block follows) is damage too: reading goes on at the next block.
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
from typing import Any, BinaryIO

import orjson

from common.logs import RateLimitedLog
from common.text import shown
from recording.format import (
    BLOCK_SIGNATURE,
    FIXED_HEADER,
    GZIP_MAGIC,
    MAX_BLOCK_TEXT,
    MAX_HEADER_BYTES,
    MAX_LINE_BYTES,
    BlockMarker,
    RecordingError,
    block_header_length,
    check_header,
    match_record_start,
    parse_block_header,
    parse_record,
)

log = logging.getLogger(__name__)
_QUIET = logging.Logger(f"{__name__}.quiet", logging.CRITICAL + 1)
"""For a reader that only looks (a replay's check before it starts): the real pass
logs the same damage again."""

_CHUNK = 1 << 18
_PIECE = 1 << 20
"""Decompressed bytes per inflate step: what one step may hold in memory."""
_GZIP = 16 + zlib.MAX_WBITS
_ANY_ZLIB = 32 + zlib.MAX_WBITS
_TOO_LONG = f"lines longer than {MAX_LINE_BYTES // 2**20} MiB"

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
                line = f.readline(MAX_HEADER_BYTES + 1)
            if len(line) > MAX_HEADER_BYTES:
                raise ValueError(f"first line longer than {MAX_HEADER_BYTES:,} bytes")
            header = orjson.loads(line)
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

    def of_products(
        self, starts: dict[str, int], *, quiet: bool = False
    ) -> ProductReader:
        """The records of the products in ``starts``, each from the index given there
        (``quiet``: logging nothing)."""
        return ProductReader(self.path, starts, quiet=quiet)

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


# -- bounded inflating ----------------------------------------------------------------------


def _inflate(decompressor: Any, data: bytes) -> Iterator[bytes]:
    """What ``data`` inflates to, at most :data:`_PIECE` bytes at a time, until it is
    used up or the member ends (then ``decompressor.unused_data`` holds the rest)."""
    while not decompressor.eof:
        out = decompressor.decompress(data, _PIECE)
        if not out:  # the output was not full: every byte of input was used
            return
        data = decompressor.unconsumed_tail
        yield out


class _Lines:
    """Splits inflated pieces into lines; a line longer than ``limit`` is dropped whole
    (counted in :attr:`too_long`) without ever being held."""

    __slots__ = ("discarding", "limit", "parts", "size", "too_long")

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.discarding = False
        self.too_long = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes, in order."""
        lines = data.split(b"\n")
        tail = lines.pop()
        if lines:
            if self.discarding:  # the end of an over-long line
                self.discarding = False
                del lines[0]
            elif self.parts:
                self.parts.append(lines[0])
                whole = b"".join(self.parts)
                self.parts.clear()
                self.size = 0
                if len(whole) > self.limit:
                    self.too_long += 1
                    del lines[0]
                else:
                    lines[0] = whole
        if tail and not self.discarding:
            self.parts.append(tail)
            self.size += len(tail)
            if self.size > self.limit:
                self.parts.clear()
                self.size = 0
                self.discarding = True
                self.too_long += 1
        return lines

    def rest(self) -> bytes:
        """The unfinished last line (none while an over-long one is dropped)."""
        return b"".join(self.parts)


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
        splitter = _Lines()
        with open(self.path, "rb") as f:
            try:
                for piece in self._pieces(f):
                    for line in splitter.feed(piece):
                        if index >= 0:
                            yield index, line
                        index += 1
            except (EOFError, zlib.error, OSError) as exc:
                self.ended_early = str(exc)
                if splitter.rest():
                    self.skipped["truncated last line"] += 1
                log.warning(
                    "%s: recording ends early after record %d (%s)",
                    self.path,
                    index - 1,
                    exc,
                )
        self._count_too_long(splitter)
        rest = splitter.rest()
        if rest.strip() and index >= 0 and self.ended_early is None:
            yield index, rest

    def _count_too_long(self, splitter: _Lines) -> None:
        if splitter.too_long:
            self.skipped[_TOO_LONG] += splitter.too_long
            log.warning(
                "%s: %d lines longer than %d bytes skipped",
                self.path,
                splitter.too_long,
                MAX_LINE_BYTES,
            )
            splitter.too_long = 0

    def _pieces(self, f: BinaryIO) -> Iterator[bytes]:
        """The file inflated, every member in turn, a bounded piece at a time."""
        decompressor = zlib.decompressobj(_ANY_ZLIB)
        fed = False  # the current decompressor has had input
        while chunk := f.read(_CHUNK):
            self.position += len(chunk)
            data = chunk
            while data:
                fed = True
                yield from _inflate(decompressor, data)
                if not decompressor.eof:
                    break
                data = decompressor.unused_data  # another gzip member follows
                decompressor = zlib.decompressobj(_ANY_ZLIB)
                fed = False
        if fed and not decompressor.eof:
            raise EOFError("compressed stream ends before its end marker")


class ProductReader:
    """The records of some products, as :data:`Chunk` s, reading only their blocks.

    ``starts`` maps each wanted product to the index of its first record wanted: a block
    wholly before it is skipped unread too (a resumed replay). Lines of unmarked members
    (a version 1 recording) are all decompressed; each line's product is found by
    :func:`recording.format.match_record_start`, or by parsing a line of another shape.
    """

    def __init__(
        self, path: str | os.PathLike, starts: dict[str, int], *, quiet: bool = False
    ) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.position = 0
        """Compressed bytes read or skipped so far."""
        self._log = _QUIET if quiet else log
        self._starts = {p.encode(): start for p, start in starts.items()}
        self._counts = dict.fromkeys(self._starts, 0)
        self.blocks_read = 0
        self.blocks_skipped = 0
        self.skipped: Counter[str] = Counter()
        self.ended_early: str | None = None
        self._bad = RateLimitedLog(self._log)

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

    def _block(
        self, f: BinaryIO, position: int, marker: BlockMarker
    ) -> Generator[Chunk, None, int | None]:
        product, records = marker.product, marker.records
        cut_off = position + marker.size > self.size
        problem = marker.implausible()
        if problem is None and cut_off:
            following = self._next_block(f, position + 1)
            if following is not None:  # not the file's cut-off end: a forged length
                problem = (
                    f"claims {marker.size:,} bytes, past the end of the file, and "
                    f"another block starts at byte {following}"
                )
        if problem is not None:
            why = f"a block marker at byte {position} {problem}"
            return self._damaged(f, position, why, "block")
        product_id = marker.product_id
        if product_id is None:
            self.skipped["blocks of a malformed product id"] += 1
            self._bad.warning(
                "%s: a block at byte %d is of %s, not a product id; skipped",
                self.path,
                position,
                shown(repr(product)),
            )
            return position + marker.size
        first = self._counts.get(product)
        if first is None or first + records <= self._starts[product]:
            if first is not None:
                self._counts[product] = first + records
            self.blocks_skipped += 1
            return position + marker.size
        f.seek(position)
        data = f.read(marker.size)
        self.blocks_read += 1
        if cut_off:  # the file ends inside this block: its whole lines, then the end
            lines, _ = self._inflate_block(data, records, whole=False)
            self._end_early(f"the file ends inside a block of {product_id}")
            self._counts[product] = first + len(lines)
            if lines:
                yield product, first, lines
            return None
        lines, why = self._inflate_block(data, records, whole=True)
        if why is not None:
            self.skipped["records in damaged blocks"] += records
            self._counts[product] = first + records
            self._bad.warning(
                "%s: a block of %d %s records at byte %d is damaged (%s); skipped",
                self.path,
                records,
                product_id,
                position,
                why,
            )
            return position + marker.size
        self._counts[product] = first + records
        yield product, first, lines
        return position + marker.size

    def _inflate_block(
        self, data: bytes, records: int, *, whole: bool
    ) -> tuple[list[bytes], str | None]:
        """A block's lines and None, or ``([], why)`` when it is damaged: it inflates to
        more than :data:`MAX_BLOCK_TEXT` bytes or more lines than ``records``, or (with
        ``whole``) its deflate data is bad or ends early. Without ``whole`` (a cut-off
        block), the whole lines it holds before the cut or the damage."""
        decompressor = zlib.decompressobj(_GZIP)
        pieces: list[bytes] = []
        size = lines = 0
        why = None
        try:
            for piece in _inflate(decompressor, data):
                size += len(piece)
                lines += piece.count(b"\n")
                if size > MAX_BLOCK_TEXT:
                    return [], f"it inflates to more than {MAX_BLOCK_TEXT:,} bytes"
                if lines > records:
                    return [], f"it holds more than the {records:,} records it claims"
                pieces.append(piece)
            if not decompressor.eof:
                why = "its compressed data ends before its end marker"
        except zlib.error as exc:
            why = str(exc)
        if why is not None and whole:
            return [], why
        text = b"".join(pieces)
        del pieces
        found = text.split(b"\n")
        if found.pop():
            self.skipped["truncated last line"] += 1
        return found, None

    # -- unmarked members ---------------------------------------------------------------

    def _member(
        self, f: BinaryIO, position: int, header_pending: bool
    ) -> Generator[Chunk, None, int | None]:
        """Stream an unmarked gzip member; where the next member starts (None: the end)."""
        f.seek(position)
        decompressor = zlib.decompressobj(_GZIP)
        consumed = position
        splitter = _Lines()
        try:
            while not decompressor.eof:
                chunk = f.read(_CHUNK)
                if not chunk:
                    raise EOFError("compressed stream ends before its end marker")
                consumed += len(chunk)
                for piece in _inflate(decompressor, chunk):
                    lines = splitter.feed(piece)
                    if header_pending and lines:
                        lines = lines[1:]
                        header_pending = False
                    yield from self._route(lines)
                self.position = consumed
        except (EOFError, zlib.error) as exc:
            if splitter.rest():
                self.skipped["truncated last line"] += 1
            return self._damaged(f, position, str(exc))
        finally:
            if splitter.too_long:
                self.skipped[_TOO_LONG] += splitter.too_long
                self._bad.warning(
                    "%s: %d lines longer than %d bytes; skipped",
                    self.path,
                    splitter.too_long,
                    MAX_LINE_BYTES,
                )
        rest = splitter.rest()
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
            product = product_id.encode("utf-8", "surrogatepass")
            if product in counts:
                found.setdefault(product, []).append(record)
        for product, items in found.items():
            first = counts[product]
            counts[product] = first + len(items)
            yield product, first, items

    # -- damage -------------------------------------------------------------------------

    def _damaged(
        self, f: BinaryIO, position: int, why: str, what: str = "stretch"
    ) -> int | None:
        """The next block after damage at ``position``, or None (the reading ends)."""
        following = self._next_block(f, position + 1)
        if following is None:
            self._end_early(why)
            return None
        if what == "block":
            self.skipped["blocks with an impossible length"] += 1
        else:
            self.skipped["damaged stretches of the file"] += 1
        self._bad.warning(
            "%s: %s%s; reading goes on at the next block, byte %d",
            self.path,
            why,
            "" if what == "block" else f" at byte {position}",
            following,
        )
        return following

    def _next_block(self, f: BinaryIO, position: int) -> int | None:
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
        self._log.warning("%s: recording ends early (%s)", self.path, why)

    def _skip(self, why: str) -> None:
        self.skipped[why] += 1
        self._bad.warning("%s: a line is %s; skipped", self.path, why)
