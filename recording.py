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

import argparse
import asyncio
import gzip
import io
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from coinbase_parse import FeedError, FrameDecoder, MalformedFrame, SequenceGap
from events import BookEvent, BookReset
from logging_utils import RateLimitedLog

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
        self._file = gzip.open(self.path, "wt", encoding="utf-8", compresslevel=6)  # noqa: SIM115 - closed by close()
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


# --- replay as a Bytewax source ----------------------------------------------------------


class ReplayPartition(StatefulSourcePartition[tuple[str, BookEvent], dict[str, int]]):
    """Emits the recording's events in file order, as fast as the dataflow takes them.

    One partition reads the file once for all products (a gzip file is one sequential
    stream; reading it once per product cost more than everything else of a replay). The
    books still spread over the workers: the book step is keyed per product.

    Resume state is, per product, the index of the record that started its current
    stream (its last connection). A resumed replay starts at the earliest of them, after
    a reset of every product, so each book is rebuilt from a snapshot in the file instead
    of resuming a stale one.
    """

    BATCH = 500

    def __init__(
        self,
        recording: Recording,
        products: list[str],
        feed_label: str,
        resume: dict[str, int] | None,
    ):
        self._feed = feed_label
        self._protocol = recording.protocol
        self._decoders = {p: FrameDecoder(self._protocol, feed_label) for p in products}
        self._stream_starts = dict.fromkeys(products, 0)
        if resume:
            self._stream_starts.update(
                {p: i for p, i in resume.items() if p in self._stream_starts}
            )
        self._records = recording.records(min(self._stream_starts.values(), default=0))
        self._pending: list[tuple[str, BookEvent]] = [
            (p, BookReset(p, "replay start", feed_label)) for p in products
        ]
        self._bad = RateLimitedLog(log)
        self.stats = {"frames": 0, "events": 0, "malformed": 0, "gaps": 0, "errors": 0}

    def next_batch(self) -> list[tuple[str, BookEvent]]:
        batch, self._pending = self._pending, []
        for index, record in self._records:
            product = record.get("product_id")
            decoder = self._decoders.get(product)
            if decoder is None:
                continue
            if record.get("event") == CONNECTED:
                self._stream_starts[product] = index
                self._decoders[product] = FrameDecoder(self._protocol, self._feed)
                batch.append((product, BookReset(product, "reconnected", self._feed)))
                continue
            batch.extend(self._decode(product, decoder, record))
            if len(batch) >= self.BATCH:
                return batch
        if batch:
            return batch
        raise StopIteration

    def _decode(
        self, product: str, decoder: FrameDecoder, record: dict[str, Any]
    ) -> list[tuple[str, BookEvent]]:
        frame = record.get("frame")
        if not isinstance(frame, str):
            self.stats["malformed"] += 1
            return []
        self.stats["frames"] += 1
        try:
            events = decoder.decode(frame, int(record.get("t_ns") or 0))
        except MalformedFrame as exc:
            self.stats["malformed"] += 1
            self._bad.warning("%s: malformed frame skipped: %s", product, exc)
            if exc.resync:
                return [(product, BookReset(product, "malformed frame", self._feed))]
            return []
        except SequenceGap as exc:
            self.stats["gaps"] += 1
            self._bad.warning("%s: %s in the recording; book reset", product, exc)
            return [(product, BookReset(product, "sequence gap", self._feed))]
        except FeedError as exc:
            self.stats["errors"] += 1
            self._bad.warning("%s: recorded error reply: %s", product, exc)
            return []
        self.stats["events"] += len(events)
        return [(e.product_id, e) for e in events if e.product_id == product]

    def snapshot(self) -> dict[str, int]:
        return dict(self._stream_starts)


class ReplaySource(FixedPartitionedSource[tuple[str, BookEvent], dict[str, int]]):
    """A recording as a finite Bytewax source: one partition, ends at the file's end."""

    PARTITION = "replay"

    def __init__(
        self,
        path: str | os.PathLike,
        products: list[str] | None = None,
        feed_label: str = "replay",
    ) -> None:
        self.recording = Recording.open(path)
        recorded = self.recording.products
        if products is None:
            self.products = recorded
        else:
            missing = [p for p in products if p not in recorded]
            if missing:
                raise RecordingError(
                    f"{self.recording.path} has no {', '.join(missing)}; "
                    f"it recorded {', '.join(recorded) or 'nothing'}"
                )
            self.products = list(products)
        self.feed_label = feed_label

    def list_parts(self) -> list[str]:
        return [self.PARTITION]

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, int] | None
    ) -> ReplayPartition:
        return ReplayPartition(
            self.recording, self.products, self.feed_label, resume_state
        )


