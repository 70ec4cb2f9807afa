"""cryptofeed's raw captures of Coinbase to recording items: 2.x text files and v3
``.jsonl.zst`` files.

cryptofeed 2.x (``raw_data_collection``) writes one text file per connection id, rotated
(``COINBASE.ws.28.0``, ``.1``, ...), a line per event::

    configuration: {...}                              (first file of a set only)
    wss://ws-feed.pro.coinbase.com <-> 1616161616.12  (the connection (re)opens)
    wss://ws-feed.pro.coinbase.com <- 1616161616.13: {"type": "subscribe", ...}
    1616161616.51: {"type": "snapshot", ...}          (a received frame)
    https://api.pro.coinbase.com/... -> 1616161616.2: {...}   (an HTTP reply)

cryptofeed v3 writes one zstd-compressed JSON-lines file per exchange: a header
``{"t": "header", "format": 2, "exchange": ..., "config": ..., "recorded": ...}``, then
records ``{"conn": ..., "ts": <unix s>, "t": "connect"|"send"|"recv"|"http", ...}`` with
the payload in ``data`` (text) or ``b64`` (binary).

Received frames are Coinbase's own JSON, Exchange feed (``snapshot``/``l2update``) or
Advanced Trade (``l2_data``). Each is decoded by the project's own decoder
(:class:`coinbase.decode.FrameDecoder`, one per connection, as live), which validates it
and, for Advanced Trade, checks ``sequence_num``. What becomes of a frame:

* a book frame of one product is recorded with its exact text;
* an Advanced Trade frame carrying several products' events is split into one frame per
  product (envelope kept, ``events`` filtered), re-serialized by orjson with the same
  keys in the same order; the writer renumbers ``sequence_num`` per product;
* other channels (ticker, matches, heartbeats, subscriptions) and error replies are
  counted and left out: the book ignores them;
* a ``connect`` resets the books of the products its connection carried (reason
  "connection"); an Advanced Trade ``sequence_num`` jump resets them (reason "gap"), as a
  live run would resync; a book frame the decoder refuses resets its product, or every
  product of the connection when the frame does not say which (reason "malformed").

A line that is not a capture line, or a v3 record that is not JSON, is skipped and
counted.
"""

from __future__ import annotations

import ast
import base64
import binascii
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson

from coinbase.decode import FrameDecoder
from coinbase.errors import FeedError, MalformedFrame, SequenceGap
from coinbase.feeds import ADVANCED_TRADE, EXCHANGE
from common.domain import is_product_id
from events import BookChanges, BookSnapshot
from importers.detect import (
    CAPTURE_FORMAT,
    CRYPTOFEED_CAPTURE,
    CRYPTOFEED_RAW,
    RAW_CONFIGURATION,
    RAW_CONNECT,
    RAW_HTTP,
    RAW_RECEIVED,
    RAW_SENT,
)
from importers.inputs import Lines
from importers.stream import (
    CONNECTION,
    GAP,
    MALFORMED,
    NEW_SNAPSHOT,
    Item,
    Streams,
    seconds_to_ns,
)

FEED = "cryptofeed"
DAMAGED = "damaged lines"
MALFORMED_FRAMES = "malformed book frames"
NOT_A_PRODUCT = "frames whose product id is not of Coinbase's shape"
_PRODUCT = re.compile(r'"product_id"\s*:\s*"([^"\\]{1,80})"')
_ERROR = re.compile(r'\{\s*"type"\s*:\s*"error"')
_KIND = re.compile(r'"(?:type|channel)"\s*:\s*"([a-z0-9_]{1,40})"')


