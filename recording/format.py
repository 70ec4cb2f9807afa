"""The recording format: its header, its records, and the block marker, each parsed beside
the code that writes it. Writing is :mod:`recording.writer`, reading :mod:`recording.reader`.

A recording is a gzip file of JSON lines (``zcat`` shows it, :func:`gzip.open` reads it):

* line 1, a header: ``{"format": "coinbase-l2-recording", "version": 2, "protocol":
  "exchange"|"advanced-trade", "feed": ..., "url": ..., "products": [...], "started": ISO}``;
* then one line per received frame: ``{"t_ns": <time.time_ns() at receive>, "product_id":
  <the product of the connection it came on>, "frame": <the frame's text exactly as
  received>}``;
* and one line per (re)connection: ``{"t_ns": ..., "product_id": ..., "event":
  "connected"}``, so that a replay knows the stream starts afresh there (Advanced Trade
  sequence numbers restart, a new snapshot follows);
* with REST audits recorded (``python -m recording --audit-interval S``; the header then
  says ``"audits": {"interval": S, "levels": N}``), two more kinds, written in the
  product's stream order by the same scheduler and settle rule as the live service's
  (:mod:`coinbase.audit`): ``{"t_ns": <the REST request sent>, "product_id": ...,
  "event": "audit_requested"}`` where the live source puts its
  :class:`events.AuditStarted`, and, where it puts the answering
  :class:`events.BookAudit` (the reply plus the 1 s settle window), ``{"t_ns": ...,
  "product_id": ..., "audit": {"levels": N, "requested_ns": ..., "replied_ns": ...,
  "bids": [["price", "size"], ...], "asks": [...]}}``, the best ``levels`` a side best
  first as the exact strings of the REST reply, or ``"failure": "HTTP 429"`` (or
  ``"timeout"``, ``"not JSON"``...) instead of ``bids`` and ``asks``. A replay turns them
  back into those two events at their place, so its book step repeats the live run's
  comparisons (:mod:`recording.replay`). Readers that predate them skip both kinds
  and count them (``an unknown event``, ``a record without a frame``), and so does the
  local exchange serving a recording: no version bump.

Frames are kept as the exact text received, so a replay exercises the real parsers.

Blocks (version 2). After the header's own gzip member, records are written in *blocks*:
each a gzip member holding records of one product only, in receive order, with a marker in
the member's extra field (RFC 1952, FEXTRA, subfield ``OB``) that names the product, the
member's length and its record count; a header CRC (FHCRC) guards the marker. A reader that
wants some products reads each member's first bytes and seeks past the others unread, so a
process replaying two products of four decompresses half the file (measured on the
benches' 200,000-message, 4-product recording: 49% and 51% of its bytes for the two
processes of ``-p 2``; the blocks make the file 0.9% larger than one gzip stream). Lines of one product
stay in receive order; lines of different products are grouped by block, not interleaved
line by line. Version 1 recordings (one gzip stream, lines in receive order) are read too,
by parsing each line's product from its first bytes, as are files mixing both (version 2
blocks appended to a version 1 file).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from common.domain import DomainError, is_product_id, price, size
from common.text import shown
from events import BookAudit

FORMAT = "coinbase-l2-recording"
VERSION = 2
READABLE_VERSIONS = (1, 2)
CONNECTED = "connected"
AUDIT_REQUESTED = "audit_requested"
AUDIT = "audit"
MAX_AUDIT_LEVELS = 1000
"""Levels a side an audit record may hold (``ORDERBOOK_AUDIT_LEVELS``' bound)."""
PROTOCOLS = ("exchange", "advanced-trade")


class RecordingError(ValueError):
    """The file is not a recording this version can read."""


# --- bounds ------------------------------------------------------------------------------

MAX_BLOCK_TEXT = 64 * 2**20
"""Decompressed bytes one block may hold; a block that inflates to more is damaged (a gzip
bomb: 306 KB of file inflated to 650 MB of memory before this bound).

The writer closes a block once it holds 256 KiB, so a real block is 256 KiB plus its last
record; the largest real record is a full-depth BTC-USD snapshot, about 5 MB of frame and
5.8 MB as its JSON-escaped line: the largest real block is about 6 MB, and this bound is
ten times that. The recorder takes frames of up to :data:`MAX_RECORDED_FRAME` bytes so
that every block it writes is read back."""
MAX_LINE_BYTES = MAX_BLOCK_TEXT
"""The longest record line read from a version 1 stream (no block bounds it): a longer one
is skipped and counted, and reading goes on at the next line."""
MAX_RECORDED_FRAME = 48 * 2**20
"""The largest frame the recorder accepts: its line (JSON escaping adds about 16% to a
snapshot's text) still fits in a block of :data:`MAX_BLOCK_TEXT`."""
MAX_HEADER_BYTES = 1 << 20
"""The header line's bound: a header of 10,000 products is about 150 KB."""
MIN_RECORD_BYTES = 40
"""No line the writer writes is shorter (a ``connected`` record is 50 bytes or more): a
block whose marker claims more than ``MAX_BLOCK_TEXT // MIN_RECORD_BYTES`` records, or
that holds more lines than its marker says, is damaged."""


# --- the header --------------------------------------------------------------------------


def header_record(header: dict[str, Any]) -> dict[str, Any]:
    """The first line of a new recording: format and version, then ``header``."""
    return {"format": FORMAT, "version": VERSION, **header}


def check_header(header: Any, name: str) -> dict[str, Any]:
    """``header`` if it is a header this version reads; else a one-line RecordingError."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordingError(f"{name}: first line is not a {FORMAT} header")
    if header.get("version") not in READABLE_VERSIONS:
        raise RecordingError(
            f"{name}: version {shown(repr(header.get('version')))}, this version reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}"
        )
    if header.get("protocol") not in PROTOCOLS:
        raise RecordingError(
            f"{name}: unknown protocol {shown(repr(header.get('protocol')))}"
        )
    products = header.get("products", [])
    if not isinstance(products, list) or not all(isinstance(p, str) for p in products):
        raise RecordingError(f"{name}: header 'products' is not a list of ids")
    bad = [p for p in products if not is_product_id(p)]
    if bad:
        # A product id names output files and directories and reaches logs and pages:
        # '../../x' or an ANSI escape in a header must stop here.
        raise RecordingError(
            f"{name}: the header's products include {shown(repr(bad[0]))}, not a "
            "product id such as BTC-USD"
        )
    return header


# --- records -----------------------------------------------------------------------------


def frame_record(product_id: str, text: str, t_ns: int) -> bytes:
    """A frame's line, ``t_ns`` and ``product_id`` first so :func:`product_of_line` works."""
    return orjson.dumps({"t_ns": t_ns, "product_id": product_id, "frame": text}) + b"\n"


def connected_record(product_id: str, t_ns: int) -> bytes:
    """A (re)connection's line: a replay resets the product's book there."""
    return (
        orjson.dumps({"t_ns": t_ns, "product_id": product_id, "event": CONNECTED})
        + b"\n"
    )


def audit_requested_record(product_id: str, t_ns: int) -> bytes:
    """A REST audit's request left at ``t_ns``: a replay's :class:`events.AuditStarted`."""
    return (
        orjson.dumps({"t_ns": t_ns, "product_id": product_id, "event": AUDIT_REQUESTED})
        + b"\n"
    )


def audit_record(event: BookAudit, t_ns: int) -> bytes:
    """A :class:`events.BookAudit` as it entered the product's stream at ``t_ns``: the
    REST book's levels as the exact strings parsed (``str`` of a Decimal keeps them), or
    its failure."""
    audit: dict[str, Any] = {
        "levels": event.levels,
        "requested_ns": event.requested_ns,
        "replied_ns": event.replied_ns,
    }
    if event.failure is not None:
        audit["failure"] = event.failure
    else:
        audit["bids"] = [[str(p), str(s)] for p, s in event.bids]
        audit["asks"] = [[str(p), str(s)] for p, s in event.asks]
    record = {"t_ns": t_ns, "product_id": event.product_id, AUDIT: audit}
    return orjson.dumps(record) + b"\n"


def _levels(value: Any, levels: int, side: str) -> list[tuple[Decimal, Decimal]]:
    if not isinstance(value, list) or len(value) > levels:
        raise DomainError(f"its {side} are not a list of at most {levels} levels")
    out = []
    for level in value:
        if not isinstance(level, list) or len(level) != 2:
            raise DomainError(f"its {side} hold a level that is not [price, size]")
        out.append((price(level[0]), size(level[1])))
    return out


def audit_of(record: dict[str, Any], product_id: str, feed: str) -> BookAudit | str:
    """The :class:`events.BookAudit` of an audit record, or why it is not one (one line:
    the replay skips and counts it). Prices and sizes must be in the number domain of
    :mod:`common.domain`, as the live REST parser's are."""
    audit = record.get(AUDIT)
    if not isinstance(audit, dict):
        return "an audit record that is not an object"
    levels = audit.get("levels")
    times = (audit.get("requested_ns"), audit.get("replied_ns"), record.get("t_ns"))
    if type(levels) is not int or not 1 <= levels <= MAX_AUDIT_LEVELS:
        return f"an audit record without levels from 1 to {MAX_AUDIT_LEVELS}"
    if not all(type(t) is int and t >= 0 for t in times):
        return "an audit record without integer times"
    failure = audit.get("failure")
    if failure is not None:
        if not isinstance(failure, str):
            return "an audit record whose failure is not text"
        bids: list = []
        asks: list = []
    else:
        try:
            bids = _levels(audit.get("bids"), levels, "bids")
            asks = _levels(audit.get("asks"), levels, "asks")
        except DomainError as exc:
            return f"an audit record whose REST book is bad ({shown(str(exc), 120)})"
    return BookAudit(
        product_id,
        feed,
        bids,
        asks,
        levels,
        times[0],
        times[1],
        shown(failure, 200) if failure is not None else None,
        times[2],
    )


_RECORD_START = re.compile(rb'\{"t_ns":\d{1,20},"product_id":"([^"\\]{1,80})"')
match_record_start = _RECORD_START.match
"""``match_record_start(line)[1]`` is the product id of a line the writer wrote."""


def product_of_line(line: bytes) -> bytes | None:
    """The product id of a record line written by the writer, without parsing.

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


def frame_of(item: bytes | dict[str, Any]) -> str | None:
    """The frame text of a record (its line, or the record parsed), else None."""
    record = parse_record(item)[0] if isinstance(item, bytes) else item
    frame = record.get("frame") if record is not None else None
    return frame if isinstance(frame, str) else None


def protocol_of_frame(frame: str | bytes) -> str | None:
    """The protocol a frame's shape belongs to, or None (not JSON, an error reply, neither).

    Exchange frames say ``"type"`` and no ``"channel"``; Advanced Trade frames say
    ``"channel"`` and no ``"type"`` (its error replies say ``"type": "error"``, like the
    Exchange's, so those give None). Used to tell a frame of the other protocol from a
    damaged one: a header naming the wrong protocol makes every frame unreadable.
    """
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if type(message) is not dict:
        return None
    kind, channel = message.get("type"), message.get("channel")
    if type(kind) is str and channel is None and kind != "error":
        return "exchange"
    if type(channel) is str and kind is None:
        return "advanced-trade"
    return None


# --- blocks ------------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b\x08"
_FEXTRA = 0x04
_FHCRC = 0x02
_SUBFIELD = b"OB"
_OS_UNKNOWN = 255
_MARKER = struct.Struct("<II")  # member length, record count; the product id follows
MAX_PRODUCT_BYTES = 200
FIXED_HEADER = 12
"""Bytes of a member to read before :func:`block_header_length` can say how many more."""
BLOCK_SIGNATURE = re.compile(
    re.escape(GZIP_MAGIC) + bytes([_FEXTRA | _FHCRC]) + rb".{8}" + re.escape(_SUBFIELD),
    re.DOTALL,
)
"""Where a block may start: found to go on reading after a damaged member."""


MAX_BLOCK_BYTES = MAX_BLOCK_TEXT + MAX_BLOCK_TEXT // 1000 + 1024
"""The longest block a marker may claim: :data:`MAX_BLOCK_TEXT` stored uncompressed
(deflate adds 5 bytes per 64 KiB to data it cannot compress), its header and trailer."""
MAX_BLOCK_RECORDS = MAX_BLOCK_TEXT // MIN_RECORD_BYTES


@dataclass(frozen=True, slots=True)
class BlockMarker:
    """What a block's gzip header says about it."""

    size: int
    """The whole member's length in bytes, header to trailer: where the next one starts."""
    records: int
    product: bytes

    def implausible(self) -> str | None:
        """Why no writer wrote this marker (its header CRC matched: a forged or
        recomputed one), or None. Such a block is damage, skipped like a damaged one."""
        if self.size > MAX_BLOCK_BYTES:
            return (
                f"claims {self.size:,} bytes (a block has at most {MAX_BLOCK_BYTES:,})"
            )
        if self.records > MAX_BLOCK_RECORDS:
            return f"claims {self.records:,} records (a block has at most {MAX_BLOCK_RECORDS:,})"
        return None

    @property
    def product_id(self) -> str | None:
        """The product id it names, or None when that is not a product id."""
        text = self.product.decode("ascii", "replace")
        return text if is_product_id(text) else None


def encode_block(product: str, lines: bytes, records: int, level: int = 6) -> bytes:
    """One gzip member holding ``lines`` (whole records of ``product``), marked.

    The member is standard gzip: any gzip reader decompresses it, and the marker is an
    extra-field subfield other readers skip.
    """
    product_bytes = product.encode()
    if not 0 < len(product_bytes) <= MAX_PRODUCT_BYTES:
        raise ValueError(f"product id of {len(product_bytes)} bytes cannot be marked")
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(lines) + compressor.flush()
    trailer = struct.pack("<II", zlib.crc32(lines), len(lines) & 0xFFFFFFFF)
    payload_length = _MARKER.size + len(product_bytes)
    extra_length = 4 + payload_length
    size = FIXED_HEADER + extra_length + 2 + len(body) + len(trailer)
    head = (
        GZIP_MAGIC
        + bytes([_FEXTRA | _FHCRC])
        + b"\0\0\0\0"  # no modification time
        + bytes([0, _OS_UNKNOWN])
        + struct.pack("<H", extra_length)
        + _SUBFIELD
        + struct.pack("<H", payload_length)
        + _MARKER.pack(size, records)
        + product_bytes
    )
    header_crc = struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    return head + header_crc + body + trailer


def block_header_length(first: bytes) -> int | None:
    """From a member's first :data:`FIXED_HEADER` bytes: its header's length if it is
    marked as a block, else None (another gzip member, or not gzip at all)."""
    if len(first) < FIXED_HEADER or first[:3] != GZIP_MAGIC:
        return None
    if first[3] != _FEXTRA | _FHCRC:
        return None
    (extra_length,) = struct.unpack_from("<H", first, 10)
    return FIXED_HEADER + extra_length + 2


def parse_block_header(head: bytes) -> BlockMarker | None:
    """The marker of a block's whole header (:func:`block_header_length` bytes), or None
    when it is not one of ours or its header CRC does not match (damage)."""
    length = block_header_length(head)
    if length is None or len(head) < length:
        return None
    (crc,) = struct.unpack_from("<H", head, length - 2)
    if zlib.crc32(head[: length - 2]) & 0xFFFF != crc:
        return None
    extra = head[FIXED_HEADER : length - 2]
    at = 0
    while at + 4 <= len(extra):
        (sub_length,) = struct.unpack_from("<H", extra, at + 2)
        data = extra[at + 4 : at + 4 + sub_length]
        if extra[at : at + 2] == _SUBFIELD and len(data) > _MARKER.size:
            size, records = _MARKER.unpack_from(data)
            if size > length:
                return BlockMarker(size, records, bytes(data[_MARKER.size :]))
            return None
        at += 4 + sub_length
    return None