# --- the recorder ------------------------------------------------------------------------


async def _record_product(
    writer: RecordingWriter,
    url: str,
    feed: str,
    product_id: str,
    credentials,
    stop: asyncio.Event,
) -> None:
    import websockets

    from coinbase_source import MAX_FRAME_BYTES, subscribe_messages

    delay = 0.25
    while not stop.is_set():
        try:
            async with websockets.connect(
                url, max_size=MAX_FRAME_BYTES, open_timeout=10
            ) as ws:
                writer.connected(product_id)
                for message in subscribe_messages(feed, product_id, credentials):
                    await ws.send(json.dumps(message))
                delay = 0.25
                while not stop.is_set():
                    recv = asyncio.ensure_future(ws.recv())
                    stopped = asyncio.ensure_future(stop.wait())
                    done, _ = await asyncio.wait(
                        {recv, stopped}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if recv not in done:
                        recv.cancel()
                        return
                    stopped.cancel()
                    writer.frame(product_id, recv.result(), time.time_ns())
        except (TimeoutError, OSError, websockets.WebSocketException) as exc:
            log.warning(
                "%s: connection lost (%s); reconnecting in %.2fs",
                product_id,
                exc,
                delay,
            )
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 30.0)


async def record(
    path: str | os.PathLike,
    products: list[str],
    feed: str = "exchange",
    url: str | None = None,
    duration: float | None = None,
    credentials=None,
    progress: io.TextIOBase | None = None,
    stop: asyncio.Event | None = None,
) -> dict[str, int]:
    """Record every frame of ``products`` until ``duration`` elapses or ``stop`` is set."""
    from coinbase_source import FEEDS

    spec = FEEDS[feed]
    url = url or spec.url
    stop = stop or asyncio.Event()
    header = {
        "protocol": spec.protocol,
        "feed": feed,
        "url": url,
        "products": list(products),
        "started": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    writer = RecordingWriter(path, header)
    tasks = [
        asyncio.create_task(_record_product(writer, url, feed, p, credentials, stop))
        for p in products
    ]
    started = time.monotonic()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            if progress is not None:
                progress.write(
                    f"\rrecording {len(products)} products: {writer.frames} frames, "
                    f"{writer.frame_bytes / 1e6:.1f} MB, {time.monotonic() - started:.0f}s"
                )
                progress.flush()
            if duration is not None and time.monotonic() - started >= duration:
                stop.set()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        if progress is not None:
            progress.write("\n")
    return {"frames": writer.frames, "bytes": writer.frame_bytes}


def main(argv: list[str] | None = None) -> int:
    from config import ConfigError, parse_products, parse_url

    parser = argparse.ArgumentParser(
        description="Record raw Coinbase level-2 frames to a gzip JSON-lines file."
    )
    parser.add_argument("output", help="file to write, e.g. btc.jsonl.gz")
    parser.add_argument("--products", default="BTC-USD,ETH-USD,BTC-EUR,ETH-EUR")
    parser.add_argument(
        "--feed",
        default="exchange",
        choices=("exchange", "exchange-auth", "advanced-trade"),
    )
    parser.add_argument("--url", help="override the feed URL (e.g. the local exchange)")
    parser.add_argument(
        "--duration", type=float, help="seconds to record (default: until Ctrl-C)"
    )
    args = parser.parse_args(argv)
    try:
        products = list(parse_products(args.products, "--products"))
        url = parse_url(args.url, "--url")
    except ConfigError as exc:
        parser.error(str(exc))
    if args.duration is not None and args.duration <= 0:
        parser.error(f"--duration must be > 0, got {args.duration}")
    credentials = None
    if args.feed == "exchange-auth":
        from coinbase_auth import Credentials

        try:
            credentials = Credentials.from_env()
        except ValueError as exc:
            parser.error(str(exc))
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )

    async def run() -> dict[str, int]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await record(
            args.output,
            products,
            args.feed,
            url,
            args.duration,
            credentials,
            sys.stderr,
            stop,
        )

    totals = asyncio.run(run())
    print(f"wrote {totals['frames']} frames ({totals['bytes']} bytes) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