class CoinbaseConnection:
    """One captured connection: its frames to items, its resets, its decoder."""

    def __init__(
        self, source: str, skipped: Counter, ignored: Counter, address: str = ""
    ) -> None:
        self.source = source
        self.skipped = skipped
        self.ignored = ignored
        """Frames left out on purpose, by type/channel (``ticker``, ``heartbeats``...)."""
        self.streams = Streams(source, FEED, skipped)
        self.products: set[str] = set()
        self.protocol: str | None = _protocol_of_address(address)
        self.decoder: FrameDecoder | None = None

    def connect(self, t_ns: int, address: str = "") -> Iterator[Item]:
        """The connection (re)opened: its products' books start afresh."""
        yield from self.streams.reset(t_ns, self.products, CONNECTION)
        self.decoder = None
        self.protocol = _protocol_of_address(address) or self.protocol

    def received(self, t_ns: int, text: str) -> Iterator[Item]:
        decoder = self.decoder
        if decoder is None:
            if _ERROR.match(text):  # both protocols reply errors alike: says neither
                self.ignored["error replies"] += 1
                return
            protocol = self.protocol or _protocol_of_frame(text)
            if protocol is None:
                self.skipped[None, "frames that are not Coinbase messages"] += 1
                return
            self.protocol = protocol
            decoder = self.decoder = FrameDecoder(protocol, FEED)
        try:
            events = decoder.decode(text, t_ns)
        except SequenceGap as gap:
            yield from self.streams.reset(t_ns, self.products, GAP)
            decoder.next_sequence = gap.got
            try:
                events = decoder.decode(text, t_ns)
            except SequenceGap:  # cannot happen: the number is now the expected one
                return
            except (MalformedFrame, FeedError) as exc:
                yield from self._refused(t_ns, text, exc)
                return
        except (MalformedFrame, FeedError) as exc:
            yield from self._refused(t_ns, text, exc)
            return
        if not events:
            kind = _KIND.search(text[:300])
            self.ignored[kind[1] if kind else "other"] += 1
            return
        if self.protocol == ADVANCED_TRADE:
            yield from self._advanced_trade(
                t_ns, text, events, decoder.next_sequence - 1
            )
        else:
            yield from self._one(t_ns, events[0], text, None)

    def _refused(self, t_ns: int, text: str, exc: Exception) -> Iterator[Item]:
        if isinstance(exc, MalformedFrame) and exc.resync:
            found = _PRODUCT.search(text[:2000])
            product = found[1] if found and found[1] in self.products else None
            self.skipped[product, MALFORMED_FRAMES] += 1
            affected = {product} if product else self.products
            yield from self.streams.reset(t_ns, affected, MALFORMED)
        elif isinstance(exc, MalformedFrame):
            self.skipped[None, "frames that are not Coinbase messages"] += 1
        else:
            self.ignored["error replies"] += 1

    def _one(self, t_ns: int, event, text: str, sequence: int | None):
        product = event.product_id
        if not is_product_id(product):
            self.skipped[None, NOT_A_PRODUCT] += 1
            return
        self.products.add(product)
        streams = self.streams
        if type(event) is BookSnapshot:
            if product in streams.live:
                yield from streams.reset(t_ns, (product,), NEW_SNAPSHOT)
            yield streams.snapshot(t_ns, event, text, sequence)
        elif type(event) is BookChanges:
            item = streams.update(t_ns, event, text, sequence)
            if item is not None:
                yield item

    def _advanced_trade(self, t_ns: int, text: str, events: list, sequence: int):
        if len(events) == 1 and text.count('"product_id"') == 1:
            yield from self._one(t_ns, events[0], text, sequence)
            return
        payload = orjson.loads(text)
        raw_events = [
            raw
            for raw in payload["events"]
            if raw["type"] == "snapshot" or raw["updates"]
        ]
        for event, raw in zip(events, raw_events, strict=True):
            split = orjson.dumps({**payload, "events": [raw]}).decode()
            yield from self._one(t_ns, event, split, sequence)


def _protocol_of_address(address: str) -> str | None:
    if "advanced-trade" in address:
        return ADVANCED_TRADE
    if "ws-feed" in address:
        return EXCHANGE
    return None


def _protocol_of_frame(text: str) -> str | None:
    """Advanced Trade messages name a ``channel``, Exchange-feed ones a ``type``."""
    head = text[:200]
    channel, kind = head.find('"channel"'), head.find('"type"')
    if channel >= 0 and (kind < 0 or channel < kind):
        return ADVANCED_TRADE
    if kind >= 0:
        return EXCHANGE
    return None


def _binary_text(text: str) -> str:
    """A 2.x line holds a binary frame as Python's ``b'...'``: its UTF-8 text."""
    value = ast.literal_eval(text)
    return value.decode() if isinstance(value, bytes) else str(value)


class RawCaptureReader:
    """A cryptofeed 2.x connection's files (one id, its rotations in order) as items.

    :attr:`skipped` counts ``(product or None, why)``; :attr:`ignored` the frames left
    out on purpose by type; :attr:`sent` the frames the client sent.
    """

    format = CRYPTOFEED_RAW

    def __init__(self, paths: list[str | os.PathLike], source: str = "0") -> None:
        self.paths = [Path(p) for p in paths]
        self.path = self.paths[0]
        self.source = source
        self.skipped: Counter = Counter()
        self.ignored: Counter = Counter()
        self.sent = 0
        self.configuration: str | None = None
        self.lines: list[Lines] = [Lines(p) for p in self.paths]
        self.connection = CoinbaseConnection(source, self.skipped, self.ignored)

    @property
    def protocol(self) -> str | None:
        return self.connection.protocol

    @property
    def ended_early(self) -> str | None:
        return next((x.ended_early for x in self.lines if x.ended_early), None)

    def __iter__(self) -> Iterator[Item]:
        connection = self.connection
        for lines in self.lines:
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                found = RAW_RECEIVED.match(line)
                try:
                    if found is not None:
                        text = line[found.end() :]
                        if text[:2] in ("b'", 'b"'):
                            text = _binary_text(text)
                        yield from connection.received(_positive(found[1]), text)
                    elif (found := RAW_CONNECT.fullmatch(line)) is not None:
                        yield from connection.connect(_positive(found[2]), found[1])
                    elif RAW_SENT.match(line):
                        self.sent += 1
                    elif RAW_HTTP.match(line):
                        self.ignored["http replies"] += 1
                    elif line.startswith(RAW_CONFIGURATION):
                        self.configuration = line[len(RAW_CONFIGURATION) :]
                    elif line.strip():
                        self.skipped[None, DAMAGED] += 1
                except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError):
                    self.skipped[None, DAMAGED] += 1
            for why, n in lines.skipped.items():
                self.skipped[None, why] += n


