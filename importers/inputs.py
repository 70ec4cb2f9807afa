"""Reading a foreign file's lines: plain, gzip or zstd, found from the first bytes.

One reader for every importer, so that each treats a damaged or cut-off file alike: a
truncated compressed file (a download stopped, a capture killed mid-write) ends the lines
cleanly where the data ends, the partial last line dropped and counted, and
:attr:`Lines.ended_early` says why; nothing raises out of the iteration. gzip and zstd
files of several members/frames (appended captures, ``cat a.gz b.gz``) are read whole.

Lines are decompressed in 256 KiB chunks and split with :meth:`bytes.split` (about twice
as fast as iterating a ``gzip.GzipFile`` by line).
"""

from __future__ import annotations

import glob
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import zstandard

from common.text import shown

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 18
_GZIP = 16 + zlib.MAX_WBITS

PLAIN, GZIP, ZSTD = "plain", "gzip", "zstd"


def compression_of(first: bytes) -> str:
    """``gzip``, ``zstd`` or ``plain`` from a file's first bytes."""
    if first.startswith(GZIP_MAGIC):
        return GZIP
    if first.startswith(ZSTD_MAGIC):
        return ZSTD
    return PLAIN


class _Decompressor:
    """Streams one compression's members/frames one after another."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._one = self._new()

    def _new(self):
        if self.kind == GZIP:
            return zlib.decompressobj(_GZIP)
        return zstandard.ZstdDecompressor().decompressobj()

    def feed(self, chunk: bytes) -> bytes:
        data = self._one.decompress(chunk)
        while self._one.eof and self._one.unused_data:
            tail = self._one.unused_data  # another member/frame follows
            self._one = self._new()
            data += self._one.decompress(tail)
        return data

    @property
    def complete(self) -> bool:
        return bool(self._one.eof)


class Lines:
    """The lines of ``path`` as bytes without their ``\\n`` (a ``\\r`` before it is
    kept: callers strip), decompressed as its first bytes say.

    :attr:`position` is the compressed bytes consumed (for a progress bar beside
    :attr:`size`); :attr:`skipped` counts what could not be read; :attr:`ended_early`
    is None or why the file ended before its data did.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.position = 0
        self.skipped: Counter[str] = Counter()
        self.ended_early: str | None = None
        with open(self.path, "rb") as f:
            self.compression = compression_of(f.read(4))

    def __iter__(self) -> Iterator[bytes]:
        for block in self.blocks():
            yield from block.split(b"\n")

    def blocks(self) -> Iterator[bytes]:
        """The text in blocks of whole lines (no ``\\n`` at a block's end), for a scan
        of the whole file that needs no line by line loop (:func:`importers.tardis.
        snapshot_symbols`)."""
        rest = b""
        with open(self.path, "rb") as f:
            try:
                for data in self._pieces(f):
                    data = rest + data
                    cut = data.rfind(b"\n")
                    if cut < 0:
                        rest = data
                        continue
                    rest = data[cut + 1 :]
                    yield data[:cut]
            except (EOFError, zlib.error, zstandard.ZstdError) as exc:
                self.ended_early = str(exc) or type(exc).__name__
                if rest:
                    self.skipped["truncated last line"] += 1
                return
        if rest:
            yield rest  # a last line without its newline is still whole text

    def _pieces(self, f) -> Iterator[bytes]:
        """The file's text as it is read, decompressed as its first bytes say; raises
        when compressed data is damaged or ends before its end marker."""
        if self.compression == PLAIN:
            while chunk := f.read(_CHUNK):
                self.position += len(chunk)
                yield chunk
            return
        decompressor = _Decompressor(self.compression)
        while chunk := f.read(_CHUNK):
            self.position += len(chunk)
            if data := decompressor.feed(chunk):
                yield data
        if not decompressor.complete:
            raise EOFError("the compressed data ends before its end marker")


def expand(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """The files named by paths and globs, each once, in the order given (a glob's
    matches sorted); and a one-line complaint for each pattern that names nothing."""
    found: dict[Path, None] = {}
    missing: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern)) if Path(m).is_file()]
        else:
            matches = [Path(pattern)] if Path(pattern).is_file() else []
        if not matches:
            if glob.has_magic(pattern):
                what = "matches no file"
            elif os.path.exists(pattern):
                what = "is not a file"
            else:
                what = "names no such file"
            missing.append(f"'{shown(pattern)}' {what}")
        for match in matches:
            found.setdefault(match, None)
    return list(found), missing
