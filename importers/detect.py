"""Which foreign format a file holds, from its content, never its name.

The first bytes say the compression (gzip and zstd magic numbers); the first non-blank
line of the decompressed text says the format:

* ``exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount``: a
  tardis.dev ``incremental_book_L2`` CSV (:mod:`importers.tardis`);
* a JSON object with ``"t": "header"`` and ``"format": 2``: a cryptofeed v3 capture
  (``EXCHANGE.jsonl.zst``, :mod:`importers.cryptofeed`);
* ``configuration: {...}``, ``<address> <-> <time>``, ``<address> <- <time>: ...``,
  ``<url> -> <time>: ...`` or ``<time>: ...``: a cryptofeed 2.x raw capture
  (``COINBASE.ws.28.0``).

Anything else is refused with one line naming what the file looked like (an empty file,
binary data, other JSON, another tardis data type, this project's own recording, text
starting with ...), foreign text escaped and cut by :func:`common.text.shown`.
"""

from __future__ import annotations

import codecs
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson
import zstandard

from common.text import shown
from importers.inputs import GZIP, PLAIN, compression_of

TARDIS_L2 = "tardis-incremental-l2"
CRYPTOFEED_RAW = "cryptofeed-raw"
CRYPTOFEED_CAPTURE = "cryptofeed-capture"
FORMATS = (TARDIS_L2, CRYPTOFEED_RAW, CRYPTOFEED_CAPTURE)
DESCRIPTIONS = {
    TARDIS_L2: "tardis.dev incremental_book_L2 CSV",
    CRYPTOFEED_RAW: "cryptofeed 2.x raw capture",
    CRYPTOFEED_CAPTURE: "cryptofeed v3 capture",
}

TARDIS_L2_HEADER = (
    "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"
)
_TARDIS_PREFIX = "exchange,symbol,timestamp,local_timestamp,"
CAPTURE_FORMAT = 2
"""The cryptofeed capture header's ``format`` this version reads."""

_NUMBER = r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
RAW_CONNECT = re.compile(rf"(\S+) <-> ({_NUMBER})")
RAW_SENT = re.compile(rf"(\S+) <- ({_NUMBER}): ")
RAW_HTTP = re.compile(rf"(\S+) -> ({_NUMBER}): ")
RAW_RECEIVED = re.compile(rf"({_NUMBER}): ")
RAW_CONFIGURATION = "configuration: "

_SNIFF_BYTES = 1 << 20
"""Compressed bytes read to find the first line (a capture's configuration line may be
long; 1 MiB holds any real one)."""
_ACCEPTS = (
    "it imports tardis.dev incremental_book_L2 CSV (.csv, .csv.gz), cryptofeed 2.x raw "
    "captures and cryptofeed v3 captures (.jsonl.zst)"
)


OWN_RECORDING = "already a recording of this project (replay it as it is)"
"""What :func:`classify` says of a recording made by ``python -m recording``."""


class ImportFormatError(ValueError):
    """A file no importer reads; the message is one line naming what it looked like,
    ``why`` that look alone (:data:`OWN_RECORDING` for this project's recording)."""

    def __init__(self, message: str, why: str = "") -> None:
        super().__init__(message)
        self.why = why


@dataclass(frozen=True, slots=True)
class Detected:
    path: Path
    format: str
    compression: str
    first_line: str


def detect(path: str | os.PathLike) -> Detected:
    """The format of ``path``, or :class:`ImportFormatError` (one line)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as exc:
        raise ImportFormatError(
            f"{shown(path)}: cannot be read ({shown(exc.strerror or exc)})"
        ) from None
    compression = compression_of(head)
    text, problem = _decompressed_start(head, compression)
    if problem:
        raise ImportFormatError(
            f"{shown(path)}: not importable: {problem}; {_ACCEPTS}", problem
        )
    line = _first_line(text)
    kind, why = (None, "binary data") if _is_binary(text) else classify(line)
    if kind is None:
        where = "" if compression == PLAIN else f"{compression}-compressed "
        raise ImportFormatError(
            f"{shown(path)}: not importable: {where}{why}; {_ACCEPTS}", why
        )
    return Detected(path, kind, compression, line)


def _decompressed_start(head: bytes, compression: str) -> tuple[bytes, str]:
    if not head:
        return b"", "an empty file"
    if compression == PLAIN:
        return head, ""
    try:
        if compression == GZIP:
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
        else:
            data = zstandard.ZstdDecompressor().decompressobj().decompress(head)
    except (zlib.error, zstandard.ZstdError) as exc:
        return b"", f"{compression} data that does not decompress ({shown(exc)})"
    if not data:
        return b"", f"{compression} data with nothing in it"
    return data, ""


def _is_binary(data: bytes) -> bool:
    """NUL bytes, or bytes that are not UTF-8, in the first KiB."""
    start = data[:1024]
    if b"\x00" in start:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(start, final=False)
    except UnicodeDecodeError:
        return True
    return False


def _first_line(data: bytes) -> str:
    for raw in data.split(b"\n", 64)[:64]:
        if raw.strip():
            return raw.rstrip(b"\r").decode("utf-8", "replace").lstrip("\ufeff")
    return ""


def classify(line: str) -> tuple[str | None, str]:
    """``(format, "")`` for a first line an importer reads, else ``(None, what it
    looks like)``."""
    if not line:
        return None, "no text in its first lines"
    if "\ufffd" in line[:200] or "\x00" in line[:200]:
        return None, "binary data"
    if line.startswith(_TARDIS_PREFIX):
        if line.strip() == TARDIS_L2_HEADER:
            return TARDIS_L2, ""
        return None, (
            "a tardis.dev CSV of another data type (columns "
            f"'{shown(line[len(_TARDIS_PREFIX) :], 60)}'): only incremental_book_L2 "
            "rebuilds a whole book"
        )
    if line.startswith(("{", "[")):
        return _classify_json(line)
    if (
        line.startswith(RAW_CONFIGURATION)
        or RAW_CONNECT.fullmatch(line)
        or RAW_SENT.match(line)
        or RAW_HTTP.match(line)
        or RAW_RECEIVED.match(line)
    ):
        return CRYPTOFEED_RAW, ""
    if "," in line and "{" not in line:
        return None, f"a CSV with columns '{shown(line, 60)}'"
    return None, f"text starting '{shown(line, 60)}'"


def _classify_json(line: str) -> tuple[str | None, str]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, f"text starting '{shown(line, 60)}' (not JSON)"
    if not isinstance(value, dict):
        return None, "JSON that is not an object"
    if value.get("t") == "header":
        if value.get("format") == CAPTURE_FORMAT:
            return CRYPTOFEED_CAPTURE, ""
        return None, (
            f"a cryptofeed capture of format {shown(value.get('format'), 20)}, this "
            f"version reads format {CAPTURE_FORMAT}"
        )
    if value.get("format") == "coinbase-l2-recording":
        return None, OWN_RECORDING
    keys = ", ".join(shown(k, 20) for k in list(value)[:6])
    return None, f"JSON lines of another kind (keys {keys})"