class CaptureReader:
    """A cryptofeed v3 capture (``.jsonl.zst``, or plain ``.jsonl``) as items: every
    connection (``conn``) of the file its own :class:`CoinbaseConnection`."""

    format = CRYPTOFEED_CAPTURE

    def __init__(self, path: str | os.PathLike, source: str = "0") -> None:
        self.lines = Lines(path)
        self.path = self.lines.path
        self.source = source
        self.skipped: Counter = Counter()
        self.ignored: Counter = Counter()
        self.sent = 0
        self.header: dict | None = None
        self.connections: dict[str, CoinbaseConnection] = {}

    @property
    def protocol(self) -> str | None:
        found = {c.protocol for c in self.connections.values() if c.protocol}
        return found.pop() if len(found) == 1 else None

    @property
    def ended_early(self) -> str | None:
        return self.lines.ended_early

    def _connection(self, conn: str) -> CoinbaseConnection:
        connection = self.connections.get(conn)
        if connection is None:
            connection = self.connections[conn] = CoinbaseConnection(
                f"{self.source}/{conn}", self.skipped, self.ignored
            )
        return connection

    def _record(self, record: dict) -> Iterator[Item]:
        kind = record["t"]
        conn = record["conn"]
        if type(conn) is not str:
            raise TypeError("conn")
        if kind == "recv":
            yield from self._connection(conn).received(
                _ns(record["ts"]), _payload(record)
            )
        elif kind == "connect":
            yield from self._connection(conn).connect(
                _ns(record["ts"]), str(record.get("addr") or "")
            )
        elif kind == "send":
            self.sent += 1
        elif kind == "http":
            self.ignored["http replies"] += 1
        else:
            self.skipped[None, "records of an unknown kind"] += 1

    def __iter__(self) -> Iterator[Item]:
        lines = iter(self.lines)
        for raw in lines:
            if raw.strip():
                self.header = _header(raw)
                if self.header is None:
                    self.skipped[None, "files without a capture header"] += 1
                    return
                exchange = self.header.get("exchange")
                if not (isinstance(exchange, str) and exchange.startswith("COINBASE")):
                    self.skipped[
                        None, "captures of another exchange than Coinbase"
                    ] += 1
                    return
                break
        for raw in lines:
            try:
                yield from self._record(orjson.loads(raw))
            except _DAMAGE:
                if raw.strip():
                    self.skipped[None, DAMAGED] += 1
        for why, n in self.lines.skipped.items():
            self.skipped[None, why] += n


_DAMAGE = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error)
"""What a damaged v3 record raises while it is read (a record that is not an object,
lacks a key, or holds a bad time or payload)."""


def _header(raw: bytes) -> dict | None:
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if (
        type(header) is not dict
        or header.get("t") != "header"
        or header.get("format") != CAPTURE_FORMAT
    ):
        return None
    return header


def _positive(text: str) -> int:
    """A 2.x line's time (unix seconds as text) to integer ns > 0."""
    t_ns = seconds_to_ns(text)
    if t_ns <= 0:
        raise ValueError("time")
    return t_ns


def _ns(ts) -> int:
    """A record's ``ts`` (unix seconds, a JSON number) to integer ns > 0."""
    if type(ts) is int:
        t_ns = ts * 1_000_000_000
    elif type(ts) is float:
        t_ns = seconds_to_ns(repr(ts))
    else:
        raise TypeError("ts")
    if t_ns <= 0:
        raise ValueError("ts")
    return t_ns


def _payload(record: dict) -> str:
    data = record.get("data")
    if type(data) is str:
        return data
    b64 = record.get("b64")
    if type(b64) is str:
        return base64.b64decode(b64, validate=True).decode()
    raise TypeError("payload")
